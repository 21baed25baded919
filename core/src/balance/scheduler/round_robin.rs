//! Smooth weighted round robin.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::eligible;
use crate::balance::hooks::{Pick, Request, SelectServer};
use crate::balance::pool::{Pool, WEIGHT_SCALE};

/// Smooth weighted round robin (NGINX's algorithm): weights 5,1,1 give a a b a c a a rather
/// than a a a a a b c. The sequence over open backends is precomputed per pool generation
/// (a backend at its connection limit stays in it: room is checked per pick, as it changes
/// with every request); a pick is one atomic increment and an index.
pub struct RoundRobin {
    seq: ArcSwap<Sequence>,
    next: AtomicUsize,
}

struct Sequence {
    generation: u64,
    order: Vec<u32>,
}

/// Upper bound on the sequence length; larger weight sums are scaled down.
const MAX_SEQUENCE: u64 = 1 << 16;

impl RoundRobin {
    pub fn new(pool: &Pool) -> Self {
        RoundRobin {
            seq: ArcSwap::from_pointee(Self::build(pool)),
            next: AtomicUsize::new(0),
        }
    }

    fn build(pool: &Pool) -> Sequence {
        let generation = pool.generation();
        // Slow start moves weights in steps of a tenth, so a weight in tenths loses nothing.
        let mut weights: Vec<(u32, u64)> = pool
            .backends()
            .iter()
            .enumerate()
            .filter(|(_, b)| b.open())
            .map(|(i, b)| {
                (
                    i as u32,
                    (b.effective_weight() / (WEIGHT_SCALE / 10)).max(1) as u64,
                )
            })
            .collect();
        let g = weights.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let mut total: u64 = weights.iter().map(|&(_, w)| w / g).sum();
        let shrink = total.div_ceil(MAX_SEQUENCE).max(1);
        for (_, w) in &mut weights {
            *w = (*w / g / shrink).max(1);
        }
        total = weights.iter().map(|&(_, w)| w).sum();
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (k, &(_, w)) in weights.iter().enumerate() {
                current[k] += w as i64;
                if current[k] > current[best] {
                    best = k;
                }
            }
            current[best] -= total as i64;
            order.push(weights[best].0);
        }
        Sequence { generation, order }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl SelectServer for RoundRobin {
    fn select(&self, _req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        let mut seq = self.seq.load();
        if seq.generation != pool.generation() {
            self.seq.store(Arc::new(Self::build(pool)));
            seq = self.seq.load();
        }
        let n = seq.order.len();
        for _ in 0..n {
            let i = seq.order[self.next.fetch_add(1, Relaxed) % n] as usize;
            if eligible(pool.get(i), i, avoid) {
                return Pick::Backend(i);
            }
        }
        Pick::NoOpinion
    }
}
