//! Which service of a listen address a request belongs to: the first service, in file order,
//! whose `match` accepts the request's host and path; else the address's default service
//! (the one without `match`). The host is the `Host` header (or the absolute target's
//! authority), so a browser that reuses a TLS connection for another host is routed by the
//! host it asks for, not by the SNI it connected with.

use pingora::http::RequestHeader;

use crate::config::RouteMatch;
use crate::tls::certs::name_matches;

/// Routes of one address, in file order, and the default.
#[derive(Debug, Default)]
pub struct Router {
    /// (route index, match) of the services with a `match`.
    matches: Vec<(usize, RouteMatch)>,
    default: Option<usize>,
}

impl Router {
    /// `routes[i]` is the `match` of route `i` (`None`: the default).
    pub fn new(routes: impl IntoIterator<Item = Option<RouteMatch>>) -> Router {
        let mut r = Router::default();
        for (i, m) in routes.into_iter().enumerate() {
            match m {
                Some(m) => r.matches.push((i, m)),
                None => r.default = r.default.or(Some(i)),
            }
        }
        r
    }

    /// The route of this request, if any service takes it.
    #[inline]
    pub fn route(&self, req: &RequestHeader) -> Option<usize> {
        if self.matches.is_empty() {
            return self.default;
        }
        let host = host_of(req);
        let path = req.uri.path();
        self.matches
            .iter()
            .find(|(_, m)| accepts(m, host, path))
            .map(|(i, _)| *i)
            .or(self.default)
    }
}

fn accepts(m: &RouteMatch, host: &[u8], path: &str) -> bool {
    let host_ok = m.hosts.is_empty()
        || std::str::from_utf8(host).is_ok_and(|h| m.hosts.iter().any(|p| host_matches(p, h)));
    host_ok
        && (m.path_prefixes.is_empty()
            || m.path_prefixes.iter().any(|p| {
                if m.ignore_case {
                    path.len() >= p.len()
                        && path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                } else {
                    path.starts_with(p.as_str())
                }
            }))
}

/// Case-insensitive host match of a pattern that is already lower-case.
fn host_matches(pattern: &str, host: &str) -> bool {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        name_matches(pattern, &host.to_ascii_lowercase())
    } else {
        name_matches(pattern, host)
    }
}

/// The request's host without its port: `Host`, else the absolute target's authority.
pub fn host_of(req: &RequestHeader) -> &[u8] {
    let raw = req
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or(b"");
    strip_port(raw)
}

fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        // [v6]:port
        return match h.iter().position(|&b| b == b']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        r.insert_header("host", host).unwrap();
        r
    }

    fn m(hosts: &[&str], prefixes: &[&str]) -> Option<RouteMatch> {
        Some(RouteMatch {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            ignore_case: false,
        })
    }

    #[test]
    fn first_match_in_file_order_then_default() {
        let r = Router::new([
            m(&["mail.example.com"], &["/owa"]),
            None,
            m(&["*.example.org"], &[]),
            m(&[], &["/ews"]),
        ]);
        assert_eq!(r.route(&req("mail.example.com", "/owa/x")), Some(0));
        assert_eq!(r.route(&req("MAIL.example.com:443", "/owa")), Some(0));
        assert_eq!(r.route(&req("mail.example.com", "/other")), Some(1));
        assert_eq!(r.route(&req("a.example.org", "/")), Some(2));
        assert_eq!(r.route(&req("example.org", "/")), Some(1));
        assert_eq!(r.route(&req("x", "/ews/exchange.asmx")), Some(3));
        let no_default = Router::new([m(&["a"], &[])]);
        assert_eq!(no_default.route(&req("b", "/")), None);
    }

    #[test]
    fn paths_compare_by_case_unless_told_not_to() {
        let mut ews = m(&[], &["/EWS"]).unwrap();
        let strict = Router::new([Some(ews.clone()), None]);
        assert_eq!(strict.route(&req("x", "/ews/Exchange.asmx")), Some(1));
        ews.ignore_case = true;
        let iis = Router::new([Some(ews), None]);
        assert_eq!(iis.route(&req("x", "/ews/Exchange.asmx")), Some(0));
        assert_eq!(iis.route(&req("x", "/EWS")), Some(0));
        assert_eq!(iis.route(&req("x", "/EW")), Some(1));
        assert_eq!(iis.route(&req("x", "/\u{e9}")), Some(1));
    }

    #[test]
    fn ports_and_v6_literals_are_stripped() {
        assert_eq!(strip_port(b"a.b:8443"), b"a.b");
        assert_eq!(strip_port(b"[::1]:443"), b"[::1]");
        assert_eq!(strip_port(b"[::1]"), b"[::1]");
        assert_eq!(strip_port(b"host"), b"host");
    }
}
