//! The server side of client TLS: one rustls configuration per listen address, offering the
//! certificates of every service on the address, chosen by SNI (exact names first, then
//! `*.domain` wildcards, else the default: the first certificate of the address's default
//! service). Certificates can be replaced while running ([`CertStore::reload`]): a file that
//! fails to load keeps its old certificate, so no handshake ever fails for a bad replacement.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

use super::certs::{self, CertSource, Loaded};
use crate::config::{TlsConfig, TlsVersion};

/// The certificates of one listen address, by name.
struct Lookup {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Lookup {
    fn build(loaded: &[Loaded]) -> Lookup {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for l in loaded {
            for n in &l.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => {
                        wildcard.entry(suffix.to_string()).or_insert(l.key.clone());
                    }
                    None => {
                        exact.entry(n.clone()).or_insert(l.key.clone());
                    }
                }
            }
        }
        Lookup {
            exact,
            wildcard,
            default: loaded[0].key.clone(),
        }
    }

    fn find(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// A certificate source and the version last loaded from it.
struct Entry {
    source: CertSource,
    /// The service and config line it was declared on, for messages.
    origin: String,
    current: Loaded,
}

/// The certificates of a listen address: the resolver rustls asks, and what reloads them.
pub struct CertStore {
    entries: std::sync::Mutex<Vec<Entry>>,
    lookup: ArcSwap<Lookup>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// Loads every certificate (in order: the default first). `origins` names where each was
    /// declared.
    pub fn load(sources: &[(CertSource, String)]) -> Result<CertStore, String> {
        let mut entries = Vec::new();
        for (source, origin) in sources {
            let current = certs::load(source).map_err(|e| format!("{origin}: {}", e.message))?;
            entries.push(Entry {
                source: source.clone(),
                origin: origin.clone(),
                current,
            });
        }
        if entries.is_empty() {
            return Err("no certificate".into());
        }
        let loaded: Vec<Loaded> = entries.iter().map(|e| e.current.clone()).collect();
        Ok(CertStore {
            lookup: ArcSwap::from_pointee(Lookup::build(&loaded)),
            entries: std::sync::Mutex::new(entries),
        })
    }

    /// The files to watch.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .iter()
            .flat_map(|e| e.source.files().into_iter().map(|p| p.to_path_buf()))
            .collect()
    }

    /// Loads again every certificate whose files include `changed` (all when `None`); a
    /// certificate that fails keeps its previous version. Handshakes already running keep the
    /// certificate they started with.
    pub fn reload(&self, changed: Option<&std::path::Path>) {
        let mut entries = self.entries.lock().expect("not poisoned");
        let mut any = false;
        for e in entries.iter_mut() {
            if changed.is_some_and(|c| !e.source.files().contains(&c)) {
                continue;
            }
            match certs::load(&e.source) {
                Ok(l) => {
                    tracing::info!(certificate = %e.origin, names = %l.names.join(","), "certificate reloaded");
                    e.current = l;
                    any = true;
                }
                Err(err) => tracing::error!(
                    certificate = %e.origin,
                    "certificate not reloaded, the previous one stays in use: {}",
                    err.message
                ),
            }
        }
        if any {
            let loaded: Vec<Loaded> = entries.iter().map(|e| e.current.clone()).collect();
            self.lookup.store(Arc::new(Lookup::build(&loaded)));
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        super::session::note_sni(sni.as_deref());
        Some(self.lookup.load().find(sni.as_deref()))
    }
}

/// The rustls configuration of a listen address.
pub fn server_config(tls: &TlsConfig, store: Arc<CertStore>) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Stateless session resumption: a returning client skips the full handshake on any
    // worker thread (the keys rotate every 6 hours).
    if let Ok(t) = super::ticketer() {
        config.ticketer = t;
    }
    Ok(Arc::new(config))
}
