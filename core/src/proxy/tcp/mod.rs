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

pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::balance::balancer::Balancer;
use crate::balance::hooks::{KeyOutcome, Request};
use crate::config::Mode;
use crate::io::limits::{Limits, Tally};
use crate::io::listener;
use relay::relay;

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
}

impl Target {
    pub fn new(
        balancer: Arc<Balancer>,
        front: Option<Arc<rustls::ServerConfig>>,
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
            balancer,
            front: front.map(TlsAcceptor::from),
            back,
        })
    }

    /// The same client TLS with another balancer (backends added or removed).
    pub fn with_balancer(&self, balancer: Arc<Balancer>) -> Result<Target, String> {
        let mut t = Target::new(balancer, None)?;
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
                    target.serve(tcp, peer).await;
                    drop(slots);
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
                if balancer.key(&r) != KeyOutcome::NeedMore {
                    return buf;
                }
            }
            // EOF, error or timeout: balance with what we have.
            _ => return buf,
        }
    }
}

/// Connects without the `getsockopt(SO_ERROR)` that tokio's connect makes: on Linux a failed
/// non-blocking connect reports an error or hang-up event with its writability, so the
/// readiness alone tells (as HAProxy does).
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    s.set_tcp_nodelay(true)?;
    match s.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let tcp = TcpStream::from_std(s.into())?;
    let ready = tcp.ready(tokio::io::Interest::WRITABLE).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(tcp
            .take_error()?
            .unwrap_or_else(|| std::io::ErrorKind::ConnectionRefused.into()));
    }
    Ok(tcp)
}

impl Target {
    /// One client connection: TLS termination if configured, then the proxying.
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        let Some(front) = &self.front else {
            return self.proxy(tcp, peer).await;
        };
        let timeout = self.balancer.config().inspect_timeout;
        match tokio::time::timeout(timeout, front.accept(tcp)).await {
            Ok(Ok(tls)) => self.proxy(tls, peer).await,
            Ok(Err(e)) => tracing::debug!(client = %peer, "TLS handshake failed: {e}"),
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake not done within inspect_timeout")
            }
        }
    }

    /// From the client's first bytes to the end of the relay.
    async fn proxy<C: ClientStream>(&self, mut client: C, peer: SocketAddr) {
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
        let outcome = match b.key(&req) {
            KeyOutcome::NeedMore => KeyOutcome::None,
            o => o,
        };

        let mut failed = Vec::new();
        let (i, server) = loop {
            let Some(i) = b.choose(&req, &outcome, &failed) else {
                return;
            };
            match tokio::time::timeout(cfg.connect_timeout, connect(b.pool.get(i).address)).await {
                Ok(Ok(s)) => break (i, s),
                _ => {
                    b.connect_failed(i);
                    failed.push(i);
                    if failed.len() > cfg.retries as usize {
                        return;
                    }
                }
            }
        };
        let _active = b.pool.acquire(i);
        match &self.back {
            None => client.relay_to(server, payload, cfg.idle_timeout).await,
            Some((connector, names)) => {
                let handshake = connector.connect(names[i].clone(), server);
                let mut server = match tokio::time::timeout(cfg.connect_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        b.connect_failed(i);
                        return;
                    }
                };
                if !payload.is_empty() && server.write_all(&payload).await.is_err() {
                    return;
                }
                relay::relay_streams(client, server, cfg.idle_timeout).await;
            }
        }
    }
}

/// A client connection: a bare socket (relayed by readiness) or a TLS stream.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Sends `payload` to `server`, then copies both ways.
    async fn relay_to(self, server: TcpStream, payload: Vec<u8>, idle: std::time::Duration);
}

impl ClientStream for TcpStream {
    async fn relay_to(self, mut server: TcpStream, payload: Vec<u8>, idle: std::time::Duration) {
        if !payload.is_empty() && server.write_all(&payload).await.is_err() {
            return;
        }
        drop(payload);
        relay(&self, &server, idle).await;
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    async fn relay_to(self, mut server: TcpStream, payload: Vec<u8>, idle: std::time::Duration) {
        if !payload.is_empty() && server.write_all(&payload).await.is_err() {
            return;
        }
        drop(payload);
        relay::relay_streams(self, server, idle).await;
    }
}
