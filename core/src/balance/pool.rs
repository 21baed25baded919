//! The backends of one service and their live state.
//!
//! Every field that changes at run time is an atomic, so that all worker threads read and
//! update it without a lock: the schedulers read `active`, `healthy` and the effective weight
//! on every pick, the proxies bump `active`, the health checker flips `healthy`. Derived
//! structures that are expensive to compute (the round-robin sequence) live in the scheduler
//! and are rebuilt off the hot path when [`Pool::generation`] moves.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::agent::{AdminState, AgentState, AgentUpdate};
use super::identity::{BackendId, CookieKey, COOKIE_ID_LEN};
use super::queue::WaitQueue;
use crate::config::BackendConfig;

/// Effective weights are kept in thousandths of the configured weight, so that slow start can
/// ramp smoothly without floating point on the hot path.
pub const WEIGHT_SCALE: u32 = 1000;

/// Slow start begins at this share of the full weight (Envoy's default minimum is 10 %).
const SLOW_START_MIN_PERMILLE: u64 = 100;

/// One backend: its identity, and its live state.
#[derive(Debug)]
pub struct Backend {
    /// Stable name within the service (see [`crate::balance::identity`]).
    pub name: String,
    pub id: BackendId,
    /// The value a cookie naming this backend carries.
    pub cookie_id: [u8; COOKIE_ID_LEN],
    pub address: SocketAddr,
    /// Shared by every version of the pool that has this backend (at the same address), so
    /// that replacing the pool (a backend added or removed, a reload) keeps its health,
    /// counters, state and in-flight count.
    live: Arc<Live>,
}

/// What changes about a backend while the proxy runs.
#[derive(Debug)]
struct Live {
    /// Which backend, for the queue's wake-ups.
    id: BackendId,
    /// The service's wait queue, woken when a slot of this backend frees.
    queue: Arc<WaitQueue>,
    /// `max_connections` as configured; 0 = none.
    configured_limit: AtomicU32,
    /// The limit that applies: the agent's `maxconn` when it reported one, else the
    /// configured one; 0 = none.
    limit: AtomicU32,
    /// Weight: configured, or set at run time (admin API).
    weight: AtomicU32,
    /// Operator's state ([`AdminState`]); the config's `enabled = false` starts it in `maint`.
    admin: AtomicU8,
    healthy: AtomicBool,
    /// Requests (http) or connections (tcp) in flight, across all worker threads.
    active: AtomicU32,
    /// `weight * WEIGHT_SCALE`, reduced while slow start ramps.
    effective_weight: AtomicU32,
    /// Last load 0-100 reported by a health check; 255 = never reported.
    load: AtomicU8,
    /// State reported by an agent on the backend (agent-load plugin, HAProxy agent-check,
    /// KEMP adaptive agent). Independent of the health check.
    agent: AgentState,
    /// Times a load-aware scheduler picked this backend: breaks ties between equally loaded
    /// backends in proportion to weight.
    picks: AtomicU64,
    /// Consecutive failed and successful checks (active and passive).
    fails: AtomicU32,
    oks: AtomicU32,
    /// Milliseconds since [`epoch`] when the backend last came up; u64::MAX = not ramping.
    up_since_ms: AtomicU64,
    /// Removed at run time: it leaves the pool when its last request or connection ends.
    removing: AtomicBool,
}

/// The process's clock origin for slow-start ramps (shared by every pool version).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Backend {
    fn new(service: &str, c: &BackendConfig, key: &CookieKey, queue: &Arc<WaitQueue>) -> Self {
        let id = BackendId::new(service, &c.name);
        let limit = c.max_connections.unwrap_or(0);
        Backend {
            name: c.name.clone(),
            id,
            cookie_id: key.cookie_id(service, &c.name),
            address: c.address,
            live: Arc::new(Live {
                id,
                queue: queue.clone(),
                configured_limit: AtomicU32::new(limit),
                limit: AtomicU32::new(limit),
                weight: AtomicU32::new(c.weight),
                admin: AtomicU8::new(if c.enabled {
                    AdminState::Ready
                } else {
                    AdminState::Maint
                } as u8),
                healthy: AtomicBool::new(true),
                active: AtomicU32::new(0),
                effective_weight: AtomicU32::new(c.weight * WEIGHT_SCALE),
                load: AtomicU8::new(u8::MAX),
                agent: AgentState::default(),
                picks: AtomicU64::new(0),
                fails: AtomicU32::new(0),
                oks: AtomicU32::new(0),
                up_since_ms: AtomicU64::new(u64::MAX),
                removing: AtomicBool::new(false),
            }),
        }
    }

    /// The same backend in a new pool: its live state carried over; if the configuration
    /// changed it since `before` (its `enabled` or `weight`), the configuration's values.
    fn carried(&self, c: &BackendConfig, before: &BackendConfig) -> Self {
        let b = Backend {
            name: self.name.clone(),
            id: self.id,
            cookie_id: self.cookie_id,
            address: self.address,
            live: self.live.clone(),
        };
        // The file changed this backend: its values apply, the operator's state included
        // (as the state file's entries yield to the file at start).
        if c.enabled != before.enabled || c.weight != before.weight {
            let state = if c.enabled {
                AdminState::Ready
            } else {
                AdminState::Maint
            };
            b.live.admin.store(state as u8, Relaxed);
        }
        b.live
            .configured_limit
            .store(c.max_connections.unwrap_or(0), Relaxed);
        b.live.refresh_limit();
        if c.weight != before.weight {
            b.live.weight.store(c.weight, Relaxed);
            if b.live.up_since_ms.load(Relaxed) == u64::MAX {
                b.live
                    .effective_weight
                    .store(c.weight * WEIGHT_SCALE, Relaxed);
            }
        }
        b
    }

    /// Not in maintenance (by the operator).
    pub fn enabled(&self) -> bool {
        self.admin() != AdminState::Maint
    }

    /// The operator's state.
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.live.admin.load(Relaxed))
    }

    /// The state that applies: the stricter of the operator's and the agent's.
    pub fn state(&self) -> AdminState {
        self.admin().max(self.live.agent.admin())
    }

    pub fn weight(&self) -> u32 {
        self.live.weight.load(Relaxed)
    }

    /// Removed at run time, waiting for its last request or connection.
    pub fn removing(&self) -> bool {
        self.live.removing.load(Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.live.healthy.load(Relaxed)
    }

    /// Can take new clients: [`Backend::open`] and under its connection limit.
    #[inline]
    pub fn available(&self) -> bool {
        self.open() && self.has_room()
    }

    /// Takes new clients, its connection limit aside: ready (operator and agent), healthy
    /// and a non-zero weight. An open backend at its limit is one to wait for.
    #[inline]
    pub fn open(&self) -> bool {
        self.live.open()
    }

    /// Can take a client that persistence pins to it: as [`Backend::available`], except
    /// that draining (by the operator or the agent) and a zero weight do not refuse it.
    #[inline]
    pub fn available_pinned(&self) -> bool {
        self.open_pinned() && self.has_room()
    }

    /// [`Backend::available_pinned`], its connection limit aside.
    #[inline]
    pub fn open_pinned(&self) -> bool {
        self.live.admin.load(Relaxed) != AdminState::Maint as u8
            && self.healthy()
            && self.live.agent.admits_pinned()
    }

    /// Under its connection limit (or without one).
    #[inline]
    pub fn has_room(&self) -> bool {
        let limit = self.live.limit.load(Relaxed);
        limit == 0 || self.active() < limit
    }

    /// The connection limit that applies (the agent's, else the configured one).
    pub fn limit(&self) -> Option<u32> {
        match self.live.limit.load(Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// What the backend's agent last reported.
    pub fn agent(&self) -> &AgentState {
        &self.live.agent
    }

    pub fn active(&self) -> u32 {
        self.live.active.load(Relaxed)
    }

    /// Weight in thousandths, after slow start.
    #[inline]
    pub fn effective_weight(&self) -> u32 {
        let w = self.live.effective_weight.load(Relaxed);
        match self.live.agent.weight_percent() {
            100 => w,
            p => (w as u64 * p as u64 / 100) as u32,
        }
    }

    #[inline]
    pub fn picks(&self) -> u64 {
        self.live.picks.load(Relaxed)
    }

    #[inline]
    pub fn record_pick(&self) {
        self.live.picks.fetch_add(1, Relaxed);
    }

    /// Last reported load 0-100, if a check ever reported one.
    pub fn load(&self) -> Option<u8> {
        match self.live.load.load(Relaxed) {
            u8::MAX => None,
            l => Some(l),
        }
    }
}

/// Counts one request or connection in flight on a backend for as long as it lives (across
/// pool versions: it holds the backend's live state, not the pool).
#[derive(Debug)]
pub struct ActiveGuard {
    live: Arc<Live>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let live = &self.live;
        live.active.fetch_sub(1, SeqCst);
        if live.queue.waiting() > 0 {
            live.queue.released(live.id, live.open());
        }
    }
}

impl Live {
    #[inline]
    fn open(&self) -> bool {
        self.admin.load(Relaxed) == AdminState::Ready as u8
            && self.healthy.load(Relaxed)
            && self.weight.load(Relaxed) > 0
            && self.agent.admits()
    }

    /// Recomputes the limit that applies; true if it changed.
    fn refresh_limit(&self) -> bool {
        let limit = match self.agent.maxconn() {
            0 => self.configured_limit.load(Relaxed),
            n => n,
        };
        self.limit.swap(limit, Relaxed) != limit
    }
}

/// What a health observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    WentDown,
    CameUp,
}

/// The backends of one service.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Backend>,
    /// Backend ids and indexes, sorted by id: id -> index in O(log n).
    by_id: Vec<(BackendId, u32)>,
    /// Unique per pool object: caches of per-backend data (a plugin's backend table) key on it.
    uid: u64,
    slow_start: Option<Duration>,
    /// Bumped whenever availability or an effective weight changes.
    generation: AtomicU64,
    weights_version: AtomicU64,
    /// The service's waiters: shared by every version of the pool, as the backends' live
    /// state is.
    queue: Arc<WaitQueue>,
}

static POOL_UIDS: AtomicU64 = AtomicU64::new(1);

impl Pool {
    pub fn new(
        service: &str,
        backends: &[BackendConfig],
        slow_start: Option<Duration>,
        key: &CookieKey,
    ) -> Self {
        let queue = Arc::new(WaitQueue::default());
        let backends: Vec<Backend> = backends
            .iter()
            .map(|b| Backend::new(service, b, key, &queue))
            .collect();
        Pool::from_backends(backends, slow_start, queue)
    }

    fn from_backends(
        backends: Vec<Backend>,
        slow_start: Option<Duration>,
        queue: Arc<WaitQueue>,
    ) -> Pool {
        let mut by_id: Vec<(BackendId, u32)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i as u32))
            .collect();
        by_id.sort_unstable();
        Pool {
            backends,
            by_id,
            uid: POOL_UIDS.fetch_add(1, Relaxed),
            slow_start,
            generation: AtomicU64::new(0),
            weights_version: AtomicU64::new(0),
            queue,
        }
    }

    /// The next version of this pool, for `backends` (which the configuration described as
    /// `before` in this version): a backend that stays (same name and address) keeps its
    /// live state, with what the configuration changed applied; the others start afresh.
    pub fn next(
        &self,
        service: &str,
        backends: &[BackendConfig],
        before: &[BackendConfig],
        slow_start: Option<Duration>,
        key: &CookieKey,
    ) -> Pool {
        let list: Vec<Backend> = backends
            .iter()
            .map(|c| {
                let id = BackendId::new(service, &c.name);
                match self.index_of(id).map(|i| &self.backends[i]) {
                    Some(old) if old.address == c.address => {
                        let was = before.iter().find(|b| b.name == c.name).unwrap_or(c);
                        let mut b = old.carried(c, was);
                        // A reload may bring a new secret.
                        b.cookie_id = key.cookie_id(service, &c.name);
                        b
                    }
                    _ => Backend::new(service, c, key, &self.queue),
                }
            })
            .collect();
        let next = Pool::from_backends(list, slow_start, self.queue.clone());
        // A backend added or a limit raised may have room for a waiter.
        self.queue.wake_all();
        next
    }

    /// The service's wait queue.
    pub fn queue(&self) -> &WaitQueue {
        &self.queue
    }

    #[inline]
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    #[inline]
    pub fn get(&self, i: usize) -> &Backend {
        &self.backends[i]
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// The backend with this identity, if it is in the pool.
    #[inline]
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        let k = self.by_id.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        Some(self.by_id[k].1 as usize)
    }

    /// The backend with this name, if any.
    pub fn find_name(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }

    /// The backend whose cookie id is `value`, if any.
    #[inline]
    pub fn find_cookie_id(&self, value: &[u8]) -> Option<usize> {
        self.backends.iter().position(|b| b.cookie_id == value)
    }

    /// Unique per pool object.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Availability changed: schedulers rebuild what they precompute, waiters look again.
    fn bump(&self) {
        self.generation.fetch_add(1, Relaxed);
        self.queue.wake_all();
    }

    /// Marks a request or connection in flight on backend `i` until the guard drops,
    /// whatever its limit.
    #[inline]
    pub fn acquire(&self, i: usize) -> ActiveGuard {
        let live = &self.backends[i].live;
        live.active.fetch_add(1, SeqCst);
        ActiveGuard { live: live.clone() }
    }

    /// [`Pool::acquire`] if backend `i` is under its limit: the check and the count are one
    /// compare-and-swap, so concurrent requests never take it past the limit.
    #[inline]
    pub fn try_acquire(&self, i: usize) -> Option<ActiveGuard> {
        let live = &self.backends[i].live;
        let limit = live.limit.load(Relaxed);
        if limit == 0 {
            return Some(self.acquire(i));
        }
        live.active
            .fetch_update(SeqCst, SeqCst, |n| (n < limit).then_some(n + 1))
            .ok()?;
        Some(ActiveGuard { live: live.clone() })
    }

    /// Sets the operator's state of backend `i`.
    pub fn set_admin(&self, i: usize, state: AdminState) {
        let before = AdminState::from_u8(self.backends[i].live.admin.swap(state as u8, Relaxed));
        if before != state {
            if state == AdminState::Ready {
                self.catch_up(i);
            }
            self.bump();
        }
    }

    /// Takes backend `i` out of service for good: nothing new reaches it (as `maint`), and
    /// its owner drops it from the pool once its last request or connection ends.
    pub fn set_removing(&self, i: usize) {
        self.backends[i].live.removing.store(true, Relaxed);
        self.set_admin(i, AdminState::Maint);
    }

    /// `set_admin` to ready or maint.
    pub fn set_enabled(&self, i: usize, enabled: bool) {
        self.set_admin(
            i,
            if enabled {
                AdminState::Ready
            } else {
                AdminState::Maint
            },
        );
    }

    /// Sets backend `i`'s weight at run time (a slow-start ramp in progress continues
    /// towards the new weight).
    pub fn set_weight(&self, i: usize, weight: u32) {
        let b = &self.backends[i];
        if b.live.weight.swap(weight, Relaxed) == weight {
            return;
        }
        if b.live.up_since_ms.load(Relaxed) == u64::MAX {
            b.live
                .effective_weight
                .store(weight * WEIGHT_SCALE, Relaxed);
        }
        self.weights_version.fetch_add(1, Relaxed);
        self.bump();
    }

    /// Moves whenever a backend's weight is set: schedulers whose structure follows the
    /// weights themselves (the consistent-hash ring) rebuild then, and only then.
    pub fn weights_version(&self) -> u64 {
        self.weights_version.load(Relaxed)
    }

    /// Brings a returning backend's pick count level with the others (per unit of weight),
    /// so that the tie-break does not send it every new request until it has caught up.
    fn catch_up(&self, i: usize) {
        let me = &self.backends[i];
        let level = self
            .backends
            .iter()
            .enumerate()
            .filter(|(j, b)| *j != i && b.available())
            .map(|(_, b)| b.picks() * me.weight() as u64 / b.weight().max(1) as u64)
            .max()
            .unwrap_or(0);
        me.live.picks.store(level, Relaxed);
    }

    pub fn set_load(&self, i: usize, load: Option<u8>) {
        self.backends[i]
            .live
            .load
            .store(load.map(|l| l.min(100)).unwrap_or(u8::MAX), Relaxed);
    }

    /// Applies one agent-reported property; false for an out-of-range value.
    pub fn set_agent(&self, i: usize, update: AgentUpdate) -> bool {
        let live = &self.backends[i].live;
        let a = &live.agent;
        let before = (a.admits(), a.admits_pinned());
        let Some(weight_changed) = a.apply(update) else {
            return false;
        };
        let limit_changed = live.refresh_limit();
        if weight_changed || limit_changed || (a.admits(), a.admits_pinned()) != before {
            self.bump();
        }
        true
    }

    /// Records one check result, active or passive, and applies the rise/fall rule.
    pub fn observe(&self, i: usize, ok: bool, rise: u32, fall: u32) -> Transition {
        let b = &self.backends[i];
        if ok {
            b.live.fails.store(0, Relaxed);
            let oks = b.live.oks.fetch_add(1, Relaxed).saturating_add(1);
            if !b.healthy() && oks >= rise && !b.live.healthy.swap(true, Relaxed) {
                self.catch_up(i);
                if self.slow_start.is_some() {
                    b.live.up_since_ms.store(self.now_ms(), Relaxed);
                    b.live
                        .effective_weight
                        .store(self.ramp_weight(b, Duration::ZERO), Relaxed);
                }
                self.bump();
                return Transition::CameUp;
            }
        } else {
            b.live.oks.store(0, Relaxed);
            let fails = b.live.fails.fetch_add(1, Relaxed).saturating_add(1);
            if b.healthy() && fails >= fall && b.live.healthy.swap(false, Relaxed) {
                b.live.up_since_ms.store(u64::MAX, Relaxed);
                b.live
                    .effective_weight
                    .store(b.weight() * WEIGHT_SCALE, Relaxed);
                self.bump();
                return Transition::WentDown;
            }
        }
        Transition::None
    }

    fn now_ms(&self) -> u64 {
        epoch().elapsed().as_millis() as u64
    }

    fn ramp_weight(&self, b: &Backend, elapsed: Duration) -> u32 {
        let full = (b.weight() * WEIGHT_SCALE) as u64;
        let Some(window) = self.slow_start else {
            return full as u32;
        };
        let permille = (elapsed.as_millis() as u64 * 1000 / window.as_millis().max(1) as u64)
            .clamp(SLOW_START_MIN_PERMILLE, 1000);
        (full * permille / 1000).max(1) as u32
    }

    /// Advances slow-start ramps; returns true while any backend is still ramping.
    /// Called periodically off the hot path.
    pub fn tick_slow_start(&self) -> bool {
        if self.slow_start.is_none() {
            return false;
        }
        let now = self.now_ms();
        let mut ramping = false;
        let mut changed = false;
        for b in &self.backends {
            let since = b.live.up_since_ms.load(Relaxed);
            if since == u64::MAX {
                continue;
            }
            let w = self.ramp_weight(b, Duration::from_millis(now.saturating_sub(since)));
            if w >= b.weight() * WEIGHT_SCALE {
                b.live.up_since_ms.store(u64::MAX, Relaxed);
            } else {
                ramping = true;
            }
            if b.live.effective_weight.swap(w, Relaxed) != w {
                changed = true;
            }
        }
        if changed {
            self.bump();
        }
        ramping
    }
}

/// Backends 127.0.0.1:9000.. with these weights, named by address.
#[cfg(test)]
pub fn test_backends(weights: &[u32]) -> Vec<BackendConfig> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let address = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
            BackendConfig {
                hostname: None,
                name: address.to_string(),
                address,
                weight: w,
                enabled: true,
                max_connections: None,
            }
        })
        .collect()
}

#[cfg(test)]
impl Pool {
    /// A pool of service "t" over [`test_backends`].
    pub fn for_tests(weights: &[u32], slow_start: Option<Duration>) -> Pool {
        Pool::new(
            "t",
            &test_backends(weights),
            slow_start,
            &CookieKey::new(b"test"),
        )
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
