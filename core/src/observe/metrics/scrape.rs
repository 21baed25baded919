//! A scrape: live gauges refreshed from the running services and listeners, then the text
//! exposition, served on `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, IntCounter, TextEncoder};

use super::Metrics;
use crate::balance::balancer::Balancer;

impl Metrics {
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
