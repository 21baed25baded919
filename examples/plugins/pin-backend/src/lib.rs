//! select-server plugin: every request goes to the backend named by the `address` setting
//! while it is healthy; otherwise no opinion, so the service's fallback scheduler decides.
//! Useful to drain a pool onto one server, or to canary a new one.
//!
//! ```toml
//! scheduler = "plugin:pin-backend"
//! [service.plugin.pin-backend]
//! address = "127.0.0.1:9002"
//! ```

use plugboard_sdk::{export_plugin, Backends, Config, Plugin, Request, SelectServer};

pub struct PinBackend {
    address: String,
}

impl Plugin for PinBackend {
    fn new(config: &Config) -> Result<Self, String> {
        let address = config
            .str("address")
            .ok_or("setting `address` (\"IP:PORT\" of a backend) is required")?;
        Ok(PinBackend {
            address: address.to_string(),
        })
    }
}

impl SelectServer for PinBackend {
    fn select(&mut self, _req: &Request, backends: &Backends) -> Option<usize> {
        backends
            .find(&self.address)
            .filter(|b| b.available())
            .map(|b| b.index)
    }
}

export_plugin!(PinBackend => select_server);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::{Mock, MockBackend};

    #[test]
    fn pins_while_healthy() {
        let cfg = Config::from_json(r#"{"address": "10.0.0.2:80"}"#);
        let mut p = PinBackend::new(&cfg).unwrap();
        let mut mock = Mock {
            backends: vec![
                MockBackend::new("10.0.0.1:80"),
                MockBackend::new("10.0.0.2:80"),
            ],
            ..Mock::default()
        };
        assert_eq!(mock.run(|r, b| p.select(r, b)), Some(1));
        mock.backends[1].healthy = false;
        assert_eq!(mock.run(|r, b| p.select(r, b)), None);
    }

    #[test]
    fn address_is_required() {
        assert!(PinBackend::new(&Config::from_json("{}")).is_err());
    }
}
