//! Prometheus metrics and the `/metrics` endpoint.
//!
//! Counters and histograms are resolved to per-service and per-backend handles when a service
//! is built ([`ServiceCounters`], [`BackendCounters`]), so that counting on the request path is
//! an atomic add with no label lookup, no lock and no allocation. Gauges that mirror live state
//! (backend health, state, weights, load, in-flight counts, pins, open connections per
//! listener) are read when scraped. The families and their labels are listed in README.
//!
//! Here the families and their registration; [`labels`] the fixed label values and buckets,
//! [`handles`] the per-service, per-backend and plugin handles, [`scrape`] the exposition.

mod handles;
mod labels;
mod scrape;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub use handles::{seconds, BackendCounters, PluginMetrics, ServiceCounters, SharedMetrics};
pub use labels::{udp_drop, HOOKS, QUEUE_REFUSALS, TCP_ENDS, UDP_DROPS};
use labels::{CLASSES, LOOKUPS, PLUGIN_SECONDS, SECONDS};
pub use scrape::MetricsApp;

use crate::io::limits::TallyCounts;

/// All metric families of one process.
pub struct Metrics {
    registry: Registry,
    selected: IntCounterVec,
    connect_failures: IntCounterVec,
    no_backend: IntCounterVec,
    transitions: IntCounterVec,
    requests: IntCounterVec,
    bytes: IntCounterVec,
    checks: IntCounterVec,
    request_duration: HistogramVec,
    ttfb: HistogramVec,
    retries: IntCounterVec,
    tcp_connections: IntCounterVec,
    udp_flows: IntCounterVec,
    udp_flows_active: IntGaugeVec,
    udp_datagrams: IntCounterVec,
    udp_dropped: IntCounterVec,
    lookups: IntCounterVec,
    evictions: IntCounterVec,
    check_duration: HistogramVec,
    queued: IntCounterVec,
    queue_refused: IntCounterVec,
    queue_wait: HistogramVec,
    queue_length: IntGaugeVec,
    max_connections: IntGaugeVec,
    active: IntGaugeVec,
    up: IntGaugeVec,
    weight: IntGaugeVec,
    effective_weight: prometheus::GaugeVec,
    load: IntGaugeVec,
    state: IntGaugeVec,
    pins: IntGaugeVec,
    listener_open: IntGaugeVec,
    listener_accepted: IntCounterVec,
    listener_waits: IntCounterVec,
    listener_refused: IntCounterVec,
    plugins: PluginMetrics,
    plugin_instances: IntGauge,
    access_log_dropped: IntCounter,
    shared: SharedMetrics,
    /// The listeners, for their gauges (registered by `server/frontends.rs`).
    listeners: Mutex<Vec<(SocketAddr, Weak<TallyCounts>)>>,
    /// One scrape at a time (the listener counters are set from their atomics).
    scrape: Mutex<()>,
    /// Recent health transitions (for the status page).
    pub events: super::events::Events,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique metric");
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric");
            reg(Box::new(h.clone()));
            h
        };
        let sb = &["service", "backend"];
        let effective_weight = prometheus::GaugeVec::new(
            Opts::new(
                "plugboard_backend_effective_weight",
                "Weight after slow start and the agent's percentage",
            ),
            sb,
        )
        .expect("valid metric");
        reg(Box::new(effective_weight.clone()));
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let access_log_dropped = int_counter(
            "plugboard_access_log_dropped_total",
            "Access log lines dropped because the writer lagged behind",
        );
        let plugin_instances = IntGauge::new(
            "plugboard_plugin_instances",
            "Plugin instances alive: serving in a worker, spare, or waiting to be dropped",
        )
        .expect("valid metric");
        reg(Box::new(plugin_instances.clone()));
        let redis_up = IntGauge::new(
            "plugboard_redis_up",
            "1 while connected to the Redis of shared persistence",
        )
        .expect("valid metric");
        reg(Box::new(redis_up.clone()));
        let shared = SharedMetrics {
            up: redis_up,
            errors: int_counter(
                "plugboard_redis_errors_total",
                "Redis connections lost or refused and commands failed or timed out",
            ),
            written: int_counter(
                "plugboard_redis_pins_written_total",
                "Persistence pins written to Redis (new and refreshed)",
            ),
            received: int_counter(
                "plugboard_redis_pins_received_total",
                "Persistence pins received from other instances",
            ),
            dropped: int_counter(
                "plugboard_redis_pins_dropped_total",
                "New pins not written to Redis because it was away longer than the queue holds",
            ),
        };
        let build = IntGauge::with_opts(
            Opts::new(
                "plugboard_build_info",
                "Always 1; the labels say which build runs",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build.set(1);
        reg(Box::new(build));
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            selected: counter(
                "plugboard_backend_selected_total",
                "Requests (http) or connections (tcp) sent to a backend",
                sb,
            ),
            connect_failures: counter(
                "plugboard_backend_connect_failures_total",
                "Failed connection attempts to a backend",
                sb,
            ),
            no_backend: counter(
                "plugboard_no_backend_total",
                "Requests or connections refused because no backend was available",
                &["service"],
            ),
            transitions: counter(
                "plugboard_backend_transitions_total",
                "Health state changes of a backend",
                &["service", "backend", "to"],
            ),
            requests: counter(
                "plugboard_http_requests_total",
                "HTTP requests answered, by backend (\"\" when none served it) and status class",
                &["service", "backend", "class"],
            ),
            bytes: counter(
                "plugboard_bytes_total",
                "Bytes from clients (in) and to clients (out): http bodies, tcp streams",
                &["service", "backend", "direction"],
            ),
            checks: counter(
                "plugboard_health_checks_total",
                "Active health checks, by result",
                &["service", "backend", "result"],
            ),
            request_duration: histogram(
                "plugboard_http_request_duration_seconds",
                "From a request's start to the end of its response",
                &["service"],
                SECONDS,
            ),
            ttfb: histogram(
                "plugboard_http_time_to_first_byte_seconds",
                "From a request's start to the backend's response header",
                &["service"],
                SECONDS,
            ),
            retries: counter(
                "plugboard_retries_total",
                "Connects tried again on another backend",
                &["service"],
            ),
            tcp_connections: counter(
                "plugboard_tcp_connections_total",
                "TCP connections, by how they ended",
                &["service", "end"],
            ),
            udp_flows: counter(
                "plugboard_udp_flows_total",
                "UDP flows (client address and port) balanced",
                &["service"],
            ),
            udp_flows_active: gauge(
                "plugboard_udp_flows_active",
                "UDP flows open now",
                &["service"],
            ),
            udp_datagrams: counter(
                "plugboard_udp_datagrams_total",
                "UDP datagrams relayed, from clients (in) and to clients (out)",
                &["service", "direction"],
            ),
            udp_dropped: counter(
                "plugboard_udp_dropped_total",
                "UDP datagrams dropped, by reason",
                &["service", "reason"],
            ),
            lookups: counter(
                "plugboard_persistence_lookups_total",
                "Persistence decisions: hit (pin or named backend used), new (pinned now), rebalanced (pinned backend unavailable)",
                &["service", "result"],
            ),
            evictions: counter(
                "plugboard_persistence_evictions_total",
                "Pins dropped by the table's size bound or idle timeout",
                &["service"],
            ),
            check_duration: histogram(
                "plugboard_health_check_duration_seconds",
                "How long active health checks took",
                &["service"],
                SECONDS,
            ),
            queued: counter(
                "plugboard_queued_total",
                "Requests or connections that waited in the service's queue for a backend under its max_connections",
                &["service"],
            ),
            queue_refused: counter(
                "plugboard_queue_refused_total",
                "Requests or connections refused by the queue: waited queue_timeout (timeout), or queue_max were waiting (full)",
                &["service", "reason"],
            ),
            queue_wait: histogram(
                "plugboard_queue_wait_seconds",
                "Time spent in the queue, however it ended",
                &["service"],
                SECONDS,
            ),
            queue_length: gauge(
                "plugboard_queue_length",
                "Requests or connections waiting in the service's queue now",
                &["service"],
            ),
            max_connections: gauge(
                "plugboard_backend_max_connections",
                "The backend's connection limit: the agent's maxconn, else max_connections (absent without one)",
                sb,
            ),
            active: gauge(
                "plugboard_backend_active",
                "Requests or connections in flight",
                sb,
            ),
            up: gauge("plugboard_backend_up", "1 when the backend is healthy", sb),
            weight: gauge(
                "plugboard_backend_weight",
                "Weight, as configured or set at run time",
                sb,
            ),
            effective_weight,
            load: gauge(
                "plugboard_backend_load",
                "Load 0-100 last reported by an agent or health-check plugin (absent without)",
                sb,
            ),
            state: gauge(
                "plugboard_backend_state",
                "1 for the backend's current operator state (ready, drain, maint)",
                &["service", "backend", "state"],
            ),
            pins: gauge(
                "plugboard_persistence_entries",
                "Entries in the service's persistence table",
                &["service"],
            ),
            listener_open: gauge(
                "plugboard_listener_connections",
                "Client connections open, per listen address",
                &["listener"],
            ),
            listener_accepted: counter(
                "plugboard_listener_connections_total",
                "Client connections accepted, per listen address",
                &["listener"],
            ),
            listener_waits: counter(
                "plugboard_listener_limit_waits_total",
                "Times a listener stopped accepting because max_connections was reached",
                &["listener"],
            ),
            listener_refused: counter(
                "plugboard_listener_refused_total",
                "Connections closed unserved: no valid PROXY header in time, or a peer not in trusted_proxies",
                &["listener"],
            ),
            plugins: PluginMetrics {
                faults: counter(
                    "plugboard_plugin_faults_total",
                    "Plugin calls that trapped, timed out, ran out of memory, answered nonsense or could not start",
                    &["plugin", "service", "kind"],
                ),
                skipped: counter(
                    "plugboard_plugin_skipped_total",
                    "Plugin calls not made: circuit open after repeated faults, or no instance ready",
                    &["plugin", "service", "reason"],
                ),
                log_dropped: counter(
                    "plugboard_plugin_log_dropped_total",
                    "Plugin log lines dropped by the rate limit",
                    &["plugin", "service"],
                ),
                calls: counter(
                    "plugboard_plugin_calls_total",
                    "Plugin hook calls made",
                    &["plugin", "service", "hook"],
                ),
                call_seconds: histogram(
                    "plugboard_plugin_call_duration_seconds",
                    "How long plugin hook calls took",
                    &["plugin", "hook"],
                    PLUGIN_SECONDS,
                ),
            },
            plugin_instances,
            access_log_dropped,
            listeners: Mutex::new(Vec::new()),
            scrape: Mutex::new(()),
            events: Default::default(),
            shared,
            registry,
        }
    }

    pub fn plugins(&self) -> PluginMetrics {
        self.plugins.clone()
    }

    pub fn shared(&self) -> SharedMetrics {
        self.shared.clone()
    }

    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    pub fn backend(&self, service: &str, backend: &str) -> BackendCounters {
        let l = [service, backend];
        let class = |c: &str| self.requests.with_label_values(&[service, backend, c]);
        let bytes = |d: &str| self.bytes.with_label_values(&[service, backend, d]);
        let check = |r: &str| self.checks.with_label_values(&[service, backend, r]);
        BackendCounters {
            selected: self.selected.with_label_values(&l),
            connect_failures: self.connect_failures.with_label_values(&l),
            went_down: self
                .transitions
                .with_label_values(&[service, backend, "down"]),
            came_up: self
                .transitions
                .with_label_values(&[service, backend, "up"]),
            requests: CLASSES.map(class),
            bytes_in: bytes("in"),
            bytes_out: bytes("out"),
            checks_ok: check("ok"),
            checks_failed: check("failed"),
        }
    }

    pub fn service(&self, service: &str) -> ServiceCounters {
        let s = [service];
        ServiceCounters {
            no_backend: self.no_backend.with_label_values(&s),
            unserved: CLASSES.map(|c| self.requests.with_label_values(&[service, "", c])),
            duration: self.request_duration.with_label_values(&s),
            ttfb: self.ttfb.with_label_values(&s),
            retries: self.retries.with_label_values(&s),
            tcp_ends: TCP_ENDS.map(|e| self.tcp_connections.with_label_values(&[service, e])),
            udp_flows: self.udp_flows.with_label_values(&s),
            udp_active: self.udp_flows_active.with_label_values(&s),
            udp_datagrams: ["in", "out"]
                .map(|d| self.udp_datagrams.with_label_values(&[service, d])),
            udp_dropped: UDP_DROPS.map(|r| self.udp_dropped.with_label_values(&[service, r])),
            persistence: LOOKUPS.map(|r| self.lookups.with_label_values(&[service, r])),
            evictions: self.evictions.with_label_values(&s),
            queued: self.queued.with_label_values(&s),
            queue_refused: QUEUE_REFUSALS
                .map(|r| self.queue_refused.with_label_values(&[service, r])),
            queue_wait: self.queue_wait.with_label_values(&s),
            check_duration: self.check_duration.with_label_values(&s),
        }
    }

    /// Shows a listener's counts from now on (until it is dropped).
    pub fn add_listener(&self, addr: SocketAddr, counts: &Arc<TallyCounts>) {
        if let Ok(mut l) = self.listeners.lock() {
            l.push((addr, Arc::downgrade(counts)));
        }
    }
}
