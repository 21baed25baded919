//! Handles resolved once per service, backend or plugin host, so that counting on the request
//! path is an atomic add: no label lookup, no lock, no allocation.

use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

/// Plugin counters, labelled by plugin and service.
#[derive(Clone)]
pub struct PluginMetrics {
    /// `{plugin, service, kind}`: calls that trapped, timed out, ran out of memory, answered
    /// nonsense or could not start.
    pub faults: IntCounterVec,
    /// `{plugin, service, reason}`: calls not made (circuit open, no instance ready).
    pub skipped: IntCounterVec,
    /// `{plugin, service}`: log lines over the rate limit.
    pub log_dropped: IntCounterVec,
    /// `{plugin, service, hook}`: calls made.
    pub calls: IntCounterVec,
    /// `{plugin, hook}`: how long calls took.
    pub call_seconds: HistogramVec,
}

/// Shared persistence (`[proxy] redis`).
#[derive(Clone)]
pub struct SharedMetrics {
    /// 1 while connected to Redis.
    pub up: IntGauge,
    /// Connections lost or refused, commands failed or timed out.
    pub errors: IntCounter,
    /// Pins this instance wrote (new and refreshed).
    pub written: IntCounter,
    /// Pins received from other instances.
    pub received: IntCounter,
    /// New pins not written because Redis was away longer than the queue holds.
    pub dropped: IntCounter,
}

/// Handles for one backend.
#[derive(Clone)]
pub struct BackendCounters {
    pub selected: IntCounter,
    pub connect_failures: IntCounter,
    pub went_down: IntCounter,
    pub came_up: IntCounter,
    /// HTTP requests answered through it, by status class.
    pub requests: [IntCounter; 5],
    /// Body bytes (http) or relayed bytes (tcp), from the client and to it.
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
}

/// Handles for one service.
#[derive(Clone)]
pub struct ServiceCounters {
    pub no_backend: IntCounter,
    /// HTTP requests answered without a backend (404, 503, redirects), by status class.
    pub unserved: [IntCounter; 5],
    pub duration: Histogram,
    pub ttfb: Histogram,
    pub retries: IntCounter,
    /// TCP connections, by how they ended.
    pub tcp_ends: [IntCounter; 8],
    /// Requests or connections that joined the wait queue.
    pub queued: IntCounter,
    /// Left the queue unserved, by reason (in the order of [`super::QUEUE_REFUSALS`]).
    pub queue_refused: [IntCounter; 2],
    /// Time spent in the queue, however it ended.
    pub queue_wait: Histogram,
    /// UDP flows started.
    pub udp_flows: IntCounter,
    /// UDP flows open now (counted up and down as they start and end).
    pub udp_active: IntGauge,
    /// UDP datagrams relayed: from clients (in), to clients (out).
    pub udp_datagrams: [IntCounter; 2],
    /// UDP datagrams dropped, by reason (in the order of [`super::UDP_DROPS`]).
    pub udp_dropped: [IntCounter; 4],
    /// Persistence lookups: hit, new, rebalanced.
    pub persistence: [IntCounter; 3],
    pub evictions: IntCounter,
    pub check_duration: Histogram,
}

impl BackendCounters {
    /// Counts an HTTP request answered with `status`.
    #[inline]
    pub fn request(&self, status: u16) {
        if let Some(c) = class(status) {
            self.requests[c].inc();
        }
    }
}

impl ServiceCounters {
    #[inline]
    pub fn unserved(&self, status: u16) {
        if let Some(c) = class(status) {
            self.unserved[c].inc();
        }
    }
}

fn class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(status as usize / 100 - 1),
        _ => None,
    }
}

/// Seconds, for a histogram.
#[inline]
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
