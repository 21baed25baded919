//! Log set-up (tracing, human or JSON) and a rate limit for log lines on the request path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`).
/// Also routes pingora's `log` records into tracing. rustls warns about every client that
/// breaks the protocol, which any client can do at will: those lines are dropped unless
/// `RUST_LOG` names rustls.
pub fn init(format: LogFormat) {
    let mut directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    if !directives.contains("rustls") {
        directives.push_str(",rustls=error");
    }
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Allows one event per second: a failing backend under load must not flood the log.
#[derive(Debug, Default)]
pub struct RateLimit {
    last_second: AtomicU64,
}

impl RateLimit {
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_second.load(Relaxed);
        now != last
            && self
                .last_second
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}
