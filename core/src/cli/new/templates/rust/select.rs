//! {{name}}: a select-server plugin. Requests for /admin go to the first backend; the rest go
//! round robin over the other available backends, one rotation for all worker threads (shared
//! counter 0). Backends are numbered from 0.

use plugboard_sdk::{export_select, shared::Counter, Backends, Request};

fn select(req: &Request, backends: &Backends) -> Option<usize> {
    if req.path()?.starts_with("/admin") {
        return backends.get(0).filter(|b| b.available()).map(|b| b.index);
    }
    let rest = backends.available().filter(|b| b.index > 0);
    Counter(0).pick(rest).map(|b| b.index)
}

export_select!(select);

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
        assert_eq!(mock("/admin/x").run(select), Some(0));
    }

    #[test]
    fn the_rest_go_round_robin_over_the_others() {
        let mut m = mock("/");
        let picks: Vec<_> = (0..4).map(|_| m.run(select)).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(1), Some(2)]);
        m.backends[1].healthy = false;
        assert_eq!(m.run(select), Some(2));
    }
}
