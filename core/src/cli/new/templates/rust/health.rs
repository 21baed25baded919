//! {{name}}: a health-check plugin. A backend is up when `GET /health` (setting `path`) on
//! the checked address answers 200 within a second.

use plugboard_sdk::{export_plugin, net, Backend, Config, Health, HealthCheck, Plugin};

pub struct HttpHealth {
    path: String,
}

impl Plugin for HttpHealth {
    fn new(config: &Config) -> Result<Self, String> {
        let path = config.str("path").unwrap_or("/health").to_string();
        Ok(HttpHealth { path })
    }
}

impl HealthCheck for HttpHealth {
    fn check(&mut self, _backend: Backend, target: &str) -> Health {
        match net::http_get(target, &self.path, 1000) {
            Some((200, _)) => Health::Up { load: None },
            _ => Health::Down,
        }
    }
}

export_plugin!(HttpHealth => health_check);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::{Mock, MockBackend};

    #[test]
    fn up_on_200_only() {
        let mut p = HttpHealth::new(&Config::from_json("{}")).unwrap();
        let mut m = Mock {
            backends: vec![MockBackend::new("10.0.0.1:80")],
            net_answers: vec![Some((200, b"ok".to_vec())), Some((503, vec![])), None],
            ..Mock::default()
        };
        let mut check = || m.run(|_, b| p.check(b.get(0).unwrap(), "10.0.0.1:80"));
        assert!(matches!(check(), Health::Up { .. }));
        assert!(matches!(check(), Health::Down));
        assert!(matches!(check(), Health::Down));
    }
}
