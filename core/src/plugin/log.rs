//! Plugin log lines (`log` in WASM, `print`/`log` in Lua), rate-limited like the proxy's own
//! request-path logs: a plugin that logs on every request cannot flood the log or slow the
//! proxy down with it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

/// Lines one plugin binding may log per second; the rest are dropped and counted.
pub const LINES_PER_SECOND: u32 = 20;

/// Where one binding's (plugin used by a service) log lines go.
pub struct PluginLog {
    pub plugin: String,
    pub service: String,
    second: AtomicU64,
    lines: AtomicU32,
    dropped_this_window: AtomicU32,
    dropped: Option<IntCounter>,
}

impl PluginLog {
    pub fn new(plugin: &str, service: &str, dropped: Option<IntCounter>) -> Self {
        PluginLog {
            plugin: plugin.to_string(),
            service: service.to_string(),
            second: AtomicU64::new(0),
            lines: AtomicU32::new(0),
            dropped_this_window: AtomicU32::new(0),
            dropped,
        }
    }

    /// Logs `message` at `level` (0 error, 1 warn, 2 info, other debug) unless this binding
    /// already logged [`LINES_PER_SECOND`] lines this second.
    pub fn line(&self, level: i32, message: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Relaxed) != now {
            self.lines.store(0, Relaxed);
            let missed = self.dropped_this_window.swap(0, Relaxed);
            if missed > 0 {
                tracing::warn!(target: "plugin", plugin = %self.plugin, service = %self.service,
                    "{missed} plugin log lines dropped (more than {LINES_PER_SECOND} a second)");
            }
        }
        if self.lines.fetch_add(1, Relaxed) >= LINES_PER_SECOND {
            self.dropped_this_window.fetch_add(1, Relaxed);
            if let Some(c) = &self.dropped {
                c.inc();
            }
            return;
        }
        let (p, s) = (&self.plugin, &self.service);
        match level {
            0 => tracing::error!(target: "plugin", plugin = %p, service = %s, "{message}"),
            1 => tracing::warn!(target: "plugin", plugin = %p, service = %s, "{message}"),
            2 => tracing::info!(target: "plugin", plugin = %p, service = %s, "{message}"),
            _ => tracing::debug!(target: "plugin", plugin = %p, service = %s, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_rate_are_counted_not_logged() {
        let c = IntCounter::new("x", "x").unwrap();
        let log = PluginLog::new("p", "s", Some(c.clone()));
        for _ in 0..1000 {
            log.line(3, "hello");
        }
        // All in one second, or split over two at most.
        assert!(c.get() >= 1000 - 2 * LINES_PER_SECOND as u64, "{}", c.get());
    }
}
