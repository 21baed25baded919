// PLUGBOARD PATCH 2 (see vendor/PATCHES.md): the keep-alive pool of `TransportConnector`
// without a task per idle connection.
//
// pingora's `pingora_pool::ConnectionPool` spawns an idle-poll task for every release of a
// connection (with a tokio mutex, a oneshot, a `Notify` and a sharded LRU entry), and every
// reuse wakes that task and waits for it to hand the connection back: a task spawn and a
// scheduler round trip per keep-alive request. This pool is a plain map per thread (a
// connection is reused on the thread, and so the runtime, that released it), under a lock
// that only the sweeper ever contends.
// Idle connections are not polled: tokio's I/O driver records a peer's close or stray data as
// read readiness whether or not a task waits, so `test_reusable_stream` (which reads only
// when the socket is marked readable) finds them on reuse, and one sweeper task per pool,
// alive only while the pool holds connections, drops closed and expired ones every second.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thread_local::ThreadLocal;

use crate::protocols::Stream;

/// How often the sweeper drops idle connections that are closed or past their idle timeout.
/// A connection past its timeout is never reused even between sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

#[derive(Default)]
struct Idles {
    /// Idle connections by reuse hash, oldest first: reuse takes the newest (warmest) one and
    /// eviction the oldest, so a connection pool larger than the load shrinks by idle timeout.
    by_key: HashMap<u64, Vec<Idle>>,
    count: usize,
}

/// Idle upstream connections of one connector, at most `capacity` of them per thread.
pub(crate) struct IdlePool {
    idles: ThreadLocal<Mutex<Idles>>,
    capacity: usize,
    /// Whether a sweeper task is running. A release sets it after pooling, and a sweeper that
    /// clears it looks again, so a connection never waits in a pool without a sweeper.
    sweeping: AtomicBool,
}

/// What a release displaced: the oldest idle connection when the pool was full, and whether
/// the caller must start the sweeper.
pub(crate) struct Put {
    pub evicted: Option<(Stream, Duration)>,
    pub start_sweeper: bool,
}

impl IdlePool {
    pub fn new(capacity: usize) -> Self {
        IdlePool {
            idles: ThreadLocal::new(),
            capacity: capacity.max(1),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Takes the newest idle connection pooled under `key` that is not past its idle timeout;
    /// expired ones met on the way are closed.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut idles = self.idles.get()?.lock();
        let Idles { by_key, count } = &mut *idles;
        let list = by_key.get_mut(&key)?;
        while let Some(idle) = list.pop() {
            *count -= 1;
            if !idle.expired(now) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Pools `stream` under `key`, evicting the oldest idle connection if the pool is full.
    pub fn put(&self, key: u64, stream: Stream, timeout: Option<Duration>) -> Put {
        let now = Instant::now();
        let mut idles = self.idles.get_or_default().lock();
        let evicted = if idles.count >= self.capacity {
            idles.evict_oldest(now)
        } else {
            None
        };
        idles.by_key.entry(key).or_default().push(Idle {
            stream,
            since: now,
            timeout,
        });
        idles.count += 1;
        drop(idles);
        let start_sweeper = !self.sweeping.load(Ordering::Relaxed)
            && !self.sweeping.swap(true, Ordering::SeqCst);
        Put {
            evicted,
            start_sweeper,
        }
    }

    /// Drops, on every thread's pool, the connections that are expired or no longer
    /// reusable; says whether the sweeper should go on (not when every pool is empty).
    fn sweep(&self, reusable: impl Fn(&mut Stream) -> bool) -> bool {
        let now = Instant::now();
        let mut left = 0;
        for idles in self.idles.iter() {
            let mut idles = idles.lock();
            let Idles { by_key, count } = &mut *idles;
            by_key.retain(|_, list| {
                list.retain_mut(|idle| {
                    let keep = !idle.expired(now) && reusable(&mut idle.stream);
                    if !keep {
                        *count -= 1;
                    }
                    keep
                });
                !list.is_empty()
            });
            left += *count;
        }
        left > 0
    }

    fn pooled(&self) -> bool {
        self.idles.iter().any(|i| i.lock().count > 0)
    }

    /// Called by a sweeper that found nothing to sweep: it stops, unless a release came
    /// meanwhile and saw it still running.
    fn stop_sweeping(&self) -> bool {
        self.sweeping.store(false, Ordering::SeqCst);
        !(self.pooled() && !self.sweeping.swap(true, Ordering::SeqCst))
    }

    /// Runs the sweeper on the current runtime until the pool is empty.
    pub fn spawn_sweeper(
        pool: Arc<IdlePool>,
        reusable: fn(&mut Stream, &AtomicU64) -> bool,
        unexpected: Arc<AtomicU64>,
    ) {
        // A runtime shutting down drops the task: the next release then starts a new sweeper.
        struct Sweeper {
            pool: Arc<IdlePool>,
            stopped: bool,
        }
        impl Drop for Sweeper {
            fn drop(&mut self) {
                if !self.stopped {
                    self.pool.sweeping.store(false, Ordering::SeqCst);
                }
            }
        }
        pingora_runtime::current_handle().spawn(async move {
            let mut sweeper = Sweeper {
                pool,
                stopped: false,
            };
            while !sweeper.stopped {
                pingora_timeout::sleep(SWEEP_EVERY).await;
                sweeper.stopped = !sweeper.pool.sweep(|s| reusable(s, &unexpected))
                    && sweeper.pool.stop_sweeping();
            }
        });
    }
}

impl Idles {
    fn evict_oldest(&mut self, now: Instant) -> Option<(Stream, Duration)> {
        let key = *self
            .by_key
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .min_by_key(|(_, list)| list[0].since)?
            .0;
        let list = self.by_key.get_mut(&key)?;
        let idle = list.remove(0);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some((idle.stream, now.saturating_duration_since(idle.since)))
    }
}
