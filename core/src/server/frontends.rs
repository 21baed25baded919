//! Every listener of the process, managed by one pingora service. Listeners start and stop
//! while it runs: a reload binds new addresses and releases dropped ones (pingora itself
//! cannot add a service once started).
//!
//! Each listener runs as `threads` workers of its own, as pingora gives each of its services
//! its threads: a plugin call that holds a worker up to its deadline then delays only the
//! connections of its own address, never those of another service. A stopped listener's
//! workers live on until the last connection it accepted has ended.
//!
//! A worker is tokio's current-thread scheduler on a thread of its own (pingora's
//! `work_stealing = false`), accepting from the address's one socket (duplicated): a
//! connection lives on the worker that accepted it, with no cross-thread wake-ups, task
//! stealing or atomic run-queue handoffs. A busy worker comes late to the accept queue, so an
//! idle one takes the next connection. With two threads, tokio's multi-thread scheduler cost
//! 41.5 µs of CPU per keep-alive request and two current-thread workers 30.7 µs (alternated,
//! wrk -t2 -c100; ARCHITECTURE.md, "Performance choices").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::sync::{mpsc, oneshot, watch};

use crate::io::limits::Tally;
use crate::io::listener::stopping;
use crate::observe::metrics::Metrics;
use crate::proxy::http::listener::HttpListener;
use crate::proxy::tcp::TcpListenerUnit;
use crate::proxy::udp::UdpListenerUnit;

/// The listener of one address.
pub enum Unit {
    Http(HttpListener),
    Tcp(TcpListenerUnit),
    Udp(UdpListenerUnit),
}

/// A listening address with its protocol: a udp service may listen on the address and port
/// of a tcp or http one (RDP's 3389).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub udp: bool,
}

impl Endpoint {
    pub fn tcp(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, udp: false }
    }

    pub fn udp(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, udp: true }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.udp {
            true => write!(f, "udp {}", self.addr),
            false => write!(f, "{}", self.addr),
        }
    }
}

impl Unit {
    /// The same listener as `n` workers (see [`HttpListener::split`]).
    fn split(self, n: usize) -> Result<Vec<Unit>, String> {
        Ok(match self {
            Unit::Http(l) => l.split(n)?.into_iter().map(Unit::Http).collect(),
            Unit::Tcp(l) => l.split(n)?.into_iter().map(Unit::Tcp).collect(),
            Unit::Udp(l) => l.split(n)?.into_iter().map(Unit::Udp).collect(),
        })
    }

    fn is_udp(&self) -> bool {
        matches!(self, Unit::Udp(_))
    }
}

enum Command {
    Start(SocketAddr, Unit),
    /// Stop accepting on the address; the sender is told once its socket is closed.
    Stop(Endpoint, oneshot::Sender<()>),
}

/// The listeners, as a pingora service.
pub struct Frontends {
    initial: Vec<(SocketAddr, Unit)>,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// Worker threads of each listener's runtime.
    threads: usize,
    metrics: Arc<Metrics>,
}

/// Starts and stops listeners of a running [`Frontends`].
#[derive(Clone)]
pub struct FrontendsHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl Frontends {
    pub fn new(threads: usize, metrics: Arc<Metrics>) -> (Frontends, FrontendsHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Frontends {
                initial: Vec::new(),
                commands: Some(rx),
                threads,
                metrics,
            },
            FrontendsHandle { tx },
        )
    }

    /// A listener to start with the server.
    pub fn add(&mut self, addr: SocketAddr, unit: Unit) {
        self.initial.push((addr, unit));
    }
}

impl FrontendsHandle {
    pub fn start(&self, addr: SocketAddr, unit: Unit) {
        let _ = self.tx.send(Command::Start(addr, unit));
    }

    /// Stops the listener of `addr` and waits until its socket is closed (connections it
    /// accepted carry on; a udp listener's flows end).
    pub async fn stop(&self, addr: Endpoint) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Stop(addr, done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// A running listener: its stop signal, and what resolves once its socket is closed.
type Running = (watch::Sender<bool>, oneshot::Receiver<()>);

/// How often a stopped listener looks whether its last connection has ended.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts `unit` as `threads` workers, each on a current-thread runtime on a thread of its
/// own that keeps the runtime until the listener has stopped and every connection it accepted
/// has ended (or the server stops).
fn spawn(
    addr: SocketAddr,
    unit: Unit,
    threads: usize,
    shutdown: &ShutdownWatch,
    metrics: &Metrics,
) -> Running {
    let (stop, stopped) = watch::channel(false);
    let tally = Tally::default();
    if !unit.is_udp() {
        // udp flows are counted by the service's own metrics.
        metrics.add_listener(addr, tally.counts());
    }
    let (closed, on_closed) = oneshot::channel();
    let workers = match unit.split(threads) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(%addr, "cannot start the listener: {e}");
            let _ = closed.send(());
            return (stop, on_closed);
        }
    };
    // The address is closed once every worker has stopped accepting.
    let closed = Arc::new(Closed {
        left: AtomicUsize::new(workers.len()),
        tx: Mutex::new(Some(closed)),
    });
    for (i, unit) in workers.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%addr, "cannot start the listener's runtime: {e}");
                closed.one_done();
                continue;
            }
        };
        let (mut shutdown, stopped, tally, closed) = (
            shutdown.clone(),
            stopped.clone(),
            tally.clone(),
            closed.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("listener {addr} #{i}"))
            .spawn(move || {
                runtime.block_on(async {
                    match unit {
                        Unit::Http(l) => l.run(shutdown.clone(), stopped, tally.clone()).await,
                        Unit::Tcp(l) => l.run(shutdown.clone(), stopped, tally.clone()).await,
                        Unit::Udp(l) => l.run(shutdown.clone(), stopped, tally.clone()).await,
                    }
                    closed.one_done();
                    // Stopped by a reload: the connections finish on their runtimes.
                    while tally.count() > 0 && !*shutdown.borrow() {
                        tokio::select! {
                            () = tokio::time::sleep(DRAIN_POLL) => {}
                            () = stopping(&mut shutdown) => {}
                        }
                    }
                });
                if *shutdown.borrow() {
                    // The server ends the connections after its grace period; keep serving
                    // them until the process exits.
                    runtime.block_on(std::future::pending::<()>());
                }
                runtime.shutdown_background();
            });
        if let Err(e) = spawned {
            tracing::error!(%addr, "cannot start the listener's thread: {e}");
        }
    }
    (stop, on_closed)
}

/// Counts down the workers of an address that still accept.
struct Closed {
    left: AtomicUsize,
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

impl Closed {
    fn one_done(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(());
            }
        }
    }
}

#[async_trait]
impl Service for Frontends {
    /// `_fds` is pingora's hand-over of listening sockets for a zero-downtime binary upgrade,
    /// which Plugboard does not offer (yet): the sockets are bound when the listeners are made.
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(mut commands) = self.commands.take() else {
            return;
        };
        let threads = self.threads;
        let metrics = self.metrics.clone();
        let mut running: HashMap<Endpoint, Running> = HashMap::new();
        let key = |addr, unit: &Unit| Endpoint {
            addr,
            udp: unit.is_udp(),
        };
        for (addr, unit) in self.initial.drain(..) {
            running.insert(
                key(addr, &unit),
                spawn(addr, unit, threads, &shutdown, &metrics),
            );
        }
        let mut open = true;
        loop {
            tokio::select! {
                c = commands.recv(), if open => match c {
                    Some(Command::Start(addr, unit)) => {
                        running.insert(
                            key(addr, &unit),
                            spawn(addr, unit, threads, &shutdown, &metrics),
                        );
                    }
                    Some(Command::Stop(addr, done)) => match running.remove(&addr) {
                        Some((stop, closed)) => {
                            let _ = stop.send(true);
                            tokio::spawn(async move {
                                let _ = closed.await;
                                let _ = done.send(());
                            });
                        }
                        None => {
                            let _ = done.send(());
                        }
                    },
                    // Nobody can start or stop listeners any more: serve until shutdown.
                    None => open = false,
                },
                () = stopping(&mut shutdown) => break,
            }
        }
    }

    fn name(&self) -> &str {
        "listeners"
    }

    /// Managing listeners takes one thread; each listener has its own runtime.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}
