//! Shared test harness: the real `plugboard` binary, real backend servers on loopback, and a
//! raw HTTP/1.1 client that shows exactly what went over the wire.
#![allow(dead_code)]

mod backends;
pub mod haproxy;
pub mod netns;
pub mod rdp;
pub mod redis;
pub mod tls;

pub use backends::*;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_plugboard");

/// A test's real dependency `dep` is missing. The test fails, unless `PLUGBOARD_ALLOW_SKIP`
/// names `dep` (a comma-separated list, or `all`): then the skip is recorded in
/// `target/test-skips.txt`, which `./scripts/test` lists at the end of the run, and the caller
/// returns without testing. Returns false (skip) or panics.
pub fn missing_dependency(dep: &str, why: &str) -> bool {
    let allowed = std::env::var("PLUGBOARD_ALLOW_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|d| d.trim() == dep || d.trim() == "all");
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    if !allowed {
        panic!("{test}: {why}. ./scripts/test installs it; set PLUGBOARD_ALLOW_SKIP={dep} to skip this test on purpose");
    }
    eprintln!("!!! SKIPPED {test}: {why}");
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-skips.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{test}: {why} (allowed by PLUGBOARD_ALLOW_SKIP={dep})");
    }
    false
}

/// `cmd` is on PATH (or an executable path).
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An SDK-built plugin from `target/plugins/` (made by `scripts/build-plugins`); `None` only
/// when its absence is an allowed skip.
pub fn sdk_plugin(name: &str) -> Option<PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/plugins/{name}.wasm"));
    if p.is_file()
        || missing_dependency(
            "sdk-plugins",
            &format!("{} is missing (run ./scripts/build-plugins)", p.display()),
        )
    {
        return Some(p);
    }
    None
}

/// Fails unless Rust's wasm32-unknown-unknown target is installed (the build itself needs it
/// for the stock plugins, so it is never skipped).
pub fn assert_wasm_target() {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    assert!(
        Path::new(&sysroot)
            .join("lib/rustlib/wasm32-unknown-unknown")
            .is_dir(),
        "the wasm32-unknown-unknown target is not installed (rustup target add wasm32-unknown-unknown)"
    );
}

/// A free loopback port for a test to bind later. It is taken below the kernel's ephemeral
/// range: a port bound to 0 and released comes from that range, and a parallel test's client
/// connection can take it as its source port before the test binds it again (`AddrInUse`).
/// Each call gives a new port (a counter from a point set by the process id), checked free.
pub fn free_addr() -> SocketAddr {
    const LOW: u32 = 10_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&h| h > LOW + 1000)
        .unwrap_or(32_768);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (LOW + (start + n) % span) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if StdListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// Connects, from a chosen loopback source address (any of 127.0.0.0/8) when given.
pub async fn tcp_connect(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    match from {
        None => TcpStream::connect(to).await,
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(to).await
        }
    }
}

/// A one-service configuration: `[proxy] threads = 2`, then the service and its backends.
pub fn service_toml(
    mode: &str,
    listen: SocketAddr,
    extra: &str,
    backends: &[(SocketAddr, u32)],
) -> String {
    format!(
        "[proxy]\nthreads = 2\n\n[[service]]\nname = \"{mode}-svc\"\nlisten = \"{listen}\"\nmode = \"{mode}\"\n{extra}\n{}",
        backends_toml(backends)
    )
}

/// `ready` accepts a connection (made in namespace `ns`, if any).
async fn accepts(ready: SocketAddr, ns: Option<&str>) -> bool {
    match ns {
        None => TcpStream::connect(ready).await.is_ok(),
        Some(ns) => netns::within(ns, || std::net::TcpStream::connect(ready).is_ok()),
    }
}

/// A running `plugboard run`, killed on drop.
pub struct Proxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Proxy {
    /// Writes `config` to a temp dir and starts the proxy; waits until `ready` accepts.
    pub async fn start(config: &str, ready: SocketAddr) -> Proxy {
        Self::start_with(config, ready, |_| {}).await
    }

    /// As [`Proxy::start`], with the descriptor limit (soft and hard) set to `nofile`.
    pub async fn start_with_nofile(config: &str, ready: SocketAddr, nofile: u64) -> Proxy {
        Self::start_with(config, ready, move |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
        .await
    }

    /// As [`Proxy::start`], in network namespace `ns` (`ip netns exec`, which becomes the
    /// proxy); `ready` is an address there.
    pub async fn start_in_netns(config: &str, ready: SocketAddr, ns: &str) -> Proxy {
        Self::launch(config, ready, Some(ns), |_| {}).await
    }

    /// As [`Proxy::start`], with `adjust` applied to the command first.
    pub async fn start_with(
        config: &str,
        ready: SocketAddr,
        adjust: impl FnOnce(&mut Command),
    ) -> Proxy {
        Self::launch(config, ready, None, adjust).await
    }

    async fn launch(
        config: &str,
        ready: SocketAddr,
        ns: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugboard.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("plugboard.log");
        let mut cmd = match ns {
            None => Command::new(BIN),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
        };
        cmd.args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        adjust(&mut cmd);
        let child = cmd.spawn().expect("start plugboard");
        let mut p = Proxy { child, dir, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Every listener is bound once the start-up line is logged.
            // Connections are counted by some tests: one probe, once the line is there.
            if p.log_text().contains("plugboard starting") && accepts(ready, ns).await {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("plugboard exited with {status}: {}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "plugboard did not listen on {ready}: {}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the proxy has used (user + system), in clock ticks (1/100 s).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may contain spaces) start after ") ".
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: a plain kill(2) on our child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
    }

    /// Waits for the process to exit, up to `limit`; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling, up to `limit`) until the log has `n` lines containing every one of
    /// `needles`; panics with the log if not.
    pub async fn wait_log(&self, needles: &[&str], n: usize, limit: Duration) {
        let count = || {
            self.log_text()
                .lines()
                .filter(|l| needles.iter().all(|s| l.contains(s)))
                .count()
        };
        let ok = eventually(limit, async || count() >= n).await;
        assert!(
            ok,
            "log never had {n} line(s) with {needles:?}:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header lines as received (name lowercased, value as is), in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A raw HTTP/1.1 client on one kept-alive connection.
pub struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(to: SocketAddr) -> std::io::Result<Client> {
        Self::connect_from(to, None).await
    }

    /// Connects from a chosen loopback source address (any of 127.0.0.0/8).
    pub async fn connect_from(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<Client> {
        Ok(Self::over(tcp_connect(to, from).await?))
    }

    /// A client on a connection made elsewhere (in another network namespace...).
    pub fn over(tcp: TcpStream) -> Client {
        let (r, w) = tcp.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.w.write_all(req.as_bytes()).await?;
        self.read_response().await
    }

    /// Writes raw bytes (several pipelined requests, a partial header...).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes).await
    }

    /// Sends a request with a body (`Content-Length`) and reads the response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<Response> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.w.write_all(head.as_bytes()).await?;
        self.w.write_all(body).await?;
        self.read_response().await
    }

    /// Waits until the proxy closes the connection; false if it is still open at `limit`
    /// or sends anything.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(limit, self.r.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub async fn read_response(&mut self) -> std::io::Result<Response> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            return Err(eof());
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if self.r.read_line(&mut h).await? == 0 {
                return Err(eof());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap_or((h, ""));
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).await?;
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into(),
        })
    }
}

/// One GET on a new connection.
pub async fn get_once(to: SocketAddr, path: &str) -> std::io::Result<Response> {
    Client::connect(to).await?.get(path, &[]).await
}

/// Two HTTP backends of weight 1, and their list for [`service_toml`].
pub async fn two() -> (HttpBackend, HttpBackend, Vec<(SocketAddr, u32)>) {
    let a = HttpBackend::start().await;
    let b = HttpBackend::start().await;
    let list = vec![(a.addr, 1), (b.addr, 1)];
    (a, b, list)
}

/// `n` requests for `/` with `headers` on one kept-alive connection.
pub async fn bodies(to: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<Response> {
    let mut c = Client::connect(to).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.get("/", headers).await.unwrap());
    }
    out
}

/// The metrics text served at `addr`, retrying while the endpoint does not answer yet
/// (pingora starts it beside the services, so it may listen a moment after them).
pub async fn scrape(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get_once(addr, "/metrics").await {
            Ok(r) => return r.body,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no metrics at {addr}: {e}"),
        }
    }
}

/// Counts responses by body (the backend address).
pub fn tally<'a>(bodies: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for b in bodies {
        *m.entry(b.to_string()).or_insert(0) += 1;
    }
    m
}

/// `actual` is within `tolerance` (a fraction of `expected`) of `expected`.
pub fn assert_near(actual: usize, expected: f64, tolerance: f64, what: &str) {
    let lo = expected * (1.0 - tolerance);
    let hi = expected * (1.0 + tolerance);
    assert!(
        (actual as f64) >= lo && (actual as f64) <= hi,
        "{what}: {actual} not within {:.0}% of {expected}",
        tolerance * 100.0
    );
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `[[service.backend]]` tables for these addresses and weights.
pub fn backends_toml(list: &[(SocketAddr, u32)]) -> String {
    list.iter()
        .map(|(a, w)| format!("[[service.backend]]\naddress = \"{a}\"\nweight = {w}\n"))
        .collect()
}

/// Runs the binary on a service whose listen address (from `service(listen)`) is already
/// taken, and returns what it printed on stderr once it has exited with a failure.
pub fn refused_on_busy_address(service: impl Fn(SocketAddr) -> String) -> (SocketAddr, String) {
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let (_dir, path) = write_config(&service(listen));
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    (listen, err)
}

/// Writes a config file into a fresh temp dir and returns both.
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugboard.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    (dir, path)
}

/// Runs `plugboard ctl --admin http://ADMIN [--token-file F] ARGS`: exit code, stdout, stderr.
pub fn ctl(admin: SocketAddr, token_file: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["ctl", "--admin", &format!("http://{admin}")]);
    if let Some(t) = token_file {
        cmd.arg("--token-file").arg(t);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rest` under an `[admin]` table listening on `admin`.
pub fn with_admin(admin: SocketAddr, rest: &str) -> String {
    format!("[admin]\nlisten = \"{admin}\"\n\n{rest}")
}

/// A raw API call with curl: (status, body).
pub fn api(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data", b]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
