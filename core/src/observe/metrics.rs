//! Prometheus metrics and the `/metrics` endpoint.
//!
//! Counters are resolved to per-backend handles once at start-up, so that counting on the
//! request path is one atomic add with no label lookup. Gauges that mirror live pool state
//! (active, up) are read from the pools when scraped.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::balance::balancer::Balancer;

/// All metric families of one process.
pub struct Metrics {
    registry: Registry,
    selected: IntCounterVec,
    connect_failures: IntCounterVec,
    no_backend: IntCounterVec,
    transitions: IntCounterVec,
    active: IntGaugeVec,
    up: IntGaugeVec,
    plugins: PluginMetrics,
    access_log_dropped: IntCounter,
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
}

/// Handles for one backend.
#[derive(Clone)]
pub struct BackendCounters {
    pub selected: IntCounter,
    pub connect_failures: IntCounter,
    pub went_down: IntCounter,
    pub came_up: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let selected = counter(
            "plugboard_backend_selected_total",
            "Requests (http) or connections (tcp) sent to a backend",
            &["service", "backend"],
        );
        let connect_failures = counter(
            "plugboard_backend_connect_failures_total",
            "Failed connection attempts to a backend",
            &["service", "backend"],
        );
        let no_backend = counter(
            "plugboard_no_backend_total",
            "Requests or connections refused because no backend was available",
            &["service"],
        );
        let transitions = counter(
            "plugboard_backend_transitions_total",
            "Health state changes of a backend",
            &["service", "backend", "to"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["service", "backend"])
                .expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let plugins = PluginMetrics {
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
        };
        let active = gauge(
            "plugboard_backend_active",
            "Requests or connections in flight",
        );
        let up = gauge("plugboard_backend_up", "1 when the backend is healthy");
        let access_log_dropped = IntCounter::new(
            "plugboard_access_log_dropped_total",
            "Access log lines dropped because the writer lagged behind",
        )
        .expect("valid metric");
        registry
            .register(Box::new(access_log_dropped.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            selected,
            connect_failures,
            no_backend,
            transitions,
            active,
            up,
            plugins,
            access_log_dropped,
        }
    }

    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    pub fn plugins(&self) -> PluginMetrics {
        self.plugins.clone()
    }

    pub fn backend(&self, service: &str, backend: &str) -> BackendCounters {
        let l = [service, backend];
        BackendCounters {
            selected: self.selected.with_label_values(&l),
            connect_failures: self.connect_failures.with_label_values(&l),
            went_down: self
                .transitions
                .with_label_values(&[service, backend, "down"]),
            came_up: self
                .transitions
                .with_label_values(&[service, backend, "up"]),
        }
    }

    pub fn no_backend(&self, service: &str) -> IntCounter {
        self.no_backend.with_label_values(&[service])
    }

    /// Text exposition of every metric, with live gauges refreshed from `balancers`.
    pub fn render(&self, balancers: &[Arc<Balancer>]) -> Vec<u8> {
        for b in balancers {
            for be in b.pool.backends() {
                let l = [b.config().name.as_str(), be.name.as_str()];
                self.active.with_label_values(&l).set(be.active() as i64);
                self.up.with_label_values(&l).set(be.healthy() as i64);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `GET /metrics`.
pub struct MetricsApp {
    pub metrics: Arc<Metrics>,
    pub services: crate::balance::balancer::CurrentServices,
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
        let body = self.metrics.render(&(self.services)());
        http::Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .expect("static response")
    }
}
