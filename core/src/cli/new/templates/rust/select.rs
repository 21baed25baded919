//! {{name}}: a select-server plugin. Requests for /admin go to the first backend; the rest go
//! round robin over the available backends. Backends are numbered from 0.

use plugboard_sdk::{export_plugin, Backends, Config, Plugin, Request, SelectServer};

pub struct Scheduler {
    next: usize,
}

impl Plugin for Scheduler {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(Scheduler { next: 0 })
    }
}

impl SelectServer for Scheduler {
    fn select(&mut self, req: &Request, backends: &Backends) -> Option<usize> {
        if req.path().is_some_and(|p| p.starts_with("/admin")) {
            return backends.get(0).filter(|b| b.available()).map(|b| b.index);
        }
        for _ in 0..backends.len() {
            let b = backends.get(self.next % backends.len())?;
            self.next = self.next.wrapping_add(1);
            if b.available() {
                return Some(b.index);
            }
        }
        None
    }
}

export_plugin!(Scheduler => select_server);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::{Mock, MockBackend};

    fn mock(path: &str) -> Mock {
        Mock {
            path: Some(path.into()),
            backends: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
                .map(MockBackend::new)
                .to_vec(),
            ..Mock::default()
        }
    }

    #[test]
    fn admin_goes_to_the_first_backend() {
        let mut p = Scheduler::new(&Config::from_json("{}")).unwrap();
        assert_eq!(mock("/admin/x").run(|r, b| p.select(r, b)), Some(0));
    }

    #[test]
    fn the_rest_go_round_robin_over_available_backends() {
        let mut p = Scheduler::new(&Config::from_json("{}")).unwrap();
        let mut m = mock("/");
        m.backends[1].healthy = false;
        let picks: Vec<_> = (0..4).map(|_| m.run(|r, b| p.select(r, b))).collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
    }
}
