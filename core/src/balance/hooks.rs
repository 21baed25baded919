//! The three hook points where Plugboard makes a decision, one trait each.
//!
//! Built-ins (the schedulers in [`crate::balance::scheduler`], the keys in [`crate::balance::persistence`], the
//! checks in [`crate::health`]) implement these traits, and so will WASM and Lua plugins: a
//! service holds `Box<dyn SelectServer>`, `Box<dyn PersistenceKey>` and `Arc<dyn HealthCheck>`
//! and never knows which kind it has. The request-path traits are synchronous and take
//! borrowed views, so that a call costs no allocation; the health check is async because it
//! does network I/O, and runs on a background task, never on the request path.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};

use super::pool::Pool;
use crate::config::Mode;

/// What a hook may know about one HTTP request or TCP connection.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub service: &'a str,
    pub mode: Mode,
    pub client: Option<SocketAddr>,
    /// HTTP request header (http mode).
    pub http: Option<&'a RequestHeader>,
    /// The client's first bytes (tcp mode, when a persistence hook asked for them).
    pub payload: &'a [u8],
    /// The persistence key of this request, once computed.
    pub key: Option<&'a Key<'a>>,
}

impl<'a> Request<'a> {
    /// First value of a request header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.http?.headers.get(name).map(|v| v.as_bytes())
    }

    /// Value of a cookie from the `Cookie` headers, parsed on demand without allocating.
    pub fn cookie(&self, name: &str) -> Option<&'a [u8]> {
        let http = self.http?;
        http.headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| find_cookie(v.as_bytes(), name.as_bytes()))
    }
}

/// Finds `name=value` in one `Cookie` header value (`a=1; b=2`).
pub fn find_cookie<'v>(header: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (&pair[..eq], &pair[eq + 1..]);
        (n.trim_ascii() == name).then(|| {
            let v = v.trim_ascii();
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

/// A persistence key. Borrowed from the request where possible, so that extracting a key
/// from a header costs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Ip(IpAddr),
    Borrowed(&'a [u8]),
    Owned(Box<[u8]>),
}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Ip(ip) => {
                state.write_u8(0);
                ip.hash(state)
            }
            Key::Borrowed(b) => {
                state.write_u8(1);
                state.write(b)
            }
            Key::Owned(b) => {
                state.write_u8(1);
                state.write(b)
            }
        }
    }
}

/// What a persistence-key hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome<'r> {
    /// No key: the scheduler decides and nothing is pinned.
    None,
    /// tcp mode: the payload seen so far is an incomplete message; call again with more bytes
    /// (until the service's `inspect_timeout`).
    NeedMore,
    /// A key to look up in, and pin to, the service's persistence table.
    Key(Key<'r>),
    /// The request itself names the backend (a proxy-inserted cookie, an RDP routing token).
    /// Used while that backend is available; otherwise the request is re-balanced.
    Backend(usize),
    /// Refuse the request (a plugin failed and the service's policy is `reject`).
    Reject,
}

/// What a select-server hook decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Backend(usize),
    /// No opinion (a plugin), or nothing available (a built-in): the service's fallback
    /// scheduler decides, if it has one.
    NoOpinion,
    /// Refuse the request (a plugin failed and the service's policy is `reject`).
    Reject,
}

/// Which backend gets this request or connection.
pub trait SelectServer: Send + Sync {
    /// Picks an available backend that is not in `avoid` (backends that already failed this
    /// request).
    fn select(&self, req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick;
}

/// What makes a client sticky.
pub trait PersistenceKey: Send + Sync {
    /// True when the key is read from the client's first bytes (tcp mode): the proxy then
    /// waits for them before it balances the connection.
    fn wants_payload(&self) -> bool {
        false
    }

    /// Computes the key of a request.
    fn key<'r>(&self, req: &Request<'r>, pool: &Pool) -> KeyOutcome<'r>;

    /// Response step (http mode): lets the hook add headers, such as a cookie naming the
    /// backend that served the request. It may run on another thread than [`Self::key`] for the
    /// same request, so it gets the request again rather than relying on state from that call. `named` is the backend the request itself named
    /// (a [`KeyOutcome::Backend`] from [`Self::key`]), if any.
    fn on_response(
        &self,
        _req: &Request<'_>,
        _named: Option<usize>,
        _served: usize,
        _pool: &Pool,
        _resp: &mut ResponseHeader,
    ) {
    }
}

/// One health observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport {
    pub up: bool,
    /// Load 0-100 reported by the backend, if the check learns it.
    pub load: Option<u8>,
}

impl HealthReport {
    pub const UP: HealthReport = HealthReport {
        up: true,
        load: None,
    };
    pub const DOWN: HealthReport = HealthReport {
        up: false,
        load: None,
    };
}

/// Is a backend up, and how loaded. Runs on a background task, never on the request path.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// Checks backend `backend` of `pool` at `target` (its address, or the configured check
    /// port), taking at most `timeout` once the check starts (an implementation that queues
    /// checks does not count the wait). `None`: no verdict (a plugin failed), the backend keeps
    /// its state.
    async fn check(
        &self,
        pool: &Arc<Pool>,
        backend: usize,
        target: SocketAddr,
        timeout: Duration,
    ) -> Option<HealthReport>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let h = b"a=1; SRV=abc ;  c=\"q\"";
        assert_eq!(find_cookie(h, b"SRV"), Some(&b"abc"[..]));
        assert_eq!(find_cookie(h, b"c"), Some(&b"q"[..]));
        assert_eq!(find_cookie(h, b"b"), None);
        assert_eq!(find_cookie(b"", b"a"), None);
        assert_eq!(find_cookie(b";;=;a", b"a"), None);
    }
}
