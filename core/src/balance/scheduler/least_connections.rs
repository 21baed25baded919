//! Weighted least connections.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{eligible, less_loaded};
use crate::balance::hooks::{Pick, Request, SelectServer};
use crate::balance::pool::Pool;

/// Weighted least connections over live counts shared by all worker threads. The scan starts
/// at a rotating offset so that equally loaded backends take turns.
#[derive(Default)]
pub struct LeastConnections {
    start: AtomicUsize,
}

impl SelectServer for LeastConnections {
    fn select(&self, _req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        let n = pool.len();
        let start = self.start.fetch_add(1, Relaxed);
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let b = pool.get(i);
            if !eligible(b, i, avoid) {
                continue;
            }
            if best.is_none_or(|j| less_loaded(b, pool.get(j))) {
                best = Some(i);
            }
        }
        match best {
            Some(i) => {
                pool.get(i).record_pick();
                Pick::Backend(i)
            }
            None => Pick::NoOpinion,
        }
    }
}
