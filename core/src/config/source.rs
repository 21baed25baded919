//! A service's `source`: the address its backend connections come from. Checked here, at
//! `check` and start-up, so a process that may not use it is refused at the key's line
//! rather than failing every connection.

use std::net::IpAddr;

use toml::Spanned;

use super::report::Reporter;
use super::types::{BackendConfig, Mode, SourceAddress};
use crate::proxy::connect::{probe_local, probe_transparent};

pub(super) fn validate(
    r: &mut Reporter,
    v: &Spanned<String>,
    mode: Mode,
    backends: &[BackendConfig],
) -> Option<SourceAddress> {
    if mode == Mode::Udp {
        r.err(
            v.span(),
            "source does not apply to mode = \"udp\" (only tcp and http connections are bound)",
        );
        return None;
    }
    let text = v.get_ref().trim();
    let families = |v6: bool| backends.iter().any(|b| b.address.is_ipv6() == v6);
    if text == "client" {
        for v6 in [false, true] {
            if let (true, Err(e)) = (families(v6), probe_transparent(v6)) {
                r.err(v.span(), format!("source = \"client\": {e}"));
                return None;
            }
        }
        return Some(SourceAddress::Client);
    }
    let Ok(ip) = text.parse::<IpAddr>() else {
        r.err(
            v.span(),
            format!("source: {text:?} is neither \"client\" nor an IP address (e.g. \"10.0.0.5\")"),
        );
        return None;
    };
    if families(!ip.is_ipv6()) {
        r.err(
            v.span(),
            format!(
                "source: {ip} is an IPv{} address and this service has IPv{} backends",
                if ip.is_ipv6() { 6 } else { 4 },
                if ip.is_ipv6() { 4 } else { 6 }
            ),
        );
        return None;
    }
    if let Err(e) = probe_local(ip) {
        r.err(v.span(), format!("source: {e}"));
        return None;
    }
    Some(SourceAddress::Fixed(ip))
}
