//! Built-in implementations of [`SelectServer`].
//!
//! All of them are lock-free on the hot path: they read the pool's atomics, and the only
//! shared mutable state is an atomic counter. Round robin's smooth sequence is recomputed
//! (allocating) only when the pool's generation moves, i.e. on a health transition or a
//! slow-start step, never per request.

mod least_connections;
mod random_two;
mod round_robin;
mod source_hash;

pub use least_connections::LeastConnections;
pub use random_two::RandomTwo;
pub use round_robin::RoundRobin;
pub use source_hash::SourceHash;

use crate::balance::hooks::SelectServer;
use crate::balance::pool::{Backend, Pool};
use crate::config::SchedulerKind;

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
pub(super) fn eligible(b: &Backend, i: usize, avoid: &[usize]) -> bool {
    b.available() && !avoid.contains(&i)
}

/// `a` should get the next request rather than `b`: fewer requests in flight per unit of
/// weight, and on a tie (typically all idle) fewer past picks per unit of weight, so that
/// weights hold even when requests never overlap. Integer cross-multiplication throughout.
#[inline]
pub(super) fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let (aw, bw) = (a.effective_weight() as u128, b.effective_weight() as u128);
    let (la, lb) = (a.active() as u128 * bw, b.active() as u128 * aw);
    la < lb || (la == lb && a.picks() as u128 * bw < b.picks() as u128 * aw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hooks::{Pick, Request};
    use crate::balance::identity::CookieKey;
    use crate::config::{BackendConfig, Mode};
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn pool(weights: &[u32]) -> Pool {
        Pool::for_tests(weights, None)
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
    fn source_hash_follows_a_weight_set_at_run_time() {
        let p = pool(&[1, 1]);
        let sh = SourceHash::new(&p);
        let share = |p: &Pool| {
            (1..=200u8)
                .filter(|&i| {
                    let c = req(Some(SocketAddr::from(([10, 0, 1, i], 1))));
                    sh.select(&c, p, &[]).backend() == 0
                })
                .count()
        };
        let even = share(&p);
        assert!((60..=140).contains(&even), "{even}");
        p.set_weight(0, 9);
        assert!(share(&p) >= 160, "the ring follows the new weight");
    }

    #[test]
    fn source_hash_agrees_across_ports_of_the_same_hosts() {
        let hosts = |port: u16| {
            let cfg: Vec<_> = (1..=4u8)
                .map(|i| BackendConfig {
                    hostname: None,
                    name: format!("h{i}"),
                    address: SocketAddr::from(([10, 0, 0, i], port)),
                    weight: 1,
                    enabled: true,
                    max_connections: None,
                })
                .collect();
            Pool::new("t", &cfg, None, &CookieKey::new(b"k"))
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
