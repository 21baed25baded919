//! L4 mode: a pingora server app that balances TCP connections.
//!
//! Path of a connection: (1) if the persistence-key hook wants the client's first bytes, read
//! them until the hook has a whole message or `inspect_timeout` passes; (2) persistence key
//! and backend choice as in http mode; (3) connect, trying another backend on failure up to
//! `retries` times; (4) send the inspected bytes unchanged, then copy both ways (half-closes
//! propagated) until both sides are done or nothing moved for `idle_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::balancer::Balancer;
use crate::config::Mode;
use crate::hooks::{KeyOutcome, Request};

/// The largest first message a hook may ask to see.
pub const MAX_INSPECT_BYTES: usize = 16 * 1024;

pub struct TcpService {
    balancer: Arc<Balancer>,
}

impl TcpService {
    pub fn new(balancer: Arc<Balancer>) -> Self {
        TcpService { balancer }
    }

    /// Reads the client's first bytes until the hook is satisfied, the client stops sending,
    /// or the inspect timeout passes. Returns the bytes read (all of them are forwarded).
    async fn inspect(&self, client: &mut Stream, req: &Request<'_>) -> Vec<u8> {
        let mut buf = Vec::with_capacity(1024);
        let deadline = tokio::time::Instant::now() + self.balancer.config().inspect_timeout;
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
                    if self.balancer.key(&r) != KeyOutcome::NeedMore {
                        return buf;
                    }
                }
                // EOF, error or timeout: balance with what we have.
                _ => return buf,
            }
        }
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> Option<TcpStream> {
        let s = tokio::time::timeout(
            self.balancer.config().connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        .ok()?
        .ok()?;
        let _ = s.set_nodelay(true);
        Some(s)
    }
}

#[async_trait]
impl ServerApp for TcpService {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let b = &self.balancer;
        let cfg = b.config();
        let client_addr = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let base = Request {
            service: &cfg.name,
            mode: Mode::Tcp,
            client: client_addr,
            http: None,
            payload: &[],
            key: None,
        };
        let payload = if b.wants_payload() {
            self.inspect(&mut client, &base).await
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
        let (i, mut server) = loop {
            let i = b.choose(&req, &outcome, &failed)?;
            match self.connect(b.pool.get(i).address).await {
                Some(s) => break (i, s),
                None => {
                    b.connect_failed(i);
                    failed.push(i);
                    if failed.len() > cfg.retries as usize {
                        return None;
                    }
                }
            }
        };
        let _active = b.pool.acquire(i);
        if !payload.is_empty() && server.write_all(&payload).await.is_err() {
            return None;
        }
        drop(payload);
        relay(client, &mut server, cfg.idle_timeout).await;
        None
    }
}

/// Buffer per direction of a relayed connection: 4x tokio's default, fewer syscalls per
/// megabyte on bulk transfers (benches/run row 3a).
const RELAY_BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions are closed or nothing moved for `idle`.
async fn relay(mut client: Stream, server: &mut TcpStream, idle: Duration) {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Active {
        inner: &mut client,
        start,
        last: &last,
    };
    let mut s = Active {
        inner: server,
        start,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut s, RELAY_BUFFER, RELAY_BUFFER);
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = watchdog => {
            tracing::debug!("tcp connection idle for {idle:?}, closing");
        }
    }
}

/// A stream that records when it last read something, for the idle timeout.
struct Active<'a, S> {
    inner: S,
    start: Instant,
    last: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last
                .store(self.start.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
