//! The table that pins persistence keys to backends.

use std::hash::BuildHasher;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use prometheus::IntCounter;

use crate::balance::hooks::Key;
use crate::balance::identity::BackendId;

/// Key -> backend identity, with an idle timeout and a size bound.
pub trait PersistenceTable: Send + Sync {
    /// The backend pinned to `key`, refreshing its idle timer.
    fn lookup(&self, key: &Key<'_>) -> Option<BackendId>;
    /// Pins `key` to `backend` (named `name` in its service), replacing any earlier pin.
    fn pin(&self, key: &Key<'_>, backend: BackendId, name: &str);
    /// Entries currently held (runs pending maintenance first: not for the request path).
    fn len(&self) -> u64;
    /// How many entries point at each backend (walks the table: for the admin API, not the
    /// request path).
    fn pins_per_backend(&self) -> std::collections::HashMap<BackendId, u64>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// In-process table shared by all worker threads: a concurrent cache with time-to-idle
/// expiry, bounded to `max_entries`.
///
/// Its eviction policy is TinyLFU (moka's): when the table is full, a new key is admitted only
/// if it has been seen more often than the entry it would evict. Keys are chosen by clients
/// (an `mstshash` user name, a header), so a flood of one-off keys must not push out the pins
/// of users who keep coming back, which a plain LRU would do.
pub struct MemoryTable {
    entries: Cache<u64, u64>,
    hasher: std::hash::RandomState,
}

impl MemoryTable {
    /// `evictions` counts pins dropped by the size bound or the idle timeout.
    pub fn new(timeout: Duration, max_entries: u64, evictions: IntCounter) -> Self {
        Self::with_policy(timeout, max_entries, EvictionPolicy::tiny_lfu(), evictions)
    }

    fn with_policy(
        timeout: Duration,
        max_entries: u64,
        policy: EvictionPolicy,
        evictions: IntCounter,
    ) -> Self {
        MemoryTable {
            entries: idle_cache(timeout, max_entries, policy, evictions),
            // Random per process: a client cannot craft a key that collides with another's.
            hasher: std::hash::RandomState::new(),
        }
    }
}

/// A table of pins (by key hash) with time-to-idle expiry, bounded to `max_entries` under
/// `policy`; `evictions` counts pins dropped by the bound or the timeout. Shared by the
/// in-process table and the local side of a shared one.
pub fn idle_cache<V: Clone + Send + Sync + 'static>(
    timeout: Duration,
    max_entries: u64,
    policy: EvictionPolicy,
    evictions: IntCounter,
) -> Cache<u64, V> {
    Cache::builder()
        .max_capacity(max_entries)
        .time_to_idle(timeout)
        .eviction_policy(policy)
        .eviction_listener(move |_, _, cause| {
            if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                evictions.inc();
            }
        })
        .build()
}

impl PersistenceTable for MemoryTable {
    fn lookup(&self, key: &Key<'_>) -> Option<BackendId> {
        self.entries.get(&self.hasher.hash_one(key)).map(BackendId)
    }

    fn pin(&self, key: &Key<'_>, backend: BackendId, _name: &str) {
        self.entries.insert(self.hasher.hash_one(key), backend.0);
    }

    fn len(&self) -> u64 {
        // The count lags until the cache's pending maintenance runs; this is for metrics
        // and the admin API, never the request path.
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    fn pins_per_backend(&self) -> std::collections::HashMap<BackendId, u64> {
        let mut out = std::collections::HashMap::new();
        for (_, id) in self.entries.iter() {
            *out.entry(BackendId(id)).or_insert(0) += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("evictions", "test").unwrap()
    }

    #[test]
    fn table_pins_and_expires() {
        let t = MemoryTable::new(Duration::from_millis(100), 10, counter());
        let k = Key::Borrowed(b"alice");
        assert_eq!(t.lookup(&k), None);
        t.pin(&k, BackendId(3), "");
        assert_eq!(
            t.lookup(&Key::Owned(b"alice".to_vec().into())),
            Some(BackendId(3))
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(t.lookup(&k), None);
    }

    #[test]
    fn table_is_bounded() {
        let evictions = counter();
        let t = MemoryTable::new(Duration::from_secs(60), 100, evictions.clone());
        for i in 0..1000u32 {
            t.pin(&Key::Owned(i.to_be_bytes().into()), BackendId(1), "");
        }
        t.entries.run_pending_tasks();
        assert!(t.len() <= 100, "{}", t.len());
        assert!(
            evictions.get() >= 900,
            "evictions counted: {}",
            evictions.get()
        );
    }

    /// 500 returning users, each back once per 2,000 new keys, while an attacker sends
    /// 100,000 one-off keys into a table of 1,000: how many returning users still find their
    /// pin at the end.
    fn hot_pins_after_flood(t: &MemoryTable) -> usize {
        let hot = |i: u32| Key::Owned(format!("user{i}").into_bytes().into());
        for i in 0..500 {
            t.pin(&hot(i), BackendId(i as u64), "");
        }
        for n in 0..100_000u32 {
            let k = Key::Owned(format!("flood{n}").into_bytes().into());
            if t.lookup(&k).is_none() {
                t.pin(&k, BackendId(9), "");
            }
            if n % 4 == 0 {
                // Users come back, each about once per 2,000 flood keys.
                let i = (n / 4) % 500;
                if t.lookup(&hot(i)).is_none() {
                    t.pin(&hot(i), BackendId(i as u64), "");
                }
            }
            if n % 1000 == 0 {
                t.entries.run_pending_tasks();
            }
        }
        t.entries.run_pending_tasks();
        (0..500)
            .filter(|&i| t.lookup(&hot(i)) == Some(BackendId(i as u64)))
            .count()
    }

    #[test]
    fn a_flood_of_one_off_keys_keeps_the_hot_pins() {
        let tiny_lfu =
            hot_pins_after_flood(&MemoryTable::new(Duration::from_secs(60), 1000, counter()));
        let lru = hot_pins_after_flood(&MemoryTable::with_policy(
            Duration::from_secs(60),
            1000,
            EvictionPolicy::lru(),
            counter(),
        ));
        assert!(
            tiny_lfu >= 450,
            "TinyLFU kept only {tiny_lfu} of 500 hot pins"
        );
        assert!(lru < 250, "the flood should defeat plain LRU (kept {lru})");
    }
}
