//! Listen addresses across services. Several services may share an address when they are
//! http services that each say which requests are theirs (`match`; one may go without and is
//! the address's default); they must then agree on TLS and on the PROXY protocol
//! (`accept_proxy`, `trusted_proxies`: the header comes first). A TLS address offers the
//! certificates of all its services, and `check` warns about a `match` host none covers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use super::report::Reporter;
use super::types::*;
use crate::tls::certs::Loaded;

/// What the sharing rules need to know of one `[[service]]` as written.
pub(super) struct Seen {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub listen_span: Range<usize>,
    pub match_span: Option<Range<usize>>,
    /// Index into the validated services, when the service validated.
    pub typed: Option<usize>,
    pub certs: Vec<Loaded>,
    /// `mode = "udp"`: its addresses are datagram sockets, apart from tcp ones (a udp and a
    /// tcp service may listen on the same address and port, as RDP does on 3389).
    pub udp: bool,
}

/// Reports every address conflict, and warns about uncovered host names.
pub(super) fn check_sharing(r: &mut Reporter, seen: &[Seen], services: &[ServiceConfig]) {
    let mut by_addr: HashMap<(SocketAddr, bool), Vec<usize>> = HashMap::new();
    let mut order: Vec<(SocketAddr, bool)> = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        for a in &s.addrs {
            let v = by_addr.entry((*a, s.udp)).or_insert_with(|| {
                order.push((*a, s.udp));
                Vec::new()
            });
            if !v.contains(&i) {
                v.push(i);
            }
        }
    }
    for key in order {
        let on = &by_addr[&key];
        let addr = key.0;
        if on.len() < 2 {
            continue;
        }
        let first = &seen[on[0]];
        let first_line = r.line(first.listen_span.start);
        let mut defaults = Vec::new();
        for &i in on {
            let s = &seen[i];
            if s.match_span.is_none() {
                defaults.push(i);
            }
        }
        // The second service without `match` is the first error (as a plain duplicate).
        for &i in defaults.iter().skip(1) {
            let s = &seen[i];
            let (other, line) = (
                &seen[defaults[0]].name,
                r.line(seen[defaults[0]].listen_span.start),
            );
            r.err(
                s.listen_span.clone(),
                format!(
                    "duplicate listen address {addr} (already used by service {other:?} on line {line}); \
                     services may share an address only when each has a `match` (one may go without: the default)"
                ),
            );
        }
        let typed: Vec<(usize, &ServiceConfig)> = on
            .iter()
            .filter_map(|&i| seen[i].typed.map(|t| (i, &services[t])))
            .collect();
        for &(i, s) in &typed {
            if s.mode != Mode::Http {
                r.err(
                    seen[i].listen_span.clone(),
                    format!(
                        "listen address {addr} is shared with service {:?} (line {first_line}); only http services can share an address",
                        first.name
                    ),
                );
            }
        }
        let Some(&(_, reference)) = typed.first() else {
            continue;
        };
        for &(i, s) in typed.iter().skip(1) {
            let same = match (&reference.tls, &s.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.min_version == b.min_version && a.alpn == b.alpn,
                _ => false,
            };
            if !same {
                r.err(
                    seen[i].listen_span.clone(),
                    format!(
                        "services sharing {addr} must all terminate TLS or none, with the same `tls` settings (see service {:?}, line {first_line})",
                        reference.name
                    ),
                );
            }
            // The header is read before anything tells the services apart.
            if reference.accept_proxy != s.accept_proxy {
                r.err(
                    seen[i].listen_span.clone(),
                    format!(
                        "services sharing {addr} must agree on accept_proxy and trusted_proxies (see service {:?}, line {first_line})",
                        reference.name
                    ),
                );
            }
        }
    }
    uncovered_hosts(r, seen, services, &by_addr);
}

/// Warns about `match` hosts of TLS services that no certificate of the address covers.
fn uncovered_hosts(
    r: &mut Reporter,
    seen: &[Seen],
    services: &[ServiceConfig],
    by_addr: &HashMap<(SocketAddr, bool), Vec<usize>>,
) {
    for s in seen {
        let (Some(t), Some(span)) = (s.typed, &s.match_span) else {
            continue;
        };
        let svc = &services[t];
        let (Some(_), Some(route)) = (&svc.tls, &svc.route) else {
            continue;
        };
        let certs: Vec<&Loaded> = s
            .addrs
            .iter()
            .flat_map(|a| by_addr.get(&(*a, s.udp)).into_iter().flatten())
            .flat_map(|&j| seen[j].certs.iter())
            .collect();
        for host in &route.hosts {
            if !certs
                .iter()
                .any(|c| c.covers(host) || c.names.iter().any(|n| n == host))
            {
                r.warn(
                    span.clone(),
                    format!("match.hosts: no certificate on this address covers {host:?}; clients will see a name mismatch"),
                );
            }
        }
    }
}
