//! Persistence: the built-in persistence-key hooks and the table that pins keys to backends.
//!
//! The table sits behind [`PersistenceTable`] so that a table shared by several Plugboard
//! instances can replace the in-memory one. The intended shared design (see ARCHITECTURE.md)
//! keeps this synchronous interface: lookups are served from a local [`MemoryTable`], and pins
//! are written through to Redis and fanned out to the other instances by a background task, so
//! the request path never waits on the network.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use pingora::http::ResponseHeader;

use crate::config::{PersistenceConfig, PersistenceKeyKind};
use crate::hooks::{Key, KeyOutcome, PersistenceKey, Request};
use crate::pool::Pool;

/// Key -> backend, with an idle timeout and a size bound.
pub trait PersistenceTable: Send + Sync {
    /// The backend pinned to `key`, refreshing its idle timer.
    fn lookup(&self, key: &Key<'_>) -> Option<usize>;
    /// Pins `key` to `backend`, replacing any earlier pin.
    fn pin(&self, key: &Key<'_>, backend: usize);
}

/// In-process table shared by all worker threads: a concurrent cache with time-to-idle
/// expiry and least-recently-used eviction once `max_entries` is reached.
pub struct MemoryTable {
    entries: Cache<u64, u32>,
    hasher: std::hash::RandomState,
}

impl MemoryTable {
    pub fn new(timeout: Duration, max_entries: u64) -> Self {
        MemoryTable {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(timeout)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            // Random per process: a client cannot craft a key that collides with another's.
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl PersistenceTable for MemoryTable {
    fn lookup(&self, key: &Key<'_>) -> Option<usize> {
        self.entries
            .get(&self.hasher.hash_one(key))
            .map(|i| i as usize)
    }

    fn pin(&self, key: &Key<'_>, backend: usize) {
        self.entries
            .insert(self.hasher.hash_one(key), backend as u32);
    }
}

/// Builds the built-in key hook for this config; `None` for plugins.
pub fn builtin_key(
    cfg: &PersistenceConfig,
    service: &str,
    pool: &Pool,
) -> Option<Box<dyn PersistenceKey>> {
    Some(match &cfg.key {
        PersistenceKeyKind::SourceIp => Box::new(SourceIp),
        PersistenceKeyKind::Header(name) => Box::new(HeaderKey(name.clone())),
        PersistenceKeyKind::Cookie(name) => Box::new(InsertedCookie::new(name, service, pool)),
        PersistenceKeyKind::Plugin(_) => return None,
    })
}

/// The client's IP address.
pub struct SourceIp;

impl PersistenceKey for SourceIp {
    fn key<'r>(&self, req: &Request<'r>, _pool: &Pool) -> KeyOutcome<'r> {
        match req.client {
            Some(c) => KeyOutcome::Key(Key::Ip(c.ip())),
            None => KeyOutcome::None,
        }
    }
}

/// The value of one request header; requests without it get no key.
pub struct HeaderKey(String);

impl PersistenceKey for HeaderKey {
    fn key<'r>(&self, req: &Request<'r>, _pool: &Pool) -> KeyOutcome<'r> {
        match req.header(&self.0) {
            Some(v) if !v.is_empty() => KeyOutcome::Key(Key::Borrowed(v)),
            _ => KeyOutcome::None,
        }
    }
}

/// A cookie inserted by the proxy whose value names the backend that served the client
/// (HAProxy's `cookie NAME insert`). The value is an opaque id derived from the service name
/// and backend address: it reveals no address, is the same on every instance and across
/// restarts, and a value that names no backend of the pool is treated as absent.
pub struct InsertedCookie {
    name: String,
    ids: Vec<[u8; 16]>,
    set_cookie: Vec<HeaderValue>,
}

impl InsertedCookie {
    pub fn new(name: &str, service: &str, pool: &Pool) -> Self {
        let ids: Vec<[u8; 16]> = pool
            .backends()
            .iter()
            .map(|b| cookie_id(service, b.address))
            .collect();
        let set_cookie = ids
            .iter()
            .map(|id| {
                let v = format!("{name}={}; Path=/", std::str::from_utf8(id).unwrap());
                HeaderValue::from_str(&v).expect("token name and hex value")
            })
            .collect();
        InsertedCookie {
            name: name.to_string(),
            ids,
            set_cookie,
        }
    }
}

/// 16 lowercase hex digits of a fixed keyed hash of service and address.
fn cookie_id(service: &str, addr: SocketAddr) -> [u8; 16] {
    // SipHash-1-3 with fixed keys: stable across processes and instances.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x706c_7567_626f_6172, 0x6420_636f_6f6b_6965);
    std::hash::Hasher::write(&mut h, service.as_bytes());
    std::hash::Hasher::write(&mut h, &[0]);
    std::hash::Hasher::write(&mut h, addr.to_string().as_bytes());
    let v = std::hash::Hasher::finish(&h);
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

impl PersistenceKey for InsertedCookie {
    fn key<'r>(&self, req: &Request<'r>, _pool: &Pool) -> KeyOutcome<'r> {
        match req.cookie(&self.name) {
            Some(v) => match self.ids.iter().position(|id| id[..] == *v) {
                Some(i) => KeyOutcome::Backend(i),
                None => KeyOutcome::None,
            },
            None => KeyOutcome::None,
        }
    }

    fn on_response(
        &self,
        _req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        _pool: &Pool,
        resp: &mut ResponseHeader,
    ) {
        if named != Some(served) {
            let _ = resp.append_header(http::header::SET_COOKIE, self.set_cookie[served].clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pins_and_expires() {
        let t = MemoryTable::new(Duration::from_millis(100), 10);
        let k = Key::Borrowed(b"alice");
        assert_eq!(t.lookup(&k), None);
        t.pin(&k, 3);
        assert_eq!(t.lookup(&Key::Owned(b"alice".to_vec().into())), Some(3));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(t.lookup(&k), None);
    }

    #[test]
    fn table_is_bounded() {
        let t = MemoryTable::new(Duration::from_secs(60), 100);
        for i in 0..1000u32 {
            t.pin(&Key::Owned(i.to_be_bytes().into()), 1);
        }
        t.entries.run_pending_tasks();
        assert!(
            t.entries.entry_count() <= 100,
            "{}",
            t.entries.entry_count()
        );
    }

    #[test]
    fn cookie_ids_are_opaque_and_stable() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let id = cookie_id("web", a);
        assert_eq!(id, cookie_id("web", a));
        assert_ne!(id, cookie_id("other", a));
        assert!(id.iter().all(|c| c.is_ascii_hexdigit()));
    }
}
