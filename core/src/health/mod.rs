//! Health checks: the built-in [`HealthCheck`] implementations and the background service
//! that runs every service's checks and slow-start ramps.
//!
//! Active checks run one task per backend at the configured interval; each result goes
//! through the pool's rise/fall counter ([`crate::balance::pool::Pool::observe`]), the same counter
//! that passive observations (failed connects on the request path) feed.

mod http;
pub mod icmp;
mod tcp;

pub use http::HttpCheck;
pub use icmp::IcmpCheck;
pub use tcp::TcpCheck;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balance::balancer::{Balancer, CurrentServices};
use crate::balance::hooks::HealthCheck;
use crate::config::{HealthConfig, HealthKind, ServiceConfig};

/// Builds the built-in check of service `svc`; `Ok(None)` for plugins.
pub fn builtin(svc: &ServiceConfig) -> Result<Option<Arc<dyn HealthCheck>>, String> {
    let Some(cfg) = &svc.health_check else {
        return Ok(None);
    };
    let proxy = svc.send_proxy.filter(|_| cfg.send_proxy);
    Ok(Some(match &cfg.kind {
        HealthKind::Tcp { send, expect } => Arc::new(TcpCheck {
            proxy,
            send: send.clone(),
            expect: expect.clone(),
        }),
        HealthKind::Icmp => Arc::new(IcmpCheck::new()),
        HealthKind::Http {
            path,
            expect_status,
            host,
            tls,
        } => {
            let tls = match svc.backend_tls.as_ref().filter(|_| *tls) {
                None => None,
                Some(t) => Some((
                    crate::tls::client::client_config(t)?,
                    svc.backends
                        .iter()
                        .map(|b| crate::tls::client::server_name(t, b))
                        .collect(),
                )),
            };
            Arc::new(HttpCheck {
                path: path.clone(),
                host: host.clone(),
                expect_status: *expect_status,
                tls,
                proxy,
            })
        }
        HealthKind::Plugin(_) => return Ok(None),
    }))
}

/// Runs every active check and slow-start ramp of all services, off the request path; when
/// a service is replaced, its loops restart on the new version (health state lives in the
/// backends, so nothing is lost).
pub struct HealthService {
    pub services: CurrentServices,
    /// Changes when a service is replaced.
    pub changed: tokio::sync::watch::Receiver<u64>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changed = self.changed.clone();
        loop {
            let mut tasks = self.spawn_loops();
            tokio::select! {
                _ = shutdown.changed() => {
                    tasks.abort_all();
                    return;
                }
                r = changed.changed() => {
                    tasks.abort_all();
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl HealthService {
    fn spawn_loops(&self) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for b in (self.services)().iter() {
            if let Some((check, cfg)) = b.health() {
                for i in 0..b.pool.len() {
                    tasks.spawn(check_loop(b.clone(), check.clone(), cfg.clone(), i));
                }
            }
            if let Some((feed, interval, timeout)) = b.agent_feed() {
                for i in 0..b.pool.len() {
                    tasks.spawn(feed_loop(b.clone(), feed.clone(), *interval, *timeout, i));
                }
            }
            if b.config().slow_start.is_some() {
                tasks.spawn(slow_start_loop(b.clone()));
            }
        }
        tasks
    }
}

async fn check_loop(b: Arc<Balancer>, check: Arc<dyn HealthCheck>, cfg: HealthConfig, i: usize) {
    let backend = b.pool.get(i).address;
    let target = SocketAddr::new(backend.ip(), cfg.port.unwrap_or(backend.port()));
    // Spread the first checks over one interval so that backends are not probed in bursts.
    let jitter = cfg.interval.mul_f64(fastrand::f64());
    tokio::time::sleep(jitter).await;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The check bounds itself by the timeout (from when it starts, not while it waits for
        // a plugin check thread).
        let started = std::time::Instant::now();
        let report = check.check(&b.pool, i, target, cfg.timeout).await;
        b.service_counters()
            .check_duration
            .observe(started.elapsed().as_secs_f64());
        if let Some(report) = report {
            let c = b.backend_counters(i);
            match report.up {
                true => c.checks_ok.inc(),
                false => c.checks_failed.inc(),
            }
            b.observe(i, report, "health check");
        }
    }
}

/// Polls a backend's agent through the scheduler plugin's health-check hook. The hook reports
/// through `set_load`/`set_agent` as it runs; its up/down verdict is not a health check and
/// goes through no rise/fall counter (the service's own `health_check` decides health).
async fn feed_loop(
    b: Arc<Balancer>,
    feed: Arc<dyn HealthCheck>,
    interval: Duration,
    timeout: Duration,
    i: usize,
) {
    let target = b.pool.get(i).address;
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = feed.check(&b.pool, i, target, timeout).await;
    }
}

/// How often slow-start weights are recomputed while a backend ramps.
const SLOW_START_STEP: Duration = Duration::from_millis(100);

async fn slow_start_loop(b: Arc<Balancer>) {
    let mut tick = tokio::time::interval(SLOW_START_STEP);
    loop {
        tick.tick().await;
        b.pool.tick_slow_start();
    }
}
