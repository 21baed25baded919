//! The access log: one line per HTTP request and per TCP connection, as JSON or as text.
//!
//! Writing never holds up a request. A line is formatted into a buffer taken from a pool,
//! handed to the writer thread through a bounded channel, and the buffer comes back to the pool
//! once written; after the first [`IN_FLIGHT`] lines nothing is allocated. When the writer
//! lags that far behind (a slow disk), new lines are dropped and counted in
//! `plugboard_access_log_dropped_total`. The writer writes and flushes what is queued every
//! 20 ms (one system call per batch, none per line), so a line reaches the file within
//! 20 ms; `SIGUSR1` makes it reopen the file (after logrotate has renamed it) without losing a
//! line.

use std::fmt::{Display, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use prometheus::IntCounter;
use serde::Serialize;

use crate::balance::admission::Queued;
use crate::balance::balancer::Persisted;
use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogPath};

/// Lines formatted and not yet written, at most (each holds one buffer).
pub const IN_FLIGHT: usize = 8192;
/// A buffer's first size; a longer line grows it.
const LINE_CAPACITY: usize = 512;
/// A buffer grown past this by a long line is replaced by a new small one.
const KEEP_AT_MOST: usize = 16 * 1024;
/// How often the writer writes what is queued (and looks for a reopen request).
const TICK: Duration = Duration::from_millis(20);

/// How a TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpEnd {
    ClientClose,
    BackendClose,
    IdleTimeout,
    ConnectFailure,
    NoBackend,
    /// The client's TLS handshake failed or timed out.
    TlsError,
    /// Every backend it could use stayed at its limit for `queue_timeout`.
    QueueTimeout,
    /// `queue_max` were already waiting.
    QueueFull,
}

impl TcpEnd {
    fn as_str(self) -> &'static str {
        match self {
            TcpEnd::ClientClose => "client_close",
            TcpEnd::BackendClose => "backend_close",
            TcpEnd::IdleTimeout => "idle_timeout",
            TcpEnd::ConnectFailure => "connect_failure",
            TcpEnd::NoBackend => "no_backend",
            TcpEnd::TlsError => "tls_error",
            TcpEnd::QueueTimeout => "queue_timeout",
            TcpEnd::QueueFull => "queue_full",
        }
    }
}

/// The client's TLS, when it spoke TLS.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TlsFields<'a> {
    pub version: &'a str,
    pub sni: Option<&'a str>,
}

/// One HTTP request.
#[derive(Debug, Serialize)]
pub struct HttpLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub service: &'a str,
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub backend: Option<&'a str>,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// From the request's start to the backend's response header; `None` without one.
    pub ttfb_ms: Option<f64>,
    pub total_ms: f64,
    pub persistence: Persisted,
    pub retries: u32,
    pub tls: Option<TlsFields<'a>>,
    /// It waited for a backend under its limit: how long, and how that ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queued>,
}

/// One TCP connection.
#[derive(Debug, Serialize)]
pub struct TcpLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub service: &'a str,
    pub client: SocketAddr,
    pub backend: Option<&'a str>,
    /// Bytes from the client to the backend.
    pub bytes_in: u64,
    /// Bytes from the backend to the client.
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub persistence: Persisted,
    pub retries: u32,
    pub end: TcpEnd,
    pub tls: Option<TlsFields<'a>>,
    /// As in [`HttpLine::queue`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queued>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// The process's access log.
pub struct AccessLog {
    format: AccessLogFormat,
    lines: Sender<Vec<u8>>,
    pool: Receiver<Vec<u8>>,
    /// Buffers made so far (at most [`IN_FLIGHT`]).
    made: AtomicUsize,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens the log (an error names the file) and starts its writer thread.
    pub fn start(cfg: &AccessLogConfig, dropped: IntCounter) -> Result<Arc<AccessLog>, String> {
        let out = Output::open(&cfg.path)?;
        let (lines, queue) = bounded(IN_FLIGHT);
        let (back, pool) = bounded(IN_FLIGHT);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let path = cfg.path.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(queue, back, out, path, flag))
            .map_err(|e| format!("access_log: cannot start its writer thread: {e}"))?;
        Ok(Arc::new(AccessLog {
            format: cfg.format,
            lines,
            pool,
            made: AtomicUsize::new(0),
            dropped,
            reopen,
        }))
    }

    /// Reopens the file (after a rotation renamed it); lines queued meanwhile are kept.
    pub fn reopen(&self) {
        self.reopen.store(true, Relaxed);
    }

    pub fn http(&self, l: &HttpLine<'_>) {
        self.send(|buf, format| match format {
            AccessLogFormat::Json => json(buf, l),
            AccessLogFormat::Text => http_text(buf, l),
        });
    }

    pub fn tcp(&self, l: &TcpLine<'_>) {
        self.send(|buf, format| match format {
            AccessLogFormat::Json => json(buf, l),
            AccessLogFormat::Text => tcp_text(buf, l),
        });
    }

    fn send(&self, format: impl FnOnce(&mut Vec<u8>, AccessLogFormat)) {
        let mut buf = match self.pool.try_recv() {
            Ok(b) => b,
            Err(_) if self.made.fetch_add(1, Relaxed) < IN_FLIGHT => {
                Vec::with_capacity(LINE_CAPACITY)
            }
            Err(_) => {
                self.made.fetch_sub(1, Relaxed);
                self.dropped.inc();
                return;
            }
        };
        format(&mut buf, self.format);
        buf.push(b'\n');
        if self.lines.try_send(buf).is_err() {
            // Only when the writer is gone: the buffer goes with the line.
            self.made.fetch_sub(1, Relaxed);
            self.dropped.inc();
        }
    }
}

fn json(buf: &mut Vec<u8>, line: &impl Serialize) {
    // Writing to a Vec cannot fail, and every field serialises.
    let _ = serde_json::to_writer(&mut *buf, line);
}

/// Like HAProxy's httplog: client, time, service, backend, status, bytes, timers, then the
/// request line in quotes.
fn http_text(buf: &mut Vec<u8>, l: &HttpLine<'_>) {
    let _ = write!(
        buf,
        "{} [{}] {} {} {} {}/{} ttfb={} total={:.1} persistence={} retries={}",
        Dash(l.client),
        humantime::format_rfc3339_millis(l.time),
        l.service,
        l.backend.unwrap_or("-"),
        l.status,
        l.request_bytes,
        l.response_bytes,
        Ms(l.ttfb_ms),
        l.total_ms,
        l.persistence.as_str(),
        l.retries,
    );
    tls_text(buf, &l.tls);
    queue_text(buf, &l.queue);
    let _ = write!(
        buf,
        " \"{} {}{}\"",
        l.method,
        Escaped(l.host),
        Escaped(l.path)
    );
}

fn tcp_text(buf: &mut Vec<u8>, l: &TcpLine<'_>) {
    let _ = write!(
        buf,
        "{} [{}] {} {} tcp {}/{} duration={:.1} persistence={} retries={} end={}",
        l.client,
        humantime::format_rfc3339_millis(l.time),
        l.service,
        l.backend.unwrap_or("-"),
        l.bytes_in,
        l.bytes_out,
        l.duration_ms,
        l.persistence.as_str(),
        l.retries,
        l.end.as_str(),
    );
    tls_text(buf, &l.tls);
    queue_text(buf, &l.queue);
}

fn tls_text(buf: &mut Vec<u8>, tls: &Option<TlsFields<'_>>) {
    if let Some(t) = tls {
        let _ = write!(buf, " tls={} sni={}", t.version, t.sni.unwrap_or("-"));
    }
}

/// ` queue=END/MS` when the request or connection waited.
fn queue_text(buf: &mut Vec<u8>, queue: &Option<Queued>) {
    if let Some(q) = queue {
        let ms = q.waited.as_secs_f64() * 1000.0;
        let _ = write!(buf, " queue={}/{ms:.1}", q.end.as_str());
    }
}

/// A value, or `-`.
struct Dash<T>(Option<T>);

impl<T: Display> Display for Dash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Milliseconds with one decimal, or `-`.
struct Ms(Option<f64>);

impl Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms:.1}"),
            None => f.write_str("-"),
        }
    }
}

/// A client-supplied string in a text line: quotes, backslashes and control bytes escaped, so
/// that a line cannot be forged or split.
struct Escaped<'a>(&'a str);

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Where lines go.
enum Output {
    Stdout(std::io::Stdout),
    File(BufWriter<File>),
}

impl Output {
    fn open(path: &AccessLogPath) -> Result<Output, String> {
        match path {
            AccessLogPath::Stdout => Ok(Output::Stdout(std::io::stdout())),
            AccessLogPath::File(p) => open_file(p).map(Output::File),
        }
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().write_all(line),
            Output::File(f) => f.write_all(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().flush(),
            Output::File(f) => f.flush(),
        }
    }
}

fn open_file(p: &PathBuf) -> Result<BufWriter<File>, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map(|f| BufWriter::with_capacity(64 * 1024, f))
        .map_err(|e| format!("access_log: cannot open {}: {e}", p.display()))
}

/// The writer thread: every [`TICK`], writes what is queued, in order, and flushes; reopens
/// the file when asked; ends when the log is dropped. It never waits on the queue, so a
/// request thread handing over a line never has a sleeping writer to wake (a system call per
/// line); a line reaches the file within a tick.
fn write_lines(
    queue: Receiver<Vec<u8>>,
    pool: Sender<Vec<u8>>,
    mut out: Output,
    path: AccessLogPath,
    reopen: Arc<AtomicBool>,
) {
    let mut failing = false;
    loop {
        let mut wrote = false;
        let gone = loop {
            match queue.try_recv() {
                Ok(mut line) => {
                    let r = out.write(&line);
                    report(&mut failing, r);
                    wrote = true;
                    line.clear();
                    if line.capacity() > KEEP_AT_MOST {
                        // A long line grew it: give the pool a small one instead (the pool's
                        // size stays, its memory does not).
                        line = Vec::with_capacity(LINE_CAPACITY);
                    }
                    let _ = pool.try_send(line);
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            let r = out.flush();
            report(&mut failing, r);
        }
        if gone {
            return;
        }
        if reopen.swap(false, Relaxed) {
            match Output::open(&path) {
                Ok(o) => {
                    out = o;
                    tracing::info!("access log reopened");
                }
                Err(e) => tracing::error!("{e}; writing on to the old file"),
            }
        }
        std::thread::sleep(TICK);
    }
}

/// Logs the first write error and the recovery, not every failed line.
fn report(failing: &mut bool, r: std::io::Result<()>) {
    match r {
        Err(e) if !*failing => {
            *failing = true;
            tracing::error!("access log: write failed: {e}; lines are lost until it works again");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("access log: writing again");
        }
        _ => {}
    }
}

/// Reopens the access log on SIGUSR1 (logrotate's `postrotate`).
pub struct ReopenOnUsr1(pub Arc<AccessLog>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReopenOnUsr1 {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot catch SIGUSR1, the access log cannot be reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => self.0.reopen(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> HttpLine<'static> {
        HttpLine {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            service: "web",
            client: Some("10.0.0.9:5123".parse().unwrap()),
            method: "GET",
            host: "example.com",
            path: "/a\"b\n",
            status: 200,
            backend: Some("fe01"),
            request_bytes: 0,
            response_bytes: 12,
            ttfb_ms: Some(1.25),
            total_ms: 2.5,
            persistence: Persisted::Hit,
            retries: 1,
            tls: Some(TlsFields {
                version: "TLSv1.3",
                sni: Some("example.com"),
            }),
            queue: None,
        }
    }

    /// Lines longer than a pooled buffer keeps do not shrink the pool: after more of them
    /// than the pool holds, every line is still written.
    #[test]
    fn long_lines_keep_the_pool_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let cfg = AccessLogConfig {
            path: AccessLogPath::File(path.clone()),
            format: AccessLogFormat::Json,
        };
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::start(&cfg, dropped.clone()).unwrap();
        let long = "/".to_string() + &"x".repeat(KEEP_AT_MOST + 100);
        let mut l = line();
        l.path = &long;
        let mut one = Vec::new();
        json(&mut one, &l);
        let size = one.len() as u64 + 1;
        let batches = IN_FLIGHT / 1000 + 2;
        for b in 1..=batches as u64 {
            for _ in 0..1000 {
                log.http(&l);
            }
            // Let the writer catch up before the next batch (lines have one length).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::fs::metadata(&path).map_or(0, |m| m.len()) < b * 1000 * size {
                assert!(
                    std::time::Instant::now() < deadline,
                    "batch {b} not written"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn json_lines_hold_every_field() {
        let mut buf = Vec::new();
        json(&mut buf, &line());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["persistence"], "hit");
        assert_eq!(v["tls"]["sni"], "example.com");
        assert_eq!(v["ttfb_ms"], 1.25);
        assert!(
            v.get("queue").is_none(),
            "no queue field when it did not wait"
        );
    }

    #[test]
    fn a_wait_in_the_queue_is_logged() {
        let mut l = line();
        l.status = 503;
        l.queue = Some(Queued {
            waited: Duration::from_millis(250),
            end: crate::balance::admission::QueueEnd::Timeout,
        });
        let mut buf = Vec::new();
        json(&mut buf, &l);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["queue"]["end"], "timeout");
        assert_eq!(v["queue"]["waited_ms"], 250.0);
        let mut buf = Vec::new();
        http_text(&mut buf, &l);
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains(" queue=timeout/250.0 \"GET"), "{s}");
    }

    #[test]
    fn text_lines_escape_what_the_client_sent() {
        let mut buf = Vec::new();
        http_text(&mut buf, &line());
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(
            s,
            "10.0.0.9:5123 [2023-11-14T22:13:20.123Z] web fe01 200 0/12 ttfb=1.2 total=2.5 \
             persistence=hit retries=1 tls=TLSv1.3 sni=example.com \"GET example.com/a\\\"b\\x0a\""
        );
    }
}
