//! Power of two random choices.

use super::{eligible, less_loaded};
use crate::balance::hooks::{Pick, Request, SelectServer};
use crate::balance::pool::Pool;

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
