//! Real backend servers on loopback for the tests: an HTTP/1.1 server with keep-alive and a
//! few special paths, and a TCP server that speaks first and echoes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::tcp_connect;

/// An HTTP/1.1 backend with keep-alive. Answers `GET /health` with a settable status, `/slow`
/// after a delay, `/headers` with the request's header lines (lower-cased), `/echo` with the
/// request body, `/big/N` with N bytes, a chunked `/duplex` by echoing each chunk at once, and
/// anything else with 200 and its own address as body.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub health: Arc<AtomicU16>,
    /// `X-Forwarded-For` values seen.
    pub forwarded: Arc<Mutex<Vec<String>>>,
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// TCP connections open now (accepted and not yet closed by the client).
    pub open: Arc<AtomicUsize>,
    tasks: Option<JoinSet<()>>,
}

impl HttpBackend {
    /// On a port the kernel picks, kept from the start (no window for another to take it).
    pub async fn start() -> HttpBackend {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub async fn start_on(addr: SocketAddr) -> HttpBackend {
        Self::on(
            TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("http backend on {addr}: {e}")),
        )
    }

    fn on(listener: TcpListener) -> HttpBackend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let (h, he, f, a, o) = (
            hits.clone(),
            health.clone(),
            forwarded.clone(),
            accepted.clone(),
            open.clone(),
        );
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let serve = serve_http(s, addr, h.clone(), he.clone(), f.clone());
                let o = o.clone();
                conns.spawn(async move {
                    serve.await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        HttpBackend {
            addr,
            hits,
            health,
            forwarded,
            accepted,
            open,
            tasks: Some(tasks),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    /// Stops listening and drops every open connection, as a crashed server would.
    pub fn kill(&mut self) {
        self.tasks.take();
    }
}

pub async fn serve_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static>(
    s: S,
    me: SocketAddr,
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    forwarded: Arc<Mutex<Vec<String>>>,
) {
    let (r, mut w) = tokio::io::split(s);
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut len = 0usize;
        let mut all_headers = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            all_headers.push_str(&lower);
            if let Some(v) = lower.strip_prefix("x-forwarded-for:") {
                forwarded.lock().unwrap().push(v.trim().to_string());
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        if path == "/duplex" && all_headers.contains("transfer-encoding: chunked") {
            if duplex(&mut r, &mut w).await.is_err() {
                return;
            }
            continue;
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, body) = if path == "/health" {
            (health.load(Ordering::SeqCst), String::new())
        } else if path == "/echo" {
            (200, String::from_utf8_lossy(&body).into_owned())
        } else if path == "/headers" {
            (200, all_headers.clone())
        } else if let Some(n) = path.strip_prefix("/big/") {
            (200, "x".repeat(n.parse().unwrap_or(0)))
        } else {
            if let Some(ms) = path.strip_prefix("/slow/") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            }
            hits.fetch_add(1, Ordering::SeqCst);
            (200, me.to_string())
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `/duplex`: answers at once with a chunked response, then sends each chunk of the chunked
/// request body back as soon as it arrives (a long-lived request streaming both ways, like
/// Outlook Anywhere's RPC channels).
async fn duplex(
    r: &mut (impl tokio::io::AsyncBufRead + Unpin),
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> std::io::Result<()> {
    w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    w.flush().await?;
    loop {
        let mut size = String::new();
        r.read_line(&mut size).await?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
        let mut data = vec![0; n + 2];
        r.read_exact(&mut data).await?;
        w.write_all(size.as_bytes()).await?;
        w.write_all(&data).await?;
        w.flush().await?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// A TCP backend that speaks first (`<address>\n`), then echoes everything back and closes
/// its side when the client half-closes.
pub struct TcpBackend {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    /// Connections currently open.
    pub open: Arc<AtomicUsize>,
    tasks: Option<JoinSet<()>>,
}

impl TcpBackend {
    /// On a port the kernel picks, kept from the start.
    pub async fn start() -> TcpBackend {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub async fn start_on(addr: SocketAddr) -> TcpBackend {
        Self::on(
            TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("tcp backend on {addr}: {e}")),
        )
    }

    fn on(listener: TcpListener) -> TcpBackend {
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (c, o) = (conns.clone(), open.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut set = JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                set.spawn(async move {
                    o.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(format!("{addr}\n").as_bytes()).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TcpBackend {
            addr,
            conns,
            open,
            tasks: Some(tasks),
        }
    }

    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn kill(&mut self) {
        self.tasks.take();
    }
}

/// Connects through the proxy and reads the backend's banner line.
pub async fn tcp_banner(
    to: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<(String, BufReader<TcpStream>)> {
    let mut r = BufReader::new(tcp_connect(to, from).await?);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("banner timeout"))??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before banner",
        ));
    }
    Ok((line.trim_end().to_string(), r))
}
