//! health-check plugin: `GET <path>` on the backend (setting `path`, default `/health`). The
//! backend is up when the status is 200 and the body does not start with `down`; a body that
//! starts with a number 0-100 is reported as the backend's load.
//!
//! ```toml
//! health_check = { kind = "plugin:http-health", interval = "2s", timeout = "1s" }
//! [service.plugin.http-health]
//! path = "/status"
//! ```

use plugboard_sdk::{export_plugin, net, Backend, Config, Health, HealthCheck, Plugin};

pub struct HttpHealth {
    path: String,
    timeout_ms: u32,
}

impl Plugin for HttpHealth {
    fn new(config: &Config) -> Result<Self, String> {
        let path = config.str("path").unwrap_or("/health").to_string();
        if !path.starts_with('/') {
            return Err(format!("setting `path` must start with '/', got {path:?}"));
        }
        Ok(HttpHealth {
            path,
            timeout_ms: config.int("timeout_ms").unwrap_or(1000).clamp(1, 60_000) as u32,
        })
    }
}

/// Up/down and load from a status and body.
pub fn verdict(status: u16, body: &[u8]) -> Health {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if status != 200 || text.starts_with("down") {
        return Health::Down;
    }
    let load = text
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|l| *l <= 100);
    Health::Up { load }
}

impl HealthCheck for HttpHealth {
    fn check(&mut self, _backend: Backend, target: &str) -> Health {
        match net::http_get(target, &self.path, self.timeout_ms) {
            Some((status, body)) => verdict(status, &body),
            None => Health::Down,
        }
    }
}

export_plugin!(HttpHealth => health_check);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert!(matches!(
            verdict(200, b"42\n"),
            Health::Up { load: Some(42) }
        ));
        assert!(matches!(verdict(200, b"ok"), Health::Up { load: None }));
        assert!(matches!(
            verdict(200, b"down for maintenance"),
            Health::Down
        ));
        assert!(matches!(verdict(503, b"0"), Health::Down));
    }
}
