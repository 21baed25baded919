//! The local side of a shared persistence table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use prometheus::IntCounter;

use super::link::{Link, Write};
use crate::balance::hooks::Key;
use crate::balance::identity::BackendId;
use crate::balance::persistence::{idle_cache, PersistenceTable};

/// One pin held locally.
struct Pin {
    backend: BackendId,
    /// The backend's name: what Redis and the other instances know it by.
    name: Arc<str>,
    /// Used here since the last expiry refresh (see [`SharedTable::take_touched`]).
    touched: AtomicBool,
}

/// A service's pins: a local table every lookup reads (time-to-idle expiry and a size bound,
/// as [`crate::balance::persistence::MemoryTable`]), whose new pins are written to Redis
/// through the process's [`Link`] and which takes the pins other instances make.
///
/// Keys are a keyed hash of the service, the persistence key kind and the key, under
/// `[proxy] secret_file`: every instance with the same secret computes the same one, and user
/// names or addresses never reach Redis in clear.
pub struct SharedTable {
    pub(super) service: Arc<str>,
    /// Derived from the secret, the service and the key kind (pins of another kind never
    /// match).
    hash_key: [u8; 32],
    /// Names this table in Redis (see [`super::wire`]): a digest of `hash_key`.
    pub(super) tag: String,
    pub(super) timeout: Duration,
    pub(super) max_entries: u64,
    /// When the link next refreshes the Redis expiry of the pins used here.
    pub(super) next_refresh: std::sync::Mutex<std::time::Instant>,
    entries: Cache<u64, Arc<Pin>>,
    link: Arc<Link>,
}

impl SharedTable {
    /// Builds the table and registers it with `link`, which then feeds it other instances'
    /// pins.
    pub fn new(
        link: &Arc<Link>,
        secret: &[u8],
        service: &str,
        kind: &str,
        timeout: Duration,
        max_entries: u64,
        evictions: IntCounter,
    ) -> Arc<Self> {
        let mut h = blake3::Hasher::new_derive_key("plugboard shared pin v1");
        for part in [secret, service.as_bytes(), kind.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let hash_key = *h.finalize().as_bytes();
        let tag = blake3::hash(&hash_key).to_hex()[..8].to_string();
        let table = Arc::new(SharedTable {
            service: service.into(),
            hash_key,
            tag,
            next_refresh: std::sync::Mutex::new(std::time::Instant::now() + refresh_every(timeout)),
            timeout,
            max_entries,
            entries: idle_cache(timeout, max_entries, EvictionPolicy::tiny_lfu(), evictions),
            link: link.clone(),
        });
        link.register(&table);
        table
    }

    /// How often the Redis expiry of used pins is refreshed.
    pub(super) fn refresh_every(&self) -> Duration {
        refresh_every(self.timeout)
    }

    fn hash(&self, key: &Key<'_>) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.hash_key);
        match key {
            Key::Ip(std::net::IpAddr::V4(ip)) => h.update(&[4]).update(&ip.octets()),
            Key::Ip(std::net::IpAddr::V6(ip)) => h.update(&[6]).update(&ip.octets()),
            Key::Borrowed(b) => h.update(&[1]).update(b),
            Key::Owned(b) => h.update(&[1]).update(b),
        };
        let mut out = [0u8; 8];
        h.finalize_xof().fill(&mut out);
        u64::from_le_bytes(out)
    }

    /// Another instance pinned `hash` to backend `name` (or refreshed that pin).
    pub(super) fn apply(&self, hash: u64, name: &str) {
        self.entries.insert(
            hash,
            Arc::new(Pin {
                backend: BackendId::new(&self.service, name),
                name: name.into(),
                touched: AtomicBool::new(false),
            }),
        );
    }

    /// A pin found in Redis at (re)connection: taken unless this instance has its own.
    pub(super) fn load(&self, hash: u64, name: &str) {
        if !self.entries.contains_key(&hash) {
            self.apply(hash, name);
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.entries.entry_count() >= self.max_entries
    }

    /// The pins used here since the last call, whose Redis expiry is to be refreshed (walks
    /// the table: run every `timeout / 4`, never on the request path).
    pub(super) fn take_touched(&self, out: &mut Vec<(u64, Arc<str>)>) {
        for (hash, pin) in self.entries.iter() {
            if pin.touched.swap(false, Ordering::Relaxed) {
                out.push((*hash, pin.name.clone()));
            }
        }
    }
}

/// A quarter of the idle timeout (at least a second): a pin used here stays in Redis, where
/// other instances find it, for at least three quarters of the timeout after its last use.
fn refresh_every(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_secs(1))
}

impl PersistenceTable for SharedTable {
    fn lookup(&self, key: &Key<'_>) -> Option<BackendId> {
        let pin = self.entries.get(&self.hash(key))?;
        // A load first: the flag is written once per refresh period, not per request.
        if !pin.touched.load(Ordering::Relaxed) {
            pin.touched.store(true, Ordering::Relaxed);
        }
        Some(pin.backend)
    }

    fn pin(&self, key: &Key<'_>, backend: BackendId, name: &str) {
        let hash = self.hash(key);
        let name: Arc<str> = name.into();
        self.entries.insert(
            hash,
            Arc::new(Pin {
                backend,
                name: name.clone(),
                touched: AtomicBool::new(false),
            }),
        );
        self.link.push(Write {
            service: self.service.clone(),
            table: self.tag.clone(),
            hash,
            backend: name,
            ttl: self.timeout,
        });
    }

    fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    fn pins_per_backend(&self) -> std::collections::HashMap<BackendId, u64> {
        let mut out = std::collections::HashMap::new();
        for (_, pin) in self.entries.iter() {
            *out.entry(pin.backend).or_insert(0) += 1;
        }
        out
    }
}
