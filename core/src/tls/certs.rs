//! Certificates and keys as administrators have them: PEM files (a certificate, its key, and
//! optionally intermediates in a separate file) or a PKCS#12 file as Windows exports it
//! (`.pfx`, legacy RC2/3DES or AES encryption) with its password in a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Where a certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Pem {
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
    /// `chain`: intermediates or the root in a separate PEM file, for a PFX exported without
    /// them; appended after the PFX's own certificates, skipping any already there.
    Pfx {
        pfx: PathBuf,
        password_file: Option<PathBuf>,
        chain: Option<PathBuf>,
    },
}

impl CertSource {
    /// The files whose change means the certificate must be read again.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            CertSource::Pem { cert, key, chain } => {
                let mut v = vec![cert.as_path(), key.as_path()];
                v.extend(chain.as_deref());
                v
            }
            CertSource::Pfx {
                pfx,
                password_file,
                chain,
            } => {
                let mut v = vec![pfx.as_path()];
                v.extend(password_file.as_deref());
                v.extend(chain.as_deref());
                v
            }
        }
    }
}

/// Which setting a loading error is about (so `check` can point at its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    Chain,
    Pfx,
    Password,
}

/// A loading error: the setting it is about, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub part: Part,
    pub message: String,
}

fn err(part: Part, message: impl Into<String>) -> CertError {
    CertError {
        part,
        message: message.into(),
    }
}

/// A certificate ready to serve, with what `check` reports about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names it covers (subject alternative names, else the common name), lower-case;
    /// `*.example.org` for wildcards.
    pub names: Vec<String>,
    /// End of validity of the end-entity certificate.
    pub not_after: SystemTime,
}

impl Loaded {
    /// Time left until expiry (zero when expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Whether this certificate covers host `name` (lower-case).
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, name))
    }
}

/// `pattern` (a certificate name, maybe `*.example.org`) matches `host`: exactly, or the
/// wildcard stands for exactly one label.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

fn read(path: &Path, part: Part) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| err(part, format!("cannot read {}: {e}", path.display())))
}

fn pem_certs(path: &Path, part: Part) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read(path, part)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                part,
                format!("{}: not a PEM certificate file: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            part,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Loads and checks a certificate with its key: the key must belong to the certificate.
pub fn load(src: &CertSource) -> Result<Loaded, CertError> {
    let (chain, key, key_part) = match src {
        CertSource::Pem { cert, key, chain } => {
            let mut certs = pem_certs(cert, Part::Cert)?;
            if let Some(c) = chain {
                certs.extend(pem_certs(c, Part::Chain)?);
            }
            let bytes = read(key, Part::Key)?;
            let k = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                err(
                    Part::Key,
                    format!("{}: no PEM private key in it: {e}", key.display()),
                )
            })?;
            (certs, k, Part::Key)
        }
        CertSource::Pfx {
            pfx,
            password_file,
            chain,
        } => {
            let bytes = read(pfx, Part::Pfx)?;
            let password = match password_file {
                Some(p) => {
                    let raw = read(p, Part::Password)?;
                    let text = String::from_utf8(raw).map_err(|_| {
                        err(Part::Password, format!("{}: not UTF-8 text", p.display()))
                    })?;
                    text.trim_end_matches(['\r', '\n']).to_string()
                }
                None => String::new(),
            };
            let store = p12_keystore::KeyStore::from_pkcs12(
                &bytes,
                &password,
                p12_keystore::Pkcs12ImportPolicy::Relaxed,
            )
            .map_err(|e| {
                let m = e.to_string();
                if m.to_ascii_lowercase().contains("mac") {
                    err(
                        Part::Password,
                        format!(
                            "{}: wrong password (the file's MAC does not verify)",
                            pfx.display()
                        ),
                    )
                } else {
                    err(
                        Part::Pfx,
                        format!("{}: not a readable PKCS#12 file: {m}", pfx.display()),
                    )
                }
            })?;
            let Some((_, kc)) = store.private_key_chain() else {
                return Err(err(
                    Part::Pfx,
                    format!(
                        "{}: holds no private key with its certificate",
                        pfx.display()
                    ),
                ));
            };
            let mut certs: Vec<CertificateDer<'static>> = kc
                .certs()
                .iter()
                .map(|c| CertificateDer::from(c.as_der().to_vec()))
                .collect();
            if certs.is_empty() {
                return Err(err(
                    Part::Pfx,
                    format!("{}: its private key has no certificate", pfx.display()),
                ));
            }
            if let Some(c) = chain {
                for extra in pem_certs(c, Part::Chain)? {
                    if !certs.contains(&extra) {
                        certs.push(extra);
                    }
                }
            }
            let k = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kc.key().as_der().to_vec()));
            (certs, k, Part::Pfx)
        }
    };
    let (names, not_after) = describe(&chain[0]).map_err(|m| err(first_part(src), m))?;
    let key = CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| {
        let m = match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the certificate".to_string()
            }
            e => format!("unusable private key: {e}"),
        };
        err(key_part, m)
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
        not_after,
    })
}

fn first_part(src: &CertSource) -> Part {
    match src {
        CertSource::Pem { .. } => Part::Cert,
        CertSource::Pfx { .. } => Part::Pfx,
    }
}

/// DNS names and end of validity of a certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let ts = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
    Ok((names, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.org", "a.example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(name_matches("mail.example.com", "mail.example.com"));
        assert!(!name_matches("mail.example.com", "www.example.com"));
    }
}
