//! Built-in implementations of [`SelectServer`].
//!
//! All of them are lock-free on the hot path: they read the pool's atomics, and the only
//! shared mutable state is an atomic counter. Round robin's smooth sequence is recomputed
//! (allocating) only when the pool's generation moves, i.e. on a health transition or a
//! slow-start step, never per request.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::SchedulerKind;
use crate::hooks::{Pick, Request, SelectServer};
use crate::pool::{Backend, Pool, WEIGHT_SCALE};

/// Builds the built-in scheduler of this kind; `None` for plugins.
pub fn builtin(kind: &SchedulerKind, pool: &Pool) -> Option<Box<dyn SelectServer>> {
    Some(match kind {
        SchedulerKind::RoundRobin => Box::new(RoundRobin::new(pool)),
        SchedulerKind::LeastConnections => Box::new(LeastConnections::default()),
        SchedulerKind::RandomTwo => Box::new(RandomTwo),
        SchedulerKind::SourceHash => Box::new(SourceHash::new(pool)),
        SchedulerKind::Plugin(_) => return None,
    })
}

#[inline]
fn eligible(b: &Backend, i: usize, avoid: &[usize]) -> bool {
    b.available() && !avoid.contains(&i)
}

/// `a` should get the next request rather than `b`: fewer requests in flight per unit of
/// weight, and on a tie (typically all idle) fewer past picks per unit of weight, so that
/// weights hold even when requests never overlap. Integer cross-multiplication throughout.
#[inline]
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let (aw, bw) = (a.effective_weight() as u128, b.effective_weight() as u128);
    let (la, lb) = (a.active() as u128 * bw, b.active() as u128 * aw);
    la < lb || (la == lb && a.picks() as u128 * bw < b.picks() as u128 * aw)
}

/// Smooth weighted round robin (NGINX's algorithm): weights 5,1,1 give a a b a c a a rather
/// than a a a a a b c. The sequence over available backends is precomputed per pool
/// generation; a pick is one atomic increment and an index.
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
            .filter(|(_, b)| b.available())
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

/// Power of two random choices: two random available backends, the less loaded wins.
pub struct RandomTwo;

impl SelectServer for RandomTwo {
    fn select(&self, _req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        let n = pool.len();
        let pick = || {
            // A few random draws find an eligible backend fast; a scan settles the rest.
            for _ in 0..4 {
                let i = fastrand::usize(..n);
                if eligible(pool.get(i), i, avoid) {
                    return Some(i);
                }
            }
            let start = fastrand::usize(..n);
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| eligible(pool.get(i), i, avoid))
        };
        let (Some(a), Some(b)) = (pick(), pick()) else {
            return Pick::NoOpinion;
        };
        let i = if less_loaded(pool.get(b), pool.get(a)) {
            b
        } else {
            a
        };
        pool.get(i).record_pick();
        Pick::Backend(i)
    }
}

/// Consistent hash of the client IP over a ring of virtual nodes (as HAProxy's
/// `balance source` with `hash-type consistent`): when a backend goes down only its own
/// clients move, and they move back when it returns.
pub struct SourceHash {
    ring: Vec<(u64, u32)>,
}

/// Virtual nodes per unit of weight.
const POINTS_PER_WEIGHT: u32 = 40;

impl SourceHash {
    /// Points are placed by the backend's IP, not its port, so that services whose backends
    /// are the same hosts on different ports (Exchange: 443, 135, RPC ports) send a client to
    /// the same host. Two backends on one IP are told apart by their order.
    pub fn new(pool: &Pool) -> Self {
        let mut ring = Vec::new();
        for (i, b) in pool.backends().iter().enumerate() {
            let same_ip = pool.backends()[..i]
                .iter()
                .filter(|o| o.address.ip() == b.address.ip())
                .count();
            for p in 0..b.weight * POINTS_PER_WEIGHT {
                let mut h = Fnv::default();
                b.address.ip().hash(&mut h);
                same_ip.hash(&mut h);
                p.hash(&mut h);
                ring.push((mix(h.finish()), i as u32));
            }
        }
        ring.sort_unstable();
        SourceHash { ring }
    }
}

impl SelectServer for SourceHash {
    fn select(&self, req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        if self.ring.is_empty() {
            return Pick::NoOpinion;
        }
        let ip = req
            .client
            .map(|c| c.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut h = Fnv::default();
        ip.hash(&mut h);
        let h = mix(h.finish());
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let n = self.ring.len();
        (0..n)
            .map(|k| self.ring[(start + k) % n].1 as usize)
            .find(|&i| eligible(pool.get(i), i, avoid))
            .map_or(Pick::NoOpinion, Pick::Backend)
    }
}

/// FNV-1a: fixed, so that every Plugboard instance maps a client to the same ring point.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// splitmix64 finaliser: spreads FNV's weak low bits over the ring.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Mode};
    use std::net::SocketAddr;

    fn pool(weights: &[u32]) -> Pool {
        let cfg: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| BackendConfig {
                address: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight: w,
                enabled: true,
            })
            .collect();
        Pool::new(&cfg, None)
    }

    impl Pick {
        fn backend(self) -> usize {
            match self {
                Pick::Backend(i) => i,
                other => panic!("expected a backend, got {other:?}"),
            }
        }
    }

    fn req(client: Option<SocketAddr>) -> Request<'static> {
        Request {
            service: "t",
            mode: Mode::Tcp,
            client,
            http: None,
            payload: &[],
            key: None,
        }
    }

    #[test]
    fn smooth_round_robin_interleaves() {
        let p = pool(&[5, 1, 1]);
        let rr = RoundRobin::new(&p);
        let picks: Vec<_> = (0..7)
            .map(|_| rr.select(&req(None), &p, &[]).backend())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_down_and_avoided() {
        let p = pool(&[1, 1, 1]);
        let rr = RoundRobin::new(&p);
        for _ in 0..3 {
            p.observe(1, false, 1, 3);
        }
        for _ in 0..30 {
            let i = rr.select(&req(None), &p, &[2]).backend();
            assert_eq!(i, 0);
        }
        assert_eq!(rr.select(&req(None), &p, &[0, 2]), Pick::NoOpinion);
    }

    #[test]
    fn least_connections_prefers_idle_weighted() {
        let p = Arc::new(pool(&[1, 2]));
        let lc = LeastConnections::default();
        let _g1 = p.acquire(0);
        let _g2 = p.acquire(1);
        // 1/1 vs 1/2: the heavier backend wins.
        assert_eq!(lc.select(&req(None), &p, &[]), Pick::Backend(1));
        // 1/1 vs 3/2.
        let _g3 = p.acquire(1);
        let _g4 = p.acquire(1);
        assert_eq!(lc.select(&req(None), &p, &[]), Pick::Backend(0));
    }

    #[test]
    fn least_connections_ties_follow_weights() {
        let p = pool(&[1, 1, 2]);
        let lc = LeastConnections::default();
        let mut n = [0; 3];
        for _ in 0..400 {
            n[lc.select(&req(None), &p, &[]).backend()] += 1;
        }
        assert_eq!(n, [100, 100, 200]);
    }

    #[test]
    fn source_hash_is_stable_and_moves_only_lost_clients() {
        let p = pool(&[1, 1, 1, 1]);
        let sh = SourceHash::new(&p);
        let clients: Vec<SocketAddr> = (1..200u8)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1234)))
            .collect();
        let before: Vec<_> = clients
            .iter()
            .map(|c| sh.select(&req(Some(*c)), &p, &[]).backend())
            .collect();
        let mut counts = [0; 4];
        before.iter().for_each(|&i| counts[i] += 1);
        assert!(counts.iter().all(|&c| c > 20), "{counts:?}");
        for _ in 0..3 {
            p.observe(2, false, 1, 3);
        }
        for (c, &b) in clients.iter().zip(&before) {
            let now = sh.select(&req(Some(*c)), &p, &[]).backend();
            if b != 2 {
                assert_eq!(now, b);
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn source_hash_agrees_across_ports_of_the_same_hosts() {
        let hosts = |port: u16| {
            let cfg: Vec<_> = (1..=4u8)
                .map(|i| BackendConfig {
                    address: SocketAddr::from(([10, 0, 0, i], port)),
                    weight: 1,
                    enabled: true,
                })
                .collect();
            Pool::new(&cfg, None)
        };
        let (https, rpc) = (hosts(443), hosts(59531));
        let (a, b) = (SourceHash::new(&https), SourceHash::new(&rpc));
        for i in 1..100u8 {
            let c = req(Some(SocketAddr::from(([192, 0, 2, i], 5000))));
            assert_eq!(a.select(&c, &https, &[]), b.select(&c, &rpc, &[]));
        }
    }

    #[test]
    fn random_two_never_picks_unavailable() {
        let p = pool(&[1, 1, 1]);
        p.set_enabled(0, false);
        for _ in 0..200 {
            assert_ne!(RandomTwo.select(&req(None), &p, &[]), Pick::Backend(0));
        }
    }
}
