//! Holds idle client connections outside the async runtime, at a few dozen bytes each.
//!
//! A connection waiting in its own task costs the task, its socket's registration with tokio's
//! reactor and a timer: about 1.3 KB, a little more than HAProxy's ~1.1 KB. A connection that
//! has been silent for [`PARK_AFTER`] leaves its task and waits here instead: the bare socket in
//! one epoll set per listener, watched by one task, plus an entry in an ordered set of
//! deadlines. When the client speaks the socket goes back to tokio, its deadline is forgotten,
//! and a new task picks it up; when its deadline passes it is closed. Busy connections never come here, so the request path is unchanged.
//! Half a second after a batch is parked, the memory its tasks freed is given back to the
//! system ([`crate::memory`]), so that a burst of connections gone idle does not stay resident.
//!
//! ```no_run
//! # async fn demo(shutdown: pingora::server::ShutdownWatch, tcp: tokio::net::TcpStream) {
//! use plugboard::io::parking::ParkingLot;
//! use std::time::{Duration, Instant};
//!
//! let (lot, watcher) = ParkingLot::new().unwrap();
//! // Each woken connection is handed back with the state it was parked with.
//! watcher.start(shutdown, |tcp, request_count: u32| {
//!     tokio::spawn(async move { drop((tcp, request_count)) });
//! });
//! lot.park(tcp, Instant::now() + Duration::from_secs(60), 1);
//! # }
//! ```

use std::collections::BTreeSet;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use pingora::server::ShutdownWatch;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a connection stays silent in its task before it is parked. Clients that come back
/// sooner (keep-alive under load) never pay the four epoll calls a park and a wake-up cost.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How soon after parking a batch the memory its tasks freed is given back to the system
/// (so at most twice a second), and the smallest batch worth it (about 1.3 KB each).
const RELEASE_AFTER: Duration = Duration::from_millis(500);
const RELEASE_BATCH: usize = 64;

/// Events taken from the epoll set per system call.
const EVENTS: usize = 256;

/// The handle connection tasks park through; one per listening service.
pub struct ParkingLot<T> {
    tx: mpsc::UnboundedSender<Parked<T>>,
}

struct Parked<T> {
    tcp: std::net::TcpStream,
    deadline: Instant,
    state: T,
}

/// The other half of a lot: what its task needs.
pub struct LotWatcher<T> {
    poll: Poll,
    rx: mpsc::UnboundedReceiver<Parked<T>>,
}

impl<T: Send + 'static> ParkingLot<T> {
    /// Makes a lot's epoll set (so that running out of descriptors is an error at start-up);
    /// nothing is watched before [`LotWatcher::start`].
    pub fn new() -> io::Result<(Self, LotWatcher<T>)> {
        let poll = Poll::new()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((ParkingLot { tx }, LotWatcher { poll, rx }))
    }

    /// Takes the socket off tokio's reactor and parks it until its client speaks or `deadline`
    /// passes. The client's bytes stay in the socket for whoever is woken.
    pub fn park(&self, tcp: TcpStream, deadline: Instant, state: T) {
        if let Ok(tcp) = tcp.into_std() {
            // Fails only while shutting down, when the socket is to be closed anyway.
            let _ = self.tx.send(Parked {
                tcp,
                deadline,
                state,
            });
        }
    }
}

impl<T: Send + 'static> LotWatcher<T> {
    /// Starts the task that watches parked connections, on the current runtime. `wake` runs on
    /// that task for each connection whose client sent something (or closed), with the state
    /// it was parked with; it should spawn the connection's next task and return. Everything
    /// parked is closed when the server shuts down.
    pub fn start(self, shutdown: ShutdownWatch, wake: impl FnMut(TcpStream, T) + Send + 'static) {
        // SAFETY: mio's `Poll` owns its epoll descriptor for its whole life and always reports
        // that same descriptor.
        match unsafe { AsyncFd::register_with_interest(self.poll, tokio::io::Interest::READABLE) } {
            Ok(poll) => {
                tokio::spawn(watch(poll, self.rx, shutdown, wake));
            }
            // Parked connections are then closed, as if their idle timeout had passed.
            Err(e) => tracing::error!("cannot watch idle connections: {e}"),
        }
    }
}

/// The parked connections of one lot, owned by its task.
struct Lot<T> {
    slots: Slab<Slot<T>>,
    /// (deadline, slot key) of every parked connection, earliest first. Removed when the
    /// connection wakes, so a client that keeps pausing just over [`PARK_AFTER`] between
    /// requests leaves nothing behind.
    deadlines: BTreeSet<(Instant, usize)>,
}

struct Slot<T> {
    tcp: std::net::TcpStream,
    state: T,
    deadline: Instant,
}

async fn watch<T>(
    mut poll: AsyncFd<Poll>,
    mut rx: mpsc::UnboundedReceiver<Parked<T>>,
    mut shutdown: ShutdownWatch,
    mut wake: impl FnMut(TcpStream, T),
) {
    let mut lot = Lot {
        slots: Slab::new(),
        deadlines: BTreeSet::new(),
    };
    let mut events = Events::with_capacity(EVENTS);
    let mut release_at = None;
    let mut parked_since_release = 0;
    loop {
        let next_deadline = lot.deadlines.first().map(|(d, _)| *d);
        tokio::select! {
            biased;
            () = crate::io::listener::stopping(&mut shutdown) => return,
            parked = rx.recv() => match parked {
                Some(p) => {
                    lot.add(poll.get_ref(), p);
                    parked_since_release += 1;
                    if parked_since_release == RELEASE_BATCH {
                        release_at = Some(Instant::now() + RELEASE_AFTER);
                    }
                }
                None => return,
            },
            guard = poll.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                guard.clear_ready();
                loop {
                    if guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)).is_err() {
                        break;
                    }
                    let mut n = 0;
                    for e in &events {
                        n += 1;
                        if let Some((tcp, state)) = lot.take(guard.get_inner(), e.token().0) {
                            wake(tcp, state);
                        }
                    }
                    if n < EVENTS {
                        break;
                    }
                }
            },
            () = sleep_until(next_deadline) => lot.expire(Instant::now()),
            () = sleep_until(release_at) => {
                release_at = None;
                parked_since_release = 0;
                // About 2 ms after 8,000 connections went idle at once, 0.4 ms otherwise.
                crate::io::memory::release_free_memory();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl<T> Lot<T> {
    fn add(&mut self, poll: &Poll, p: Parked<T>) {
        let Parked {
            tcp,
            deadline,
            state,
        } = p;
        let fd = tcp.as_raw_fd();
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        // Edge-triggered; bytes that arrived before this call are reported by the next poll.
        if poll
            .registry()
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
            .is_ok()
        {
            entry.insert(Slot {
                tcp,
                state,
                deadline,
            });
            self.deadlines.insert((deadline, key));
        }
    }

    /// The connection in `key`, back on tokio's reactor.
    fn take(&mut self, poll: &Poll, key: usize) -> Option<(TcpStream, T)> {
        let Slot {
            tcp,
            state,
            deadline,
        } = self.slots.try_remove(key)?;
        self.deadlines.remove(&(deadline, key));
        let _ = poll.registry().deregister(&mut SourceFd(&tcp.as_raw_fd()));
        TcpStream::from_std(tcp).ok().map(|tcp| (tcp, state))
    }

    /// Closes every connection whose deadline is not after `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                return;
            }
            self.deadlines.pop_first();
            // Closing the socket also takes it out of the epoll set.
            self.slots.try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_woken_connection_leaves_no_deadline_behind() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let poll = Poll::new().unwrap();
        let mut lot = Lot::<u32> {
            slots: Slab::new(),
            deadlines: BTreeSet::new(),
        };
        let mut clients = Vec::new();
        let far = Instant::now() + Duration::from_secs(3600);
        // A client that pauses just long enough to be parked, a thousand times.
        for n in 0..1000 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_nonblocking(true).unwrap();
            lot.add(
                &poll,
                Parked {
                    tcp,
                    deadline: far,
                    state: n,
                },
            );
            let key = lot.slots.iter().next().unwrap().0;
            assert_eq!(lot.take(&poll, key).map(|(_, s)| s), Some(n));
            assert!(lot.deadlines.is_empty(), "deadline kept after wake {n}");
        }
        // Expiry closes exactly the connections whose time has come.
        let (tcp, _) = (std::net::TcpStream::connect(addr).unwrap(), ());
        clients.push(tcp);
        let (tcp, _) = listener.accept().unwrap();
        let soon = Instant::now();
        lot.add(
            &poll,
            Parked {
                tcp,
                deadline: soon,
                state: 7,
            },
        );
        lot.expire(soon - Duration::from_millis(1));
        assert_eq!(lot.slots.len(), 1);
        lot.expire(soon);
        assert_eq!(lot.slots.len(), 0);
        assert!(lot.deadlines.is_empty());
    }
}
