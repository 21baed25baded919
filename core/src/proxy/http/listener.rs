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

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::{SocketDigest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::phases::HttpService;
use crate::io::listener::{self, stopping};
use crate::io::parking::{LotWatcher, ParkingLot, PARK_AFTER};
use crate::io::socket;

/// The listening service of one `mode = "http"` service.
pub struct HttpListener {
    name: String,
    sockets: Vec<std::net::TcpListener>,
    proxy: Arc<HttpProxy<HttpService>>,
    idle_timeout: Duration,
    lot: Option<(ParkingLot<Conn>, LotWatcher<Conn>)>,
}

/// What every connection of a service needs.
struct Shared {
    proxy: Arc<HttpProxy<HttpService>>,
    idle_timeout: Duration,
    keepalive_secs: u64,
    /// The server's: the proxy reads it to stop keep-alive while shutting down, and waiting
    /// connections and the parking lot watch it (a tokio watch, whose waiters are already
    /// spread over shards).
    shutdown: ShutdownWatch,
    lot: ParkingLot<Conn>,
}

impl HttpListener {
    /// Binds every address now, so that a busy or forbidden address is an error at start-up
    /// naming the service, not a log line after it.
    pub fn bind(
        name: String,
        addrs: &[SocketAddr],
        proxy: HttpProxy<HttpService>,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let sockets = listener::bind(&name, addrs)?;
        let lot = ParkingLot::new()
            .map_err(|e| format!("service {name}: cannot make an epoll set: {e}"))?;
        Ok(HttpListener {
            name,
            sockets,
            proxy: Arc::new(proxy),
            idle_timeout,
            lot: Some(lot),
        })
    }
}

#[async_trait]
impl Service for HttpListener {
    /// `_fds` is pingora's hand-over of listening sockets for a zero-downtime binary upgrade,
    /// which Plugboard does not offer (yet); the sockets were bound in [`HttpListener::bind`].
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some((lot, watcher)) = self.lot.take() else {
            return;
        };
        let shared = Arc::new(Shared {
            proxy: self.proxy.clone(),
            idle_timeout: self.idle_timeout,
            keepalive_secs: self.idle_timeout.as_secs().max(1),
            shutdown: shutdown.clone(),
            lot,
        });
        let woken = shared.clone();
        watcher.start(shutdown.clone(), move |tcp, conn| {
            tokio::spawn(serve(tcp, conn, true, woken.clone()));
        });
        let accepted = shared.clone();
        let sockets = std::mem::take(&mut self.sockets);
        listener::serve(&self.name, sockets, shutdown, move |tcp, peer| {
            let conn = Conn {
                peer,
                settings: None,
                idle_since: Instant::now(),
            };
            tokio::spawn(serve(tcp, conn, false, accepted.clone()));
        })
        .await;
        shared.proxy.http_cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// What a connection carries from one request to the next, in its task or parked.
struct Conn {
    peer: SocketAddr,
    /// pingora's keep-alive state after the last response; `None` before the first request.
    settings: Option<HttpPersistentSettings>,
    /// When the last response was sent (or the connection accepted).
    idle_since: Instant,
}

/// One client connection: wait for bytes, run one request through the proxy, repeat while the
/// connection is kept alive. Between requests only the socket and [`Conn`] live; after
/// [`PARK_AFTER`] of silence the connection leaves this task for the parking lot. `ready`: the
/// client has already spoken (woken from the lot).
async fn serve(tcp: TcpStream, mut conn: Conn, mut ready: bool, shared: Arc<Shared>) {
    let tcp = Arc::new(tcp);
    let mut shutdown = shared.shutdown.clone();
    loop {
        // pingora's request pipelining is off (its default), so after a response no request
        // bytes sit in a buffer: the socket's readiness tells whether the client spoke.
        if !ready {
            match wait_for_request(&tcp, &conn, &shared, &mut shutdown).await {
                Wait::Request => {}
                Wait::Close => return,
                Wait::Park => {
                    if let Ok(tcp) = Arc::try_unwrap(tcp) {
                        let deadline = conn.idle_since + shared.idle_timeout;
                        shared.lot.park(tcp, deadline, conn);
                    }
                    return;
                }
            }
        }
        ready = false;
        let mut session = ServerSession::new_http1(client_stream(&tcp, conn.peer));
        match conn.settings.take() {
            Some(s) => s.apply_to_session(&mut session),
            None => session.set_keepalive(Some(shared.keepalive_secs)),
        }
        match shared
            .proxy
            .process_new_http(session, &shared.shutdown)
            .await
        {
            // pingora's stream wrapper is dropped and rebuilt for the next request (three small
            // allocations) so that a kept-alive connection holds only the socket meanwhile.
            Some(reused) => {
                conn.settings = reused.consume().1;
                conn.idle_since = Instant::now();
            }
            None => return,
        }
    }
}

/// pingora's view of the client socket, with the peer address from `accept` filled in so that
/// pingora never asks the kernel for it.
fn client_stream(tcp: &Arc<TcpStream>, peer: SocketAddr) -> Stream {
    let socket = ClientSocket {
        tcp: tcp.clone(),
        out: Vec::new(),
        sent: 0,
    };
    let mut stream: Stream = Box::new(L4Stream::from(VirtualSocketStream::new(Box::new(socket))));
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
    stream.set_socket_digest(digest);
    stream
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
    tcp: &TcpStream,
    conn: &Conn,
    shared: &Shared,
    shutdown: &mut ShutdownWatch,
) -> Wait {
    let close_at = conn.idle_since + shared.idle_timeout;
    let park_at = conn.idle_since + PARK_AFTER;
    tokio::select! {
        biased;
        r = tokio::time::timeout_at(close_at.min(park_at).into(), async {
            if conn.settings.is_none() {
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

/// Writes up to this size are gathered until pingora flushes.
const GATHER: usize = 16 * 1024;

/// The client socket as pingora sees it. The socket is shared with the connection task, which
/// waits on its readiness between requests.
#[derive(Debug)]
struct ClientSocket {
    tcp: Arc<TcpStream>,
    /// Gathered writes, and how much of them has been sent.
    out: Vec<u8>,
    sent: usize,
}

impl VirtualSocket for ClientSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &*self.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // SAFETY: recv only writes into the slice; assume_init below covers exactly the
            // bytes it reported.
            let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
            let got = match socket::try_recv(tcp, unfilled) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            // SAFETY: recv initialised `got` bytes of the unfilled part.
            unsafe { buf.assume_init(got) };
            buf.advance(got);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // pingora writes a response's header and body separately and then flushes: gather
        // small writes so that a small response leaves in one segment and one system call.
        if self.out.len() + buf.len() > GATHER {
            ready!(self.as_mut().poll_flush(cx))?;
        }
        if buf.len() <= GATHER {
            self.out.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        let tcp = &*self.tcp;
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        while me.sent < me.out.len() {
            ready!(me.tcp.poll_write_ready(cx))?;
            match me.tcp.try_write(&me.out[me.sent..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => me.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Released, not kept: a kept-alive connection waits for its next request without it.
        me.out = Vec::new();
        me.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(
            match SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                r => r,
            },
        )
    }
}
