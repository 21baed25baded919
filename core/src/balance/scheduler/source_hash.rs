//! Consistent hashing of the client IP.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::eligible;
use crate::balance::hooks::{Pick, Request, SelectServer};
use crate::balance::pool::Pool;

/// Consistent hash of the client IP over a ring of virtual nodes (as HAProxy's
/// `balance source` with `hash-type consistent`): when a backend goes down only its own
/// clients move, and they move back when it returns. The ring follows the weights (rebuilt
/// when one is set at run time), never availability.
pub struct SourceHash {
    ring: ArcSwap<Ring>,
}

struct Ring {
    /// The pool's weights version it was built for.
    version: u64,
    points: Vec<(u64, u32)>,
}

/// Virtual nodes per unit of weight.
const POINTS_PER_WEIGHT: u32 = 40;

impl SourceHash {
    /// Points are placed by the backend's IP, not its port, so that services whose backends
    /// are the same hosts on different ports (Exchange: 443, 135, RPC ports) send a client to
    /// the same host. Two backends on one IP are told apart by their order.
    pub fn new(pool: &Pool) -> Self {
        SourceHash {
            ring: ArcSwap::from_pointee(Self::build(pool)),
        }
    }

    fn build(pool: &Pool) -> Ring {
        let version = pool.weights_version();
        let mut ring = Vec::new();
        for (i, b) in pool.backends().iter().enumerate() {
            let same_ip = pool.backends()[..i]
                .iter()
                .filter(|o| o.address.ip() == b.address.ip())
                .count();
            for p in 0..b.weight() * POINTS_PER_WEIGHT {
                let mut h = Fnv::default();
                b.address.ip().hash(&mut h);
                same_ip.hash(&mut h);
                p.hash(&mut h);
                ring.push((mix(h.finish()), i as u32));
            }
        }
        ring.sort_unstable();
        Ring {
            version,
            points: ring,
        }
    }
}

impl SelectServer for SourceHash {
    fn select(&self, req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        let mut ring = self.ring.load();
        if ring.version != pool.weights_version() {
            self.ring.store(Arc::new(Self::build(pool)));
            ring = self.ring.load();
        }
        let ring = &ring.points;
        if ring.is_empty() {
            return Pick::NoOpinion;
        }
        let ip = req
            .client
            .map(|c| c.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut h = Fnv::default();
        ip.hash(&mut h);
        let h = mix(h.finish());
        let start = ring.partition_point(|&(p, _)| p < h);
        let n = ring.len();
        (0..n)
            .map(|k| ring[(start + k) % n].1 as usize)
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
