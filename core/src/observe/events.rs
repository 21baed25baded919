//! The last health transitions of every backend, for the status page and
//! `GET /api/v1/events`. Transitions are rare (never on the request path), so a locked ring
//! of the last [`KEEP`] is enough.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Transitions kept.
pub const KEEP: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub service: String,
    pub backend: String,
    /// `up` or `down`.
    pub to: &'static str,
    /// What saw it: `health check`, `connect failure`, ...
    pub source: String,
}

#[derive(Default)]
pub struct Events(Mutex<VecDeque<Event>>);

impl Events {
    pub fn push(&self, service: &str, backend: &str, to: &'static str, source: &str) {
        let e = Event {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            service: service.to_string(),
            backend: backend.to_string(),
            to,
            source: source.to_string(),
        };
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() == KEEP {
            list.pop_front();
        }
        list.push_back(e);
    }

    /// The most recent first.
    pub fn recent(&self) -> Vec<Event> {
        let list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().rev().cloned().collect()
    }
}
