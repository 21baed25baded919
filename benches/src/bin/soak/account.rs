//! What the soak counts: every client outcome, and per backend how often chaos touched it, so
//! a client can tell a failure the chaos explains from one it does not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Per backend (by name): `kills` counts kills; `disruptions` counts kills, restarts, drains
/// and re-enables. A client notes them when it learns its backend; if they moved since, the
/// backend was killed (or drained) meanwhile and a move or a drop is explained.
#[derive(Default)]
pub struct Marks {
    pub kills: AtomicU64,
    pub disruptions: AtomicU64,
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Every count the report shows.
#[derive(Default)]
pub struct Tally {
    pub http_keepalive: Counter,
    pub http_new: Counter,
    pub https: Counter,
    pub rdp: Counter,
    pub udp: Counter,
    pub long_opened: Counter,
    pub long_lines: Counter,
    /// Goals of zero:
    pub failed_idempotent: Counter,
    pub failed_rdp: Counter,
    pub dropped_long: Counter,
    pub lost_udp: Counter,
    pub persistence_violations: Counter,
    pub reload_wrong: Counter,
    /// Explained by the chaos (shown, no goal):
    pub long_on_killed: Counter,
    pub udp_on_killed: Counter,
    pub moved_after_kill: Counter,
}

pub struct Books {
    pub start: Instant,
    pub tally: Tally,
    marks: HashMap<String, Marks>,
    /// The first failures, with their time, for the report.
    details: Mutex<Vec<String>>,
    pub actions: Mutex<HashMap<&'static str, u64>>,
}

impl Books {
    pub fn new(backends: impl Iterator<Item = String>) -> Books {
        Books {
            start: Instant::now(),
            tally: Tally::default(),
            marks: backends.map(|n| (n, Marks::default())).collect(),
            details: Mutex::default(),
            actions: Mutex::default(),
        }
    }

    pub fn marks(&self, backend: &str) -> Option<&Marks> {
        self.marks.get(backend)
    }

    /// (kills, disruptions) of `backend` now; zeros for a name that is not a backend.
    pub fn seen(&self, backend: &str) -> (u64, u64) {
        self.marks(backend).map_or((0, 0), |m| {
            (m.kills.load(Relaxed), m.disruptions.load(Relaxed))
        })
    }

    /// Every backend's kill count now, read before a request so a kill racing its answer
    /// is never missed.
    pub fn kills(&self) -> HashMap<String, u64> {
        self.marks
            .iter()
            .map(|(n, m)| (n.clone(), m.kills.load(Relaxed)))
            .collect()
    }

    pub fn kill(&self, backend: &str) {
        if let Some(m) = self.marks(backend) {
            m.kills.fetch_add(1, Relaxed);
            m.disruptions.fetch_add(1, Relaxed);
        }
    }

    pub fn disrupt(&self, backend: &str) {
        if let Some(m) = self.marks(backend) {
            m.disruptions.fetch_add(1, Relaxed);
        }
    }

    /// Counts `what` and keeps its description (the first 40) for the report.
    pub fn fail(&self, counter: &Counter, what: String) {
        counter.add();
        let mut d = self.details.lock().unwrap();
        if d.len() < 40 {
            d.push(format!(
                "{:7.1}s {what}",
                self.start.elapsed().as_secs_f64()
            ));
        }
    }

    pub fn details(&self) -> Vec<String> {
        self.details.lock().unwrap().clone()
    }

    pub fn action(&self, what: &'static str) {
        *self.actions.lock().unwrap().entry(what).or_insert(0) += 1;
        eprintln!(
            "soak: {:7.1}s chaos: {what}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// A sticky client's pin: the backend it was last served by, and that backend's disruption
/// count read before the request it answered (so a kill racing the answer is never missed).
#[derive(Default)]
pub struct Pin {
    at: Option<(String, u64)>,
    before: HashMap<String, u64>,
}

impl Pin {
    /// Call before each request: notes every backend's disruption count.
    pub fn arm(&mut self, books: &Books) {
        for (n, m) in &books.marks {
            self.before.insert(n.clone(), m.disruptions.load(Relaxed));
        }
    }

    /// Notes that `served` answered. A different backend than the pinned one, while the pinned
    /// one was neither killed nor drained since, is a persistence violation.
    pub fn check(&mut self, books: &Books, served: &str, who: &str) {
        if let Some((pinned, d)) = &self.at {
            if pinned != served {
                if books.seen(pinned).1 == *d {
                    books.fail(
                        &books.tally.persistence_violations,
                        format!("{who}: pinned to {pinned}, served by {served}"),
                    );
                } else {
                    books.tally.moved_after_kill.add();
                }
            }
        }
        let d = self.before.get(served).copied().unwrap_or(0);
        self.at = Some((served.to_string(), d));
    }
}
