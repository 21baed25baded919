//! How many client connections may be open at once: per service (`max_connections`) and for
//! the whole process (`[proxy] max_connections`, by default derived from the descriptor limit).
//!
//! An accept loop takes a slot from both limits *before* it accepts, so that above a limit new
//! connections wait in the kernel's listen backlog (the client sees a slow connect, not a
//! reset) and the process never runs out of descriptors for the connections it has. A slot is
//! held by the connection wherever it is (its task, the parking lot) and returned when it
//! closes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept free beyond two per connection: listeners, epoll sets, pooled upstream
/// connections, health checks, plugin helpers, log files.
const RESERVE_MIN: u64 = 256;

/// One limit; cheap to clone.
#[derive(Clone)]
pub struct Limit(Arc<Semaphore>);

impl Limit {
    pub fn new(max: usize) -> Self {
        Limit(Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
    }
}

/// The slots a connection holds (its service's and the process's), and its place in its
/// listener's count.
pub struct Slots {
    _service: Option<OwnedSemaphorePermit>,
    _process: OwnedSemaphorePermit,
    pub(crate) _present: Option<Present>,
}

/// Counts the connections a listener accepted that are still open (wherever they are: a
/// task, the parking lot), so that a listener a reload dropped knows when it is done; and,
/// for the metrics, how many it accepted and how often a limit stopped it.
#[derive(Clone, Default)]
pub struct Tally(Arc<TallyCounts>);

#[derive(Default)]
pub struct TallyCounts {
    open: AtomicUsize,
    accepted: AtomicU64,
    limit_waits: AtomicU64,
    /// Connections closed before being served: no valid PROXY header, or from a peer not in
    /// `trusted_proxies`.
    refused: AtomicU64,
}

/// One connection in a [`Tally`], for as long as it lives.
pub struct Present(Arc<TallyCounts>);

/// Client connections open in the whole process, over every listener (running or stopped).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Client connections open in the whole process: at shutdown, the ones still in flight (idle
/// kept-alive and parked clients are closed at once then).
pub fn open_connections() -> usize {
    OPEN.load(Relaxed)
}

impl Slots {
    /// This connection is closed unserved (see [`TallyCounts::refused`]).
    pub fn refused(&self) {
        if let Some(p) = &self._present {
            p.0.refused.fetch_add(1, Relaxed);
        }
    }
}

impl Tally {
    /// A connection was accepted: its place in the count, for as long as it lives.
    pub fn enter(&self) -> Present {
        self.0.open.fetch_add(1, Relaxed);
        OPEN.fetch_add(1, Relaxed);
        Present(self.0.clone())
    }

    /// A connection was accepted.
    pub fn accepted(&self) {
        self.0.accepted.fetch_add(1, Relaxed);
    }

    /// The listener waits for a limit before accepting more.
    pub fn waiting(&self) {
        self.0.limit_waits.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> usize {
        self.0.open.load(Relaxed)
    }

    pub fn counts(&self) -> &Arc<TallyCounts> {
        &self.0
    }
}

impl TallyCounts {
    /// Connections open.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Relaxed)
    }

    pub fn limit_waits(&self) -> u64 {
        self.limit_waits.load(Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

impl Drop for Present {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        OPEN.fetch_sub(1, Relaxed);
    }
}

/// The limits an accept loop obeys.
#[derive(Clone)]
pub struct Limits {
    pub service: Option<Limit>,
    pub process: Limit,
}

impl Limits {
    /// A slot of each limit if both have room now.
    pub fn try_acquire(&self) -> Option<Slots> {
        let service = match &self.service {
            Some(l) => Some(l.0.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let process = self.process.0.clone().try_acquire_owned().ok()?;
        Some(Slots {
            _service: service,
            _process: process,
            _present: None,
        })
    }

    /// Waits until both limits have room, then holds a slot of each.
    pub async fn acquire(&self) -> Slots {
        let service = match &self.service {
            Some(l) => Some(l.0.clone().acquire_owned().await.expect("never closed")),
            None => None,
        };
        let process = self
            .process
            .0
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Slots {
            _service: service,
            _process: process,
            _present: None,
        }
    }
}

/// Raises the soft descriptor limit to the hard one (as HAProxy does) and returns it.
pub fn raise_descriptor_limit() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// Descriptors open in this process now.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(64)
}

/// The connection limit the descriptor limit allows: two descriptors per proxied connection
/// (client and backend), after what is open now and a reserve.
pub fn derived_max_connections(nofile: u64) -> usize {
    let reserve = open_descriptors() + RESERVE_MIN.min(nofile / 4);
    (nofile.saturating_sub(reserve) / 2).max(1) as usize
}
