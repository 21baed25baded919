//! Shared data: what a plugin's per-thread instances of one service have in common.
//!
//! A plugin runs one instance per (service, worker thread), so its own variables are per
//! thread: a round robin kept in a guest variable is one rotation per thread. [`SharedData`]
//! is the host's store that every instance of the same plugin in the same service sees (as
//! proxy-wasm's shared data): [`COUNTERS`] atomic counters and a small bounded key-value
//! store. Both runtimes expose it alike (WASM: the `shared_*` host functions of `sdk/ABI.md`;
//! Lua: the `shared` table).
//!
//! Scope and lifetime: one store per (plugin name, service name), found again by [`find`]
//! for as long as a binding holds it. A plugin file's hot reload keeps its bindings, and a
//! configuration reload binds the new services while the old ones still hold the store, so
//! both keep the data; it is gone when no configuration uses the plugin in that service any
//! more, and at restart.
//!
//! Cost: a counter is one atomic `fetch_add`, no lock. The key-value store is 16 shards of a
//! `Mutex<HashMap>` chosen by the key's hash: an operation locks one shard for a bounded copy
//! (at most [`MAX_KEY`] + [`MAX_VALUE`] bytes), so worker threads contend only on the same
//! shard. A store keeps at most [`MAX_ENTRIES`] entries.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// Counters per store, numbered `0..COUNTERS`.
pub const COUNTERS: usize = 64;
/// Longest key, bytes.
pub const MAX_KEY: usize = 256;
/// Longest value, bytes.
pub const MAX_VALUE: usize = 4096;
/// Most entries a store holds.
pub const MAX_ENTRIES: usize = 1024;

const SHARDS: usize = 16;

type Shard = HashMap<Box<[u8]>, Box<[u8]>>;

/// Why a key-value change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The key is longer than [`MAX_KEY`] or the value than [`MAX_VALUE`].
    TooLarge,
    /// A new key, and the store already holds [`MAX_ENTRIES`].
    Full,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::TooLarge => "key or value too large",
            Refused::Full => "shared store full",
        }
    }
}

/// The shared counters and key-value store of one plugin in one service.
pub struct SharedData {
    counters: [AtomicI64; COUNTERS],
    shards: [Mutex<Shard>; SHARDS],
    entries: AtomicUsize,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            counters: std::array::from_fn(|_| AtomicI64::new(0)),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            entries: AtomicUsize::new(0),
        }
    }
}

/// Stores by (plugin, service), weak: the bindings own them.
type Stores = Mutex<HashMap<(String, String), Weak<SharedData>>>;

/// The store of `plugin` in `service`: the one a live binding already holds, else a new one.
/// Called when a service is bound (start-up, reload), never on the request path.
pub fn find(plugin: &str, service: &str) -> Arc<SharedData> {
    static STORES: OnceLock<Stores> = OnceLock::new();
    let mut stores = lock(STORES.get_or_init(Default::default));
    stores.retain(|_, w| w.strong_count() > 0);
    let key = (plugin.to_string(), service.to_string());
    if let Some(s) = stores.get(&key).and_then(Weak::upgrade) {
        return s;
    }
    let s = Arc::new(SharedData::default());
    stores.insert(key, Arc::downgrade(&s));
    s
}

/// A poisoned lock only means a panic elsewhere held it; the map itself is always whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedData {
    /// Adds `delta` to counter `n` (wrapping) and returns its previous value; `None` when `n`
    /// is not below [`COUNTERS`].
    #[inline]
    pub fn counter_add(&self, n: i64, delta: i64) -> Option<i64> {
        let c = self.counters.get(usize::try_from(n).ok()?)?;
        Some(c.fetch_add(delta, Ordering::Relaxed))
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        lock(&self.shards[h as usize % SHARDS])
    }

    /// Runs `f` on the value of `key` (`None`: absent), under the shard's lock.
    pub fn get<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        if key.len() > MAX_KEY {
            return f(None);
        }
        let shard = self.shard(key);
        f(shard.get(key).map(|v| &**v))
    }

    /// Sets `key` to `value`, or removes it (`None`).
    pub fn set(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), Refused> {
        self.compare_and_set(key, None, value).map(|_| ())
    }

    /// Sets `key` to `value` (or removes it) if its current value is `expected` (`Some(None)`:
    /// if it is absent); `expected = None` sets unconditionally. Returns whether it changed.
    pub fn compare_and_set(
        &self,
        key: &[u8],
        expected: Option<Option<&[u8]>>,
        value: Option<&[u8]>,
    ) -> Result<bool, Refused> {
        if key.len() > MAX_KEY || value.is_some_and(|v| v.len() > MAX_VALUE) {
            return Err(Refused::TooLarge);
        }
        let mut shard = self.shard(key);
        if let Some(expected) = expected {
            if shard.get(key).map(|v| &**v) != expected {
                return Ok(false);
            }
        }
        match value {
            None => {
                if shard.remove(key).is_some() {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Some(v) => match shard.get_mut(key) {
                Some(old) if old.len() == v.len() => old.copy_from_slice(v),
                Some(old) => *old = v.into(),
                None => {
                    if self.entries.fetch_add(1, Ordering::Relaxed) >= MAX_ENTRIES {
                        self.entries.fetch_sub(1, Ordering::Relaxed);
                        return Err(Refused::Full);
                    }
                    shard.insert(key.into(), v.into());
                }
            },
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_bounded_and_wrap() {
        let s = SharedData::default();
        assert_eq!(s.counter_add(0, 1), Some(0));
        assert_eq!(s.counter_add(0, 1), Some(1));
        assert_eq!(s.counter_add(COUNTERS as i64, 1), None);
        assert_eq!(s.counter_add(-1, 1), None);
        s.counter_add(5, i64::MAX);
        assert_eq!(s.counter_add(5, 1), Some(i64::MAX));
        assert_eq!(s.counter_add(5, 0), Some(i64::MIN));
    }

    #[test]
    fn key_values_obey_their_limits() {
        let s = SharedData::default();
        assert_eq!(s.set(b"k", Some(b"v")), Ok(()));
        assert_eq!(s.get(b"k", |v| v.map(<[u8]>::to_vec)), Some(b"v".to_vec()));
        assert_eq!(
            s.compare_and_set(b"k", Some(Some(b"x")), Some(b"y")),
            Ok(false)
        );
        assert_eq!(
            s.compare_and_set(b"k", Some(Some(b"v")), Some(b"yy")),
            Ok(true)
        );
        assert_eq!(s.compare_and_set(b"n", Some(None), Some(b"1")), Ok(true));
        assert_eq!(s.compare_and_set(b"n", Some(None), Some(b"2")), Ok(false));
        let long = vec![0u8; MAX_KEY + 1];
        assert_eq!(s.set(&long, Some(b"v")), Err(Refused::TooLarge));
        assert_eq!(
            s.set(b"k", Some(&vec![0u8; MAX_VALUE + 1])),
            Err(Refused::TooLarge)
        );
        for i in 2..MAX_ENTRIES {
            assert_eq!(s.set(format!("e{i}").as_bytes(), Some(b"")), Ok(()));
        }
        assert_eq!(s.set(b"one too many", Some(b"")), Err(Refused::Full));
        assert_eq!(s.set(b"k", Some(b"replacing is fine")), Ok(()));
        assert_eq!(s.set(b"k", None), Ok(()));
        assert_eq!(s.set(b"one too many", Some(b"")), Ok(()));
    }

    #[test]
    fn one_store_per_plugin_and_service_while_held() {
        let a = find("p", "s");
        assert!(Arc::ptr_eq(&a, &find("p", "s")));
        assert!(!Arc::ptr_eq(&a, &find("p", "other")));
        a.counter_add(0, 7);
        drop(a);
        assert_eq!(find("p", "s").counter_add(0, 0), Some(0));
    }
}
