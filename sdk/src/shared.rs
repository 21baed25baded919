//! Shared data: counters and a small key-value store that every instance of the plugin in
//! the same service sees.
//!
//! Plugboard runs one instance of a plugin per service and **worker thread**, so a plugin's
//! own fields and statics are per thread: a round robin kept in a field rotates once per
//! thread, not globally. What is kept here is held by the host and shared by all those
//! instances (as proxy-wasm's shared data):
//!
//! - [`Counter`]s `0..64`: atomic, wrapping `i64`s; one `fetch_add` on the host, no lock.
//! - a key-value store: keys up to [`MAX_KEY`] bytes, values up to [`MAX_VALUE`] bytes, at
//!   most [`MAX_ENTRIES`] entries; [`get`], [`set`], [`remove`], [`compare_and_set`].
//!
//! The data belongs to the plugin *in one service*: two services using the same plugin have
//! separate data. It survives a hot reload of the plugin file and a configuration reload
//! that keeps the plugin in the service; it starts empty (counters at 0) at start-up.
//!
//! ```
//! use plugboard_sdk::shared::{self, Counter};
//! # plugboard_sdk::testing::Mock::default().run(|_, _| {
//! let requests = Counter(1);
//! assert_eq!(requests.add(1), 0); // the previous value
//! assert_eq!(requests.get(), 1);
//! shared::set(b"mode", b"drain").unwrap();
//! assert_eq!(shared::get(b"mode").as_deref(), Some(&b"drain"[..]));
//! # });
//! ```

use super::{read, sys};

/// Number of counters: [`Counter`] ids are `0..COUNTERS`.
pub const COUNTERS: u32 = 64;
/// Longest key, bytes.
pub const MAX_KEY: usize = 256;
/// Longest value, bytes.
pub const MAX_VALUE: usize = 4096;
/// Most entries the key-value store holds.
pub const MAX_ENTRIES: usize = 1024;

/// Why the host refused a change to the key-value store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The key is longer than [`MAX_KEY`] or the value than [`MAX_VALUE`], or the store is
    /// full ([`MAX_ENTRIES`]) and the key is new.
    Limit,
    /// The host rejected the call (a bad buffer; a bug in the SDK or an old host).
    Host(i32),
}

fn status(code: i32) -> Result<i32, Refused> {
    match code {
        -4 => Err(Refused::Limit),
        c if c < 0 => Err(Refused::Host(c)),
        c => Ok(c),
    }
}

/// One of the shared atomic counters, by id (`0..64`). Every instance of the plugin in the
/// service, on every worker thread, sees the same value.
///
/// ```
/// use plugboard_sdk::shared::Counter;
/// # plugboard_sdk::testing::Mock::default().run(|_, _| {
/// let turns = Counter(0);
/// assert_eq!(turns.pick(["a", "b", "c"].into_iter()), Some("a"));
/// assert_eq!(turns.pick(["a", "b", "c"].into_iter()), Some("b"));
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(pub u32);

impl Counter {
    /// Adds `delta` (wrapping) and returns the value before. Panics if the id is not below
    /// [`COUNTERS`] (the host refuses it).
    pub fn add(&self, delta: i64) -> i64 {
        let v = sys::shared_counter_add(self.0 as i32, delta);
        assert!(
            v != i64::MIN || self.0 < COUNTERS,
            "shared counter {} is not 0-{}",
            self.0,
            COUNTERS - 1
        );
        v
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.add(0)
    }

    /// Takes the next turn: adds 1 and returns the previous value as a turn number.
    pub fn next(&self) -> u64 {
        self.add(1) as u64
    }

    /// A global round robin: the candidate whose turn it is (`None` when there are none).
    /// Counts the candidates, takes [`Counter::next`] and returns that one modulo the count,
    /// so concurrent callers on all worker threads each get the next candidate in turn.
    pub fn pick<I: Iterator + Clone>(&self, candidates: I) -> Option<I::Item> {
        let n = candidates.clone().count();
        if n == 0 {
            return None;
        }
        candidates
            .into_iter()
            .nth((self.next() % n as u64) as usize)
    }
}

/// The value of `key`, if set.
pub fn get(key: &[u8]) -> Option<Vec<u8>> {
    read(|p, c| sys::shared_get(key.as_ptr(), key.len() as i32, p, c))
}

/// Sets `key` to `value`.
pub fn set(key: &[u8], value: &[u8]) -> Result<(), Refused> {
    status(sys::shared_set(
        key.as_ptr(),
        key.len() as i32,
        value.as_ptr(),
        value.len() as i32,
    ))
    .map(|_| ())
}

/// Removes `key` (nothing happens when it is absent).
pub fn remove(key: &[u8]) -> Result<(), Refused> {
    status(sys::shared_set(
        key.as_ptr(),
        key.len() as i32,
        key.as_ptr(),
        -1,
    ))
    .map(|_| ())
}

/// Sets `key` to `value` (`None`: removes it) only if its current value is `expected`
/// (`None`: absent). Returns whether it changed: with several worker threads racing, exactly
/// one of them wins each change.
///
/// ```
/// use plugboard_sdk::shared;
/// # plugboard_sdk::testing::Mock::default().run(|_, _| {
/// assert_eq!(shared::compare_and_set(b"leader", None, Some(b"me")), Ok(true));
/// assert_eq!(shared::compare_and_set(b"leader", None, Some(b"you")), Ok(false));
/// # });
/// ```
pub fn compare_and_set(
    key: &[u8],
    expected: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<bool, Refused> {
    let (ep, el) = expected.map_or((key.as_ptr(), -1), |e| (e.as_ptr(), e.len() as i32));
    let (vp, vl) = value.map_or((key.as_ptr(), -1), |v| (v.as_ptr(), v.len() as i32));
    status(sys::shared_cas(
        key.as_ptr(),
        key.len() as i32,
        ep,
        el,
        vp,
        vl,
    ))
    .map(|c| c == 1)
}
