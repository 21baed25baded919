//! L4 mode: the listening service that balances TCP connections.
//!
//! Path of a connection: (1) if the persistence-key hook wants the client's first bytes, read
//! them until the hook has a whole message or `inspect_timeout` passes; (2) persistence key
//! and backend choice as in http mode; (3) connect, trying another backend on failure up to
//! `retries` times; (4) send the inspected bytes unchanged, then copy both ways
//! ([`relay`]) until both sides are done or nothing moved for `idle_timeout`.
//!
//! With `[[service.certificate]]` the client's TLS is terminated first (the handshake within
//! `inspect_timeout`), and a persistence hook sees the decrypted first bytes; with
//! `backend_tls` the connection to the backend is TLS. Plain connections keep the
//! readiness-driven socket relay; TLS on either side copies through the TLS streams.
//!
//! With `accept_proxy` a connection's PROXY header is read first (within `inspect_timeout`,
//! before TLS) and its client address is the connection's from then on; with `send_proxy`
//! the backend connection begins with a header for that client (before TLS to the backend,
//! in the same write as the inspected bytes otherwise). With `source`, the backend connection
//! is made from the client's address or a fixed one ([`crate::proxy::connect`]).

pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::balance::admission::{QueueEnd, Queued};
use crate::balance::balancer::{Balancer, Persisted};
use crate::balance::hooks::{KeyOutcome, Request};
use crate::config::Mode;
use crate::io::limits::{Limits, Slots, Tally};
use crate::io::listener;
use crate::observe::access_log::{AccessLog, TcpEnd, TcpLine, TlsFields};
use crate::proxy::connect::{connect, Bind};
use crate::proxy_protocol::send;
use relay::relay;
use relay::Relayed;

/// The largest first message a hook may ask to see.
pub const MAX_INSPECT_BYTES: usize = 16 * 1024;

/// The listener of one address of a `mode = "tcp"` service.
pub struct TcpListenerUnit {
    name: String,
    socket: std::net::TcpListener,
    conns: Arc<Conns>,
    limits: Arc<ArcSwap<Limits>>,
}

/// What every connection of a tcp service needs (shared by its addresses).
pub struct Conns {
    /// The service as it is now; a connection keeps the version it started with.
    current: ArcSwap<Target>,
}

/// One version of the service: its balancer, TLS towards its clients, and TLS towards its
/// backends (with each backend's server name, by index).
pub struct Target {
    balancer: Arc<Balancer>,
    /// Terminates the clients' TLS.
    front: Option<TlsAcceptor>,
    back: Option<(TlsConnector, Vec<ServerName<'static>>)>,
    /// The access log, unless the service opted out.
    log: Option<Arc<AccessLog>>,
}

impl Target {
    /// `log` is the process's access log (if any); the service's `access_log` decides.
    pub fn new(
        balancer: Arc<Balancer>,
        front: Option<Arc<rustls::ServerConfig>>,
        log: Option<&Arc<AccessLog>>,
    ) -> Result<Target, String> {
        let cfg = balancer.config();
        let back = match &cfg.backend_tls {
            None => None,
            Some(t) => {
                let config: Arc<ClientConfig> = crate::tls::client::client_config(t)?;
                let names = cfg
                    .backends
                    .iter()
                    .map(|b| crate::tls::client::server_name(t, b))
                    .collect();
                Some((TlsConnector::from(config), names))
            }
        };
        Ok(Target {
            log: log.filter(|_| cfg.access_log).cloned(),
            balancer,
            front: front.map(TlsAcceptor::from),
            back,
        })
    }

    /// The same client TLS and log with another balancer (backends added or removed).
    pub fn with_balancer(&self, balancer: Arc<Balancer>) -> Result<Target, String> {
        let mut t = Target::new(balancer, None, self.log.as_ref())?;
        t.front = self.front.clone();
        Ok(t)
    }
}

impl Conns {
    pub fn new(target: Target) -> Arc<Conns> {
        Arc::new(Conns {
            current: ArcSwap::from_pointee(target),
        })
    }

    pub fn target(&self) -> Arc<Target> {
        self.current.load_full()
    }

    /// New connections use `target` from now on.
    pub fn set_target(&self, target: Target) {
        self.current.store(Arc::new(target));
    }
}

impl TcpListenerUnit {
    /// Binds the address now, so that a busy or forbidden address is an error at start-up
    /// (or reload).
    pub fn bind(
        name: String,
        addr: SocketAddr,
        conns: Arc<Conns>,
        limits: Arc<ArcSwap<Limits>>,
    ) -> Result<Self, String> {
        Ok(TcpListenerUnit {
            socket: listener::bind(&name, addr)?,
            name,
            conns,
            limits,
        })
    }

    /// This listener as `n` workers of one address, each to run on its own thread, sharing
    /// the listening socket (duplicated) and the service.
    pub fn split(self, n: usize) -> Result<Vec<TcpListenerUnit>, String> {
        let mut workers = Vec::with_capacity(n);
        for _ in 1..n {
            workers.push(TcpListenerUnit {
                socket: self
                    .socket
                    .try_clone()
                    .map_err(|e| format!("service {}: cannot share its socket: {e}", self.name))?,
                name: self.name.clone(),
                conns: self.conns.clone(),
                limits: self.limits.clone(),
            });
        }
        workers.push(self);
        Ok(workers)
    }

    /// Accepts until the server stops or `stop` says so; connections carry on either way
    /// (the server ends them after its grace period).
    pub async fn run(self, shutdown: ShutdownWatch, stop: listener::Stop, tally: Tally) {
        let conns = self.conns;
        listener::serve(
            &self.name,
            self.socket,
            self.limits,
            tally,
            shutdown,
            stop,
            move |tcp, peer, slots| {
                let target = conns.target();
                tokio::spawn(async move {
                    target.serve(tcp, peer, &slots).await;
                });
            },
        )
        .await;
    }
}

/// Reads the client's first bytes until the hook is satisfied, the client stops sending,
/// or the inspect timeout passes. Returns the bytes read (all of them are forwarded).
async fn inspect<S: AsyncRead + Unpin>(
    balancer: &Balancer,
    client: &mut S,
    req: &Request<'_>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + balancer.config().inspect_timeout;
    let mut chunk = [0u8; 2048];
    loop {
        let read = tokio::time::timeout_at(deadline, client.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= MAX_INSPECT_BYTES {
                    return buf;
                }
                let r = Request {
                    payload: &buf,
                    ..*req
                };
                if balancer.key(&r).outcome != KeyOutcome::NeedMore {
                    return buf;
                }
            }
            // EOF, error or timeout: balance with what we have.
            _ => return buf,
        }
    }
}

/// What a connection's access log line reports.
struct Outcome {
    backend: Option<usize>,
    persisted: Persisted,
    retries: u32,
    relayed: Relayed,
    queue: Option<Queued>,
}

impl Outcome {
    fn ended(end: TcpEnd) -> Outcome {
        Outcome {
            backend: None,
            persisted: Persisted::None,
            retries: 0,
            relayed: Relayed {
                bytes_in: 0,
                bytes_out: 0,
                end,
            },
            queue: None,
        }
    }
}

impl Target {
    /// One client connection: TLS termination if configured, then the proxying, then its
    /// access log line.
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr, slots: &Slots) {
        let started = std::time::Instant::now();
        let Some((tcp, peer, header)) = self.proxy_protocol(tcp, peer).await else {
            slots.refused();
            return;
        };
        let (outcome, tls) = match &self.front {
            None => (self.proxy(tcp, peer, header).await, None),
            Some(front) => {
                let timeout = self.balancer.config().inspect_timeout;
                match tokio::time::timeout(timeout, front.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = tls.get_ref().1;
                        let version = crate::tls::session::version_name(conn.protocol_version());
                        let sni: Option<Box<str>> = match &self.log {
                            Some(_) => conn.server_name().map(Box::from),
                            None => None,
                        };
                        (self.proxy(tls, peer, header).await, Some((version, sni)))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(client = %peer, "TLS handshake failed: {e}");
                        (Outcome::ended(TcpEnd::TlsError), None)
                    }
                    Err(_) => {
                        tracing::debug!(client = %peer, "TLS handshake not done within inspect_timeout");
                        (Outcome::ended(TcpEnd::TlsError), None)
                    }
                }
            }
        };
        let b = &self.balancer;
        let r = outcome.relayed;
        let sc = b.service_counters();
        sc.tcp_ends[r.end as usize].inc();
        if outcome.retries > 0 {
            sc.retries.inc_by(outcome.retries as u64);
        }
        if let Some(i) = outcome.backend {
            let bc = b.backend_counters(i);
            bc.bytes_in.inc_by(r.bytes_in);
            bc.bytes_out.inc_by(r.bytes_out);
        }
        let Some(log) = &self.log else {
            return;
        };
        log.tcp(&TcpLine {
            time: SystemTime::now(),
            service: &b.config().name,
            client: peer,
            backend: outcome.backend.map(|i| b.pool.get(i).name.as_str()),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            persistence: outcome.persisted,
            retries: outcome.retries,
            end: r.end,
            tls: tls.as_ref().map(|(version, sni)| TlsFields {
                version,
                sni: sni.as_deref(),
            }),
            queue: outcome.queue,
        });
    }

    /// With `accept_proxy`, reads the connection's PROXY header (`None`: refused, closed);
    /// with `send_proxy`, makes the header for the backend. Returns the socket, the client's
    /// address and that header.
    async fn proxy_protocol(
        &self,
        mut tcp: TcpStream,
        mut peer: SocketAddr,
    ) -> Option<(TcpStream, SocketAddr, Option<Vec<u8>>)> {
        let cfg = self.balancer.config();
        let mut local = None;
        if let Some(policy) = &cfg.accept_proxy {
            let deadline = std::time::Instant::now() + cfg.inspect_timeout;
            (peer, local) = policy.client(&mut tcp, peer, deadline).await?;
        }
        let header = match cfg.send_proxy {
            None => None,
            Some(v) => {
                let local = match local {
                    Some(l) => l,
                    None => tcp.local_addr().ok()?,
                };
                Some(send::header(v, peer, local))
            }
        };
        Some((tcp, peer, header))
    }

    /// From the client's first bytes to the end of the relay; `header`: the PROXY header
    /// the backend connection begins with.
    async fn proxy<C: ClientStream>(
        &self,
        mut client: C,
        peer: SocketAddr,
        header: Option<Vec<u8>>,
    ) -> Outcome {
        let b = &self.balancer;
        let cfg = b.config();
        let base = Request {
            service: &cfg.name,
            mode: Mode::Tcp,
            client: Some(peer),
            http: None,
            payload: &[],
            key: None,
        };
        let payload = if b.wants_payload() {
            inspect(b, &mut client, &base).await
        } else {
            Vec::new()
        };
        let req = Request {
            payload: &payload,
            ..base
        };
        // Inspection is over: a key kind still waiting for bytes yields to the next one.
        let outcome = b.key_final(&req);

        let bind = Bind::new(cfg.source, peer.ip());
        let mut failed: Vec<usize> = Vec::new();
        let mut persisted = Persisted::None;
        let mut queue = None;
        let done = |failed: &[usize], persisted, end, queue| Outcome {
            backend: failed.last().copied(),
            persisted,
            retries: (failed.len() as u32).saturating_sub(1),
            queue,
            ..Outcome::ended(end)
        };
        // The slot is taken with the choice, so a connect in progress counts against the
        // backend's max_connections.
        let (i, server, _active) = loop {
            let a = b.admit(&req, &outcome, &failed).await;
            if failed.is_empty() {
                persisted = a.persisted;
            }
            queue = a.queued.or(queue);
            let Some((i, active)) = a.chosen else {
                let end = match (a.queued.map(|q| q.end), failed.is_empty()) {
                    (Some(QueueEnd::Timeout), _) => TcpEnd::QueueTimeout,
                    (Some(QueueEnd::Full), _) => TcpEnd::QueueFull,
                    (_, true) => TcpEnd::NoBackend,
                    (_, false) => TcpEnd::ConnectFailure,
                };
                return done(&failed, persisted, end, queue);
            };
            match tokio::time::timeout(cfg.connect_timeout, connect(b.pool.get(i).address, bind))
                .await
            {
                Ok(Ok(s)) => break (i, s, active),
                _ => {
                    drop(active);
                    b.connect_failed(i);
                    failed.push(i);
                    if failed.len() > cfg.retries as usize {
                        return done(&failed, persisted, TcpEnd::ConnectFailure, queue);
                    }
                }
            }
        };
        let served = |relayed| Outcome {
            backend: Some(i),
            persisted,
            retries: failed.len() as u32,
            relayed,
            queue,
        };
        let nothing = |end| Relayed {
            bytes_in: 0,
            bytes_out: 0,
            end,
        };
        match &self.back {
            None => {
                // The header goes in the same write as the inspected bytes; it is not the
                // client's, so not counted as theirs.
                let (first, proxy_len) = match header {
                    None => (payload, 0),
                    Some(mut h) => {
                        let n = h.len() as u64;
                        h.extend_from_slice(&payload);
                        (h, n)
                    }
                };
                let mut r = client.relay_to(server, first, cfg.idle_timeout).await;
                r.bytes_in = r.bytes_in.saturating_sub(proxy_len);
                served(r)
            }
            Some((connector, names)) => {
                // The PROXY header goes before the TLS handshake, in the clear.
                let handshake = async {
                    let mut server = server;
                    if let Some(h) = &header {
                        server.write_all(h).await?;
                    }
                    connector.connect(names[i].clone(), server).await
                };
                let mut server = match tokio::time::timeout(cfg.connect_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        b.connect_failed(i);
                        return served(nothing(TcpEnd::ConnectFailure));
                    }
                };
                if !payload.is_empty() && server.write_all(&payload).await.is_err() {
                    return served(nothing(TcpEnd::BackendClose));
                }
                let mut r = relay::relay_streams(client, server, cfg.idle_timeout).await;
                r.bytes_in += payload.len() as u64;
                served(r)
            }
        }
    }
}

/// A client connection: a bare socket (relayed by readiness) or a TLS stream.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Sends `payload` to `server`, then copies both ways.
    async fn relay_to(self, server: TcpStream, payload: Vec<u8>, idle: Duration) -> Relayed;
}

/// The backend closed before it took the inspected bytes.
const REFUSED_PAYLOAD: Relayed = Relayed {
    bytes_in: 0,
    bytes_out: 0,
    end: TcpEnd::BackendClose,
};

impl ClientStream for TcpStream {
    async fn relay_to(self, mut server: TcpStream, payload: Vec<u8>, idle: Duration) -> Relayed {
        if !payload.is_empty() && server.write_all(&payload).await.is_err() {
            return REFUSED_PAYLOAD;
        }
        let sent = payload.len() as u64;
        drop(payload);
        let mut r = relay(&self, &server, idle).await;
        r.bytes_in += sent;
        r
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    async fn relay_to(self, mut server: TcpStream, payload: Vec<u8>, idle: Duration) -> Relayed {
        if !payload.is_empty() && server.write_all(&payload).await.is_err() {
            return REFUSED_PAYLOAD;
        }
        let sent = payload.len() as u64;
        drop(payload);
        let mut r = relay::relay_streams(self, server, idle).await;
        r.bytes_in += sent;
        r
    }
}
