//! A service's `[[service.backend]]` tables.

use std::ops::Range;

use super::raw;
use super::report::Reporter;
use super::types::*;
use super::units::{valid_backend_name, MAX_NAME};

pub(super) fn validate(
    r: &mut Reporter,
    s: &raw::Service,
    span: Range<usize>,
    service: &str,
    mode: Mode,
    redirects: bool,
) -> Vec<BackendConfig> {
    let mut backends: Vec<BackendConfig> = Vec::new();
    if s.backend.is_empty() && !redirects {
        r.err(
            span,
            format!("service {service:?} has no [[service.backend]]"),
        );
    }
    for b in &s.backend {
        let b = b.get_ref();
        let Some(address) = r.address(&b.address, "backend address") else {
            continue;
        };
        if backends.iter().any(|o| o.address == address) {
            r.err(
                b.address.span(),
                format!("backend {address} listed twice in service {service:?}"),
            );
        }
        let name = match &b.name {
            Some(n) => {
                if !valid_backend_name(n.get_ref()) {
                    r.err(
                        n.span(),
                        format!(
                            "backend name {:?}: use 1 to {MAX_NAME} letters, digits and - _ . : [ ]",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => b.address.get_ref().trim().to_string(),
        };
        if backends.iter().any(|o| o.name == name) {
            let at = b.name.as_ref().map_or(b.address.span(), |n| n.span());
            r.err(
                at,
                format!(
                    "backend name {name:?} used twice in service {service:?}; names must be unique"
                ),
            );
        }
        let weight = r
            .int_in(&b.weight, "weight", 0, MAX_WEIGHT as i64)
            .unwrap_or(1) as u32;
        let max_connections = r
            .int_in(
                &b.max_connections,
                "max_connections",
                1,
                MAX_CONNECTIONS as i64,
            )
            .map(|n| n as u32);
        if let (Some(v), Mode::Udp) = (&b.max_connections, mode) {
            r.err(
                v.span(),
                "max_connections of a backend does not apply to mode = \"udp\" (a flow is not a connection to wait for; limit flows with the service's max_connections)",
            );
        }
        let enabled = b.enabled.as_ref().map(|e| *e.get_ref()).unwrap_or(true);
        let written = b.address.get_ref().trim();
        let host = written.rsplit_once(':').map_or(written, |(h, _)| h);
        let hostname = (host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['))
            .then(|| host.to_ascii_lowercase());
        backends.push(BackendConfig {
            hostname,
            name,
            address,
            weight,
            enabled,
            max_connections,
        });
    }
    backends
}
