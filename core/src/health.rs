//! Health checks: the built-in [`HealthCheck`] implementations and the background service
//! that runs every service's checks and slow-start ramps.
//!
//! Active checks run one task per backend at the configured interval; each result goes
//! through the pool's rise/fall counter ([`crate::pool::Pool::observe`]), the same counter
//! that passive observations (failed connects on the request path) feed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::balancer::Balancer;
use crate::config::{HealthConfig, HealthKind};
use crate::hooks::{HealthCheck, HealthReport};
use crate::pool::Pool;

/// Builds the built-in check for this config; `None` for plugins.
pub fn builtin(cfg: &HealthConfig) -> Option<Arc<dyn HealthCheck>> {
    Some(match &cfg.kind {
        HealthKind::Tcp => Arc::new(TcpCheck),
        HealthKind::Http {
            path,
            expect_status,
            host,
        } => Arc::new(HttpCheck {
            path: path.clone(),
            host: host.clone(),
            expect_status: *expect_status,
        }),
        HealthKind::Plugin(_) => return None,
    })
}

/// Up when a TCP connection can be opened.
pub struct TcpCheck;

#[async_trait]
impl HealthCheck for TcpCheck {
    async fn check(&self, _: &Arc<Pool>, _: usize, target: SocketAddr) -> Option<HealthReport> {
        Some(match TcpStream::connect(target).await {
            Ok(_) => HealthReport::UP,
            Err(_) => HealthReport::DOWN,
        })
    }
}

/// Up when `GET path` answers with the expected status.
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expect_status: u16,
}

#[async_trait]
impl HealthCheck for HttpCheck {
    async fn check(&self, _: &Arc<Pool>, _: usize, target: SocketAddr) -> Option<HealthReport> {
        Some(
            match http_status(target, &self.path, self.host.as_deref()).await {
                Some(s) if s == self.expect_status => HealthReport::UP,
                _ => HealthReport::DOWN,
            },
        )
    }
}

/// Sends `GET path` and returns the status code of the answer.
pub async fn http_status(target: SocketAddr, path: &str, host: Option<&str>) -> Option<u16> {
    let mut s = TcpStream::connect(target).await.ok()?;
    let host = host
        .map(str::to_string)
        .unwrap_or_else(|| target.to_string());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: plugboard-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 512];
    let mut n = 0;
    // The status line is all we need: "HTTP/1.1 200 ...".
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.ok()?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    parse_status_line(&buf[..n])
}

fn parse_status_line(b: &[u8]) -> Option<u16> {
    let line = b.split(|&c| c == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Runs every active check and slow-start ramp of all services, off the request path.
pub struct HealthService {
    pub balancers: Vec<Arc<Balancer>>,
    /// Owns the plugin registry for the server's lifetime (its file watcher holds only a weak
    /// reference, so that dropping the server stops reloads).
    pub plugins: Option<Arc<crate::plugin::Registry>>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        for b in &self.balancers {
            if let Some((check, cfg)) = b.health() {
                for i in 0..b.pool.len() {
                    tasks.spawn(check_loop(b.clone(), check.clone(), cfg.clone(), i));
                }
            }
            if let Some((feed, interval)) = b.agent_feed() {
                for i in 0..b.pool.len() {
                    tasks.spawn(feed_loop(b.clone(), feed.clone(), interval, i));
                }
            }
            if b.config().slow_start.is_some() {
                tasks.spawn(slow_start_loop(b.clone()));
            }
        }
        let _ = shutdown.changed().await;
        tasks.abort_all();
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
        match tokio::time::timeout(cfg.timeout, check.check(&b.pool, i, target)).await {
            Ok(Some(report)) => b.observe(i, report, "health check"),
            Ok(None) => {}
            Err(_) => b.observe(i, HealthReport::DOWN, "health check timeout"),
        }
    }
}

/// Polls a backend's agent through the scheduler plugin's health-check hook. The hook reports
/// through `set_load`/`set_agent` as it runs; its up/down verdict is not a health check and
/// goes through no rise/fall counter (the service's own `health_check` decides health).
async fn feed_loop(b: Arc<Balancer>, feed: Arc<dyn HealthCheck>, interval: Duration, i: usize) {
    let target = b.pool.get(i).address;
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            feed.check(&b.pool, i, target),
        )
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
