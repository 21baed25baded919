//! A circuit breaker per plugin binding: after [`TRIP_AFTER`] faults in a row, the plugin is
//! not called for a cool-down (the service's `on_plugin_error` policy answers instead), then
//! tried again; each new trip doubles the cool-down, up to [`MAX_COOLDOWN_MS`]. A plugin that
//! faults on every request thus costs a fallback, not a fault and a fresh instance per request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::clock;

/// Consecutive faults that open the circuit.
pub const TRIP_AFTER: u32 = 5;
/// First cool-down.
pub const FIRST_COOLDOWN_MS: u64 = 1_000;
/// Longest cool-down.
pub const MAX_COOLDOWN_MS: u64 = 30_000;

#[derive(Default)]
pub struct Breaker {
    consecutive: AtomicU32,
    /// Plugin-clock ms until which calls are skipped; 0 = closed (never tripped since the last
    /// success).
    open_until: AtomicU64,
    trips: AtomicU32,
}

impl Breaker {
    /// True when the plugin may be called now.
    #[inline]
    pub fn allows(&self) -> bool {
        let until = self.open_until.load(Relaxed);
        until == 0 || clock::now_ms() >= until
    }

    /// A call succeeded: close the circuit.
    #[inline]
    pub fn success(&self) {
        if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
        if self.open_until.load(Relaxed) != 0 {
            self.open_until.store(0, Relaxed);
            self.trips.store(0, Relaxed);
        }
    }

    /// A call faulted; returns the cool-down when this fault opened the circuit.
    pub fn failure(&self) -> Option<u64> {
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        // A failed trial after a cool-down trips again at once.
        if n < TRIP_AFTER && self.open_until.load(Relaxed) == 0 {
            return None;
        }
        self.consecutive.store(0, Relaxed);
        let t = self.trips.fetch_add(1, Relaxed).min(16);
        let cooldown = (FIRST_COOLDOWN_MS << t).min(MAX_COOLDOWN_MS);
        self.open_until
            .store(clock::now_ms().saturating_add(cooldown).max(1), Relaxed);
        Some(cooldown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_consecutive_faults_and_doubles() {
        clock::start();
        // The trial below needs the clock past 1 ms; its thread may start late on a busy
        // machine.
        let started = std::time::Instant::now();
        while clock::now_ms() < 2 {
            assert!(
                started.elapsed().as_secs() < 10,
                "the plugin clock never ticked"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.failure(), None);
            assert!(b.allows());
        }
        assert_eq!(b.failure(), Some(FIRST_COOLDOWN_MS));
        assert!(!b.allows());
        // A trial after the cool-down that fails trips again, twice as long.
        b.open_until.store(1, Relaxed);
        assert!(b.allows());
        assert_eq!(b.failure(), Some(2 * FIRST_COOLDOWN_MS));
        b.success();
        assert!(b.allows());
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.failure(), None);
        }
        assert_eq!(
            b.failure(),
            Some(FIRST_COOLDOWN_MS),
            "a success resets the doubling"
        );
    }
}
