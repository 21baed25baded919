//! Accepts HTTP client connections and holds silent ones cheaply.
//!
//! pingora's own listener gives every connection buffered stream state and enters the proxy's
//! request future at once, so a client that is connected but silent (before its first request,
//! or between keep-alive requests) holds about 27 KiB: the boxed request future, a 4 KiB header
//! buffer and stream buffers. This listener waits for a request's first bytes on the bare
//! socket's readiness, and only then builds the pingora session and runs the proxy through
//! [`HttpServerApp::process_new_http`] (pingora's entry point for custom accept loops). A silent
//! client costs its task, its socket registration and a little bookkeeping, as in HAProxy, and
//! the request path is unchanged: no extra system call per request.
//!
//! Limits at this door: a client gets `header_timeout` from a request's first byte to the end
//! of its header (else 408 and close, whatever `idle_timeout` says); connections above the
//! service's or the process's `max_connections` wait in the backlog ([`crate::io::limits`]).
//! Pipelined requests (several sent in one write) are answered in order.
//!
//! TLS clients are handshaken here (rustls, driven by readiness: `crate::tls::io`) within
//! `header_timeout`; an HTTP/1 TLS client then takes the same path as a plaintext one, its TLS
//! session riding along when it is parked. A client that negotiated `h2` is handed to
//! pingora's HTTP/2 server for the life of the connection.
//!
//! On an address with `accept_proxy`, a new connection's PROXY header is read first (within
//! `header_timeout`, before TLS), and the client address it carries is the connection's peer
//! from then on.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::VirtualSocketStream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;

use rustls::ServerConfig;

use super::client_socket::{Client, ClientSocket};
use super::phases::HttpService;
use super::tls_info::WithTls;
use crate::io::limits::{Limits, Slots, Tally};
use crate::io::listener::{self, stopping};
use crate::io::parking::{LotWatcher, ParkingLot, PARK_AFTER};
use crate::proxy_protocol::AcceptProxy;
use crate::tls::session::TlsSession;

/// What a client whose header is too slow gets before the connection closes.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
/// What a client whose header is too large gets before the connection closes.
const HEADER_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Timeouts of one http service.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A silent client (before its first request or between requests) is closed after this.
    pub idle: Duration,
    /// From a request's first byte to the end of its header.
    pub header: Duration,
}

/// What a reload may change about a listen address. A connection takes the settings current
/// when its task starts (at accept, and again when it leaves the parking lot).
pub struct Settings {
    pub timeouts: Timeouts,
    /// Clients speak TLS.
    pub tls: Option<Arc<ServerConfig>>,
    /// Connections begin with a PROXY header (from these peers).
    pub accept_proxy: Option<AcceptProxy>,
    /// A service of the address sends PROXY headers to its backends, which carry the address
    /// a client connected to: a connection notes its local address once, not per request.
    pub send_proxy: bool,
}

/// The listener of one http listen address (serving every service that shares it).
pub struct HttpListener {
    name: String,
    socket: std::net::TcpListener,
    proxy: Arc<HttpProxy<HttpService>>,
    settings: Arc<ArcSwap<Settings>>,
    limits: Arc<ArcSwap<Limits>>,
    lot: (ParkingLot<Conn>, LotWatcher<Conn>),
}

/// A listener's settings and limits, which a reload that keeps its address replaces.
#[derive(Clone)]
pub struct HttpHandle {
    pub settings: Arc<ArcSwap<Settings>>,
    pub limits: Arc<ArcSwap<Limits>>,
}

impl HttpHandle {
    pub fn new(settings: Settings, limits: Limits) -> HttpHandle {
        HttpHandle {
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            limits: Arc::new(ArcSwap::from_pointee(limits)),
        }
    }
}

/// What every connection of an address needs.
struct Shared {
    proxy: Arc<HttpProxy<HttpService>>,
    settings: Arc<ArcSwap<Settings>>,
    /// The server's: the proxy reads it to stop keep-alive while shutting down, and waiting
    /// connections and the parking lot watch it (a tokio watch, whose waiters are already
    /// spread over shards).
    shutdown: ShutdownWatch,
    lot: ParkingLot<Conn>,
}

impl HttpListener {
    /// Binds the address now, so that a busy or forbidden address is an error at start-up
    /// (or reload) naming the service, not a log line after it.
    pub fn bind(
        name: String,
        addr: SocketAddr,
        mut proxy: HttpProxy<HttpService>,
        handle: HttpHandle,
    ) -> Result<Self, String> {
        let socket = listener::bind(&name, addr)?;
        let lot = ParkingLot::new()
            .map_err(|e| format!("service {name}: cannot make an epoll set: {e}"))?;
        // Connections that negotiated h2 enter pingora through `process_new`, which starts
        // HTTP/2 on a stream without TLS of its own when h2c is on (plaintext HTTP/1 clients
        // never take that path).
        let mut o = pingora::apps::HttpServerOptions::default();
        o.h2c = true;
        o.h2_idle_timeout = Some(handle.settings.load().timeouts.idle);
        proxy.server_options = Some(o);
        Ok(HttpListener {
            name,
            socket,
            proxy: Arc::new(proxy),
            settings: handle.settings,
            limits: handle.limits,
            lot,
        })
    }

    /// This listener as `n` workers of one address, each to run on its own thread: the
    /// listening socket (duplicated; the kernel's accept queue is one), the proxy, settings and
    /// limits are shared, and each worker has its own parking lot.
    pub fn split(self, n: usize) -> Result<Vec<HttpListener>, String> {
        let mut workers = Vec::with_capacity(n);
        for _ in 1..n {
            let socket = self
                .socket
                .try_clone()
                .map_err(|e| format!("service {}: cannot share its socket: {e}", self.name))?;
            let lot = ParkingLot::new()
                .map_err(|e| format!("service {}: cannot make an epoll set: {e}", self.name))?;
            workers.push(HttpListener {
                name: self.name.clone(),
                socket,
                proxy: self.proxy.clone(),
                settings: self.settings.clone(),
                limits: self.limits.clone(),
                lot,
            });
        }
        workers.push(self);
        Ok(workers)
    }

    /// Accepts and serves until the server stops or `stop` says so. Connections already
    /// accepted carry on either way; `tally` counts them.
    pub async fn run(self, shutdown: ShutdownWatch, stop: listener::Stop, tally: Tally) {
        let (lot, watcher) = self.lot;
        let shared = Arc::new(Shared {
            proxy: self.proxy.clone(),
            settings: self.settings,
            shutdown: shutdown.clone(),
            lot,
        });
        let woken = shared.clone();
        watcher.start(shutdown.clone(), move |tcp, conn| {
            tokio::spawn(serve(tcp, conn, true, woken.clone()));
        });
        let accepted = shared.clone();
        listener::serve(
            &self.name,
            self.socket,
            self.limits,
            tally,
            shutdown.clone(),
            stop,
            move |tcp, peer, slots| {
                let conn = Conn {
                    peer,
                    local: None,
                    settings: None,
                    idle_since: Instant::now(),
                    tls: None,
                    _slots: slots,
                };
                let shared = accepted.clone();
                match shared.settings.load().accept_proxy.is_some() {
                    true => tokio::spawn(serve_proxied(tcp, conn, shared)),
                    false => tokio::spawn(serve(tcp, conn, false, shared)),
                };
            },
        )
        .await;
        if *shutdown.borrow() {
            // Requests waiting inside pingora for a kept-alive client's next bytes give up.
            shared.proxy.http_cleanup().await;
        }
    }
}

/// What a connection carries from one request to the next, in its task or parked.
struct Conn {
    /// The client: the peer, or the address its PROXY header carried.
    peer: SocketAddr,
    /// The address the client connected to, when known: its PROXY header's destination, or
    /// (for `send_proxy`) the socket's local address.
    local: Option<SocketAddr>,
    /// pingora's keep-alive state after the last response (with the bytes of a pipelined
    /// request, if any); `None` before the first request.
    settings: Option<HttpPersistentSettings>,
    /// When the last response was sent (or the connection accepted).
    idle_since: Instant,
    /// The TLS session of a TLS client, once handshaken.
    tls: Option<Box<TlsSession>>,
    /// Its places under the connection limits, released when the connection closes.
    _slots: Slots,
}

/// One client connection: wait for bytes, run one request through the proxy, repeat while the
/// connection is kept alive. Between requests only the socket and [`Conn`] live; after
/// [`PARK_AFTER`] of silence the connection leaves this task for the parking lot. `ready`: the
/// client has already spoken (woken from the lot).
async fn serve(tcp: TcpStream, mut conn: Conn, mut ready: bool, shared: Arc<Shared>) {
    let settings = shared.settings.load_full();
    if settings.send_proxy && conn.local.is_none() {
        conn.local = tcp.local_addr().ok();
    }
    let timeouts = settings.timeouts;
    let keepalive_secs = timeouts.idle.as_secs().max(1);
    let tls = match (&settings.tls, conn.tls.take()) {
        (Some(config), None) => {
            let Some(session) = handshake(&tcp, config, &conn, timeouts).await else {
                return;
            };
            if session.alpn_protocol() == Some(b"h2") {
                return serve_h2(tcp, session, &conn, &shared).await;
            }
            Some(session)
        }
        (_, session) => session,
    };
    let client = Arc::new(Client::new(tcp, tls));
    let mut shutdown = shared.shutdown.clone();
    let mut pipelined = false;
    loop {
        // A request the client pipelined behind the last one may already be in pingora's
        // hands (read with the last request, or left over from the pipelined bytes the last
        // request came with); then there is nothing to wait for.
        pipelined = (pipelined || client.read_after_header())
            && conn.settings.as_ref().is_some_and(has_pipelined_prefix);
        if !ready && !pipelined && !tls_has_request(&client) {
            match wait_for_request(&client, &conn, timeouts, &mut shutdown).await {
                Wait::Request => {}
                Wait::Close => return,
                Wait::Park => {
                    if let Ok(client) = Arc::try_unwrap(client) {
                        let deadline = conn.idle_since + timeouts.idle;
                        let (tcp, tls) = client.into_parts();
                        conn.tls = tls;
                        shared.lot.park(tcp, deadline, conn);
                    }
                    return;
                }
            }
        }
        ready = false;
        let header_deadline = Instant::now() + timeouts.header;
        client.start_request(!pipelined);
        let mut session = ServerSession::new_http1(client_stream(&client, conn.peer, conn.local));
        match conn.settings.take() {
            Some(s) => s.apply_to_session(&mut session),
            None => {
                session.set_keepalive(Some(keepalive_secs));
                session.set_pipelining_enabled(true);
            }
        }
        let reused = tokio::select! {
            biased;
            r = shared.proxy.process_new_http(session, &shared.shutdown) => r,
            () = header_expired(&client, header_deadline) => {
                send_last(&client, REQUEST_TIMEOUT);
                tracing::debug!(client = %conn.peer, "request header not complete within header_timeout: 408");
                return;
            }
        };
        match reused {
            // pingora's stream wrapper is dropped and rebuilt for the next request (three small
            // allocations) so that a kept-alive connection holds only the socket meanwhile.
            Some(reused) => {
                conn.settings = reused.consume().1;
                conn.idle_since = Instant::now();
            }
            None => {
                // pingora answers nothing to a read that failed; this one failed on purpose.
                if client.header_too_large() {
                    send_last(&client, HEADER_TOO_LARGE);
                    tracing::debug!(client = %conn.peer, "request header over its size limit: 431");
                    linger(&client).await;
                }
                return;
            }
        }
    }
}

/// After a last answer to a client that may still be sending: closing with its bytes unread
/// would reset the connection and could destroy the answer before the client reads it, so
/// read and drop what comes for a bounded time and amount first (HAProxy's lingering close).
async fn linger(client: &Client) {
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: usize = 1024 * 1024;
    let _ = socket2::SockRef::from(&client.tcp).shutdown(std::net::Shutdown::Write);
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, client.tcp.readable()).await {
            Ok(Ok(())) => match client.tcp.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            },
            _ => return,
        }
    }
}

/// Writes a last answer (no wait: it fits an empty socket buffer) before the connection closes.
fn send_last(client: &Client, answer: &[u8]) {
    match client.tls() {
        Some(Ok(mut s)) => s.send_last(&client.tcp, answer),
        Some(Err(_)) => {}
        None => {
            // Not `try_write`, which gives up unless tokio has seen the socket writable.
            let _ = socket2::SockRef::from(&client.tcp).send(answer);
        }
    }
}

/// A new connection on an `accept_proxy` address: its PROXY header first, within
/// `header_timeout`; a connection without a valid one, or from a peer not trusted, is closed.
async fn serve_proxied(mut tcp: TcpStream, mut conn: Conn, shared: Arc<Shared>) {
    let settings = shared.settings.load_full();
    if let Some(policy) = &settings.accept_proxy {
        let deadline = Instant::now() + settings.timeouts.header;
        let Some((peer, local)) = policy.client(&mut tcp, conn.peer, deadline).await else {
            conn._slots.refused();
            return;
        };
        (conn.peer, conn.local) = (peer, local);
    }
    serve(tcp, conn, false, shared).await
}

/// Completes a new TLS client's handshake within `header_timeout`; `None` (logged at debug
/// level: port scanners and impatient clients are common) when it fails.
async fn handshake(
    tcp: &TcpStream,
    config: &Arc<ServerConfig>,
    conn: &Conn,
    timeouts: Timeouts,
) -> Option<Box<TlsSession>> {
    let mut session = Box::new(TlsSession::new(config.clone()).ok()?);
    let deadline = Instant::now() + timeouts.header;
    match session.handshake(tcp, deadline).await {
        Ok(()) => Some(session),
        Err(e) => {
            tracing::debug!(client = %conn.peer, "TLS handshake failed: {e}");
            None
        }
    }
}

/// An HTTP/2 client: pingora's HTTP/2 server takes the connection over; each stream is a
/// request through the same proxy phases.
async fn serve_h2(tcp: TcpStream, session: Box<TlsSession>, conn: &Conn, shared: &Shared) {
    let client = Arc::new(Client::new(tcp, Some(session)));
    client.start_request(false);
    let stream = client_stream(&client, conn.peer, conn.local);
    let _ = pingora::apps::ServerApp::process_new(&shared.proxy, stream, &shared.shutdown).await;
}

/// A TLS client whose next request already arrived with the last record read.
fn tls_has_request(client: &Client) -> bool {
    match client.tls() {
        Some(Ok(mut s)) => s.has_plaintext(),
        _ => false,
    }
}

/// Resolves if `deadline` passes while the request's header is still incomplete. Costs
/// nothing (no timer) for a header that arrived whole in the first read.
async fn header_expired(client: &Client, deadline: Instant) {
    if !client.header_done() {
        tokio::time::sleep_until(deadline.into()).await;
        if !client.header_done() {
            return;
        }
    }
    std::future::pending().await
}

/// Whether pingora carried bytes of a pipelined request over to the next session. pingora
/// 0.9.1 keeps them in [`HttpPersistentSettings`] without a getter, so this reads its derived
/// `Debug` output up to that field and stops there (a unit test pins the format). Asked only
/// when bytes followed the last header.
fn has_pipelined_prefix(s: &HttpPersistentSettings) -> bool {
    /// Watches `Debug`'s writes for `pipelined_prefix: Some`.
    #[derive(Default)]
    struct Probe {
        step: u8,
        found: bool,
    }
    impl fmt::Write for Probe {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match (self.step, s) {
                (0, "pipelined_prefix") => self.step = 1,
                (1, ": ") => self.step = 2,
                (2, v) => {
                    self.found = v.starts_with("Some");
                    return Err(fmt::Error);
                }
                (1, _) => self.step = 0,
                _ => {}
            }
            Ok(())
        }
    }
    let mut p = Probe::default();
    let _ = fmt::write(&mut p, format_args!("{s:?}"));
    p.found
}

/// pingora's view of the client socket, with the peer address from `accept` (or the PROXY
/// header) filled in so that pingora never asks the kernel for it, and the local address
/// when known (pingora would ask the kernel for it only if asked itself).
fn client_stream(client: &Arc<Client>, peer: SocketAddr, local: Option<SocketAddr>) -> Stream {
    let socket = ClientSocket::new(client.clone());
    let mut stream = L4Stream::from(VirtualSocketStream::new(Box::new(socket)));
    let digest = SocketDigest::from_raw_fd(client.tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
    if let Some(local) = local {
        let _ = digest.local_addr.set(Some(PeerAddr::Inet(local)));
    }
    stream.set_socket_digest(digest);
    match &client.tls_info {
        None => Box::new(stream),
        Some(info) => Box::new(WithTls::new(stream, info.clone())),
    }
}

enum Wait {
    /// The client sent something (or closed: the proxy will see it).
    Request,
    /// Silent for [`PARK_AFTER`], its idle timeout not yet reached.
    Park,
    /// Silent for the idle timeout, the socket failed, or the service is stopping.
    Close,
}

/// Waits until the client sends something, for [`PARK_AFTER`] at most.
async fn wait_for_request(
    client: &Client,
    conn: &Conn,
    timeouts: Timeouts,
    shutdown: &mut ShutdownWatch,
) -> Wait {
    let tcp = &client.tcp;
    // A TLS client's socket was read by the handshake, so its readiness is exact.
    let fresh = conn.settings.is_none() && client.tls().is_none();
    let close_at = conn.idle_since + timeouts.idle;
    let park_at = conn.idle_since + PARK_AFTER;
    tokio::select! {
        biased;
        r = tokio::time::timeout_at(close_at.min(park_at).into(), async {
            if fresh {
                // tokio marks an accepted socket readable before any event, so ask the socket.
                tcp.peek(&mut [0u8]).await.map(|n| n > 0)
            } else {
                // A drained socket lost its readiness on the last read (see ClientSocket).
                tcp.readable().await.map(|()| true)
            }
        }) => match r {
            Ok(Ok(true)) => Wait::Request,
            Err(_) if park_at < close_at => Wait::Park,
            _ => Wait::Close,
        },
        () = stopping(shutdown) => Wait::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipelined_bytes_are_seen_in_persistent_settings() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, peer) = l.accept().await.unwrap();
        let client = Arc::new(Client::new(tcp, None));
        let mut session = ServerSession::new_http1(client_stream(&client, peer, None));
        session.set_keepalive(Some(5));
        session.set_pipelining_enabled(true);
        let mut s = HttpPersistentSettings::for_session(&session);
        assert!(!has_pipelined_prefix(&s));
        s.set_user_context(Box::new(7u32));
        assert!(!has_pipelined_prefix(&s));
        s.set_pipelined_prefix(bytes::BytesMut::from(&b"GET /next HTTP/1.1\r\n"[..]));
        assert!(has_pipelined_prefix(&s));
    }
}
