//! A service's TLS-related tables: `tls`, `[[service.certificate]]`, `match`, `redirect` and
//! `backend_tls`. Certificates are loaded here, so `check` refuses an unreadable file, a key
//! that does not belong to its certificate, a wrong PFX password or a PFX without a key, at
//! the line of the setting, and warns about certificates that expire soon.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::report::Reporter;
use super::types::*;
use crate::tls::certs::{self, Loaded, Part};

/// Warn about certificates that expire within this.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The ALPN protocols an http service may offer.
const HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// `tls` and `[[service.certificate]]`; also returns the loaded certificates (for the
/// coverage warning, which needs every service of an address).
pub(super) fn termination(
    r: &mut Reporter,
    s: &raw::Service,
    mode: Mode,
    base: &Path,
) -> (Option<TlsConfig>, Vec<Loaded>) {
    if s.certificate.is_empty() {
        if let Some(t) = &s.tls {
            r.err(
                t.span(),
                "tls: a service that terminates TLS needs at least one [[service.certificate]]",
            );
        }
        return (None, Vec::new());
    }
    let default_alpn: &[&str] = match mode {
        Mode::Http => &HTTP_ALPN,
        Mode::Tcp | Mode::Udp => &[],
    };
    let mut min_version = TlsVersion::V12;
    let mut alpn: Vec<String> = default_alpn.iter().map(|s| s.to_string()).collect();
    if let Some(t) = &s.tls {
        let t = t.get_ref();
        if let Some(v) = &t.min_version {
            match v.get_ref().as_str() {
                "1.2" => min_version = TlsVersion::V12,
                "1.3" => min_version = TlsVersion::V13,
                other => r.err(
                    v.span(),
                    format!("tls.min_version: {other:?}; expected \"1.2\" or \"1.3\""),
                ),
            }
        }
        if let Some(a) = &t.alpn {
            for p in a.get_ref() {
                let ok = match mode {
                    Mode::Http => HTTP_ALPN.contains(&p.as_str()),
                    Mode::Tcp | Mode::Udp => !p.is_empty() && p.len() < 256 && p.is_ascii(),
                };
                if !ok {
                    r.err(
                        a.span(),
                        format!("tls.alpn: {p:?} is not a protocol this service can speak (http: \"h2\", \"http/1.1\")"),
                    );
                }
            }
            alpn = a.get_ref().clone();
        }
    }
    let mut certificates = Vec::new();
    let mut loaded = Vec::new();
    for c in &s.certificate {
        let line = r.line(c.span().start);
        let Some(source) = cert_source(r, c, base) else {
            continue;
        };
        match certs::load(&source) {
            Ok(l) => {
                let at = c.get_ref().cert.as_ref().or(c.get_ref().pfx.as_ref());
                let span = at.map_or(c.span(), |v| v.span());
                let left = l.remaining();
                if left.is_zero() {
                    r.warn(span, "certificate has expired");
                } else if left < EXPIRY_WARNING {
                    r.warn(
                        span,
                        format!("certificate expires in {} days", left.as_secs() / 86_400),
                    );
                }
                loaded.push(l);
            }
            Err(e) => {
                let c = c.get_ref();
                let field = match e.part {
                    Part::Cert => &c.cert,
                    Part::Key => &c.key,
                    Part::Chain => &c.chain,
                    Part::Pfx => &c.pfx,
                    Part::Password => c
                        .password_file
                        .as_ref()
                        .map_or(&c.pfx, |_| &c.password_file),
                };
                let name = match e.part {
                    Part::Cert => "cert",
                    Part::Key => "key",
                    Part::Chain => "chain",
                    Part::Pfx => "pfx",
                    Part::Password => {
                        if c.password_file.is_some() {
                            "password_file"
                        } else {
                            "pfx"
                        }
                    }
                };
                let span = field.as_ref().map_or(0..0, |v| v.span());
                r.err(span, format!("certificate.{name}: {}", e.message));
            }
        }
        certificates.push(CertificateConfig { source, line });
    }
    (
        Some(TlsConfig {
            min_version,
            alpn,
            certificates,
        }),
        loaded,
    )
}

/// The source of one `[[service.certificate]]`: `cert` + `key` (+ `chain`), or `pfx`
/// (+ `password_file`).
fn cert_source(r: &mut Reporter, c: &Spanned<raw::Certificate>, base: &Path) -> Option<CertSource> {
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| base.join(v.get_ref()));
    let s = c.get_ref();
    match (&s.cert, &s.key, &s.pfx) {
        (Some(_), Some(_), None) => {
            if let Some(p) = &s.password_file {
                r.err(
                    p.span(),
                    "certificate.password_file goes with pfx, not with cert/key",
                );
                return None;
            }
            Some(CertSource::Pem {
                cert: path(&s.cert)?,
                key: path(&s.key)?,
                chain: path(&s.chain),
            })
        }
        (None, None, Some(_)) => Some(CertSource::Pfx {
            pfx: path(&s.pfx)?,
            password_file: path(&s.password_file),
            chain: path(&s.chain),
        }),
        _ => {
            r.err(
                c.span(),
                "certificate: give either cert and key, or pfx (and optionally password_file); chain may go with either",
            );
            None
        }
    }
}

/// `match = { hosts = [...], path_prefixes = [...] }`.
pub(super) fn route(r: &mut Reporter, s: &raw::Service) -> Option<RouteMatch> {
    let m = s.route.as_ref()?;
    let mut hosts = Vec::new();
    if let Some(h) = &m.get_ref().hosts {
        for host in h.get_ref() {
            let lower = host.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            if bare.is_empty()
                || bare.contains('*')
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
            {
                r.err(
                    h.span(),
                    format!("match.hosts: {host:?} is not a host name (a leading \"*.\" is the only wildcard)"),
                );
            }
            hosts.push(lower);
        }
    }
    let mut path_prefixes = Vec::new();
    if let Some(p) = &m.get_ref().path_prefixes {
        for prefix in p.get_ref() {
            if !prefix.starts_with('/') || prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
                r.err(
                    p.span(),
                    format!(
                        "match.path_prefixes: {prefix:?} must start with '/' and contain no spaces"
                    ),
                );
            }
            path_prefixes.push(prefix.clone());
        }
    }
    if hosts.is_empty() && path_prefixes.is_empty() {
        r.err(m.span(), "match: give hosts, path_prefixes or both");
    }
    let ignore_case = m
        .get_ref()
        .ignore_case
        .as_ref()
        .is_some_and(|v| *v.get_ref());
    Some(RouteMatch {
        hosts,
        path_prefixes,
        ignore_case,
    })
}

/// `redirect = "https"`.
pub(super) fn redirect(r: &mut Reporter, s: &raw::Service, mode: Mode) -> bool {
    let Some(v) = &s.redirect else {
        return false;
    };
    if v.get_ref() != "https" {
        r.err(
            v.span(),
            format!("redirect: {:?}; the only value is \"https\"", v.get_ref()),
        );
    } else if mode != Mode::Http {
        r.err(v.span(), "redirect only applies to mode = \"http\"");
    }
    true
}

/// `backend_tls = { verify, ca, sni }`.
pub(super) fn backend(r: &mut Reporter, s: &raw::Service, base: &Path) -> Option<BackendTls> {
    let b = s.backend_tls.as_ref()?;
    let v = b.get_ref();
    let verify = v.verify.as_ref().is_none_or(|x| *x.get_ref());
    if !verify {
        r.warn(
            v.verify.as_ref().map_or(b.span(), |x| x.span()),
            "backend_tls.verify = false accepts any backend certificate: traffic to backends is encrypted but not authenticated",
        );
    }
    let ca = v.ca.as_ref().and_then(|c| {
        let path = base.join(c.get_ref());
        match crate::tls::client::roots_from_file(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                r.err(c.span(), format!("backend_tls.ca: {e}"));
                None
            }
        }
    });
    let sni = v
        .sni
        .as_ref()
        .map(|s| s.get_ref().trim().to_ascii_lowercase());
    if let (Some(n), Some(span)) = (&sni, v.sni.as_ref().map(|s| s.span())) {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            r.err(span, format!("backend_tls.sni: {n:?} is not a server name"));
        }
    }
    Some(BackendTls { verify, ca, sni })
}
