//! The label values and histogram buckets of the metric families: fixed lists, so that a
//! handle is an array indexed by an enum's number rather than a label lookup.

/// Upper bounds of the request, time-to-first-byte and check duration histograms, in seconds.
pub(super) const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the plugin call histogram, in seconds (calls are bounded by the deadline).
pub(super) const PLUGIN_SECONDS: &[f64] = &[
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05,
];

/// Status classes, in the order of [`super::BackendCounters::requests`].
pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// How a TCP connection ended, in the order of `TcpEnd as usize`.
pub const TCP_ENDS: [&str; 8] = [
    "client_close",
    "backend_close",
    "idle_timeout",
    "connect_failure",
    "no_backend",
    "tls_error",
    "queue_timeout",
    "queue_full",
];
/// Why a request or connection left the queue unserved, in the order of
/// [`super::ServiceCounters::queue_refused`].
pub const QUEUE_REFUSALS: [&str; 2] = ["timeout", "full"];
/// Why a UDP datagram was dropped, in the order of [`super::ServiceCounters::udp_dropped`]:
/// a new flow over the service's flow limit, no backend available, the flow's socket could
/// not be made, a send that would block (socket buffer full) or failed.
pub const UDP_DROPS: [&str; 4] = ["flow_limit", "no_backend", "socket_error", "send_failed"];
/// Index of each reason in [`UDP_DROPS`].
pub mod udp_drop {
    pub const FLOW_LIMIT: usize = 0;
    pub const NO_BACKEND: usize = 1;
    pub const SOCKET_ERROR: usize = 2;
    pub const SEND_FAILED: usize = 3;
}
/// Persistence outcomes counted, in the order of [`super::ServiceCounters::persistence`].
pub(super) const LOOKUPS: [&str; 3] = ["hit", "new", "rebalanced"];
/// The plugin hooks, in the order of `Hook as usize` (see [`super::PluginMetrics`]).
pub const HOOKS: [&str; 3] = ["select-server", "persistence-key", "health-check"];
