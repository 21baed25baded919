//! `follow = "<service>"`: a udp service sends a client to the backend host that another
//! service (tcp or http) most recently sent that client's IP address to. RDP 8+ clients open
//! a UDP flow beside their TCP session, and the flow must reach the server that holds the
//! session; its encrypted datagrams do not tell which one that is.
//!
//! The followed service writes one entry per decision (client IP to backend IP: one map
//! insert) into a table the following service reads when a flow starts. Both find the table
//! here by the followed service's name, so it outlives their reloads and backend changes.
//! Entries expire after the followed service's persistence timeout (8 hours without
//! persistence); the table holds at most [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::config::{Config, ServiceConfig};

/// Client IP to the IP of the backend host it was last sent to.
pub type Leads = moka::sync::Cache<IpAddr, IpAddr>;

/// Entries of one table at most (the least recently used go first).
pub const MAX_ENTRIES: u64 = 1 << 20;
/// How long an entry lasts when the followed service has no persistence.
pub const DEFAULT_TTL: Duration = Duration::from_secs(8 * 3600);

type Tables = Mutex<HashMap<(String, Duration), Weak<Leads>>>;

fn tables() -> &'static Tables {
    static T: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    T.get_or_init(Default::default)
}

/// How long the decisions of `s` are followed.
fn ttl(s: &ServiceConfig) -> Duration {
    s.persistence.as_ref().map_or(DEFAULT_TTL, |p| p.timeout)
}

/// The table of the service named `lead` (made when first asked for; kept while a service
/// uses it).
fn table(lead: &ServiceConfig) -> Arc<Leads> {
    let mut t = tables().lock().unwrap_or_else(|e| e.into_inner());
    let key = (lead.name.clone(), ttl(lead));
    if let Some(l) = t.get(&key).and_then(Weak::upgrade) {
        return l;
    }
    t.retain(|_, w| w.strong_count() > 0);
    let l = Arc::new(
        moka::sync::Cache::builder()
            .max_capacity(MAX_ENTRIES)
            .time_to_live(key.1)
            .build(),
    );
    t.insert(key, Arc::downgrade(&l));
    l
}

/// The table service `index` writes its decisions to: some service follows it.
pub fn written_by(cfg: &Config, index: usize) -> Option<Arc<Leads>> {
    let me = &cfg.services[index];
    cfg.services
        .iter()
        .any(|s| s.follow.as_deref() == Some(me.name.as_str()))
        .then(|| table(me))
}

/// The table service `index` reads (its `follow`).
pub fn read_by(cfg: &Config, index: usize) -> Option<Arc<Leads>> {
    let name = cfg.services[index].follow.as_deref()?;
    cfg.services.iter().find(|s| s.name == name).map(table)
}
