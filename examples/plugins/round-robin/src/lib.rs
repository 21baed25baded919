//! The smallest useful scheduler: round robin over healthy backends. A template for your own.
//!
//! ```toml
//! scheduler = "plugin:round-robin"
//! ```

use plugboard_sdk::{export_plugin, Backends, Config, Plugin, Request, SelectServer};

pub struct RoundRobin {
    next: usize,
}

impl Plugin for RoundRobin {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(RoundRobin { next: 0 })
    }
}

impl SelectServer for RoundRobin {
    fn select(&mut self, _req: &Request, backends: &Backends) -> Option<usize> {
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

export_plugin!(RoundRobin => select_server);
