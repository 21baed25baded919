//! The HTTP attack suite: hostile framings and misbehaving peers, sent as raw bytes through the
//! real binary and, for comparison, through a real HAProxy in front of the same backend.
//!
//! Every case must end in a clear 4xx or a close, or be served with unambiguous framing: the
//! backend (which records the raw bytes it receives) never sees a request whose length two
//! headers disagree on. The answers of both proxies are printed as a table (`--nocapture`);
//! README's "HTTP attack suite" section is that table.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::haproxy::Haproxy;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Raw requests as the backend received them (one entry per read burst).
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// Size of the `/big` response.
const BIG: usize = 64 * 1024 * 1024;
/// Bytes of `/big` responses the backend has written so far (all tests of this file).
static BIG_SENT: AtomicUsize = AtomicUsize::new(0);

/// A backend that records what reaches it and answers by path: `/garbage` with bytes that are
/// not HTTP, `/short` with a body shorter than declared (then closes), `/long` with a body
/// longer than declared, `/big` with 64 MiB (counted in `BIG_SENT` as they are written),
/// anything else with `200 ok`.
async fn raw_backend() -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let Some(req) = read_burst(&mut c, &mut buf).await else {
                        return;
                    };
                    s.lock().unwrap().push(req.clone());
                    let path = request_path(&req);
                    if path == "/big" {
                        let _ = big(&mut c).await;
                        return;
                    }
                    let answer: &[u8] = match path.as_str() {
                        "/garbage" => b"SURPRISE\x00\x01 not http at all\r\n\r\n",
                        "/short" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
                        "/long" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if c.write_all(answer).await.is_err() || path == "/short" || path == "/garbage"
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Writes the `/big` response, 64 KiB at a time, as fast as the peer takes it.
async fn big(c: &mut TcpStream) -> std::io::Result<()> {
    c.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes())
        .await?;
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..BIG / chunk.len() {
        c.write_all(&chunk).await?;
        BIG_SENT.fetch_add(chunk.len(), Ordering::SeqCst);
    }
    Ok(())
}

/// Reads what arrives until 150 ms pass with nothing more (a request and its body).
async fn read_burst(c: &mut TcpStream, buf: &mut [u8]) -> Option<Vec<u8>> {
    let mut n = c.read(buf).await.ok().filter(|&n| n > 0)?;
    while n < buf.len() {
        match tokio::time::timeout(Duration::from_millis(150), c.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(m)) => n += m,
            Err(_) => break,
        }
    }
    Some(buf[..n].to_vec())
}

fn request_path(req: &[u8]) -> String {
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .to_string()
}

/// What a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Status codes of the responses read, in order, then whether the connection closed.
    Answered(Vec<u16>, bool),
    /// Closed with no response.
    Closed,
    /// Nothing within the limit, connection still open.
    Silent,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Answered(codes, closed) => {
                let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
                write!(f, "{}", codes.join(" + "))?;
                if *closed {
                    write!(f, ", close")?;
                }
                Ok(())
            }
            Outcome::Closed => write!(f, "close"),
            Outcome::Silent => write!(f, "no answer"),
        }
    }
}

impl Outcome {
    fn rejected(&self) -> bool {
        match self {
            Outcome::Closed => true,
            Outcome::Answered(c, _) => c.first().is_some_and(|s| (400..500).contains(s)),
            Outcome::Silent => false,
        }
    }
}

/// Sends `bytes` (in `chunks` of that size every `pace`, if given) and reads responses until
/// the peer closes or `limit` passes. Returns the outcome and every byte read.
async fn probe(
    to: SocketAddr,
    bytes: &[u8],
    pace: Option<(usize, Duration)>,
    limit: Duration,
) -> (Outcome, Vec<u8>) {
    let mut c = TcpStream::connect(to).await.unwrap();
    let deadline = Instant::now() + limit;
    match pace {
        None => {
            let _ = c.write_all(bytes).await;
        }
        Some((size, every)) => {
            for chunk in bytes.chunks(size) {
                if c.write_all(chunk).await.is_err() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let codes = statuses(&got);
    let outcome = match (codes.is_empty(), closed) {
        (true, true) => Outcome::Closed,
        (true, false) => Outcome::Silent,
        (false, closed) => Outcome::Answered(codes, closed),
    };
    (outcome, got)
}

/// Status codes of the HTTP/1.x status lines at the start of responses in `bytes`, walking
/// each response by its Content-Length.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.starts_with(b"HTTP/1.") {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let Some(code) = head.get(9..12).and_then(|c| c.parse().ok()) else {
            break;
        };
        out.push(code);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        rest = rest.get(end + 4 + len..).unwrap_or_default();
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request the backend got is unambiguous: it does not carry both `Content-Length` and
/// `Transfer-Encoding`, two `Content-Length`s, or a `Transfer-Encoding` other than `chunked`.
fn unambiguous(req: &[u8]) -> bool {
    let Some(end) = find(req, b"\r\n\r\n") else {
        return true;
    };
    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
    let headers: Vec<&str> = head.split("\r\n").skip(1).collect();
    let cl = headers
        .iter()
        .filter(|h| h.starts_with("content-length:"))
        .count();
    let te: Vec<&str> = headers
        .iter()
        .filter_map(|h| h.strip_prefix("transfer-encoding:"))
        .map(str::trim)
        .collect();
    let framings = cl + te.len();
    framings <= 1 && te.iter().all(|t| *t == "chunked")
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Plugboard must reject it (4xx or close); otherwise it may also serve it unambiguously.
    must_reject: bool,
    /// The status Plugboard must answer, where one is fixed.
    status: Option<u16>,
}

fn case(name: &'static str, bytes: &str, must_reject: bool) -> Case {
    Case {
        name,
        bytes: bytes.as_bytes().to_vec(),
        must_reject,
        status: None,
    }
}

fn status(mut c: Case, s: u16) -> Case {
    c.status = Some(s);
    c
}

fn framing_cases() -> Vec<Case> {
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70 * 1024));
    let big_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-Filler-{i}: {}\r\n", "b".repeat(500)))
            .collect::<String>()
    );
    vec![
        case(
            "Content-Length and Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            false,
        ),
        case(
            "Transfer-Encoding: xchunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        case(
            "Transfer-Encoding with a space before the colon",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            true,
        ),
        case(
            "Transfer-Encoding: chunked, identity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            true,
        ),
        case(
            "two Transfer-Encoding headers",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            true,
        ),
        case(
            "two different Content-Lengths",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            true,
        ),
        case(
            "Content-Length: +4",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
            true,
        ),
        case(
            "Content-Length: -1",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            true,
        ),
        case(
            "chunk size overflow",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
            true,
        ),
        case(
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: a\n\n",
            false,
        ),
        case(
            "obs-fold header continuation",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
            false,
        ),
        status(case("request line of 70 KiB", &long_line, true), 431),
        status(case("100 KB of headers", &big_headers, true), 431),
        case("invalid method G@T", "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        case("version HTTP/9.9", "GET / HTTP/9.9\r\nHost: a\r\n\r\n", true),
        case("version HTTP/1.x", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", true),
        case(
            "absolute-form target with a conflicting Host",
            "GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            false,
        ),
        case(
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            true,
        ),
        case(
            "NUL in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
            true,
        ),
        case(
            "pipelined GETs",
            "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            false,
        ),
    ]
}

/// Plugboard and HAProxy in front of the same recording backend.
struct Fronts {
    plugboard: SocketAddr,
    haproxy: Option<SocketAddr>,
    seen: Seen,
    _p: Proxy,
    _h: Option<Haproxy>,
}

impl Fronts {
    /// A plain GET through Plugboard gets its 200.
    async fn assert_serves(&self) {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let (ok, _) = probe(self.plugboard, get, None, Duration::from_secs(3)).await;
        assert_eq!(ok, Outcome::Answered(vec![200], true));
    }

    /// HAProxy's answer to the same bytes, for the table.
    async fn haproxy_answer(
        &self,
        bytes: &[u8],
        pace: Option<(usize, Duration)>,
        limit: Duration,
    ) -> String {
        match self.haproxy {
            Some(h) => probe(h, bytes, pace, limit).await.0.to_string(),
            None => "-".to_string(),
        }
    }
}

fn table_head() -> Vec<String> {
    vec![
        "| case | Plugboard | HAProxy 2.6 |".to_string(),
        "|---|---|---|".to_string(),
    ]
}

async fn fronts() -> Fronts {
    let (backend, seen) = raw_backend().await;
    let listen = free_addr();
    let extra = "header_timeout = \"1s\"\nidle_timeout = \"3s\"";
    let p = Proxy::start(
        &service_toml("http", listen, extra, &[(backend, 1)]),
        listen,
    )
    .await;
    let hl = free_addr();
    let h = Haproxy::start(
        &format!(
            "frontend fe\n    mode http\n    bind {hl}\n    timeout http-request 1s\n    default_backend be\n\nbackend be\n    mode http\n    server s1 {backend}\n"
        ),
        hl,
    )
    .await;
    Fronts {
        plugboard: listen,
        haproxy: h.as_ref().map(|_| hl),
        seen,
        _p: p,
        _h: h,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framings_are_refused_or_forwarded_unambiguously() {
    let f = fronts().await;
    let mut table = table_head();
    let mut failures = Vec::new();
    for c in framing_cases() {
        f.seen.lock().unwrap().clear();
        let (ours, _) = probe(f.plugboard, &c.bytes, None, Duration::from_secs(3)).await;
        let forwarded: Vec<Vec<u8>> = f.seen.lock().unwrap().drain(..).collect();
        let theirs = f
            .haproxy_answer(&c.bytes, None, Duration::from_secs(3))
            .await;
        f.seen.lock().unwrap().clear();
        table.push(format!("| {} | {ours} | {theirs} |", c.name));
        if c.must_reject && !ours.rejected() {
            failures.push(format!("{}: {ours}, expected a 4xx or a close", c.name));
        }
        if let Some(s) = c.status {
            if !matches!(&ours, Outcome::Answered(codes, _) if codes.first() == Some(&s)) {
                failures.push(format!("{}: {ours}, expected {s}", c.name));
            }
        }
        if matches!(ours, Outcome::Silent) {
            failures.push(format!("{}: no answer within 3 s", c.name));
        }
        for req in &forwarded {
            if !unambiguous(req) {
                failures.push(format!(
                    "{}: forwarded with ambiguous framing: {:?}",
                    c.name,
                    String::from_utf8_lossy(req)
                ));
            }
            if find(req, b"/smuggled").is_some() && !ours.rejected() {
                // The smuggled request may only reach the backend as its own request,
                // answered to the client as a second response.
                let Outcome::Answered(codes, _) = &ours else {
                    unreachable!()
                };
                if codes.len() < 2 {
                    failures.push(format!("{}: a smuggled request was hidden", c.name));
                }
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The proxy still serves after all of it.
    f.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_broken_clients_and_backends_cost_a_clear_answer() {
    let f = fronts().await;
    let mut table = table_head();
    let mut failures = Vec::new();
    type Check = fn(&Outcome, &[u8]) -> bool;
    type Pace = Option<(usize, Duration)>;
    let cases: Vec<(&str, Vec<u8>, Pace, Check)> = vec![
        (
            "header sent one byte per 300 ms (header_timeout 1 s)",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
            Some((1, Duration::from_millis(300))),
            |o, _| o.rejected(),
        ),
        (
            "body stops midway (Content-Length 100, 10 sent; idle_timeout 3 s)",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
            None,
            // The backend answers before the body ends; the stalled client is then closed
            // after idle_timeout, not held.
            |o, _| matches!(o, Outcome::Answered(_, true) | Outcome::Closed),
        ),
        (
            "backend answers garbage",
            b"GET /garbage HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            None,
            |o, _| matches!(o, Outcome::Answered(c, _) if c == &[502]),
        ),
        (
            "backend closes midway through the body",
            b"GET /short HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            None,
            // The header is out before the body fails: the client must see a close, never a
            // complete-looking response kept alive.
            |o, got| match o {
                Outcome::Answered(c, closed) if c == &[200] => {
                    *closed && find(got, b"only this").is_some()
                }
                Outcome::Answered(c, _) => c.first().is_some_and(|s| *s >= 500),
                Outcome::Closed => true,
                Outcome::Silent => false,
            },
        ),
        (
            "backend sends more than it declared",
            b"GET /long HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            None,
            // The extra bytes must never reach the client as a response of their own.
            |_, got| find(got, b"smuggled").is_none(),
        ),
    ];
    for (name, bytes, pace, check) in cases {
        let limit = Duration::from_secs(6);
        let (ours, got) = probe(f.plugboard, &bytes, pace, limit).await;
        let theirs = f.haproxy_answer(&bytes, pace, limit).await;
        table.push(format!("| {name} | {ours} | {theirs} |"));
        if !check(&ours, &got) {
            failures.push(format!(
                "{name}: {ours}: {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A client that never reads its responses costs bounded memory: the proxy stops reading its
/// pipelined requests once its socket buffers are full, and serves others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory() {
    let f = fronts().await;
    let rss = || rss_kib(f._p.pid());
    let before = rss();
    let mut c = TcpStream::connect(f.plugboard).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(1000);
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && written < 64 * 1024 * 1024 {
        match tokio::time::timeout(Duration::from_millis(500), c.write_all(&req)).await {
            Ok(Ok(())) => written += req.len(),
            _ => break,
        }
    }
    // Others are still served while that client sits on its full buffers.
    f.assert_serves().await;
    let grown = rss().saturating_sub(before);
    assert!(
        written < 64 * 1024 * 1024,
        "the proxy read {written} bytes of requests from a client that never reads"
    );
    assert!(grown < 32 * 1024, "RSS grew by {grown} kB for one client");
    drop(c);
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap()
}

/// What a slow reader of `/big` got: bytes read, how the connection ended within `limit`
/// (`None`: still open), after how long.
async fn read_slowly(
    to: SocketAddr,
    limit: Duration,
    mut during: impl FnMut(),
) -> (usize, Option<&'static str>, Duration) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(to).await.unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut read = 0;
    let mut buf = [0u8; 16];
    let end = loop {
        if start.elapsed() >= limit {
            break None;
        }
        match tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await {
            Ok(Ok(0)) => break Some("closed"),
            Ok(Err(_)) => break Some("reset"),
            Ok(Ok(n)) => read += n,
            Err(_) => {}
        }
        during();
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (read, end, start.elapsed())
}

fn slow_outcome((read, end, took): (usize, Option<&str>, Duration)) -> String {
    let (kib, secs) = (read / 1024, took.as_secs_f64());
    match end {
        Some(how) => format!("{how} after {secs:.0} s ({kib} KiB read)"),
        None => format!("still open at {secs:.0} s ({kib} KiB read)"),
    }
}

/// A client that reads a large response slowly (a 4 KiB receive buffer, 16 bytes every 10 ms)
/// costs bounded memory and time: the proxy reads from the backend only as fast as the client
/// takes the bytes, and once a write to the client has waited `idle_timeout` it resets the
/// connection, so the kernel does not go on feeding the client what it still holds for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_costs_bounded_memory_and_time() {
    let f = fronts().await;
    let pid = f._p.pid();
    let before = rss_kib(pid);
    let mut peak = before;
    let limit = Duration::from_secs(15);
    let ours = read_slowly(f.plugboard, limit, || peak = peak.max(rss_kib(pid))).await;
    let sent = BIG_SENT.swap(0, Ordering::SeqCst);
    f.assert_serves().await;
    let theirs = match f.haproxy {
        Some(h) => slow_outcome(read_slowly(h, limit, || {}).await),
        None => "-".to_string(),
    };
    let mut table = table_head();
    table.push(format!(
        "| 64 MiB response read 16 bytes per 10 ms (4 KiB receive buffer; idle_timeout 3 s) | {} | {theirs} |",
        slow_outcome(ours)
    ));
    eprintln!("{}", table.join("\n"));
    let grown = peak.saturating_sub(before);
    eprintln!(
        "backend wrote {} KiB of /big; proxy RSS grew by {grown} KiB",
        sent / 1024
    );
    assert!(
        ours.1.is_some(),
        "the slow reader was still connected after {limit:?}"
    );
    assert!(
        sent < 16 * 1024 * 1024,
        "the proxy read {sent} bytes of a response its client was not taking"
    );
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} kB for one slow reader"
    );
}
