//! What the admin API shows of a service and its backends (the JSON of `/api/v1/services`).

use serde::Serialize;

use crate::balance::balancer::Balancer;
use crate::balance::pool::{Backend, WEIGHT_SCALE};

#[derive(Serialize)]
pub struct ServiceView {
    pub name: String,
    pub mode: &'static str,
    pub listen: Vec<String>,
    /// Requests or connections waiting for a backend under its connection limit.
    pub queue: usize,
    pub backends: Vec<BackendView>,
}

#[derive(Serialize)]
pub struct BackendView {
    pub name: String,
    pub address: String,
    /// The operator's state: ready, drain or maint.
    pub state: &'static str,
    /// What the backend's agent asks for (ready when it has none).
    pub agent_state: &'static str,
    /// up or down, by the health checks.
    pub health: &'static str,
    pub weight: u32,
    /// After slow start and the agent's weight percentage.
    pub effective_weight: f64,
    /// Requests (http) or connections (tcp) in flight.
    pub active: u32,
    /// The connection limit that applies (the agent's `maxconn`, else `max_connections`).
    pub max_connections: Option<u32>,
    /// Load 0-100 last reported by an agent or a health-check plugin.
    pub load: Option<u8>,
    /// Persistence entries pointing at it.
    pub pinned: u64,
    /// Removed, waiting for its last request or connection to end.
    pub removing: bool,
    /// Requests (http) or connections (tcp) sent to it since the start (rates are its
    /// differences).
    pub selected: u64,
}

impl ServiceView {
    pub fn of(b: &Balancer) -> ServiceView {
        let cfg = b.config();
        let pins = b.pins_per_backend();
        ServiceView {
            name: cfg.name.clone(),
            mode: cfg.mode.as_str(),
            listen: cfg.listen.iter().map(|a| a.to_string()).collect(),
            queue: b.pool.queue().waiting(),
            backends: b
                .pool
                .backends()
                .iter()
                .enumerate()
                .map(|(i, be)| {
                    let mut v = BackendView::of(be, pins.get(&be.id).copied().unwrap_or(0));
                    v.selected = b.backend_counters(i).selected.get();
                    v
                })
                .collect(),
        }
    }
}

impl BackendView {
    fn of(b: &Backend, pinned: u64) -> BackendView {
        BackendView {
            name: b.name.clone(),
            address: b.address.to_string(),
            state: b.admin().name(),
            agent_state: b.agent().admin().name(),
            health: if b.healthy() { "up" } else { "down" },
            weight: b.weight(),
            effective_weight: b.effective_weight() as f64 / WEIGHT_SCALE as f64,
            active: b.active(),
            max_connections: b.limit(),
            load: b.load(),
            pinned,
            removing: b.removing(),
            selected: 0,
        }
    }
}
