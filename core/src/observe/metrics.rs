//! Prometheus metrics and the `/metrics` endpoint.
//!
//! Counters and histograms are resolved to per-service and per-backend handles when a service
//! is built ([`ServiceCounters`], [`BackendCounters`]), so that counting on the request path is
//! an atomic add with no label lookup, no lock and no allocation. Gauges that mirror live state
//! (backend health, state, weights, load, in-flight counts, pins, open connections per
//! listener) are read when scraped. The families and their labels are listed in README.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::balance::balancer::Balancer;
use crate::io::limits::TallyCounts;

/// Upper bounds of the request, time-to-first-byte and check duration histograms, in seconds.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the plugin call histogram, in seconds (calls are bounded by the deadline).
const PLUGIN_SECONDS: &[f64] = &[
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05,
];

/// Status classes, in the order of [`BackendCounters::requests`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
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
/// [`ServiceCounters::queue_refused`].
pub const QUEUE_REFUSALS: [&str; 2] = ["timeout", "full"];
/// Why a UDP datagram was dropped, in the order of [`ServiceCounters::udp_dropped`]:
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
/// Persistence outcomes counted, in the order of [`ServiceCounters::persistence`].
const LOOKUPS: [&str; 3] = ["hit", "new", "rebalanced"];
/// The plugin hooks, in the order of `Hook as usize` (see [`PluginMetrics`]).
pub const HOOKS: [&str; 3] = ["select-server", "persistence-key", "health-check"];

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
    /// Left the queue unserved, by reason (in the order of [`QUEUE_REFUSALS`]).
    pub queue_refused: [IntCounter; 2],
    /// Time spent in the queue, however it ended.
    pub queue_wait: Histogram,
    /// UDP flows started.
    pub udp_flows: IntCounter,
    /// UDP flows open now (counted up and down as they start and end).
    pub udp_active: IntGauge,
    /// UDP datagrams relayed: from clients (in), to clients (out).
    pub udp_datagrams: [IntCounter; 2],
    /// UDP datagrams dropped, by reason (in the order of [`UDP_DROPS`]).
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

    /// Text exposition of every metric, with live gauges refreshed from `balancers`.
    pub fn render(&self, balancers: &[Arc<Balancer>]) -> Vec<u8> {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        // Gauges are rebuilt whole, so that removed backends and services disappear.
        for g in [
            &self.active,
            &self.up,
            &self.weight,
            &self.load,
            &self.state,
            &self.pins,
            &self.listener_open,
            &self.queue_length,
            &self.max_connections,
        ] {
            g.reset();
        }
        self.effective_weight.reset();
        for b in balancers {
            let service = b.config().name.as_str();
            for be in b.pool.backends() {
                let l = [service, be.name.as_str()];
                self.active.with_label_values(&l).set(be.active() as i64);
                self.up.with_label_values(&l).set(be.healthy() as i64);
                self.weight.with_label_values(&l).set(be.weight() as i64);
                self.effective_weight
                    .with_label_values(&l)
                    .set(be.effective_weight() as f64 / crate::balance::pool::WEIGHT_SCALE as f64);
                if let Some(limit) = be.limit() {
                    self.max_connections.with_label_values(&l).set(limit as i64);
                }
                if let Some(load) = be.load() {
                    self.load.with_label_values(&l).set(load as i64);
                }
                self.state
                    .with_label_values(&[service, be.name.as_str(), be.admin().name()])
                    .set(1);
            }
            self.queue_length
                .with_label_values(&[service])
                .set(b.pool.queue().waiting() as i64);
            if let Some(n) = b.persistence_entries() {
                self.pins.with_label_values(&[service]).set(n as i64);
            }
        }
        self.plugin_instances
            .set(crate::plugin::runtime::alive_instances());
        if let Ok(mut list) = self.listeners.lock() {
            list.retain(|(addr, counts)| {
                let label = [addr.to_string()];
                let label = [label[0].as_str()];
                let Some(c) = counts.upgrade() else {
                    let _ = self.listener_accepted.remove_label_values(&label);
                    let _ = self.listener_waits.remove_label_values(&label);
                    let _ = self.listener_refused.remove_label_values(&label);
                    return false;
                };
                self.listener_open
                    .with_label_values(&label)
                    .set(c.open() as i64);
                set_counter(
                    &self.listener_accepted.with_label_values(&label),
                    c.accepted(),
                );
                set_counter(
                    &self.listener_waits.with_label_values(&label),
                    c.limit_waits(),
                );
                set_counter(
                    &self.listener_refused.with_label_values(&label),
                    c.refused(),
                );
                true
            });
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Sets a counter to a total counted elsewhere (monotonic there).
fn set_counter(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// Seconds, for a histogram.
#[inline]
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Serves `GET /metrics`.
pub struct MetricsApp {
    pub metrics: Arc<Metrics>,
    pub services: crate::balance::balancer::CurrentServices,
}

impl MetricsApp {
    /// The exposition as an HTTP response.
    pub fn answer(&self) -> http::Response<Vec<u8>> {
        let body = self.metrics.render(&(self.services)());
        http::Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .expect("static response")
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        if session.req_header().uri.path() != "/metrics" {
            return http::Response::builder()
                .status(404)
                .body(b"not found\n".to_vec())
                .expect("static response");
        }
        self.answer()
    }
}
