//! Datagram mode: the listening service that balances UDP flows.
//!
//! A flow is a client address and port. Its first datagram balances it (persistence key, a
//! plugin key reading that datagram as its payload, `follow`, the scheduler), and it gets a
//! socket of its own connected to the chosen backend, so that the kernel matches the
//! backend's replies to it. Every later datagram of the client goes through that socket;
//! every reply goes back to the client from the listening address (`send_to` on the
//! listening socket). A flow ends after `idle_timeout` with no datagram either way.
//!
//! Each listen address runs as `threads` workers reading from the address's one socket
//! (duplicated, as in tcp mode), with one flow table for the address: whichever worker reads a
//! datagram finds its flow. A flow's replies are read by a task on the worker that made it.
//! Sends are plain non-blocking system calls (not through a worker's reactor), so any worker
//! may send on any flow's socket. A worker has one receive buffer of 64 KiB for everything it
//! reads (client and backend datagrams alike): a read and the send that follows happen with no
//! await between them, and the worker is a single thread.
//!
//! Limits: a flow holds a slot of the service's `max_connections` (default
//! [`DEFAULT_MAX_FLOWS`]) and of the process's; a datagram that would start a flow over
//! either is dropped and counted. A send that would block is dropped and counted too (UDP
//! has no backpressure).
//!
//! A flow keeps its backend while the backend drains or is disabled for new clients; it
//! ends, and its next datagram is balanced again, once a health check marks the backend
//! down or the operator puts it in maintenance.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};

use crate::balance::balancer::{Balancer, Decision};
use crate::balance::hooks::Request;
use crate::balance::pool::{ActiveGuard, AdminState};
use crate::config::{Mode, DEFAULT_MAX_FLOWS};
use crate::io::limits::{Limits, Present, Slots, Tally};
use crate::io::listener::{self, stopping};
use crate::observe::metrics::udp_drop;

/// The largest datagram relayed (the largest a UDP header can describe).
pub const MAX_DATAGRAM: usize = 65_535;

/// Datagrams read in one go before the worker lets its other tasks run.
const BATCH: usize = 64;

/// What every flow of a udp service starts with (shared by its addresses): the service as
/// it is now. A flow keeps the version it started with.
pub struct UdpTarget {
    current: ArcSwap<Balancer>,
}

impl UdpTarget {
    pub fn new(balancer: Arc<Balancer>) -> Arc<UdpTarget> {
        Arc::new(UdpTarget {
            current: ArcSwap::new(balancer),
        })
    }

    pub fn balancer(&self) -> Arc<Balancer> {
        self.current.load_full()
    }

    /// New flows use `balancer` from now on.
    pub fn set(&self, balancer: Arc<Balancer>) {
        self.current.store(balancer);
    }
}

/// The flow limit of a udp service: `max_connections`, else [`DEFAULT_MAX_FLOWS`].
pub fn max_flows(max_connections: Option<usize>) -> usize {
    max_connections.unwrap_or(DEFAULT_MAX_FLOWS)
}

/// The flows of one listen address, by client address and port (shared by its workers).
type FlowTable = Mutex<HashMap<SocketAddr, Arc<Flow>>>;

/// One worker of one address of a `mode = "udp"` service.
pub struct UdpListenerUnit {
    name: String,
    socket: std::net::UdpSocket,
    flows: Arc<FlowTable>,
    target: Arc<UdpTarget>,
    limits: Arc<ArcSwap<Limits>>,
}

fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_nonblocking(true)?;
    // Bursts wait in the kernel rather than being dropped there (best effort).
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

impl UdpListenerUnit {
    /// Binds the address now, so that a busy or forbidden address is an error at start-up
    /// (or reload).
    pub fn bind(
        name: String,
        addr: SocketAddr,
        target: Arc<UdpTarget>,
        limits: Arc<ArcSwap<Limits>>,
    ) -> Result<Self, String> {
        let socket = bind_socket(addr)
            .map_err(|e| format!("service {name}: cannot listen on {addr}: {e}"))?;
        Ok(UdpListenerUnit {
            name,
            socket,
            flows: Default::default(),
            target,
            limits,
        })
    }

    /// This listener as `n` workers sharing the socket (duplicated) and the flow table.
    pub fn split(self, n: usize) -> Result<Vec<UdpListenerUnit>, String> {
        let mut workers = Vec::with_capacity(n);
        for _ in 1..n {
            workers.push(UdpListenerUnit {
                socket: self
                    .socket
                    .try_clone()
                    .map_err(|e| format!("service {}: cannot share its socket: {e}", self.name))?,
                name: self.name.clone(),
                flows: self.flows.clone(),
                target: self.target.clone(),
                limits: self.limits.clone(),
            });
        }
        workers.push(self);
        Ok(workers)
    }

    /// Relays until the server stops or `stop` says so; then every flow of this worker ends
    /// (their sockets close, so that a new owner of the address gets all its datagrams).
    pub async fn run(self, mut shutdown: ShutdownWatch, mut stop: listener::Stop, tally: Tally) {
        let socket = match UdpSocket::from_std(self.socket) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(service = %self.name, "cannot use the socket: {e}");
                return;
            }
        };
        let (closing, closed) = watch::channel(false);
        let w = Arc::new(Worker {
            socket,
            buf: Mutex::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice()),
            flows: self.flows,
            epoch: Instant::now(),
            target: self.target,
            limits: self.limits,
            tally: tally.clone(),
            closed,
        });
        loop {
            tokio::select! {
                r = w.socket.readable() => {
                    if let Err(e) = r {
                        tracing::warn!(service = %self.name, "udp socket: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    w.from_clients();
                }
                () = stopping(&mut stop) => break,
                () = stopping(&mut shutdown) => break,
            }
        }
        let _ = closing.send(true);
        w.flows.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // The flows' tasks end at once; wait for them, so that the socket is closed when
        // the address is released.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Arc::strong_count(&w) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One worker's state: its socket, its buffer, its flows.
struct Worker {
    socket: Arc<UdpSocket>,
    buf: Mutex<Box<[u8]>>,
    flows: Arc<FlowTable>,
    /// Times of flows are milliseconds since this.
    epoch: Instant,
    target: Arc<UdpTarget>,
    limits: Arc<ArcSwap<Limits>>,
    tally: Tally,
    /// True once the worker stops: its flows end.
    closed: watch::Receiver<bool>,
}

/// One client address and port, and its backend.
struct Flow {
    socket: UdpSocket,
    backend: usize,
    /// The service version the flow started with.
    balancer: Arc<Balancer>,
    /// Last datagram either way, in ms since the worker's epoch.
    last: AtomicU64,
    /// Ends the flow now (its backend went down).
    end: Notify,
    _active: ActiveGuard,
    _slots: Slots,
    _present: Present,
}

impl Flow {
    /// Sends a client's datagram to the backend.
    fn relay(&self, data: &[u8]) {
        let sc = self.balancer.service_counters();
        match send(&self.socket, data) {
            Ok(n) => {
                sc.udp_datagrams[0].inc();
                self.balancer
                    .backend_counters(self.backend)
                    .bytes_in
                    .inc_by(n as u64);
            }
            Err(_) => sc.udp_dropped[udp_drop::SEND_FAILED].inc(),
        }
    }

    /// Its backend no longer takes it: down per health check, or in maintenance.
    fn backend_gone(&self) -> bool {
        let b = self.balancer.pool.get(self.backend);
        !b.healthy() || b.admin() == AdminState::Maint
    }
}

impl Worker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Reads what clients sent (up to [`BATCH`] datagrams) and relays it.
    fn from_clients(self: &Arc<Self>) {
        for _ in 0..BATCH {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            match self.socket.try_recv_from(&mut buf) {
                Ok((n, peer)) => self.datagram(&buf[..n], peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors reported on the socket and the like: the next read goes on.
                Err(e) => {
                    tracing::debug!("udp receive: {e}");
                }
            }
        }
    }

    /// One datagram from `peer`: to its flow's backend, or the first of a new flow.
    fn datagram(self: &Arc<Self>, data: &[u8], peer: SocketAddr) {
        let existing = {
            let flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            flows.get(&peer).cloned()
        };
        if let Some(f) = existing {
            if !f.backend_gone() {
                f.last.store(self.now_ms(), Relaxed);
                f.relay(data);
                return;
            }
            // Balanced again below; its task ends.
            self.remove(peer, &f);
            f.end.notify_one();
        }
        self.start(data, peer);
    }

    fn remove(&self, peer: SocketAddr, f: &Arc<Flow>) {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        if flows.get(&peer).is_some_and(|x| Arc::ptr_eq(x, f)) {
            flows.remove(&peer);
        }
    }

    /// A new flow: balanced, given its socket, its first datagram sent, its task started.
    fn start(self: &Arc<Self>, data: &[u8], peer: SocketAddr) {
        let b = self.target.balancer();
        let sc = b.service_counters();
        let Some(slots) = self.limits.load().try_acquire() else {
            sc.udp_dropped[udp_drop::FLOW_LIMIT].inc();
            self.tally.waiting();
            return;
        };
        let chosen = match b.followed(peer.ip()) {
            Some(i) => {
                b.backend_counters(i).selected.inc();
                Some((i, b.pool.acquire(i)))
            }
            None => {
                let cfg = b.config();
                let req = Request {
                    service: &cfg.name,
                    mode: Mode::Udp,
                    client: Some(peer),
                    http: None,
                    payload: if b.wants_payload() { data } else { &[] },
                    key: None,
                };
                let keyed = b.key_final(&req);
                // A datagram does not wait: a pinned backend at its agent's maxconn is passed
                // over for another (and the key pinned there); with every backend full it is
                // dropped as with no backend.
                let (mut d, mut persisted) = b.decide(&req, &keyed, &[]);
                if let Decision::Wait(Some(full)) = d {
                    (d, persisted) = b.decide(&req, &keyed, &[full]);
                }
                let chosen = match d {
                    Decision::Go(i, active) => Some((i, active)),
                    Decision::Wait(_) | Decision::Refuse => None,
                };
                b.count(&req, chosen.as_ref().map(|c| c.0), persisted);
                chosen
            }
        };
        let Some((i, active)) = chosen else {
            sc.udp_dropped[udp_drop::NO_BACKEND].inc();
            return;
        };
        let socket = match connected(b.pool.get(i).address) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(client = %peer, "udp flow socket: {e}");
                b.connect_failed(i);
                sc.udp_dropped[udp_drop::SOCKET_ERROR].inc();
                return;
            }
        };
        let flow = Arc::new(Flow {
            socket,
            backend: i,
            _active: active,
            balancer: b.clone(),
            last: AtomicU64::new(self.now_ms()),
            end: Notify::new(),
            _slots: slots,
            _present: self.tally.enter(),
        });
        {
            let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            match flows.entry(peer) {
                // Another worker made this client's flow meanwhile: this one goes unused.
                Entry::Occupied(e) => {
                    let f = e.get().clone();
                    drop(flows);
                    f.last.store(self.now_ms(), Relaxed);
                    f.relay(data);
                    return;
                }
                Entry::Vacant(e) => {
                    e.insert(flow.clone());
                }
            }
        }
        flow.relay(data);
        self.tally.accepted();
        sc.udp_flows.inc();
        sc.udp_active.inc();
        let w = self.clone();
        tokio::spawn(async move {
            w.replies(&flow, peer).await;
            w.remove(peer, &flow);
            flow.balancer.service_counters().udp_active.dec();
        });
    }

    /// Relays the backend's replies of one flow to its client until the flow ends.
    async fn replies(&self, f: &Flow, peer: SocketAddr) {
        let idle = f.balancer.config().idle_timeout;
        let idle_ms = idle.as_millis() as u64;
        let mut closed = self.closed.clone();
        if *closed.borrow_and_update() {
            return;
        }
        loop {
            let last = f.last.load(Relaxed);
            let deadline = self.epoch + Duration::from_millis(last + idle_ms);
            tokio::select! {
                r = f.socket.readable() => {
                    if r.is_err() {
                        return;
                    }
                    self.to_client(f, peer);
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    if self.now_ms() >= f.last.load(Relaxed) + idle_ms {
                        return;
                    }
                }
                () = f.end.notified() => return,
                _ = closed.changed() => return,
            }
        }
    }

    /// Reads the flow's replies (up to [`BATCH`]) and sends them to the client from the
    /// listening address.
    fn to_client(&self, f: &Flow, peer: SocketAddr) {
        let sc = f.balancer.service_counters();
        for _ in 0..BATCH {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            match f.socket.try_recv(&mut buf) {
                Ok(n) => {
                    f.last.store(self.now_ms(), Relaxed);
                    match send_to(&self.socket, &buf[..n], peer) {
                        Ok(n) => {
                            sc.udp_datagrams[1].inc();
                            f.balancer
                                .backend_counters(f.backend)
                                .bytes_out
                                .inc_by(n as u64);
                        }
                        Err(_) => sc.udp_dropped[udp_drop::SEND_FAILED].inc(),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The backend's port is closed (ICMP port unreachable), and the like.
                Err(e) => {
                    tracing::debug!(client = %peer, "udp flow receive: {e}");
                    return;
                }
            }
        }
    }
}

/// Sends on a connected socket now, or fails (a full buffer: `WouldBlock`). Not tokio's
/// `try_send`, which also fails while its readiness is not known yet (a new socket).
fn send(socket: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send(data)
}

/// As [`send`], to `peer`.
fn send_to(socket: &UdpSocket, data: &[u8], peer: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(data, &peer.into())
}

/// A socket of its own for a flow, connected to its backend.
fn connected(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match backend {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.set_nonblocking(true)?;
    s.connect(backend)?;
    UdpSocket::from_std(s)
}
