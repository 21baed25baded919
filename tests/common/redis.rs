//! A real `redis-server` on a loopback port, for shared persistence tests.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `redis-server` without persistence to disk, killed on drop.
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// More arguments (TLS, a password), kept for restarts.
    extra: Vec<String>,
}

/// redis-server is there; when not, the test fails unless the skip is allowed.
fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
        || super::missing_dependency("redis-server", "redis-server is not installed")
}

impl RedisServer {
    /// Starts one on a free port; `None` only when its absence is an allowed skip.
    pub fn start() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        Some(Self::with_args(Vec::new()))
    }

    /// Also on a TLS port (certificate and key files) with a password: clients must use
    /// `rediss://` on the returned address and authenticate. The plain port stays for the test's
    /// own checks.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        password: &str,
    ) -> Option<(RedisServer, SocketAddr)> {
        if !installed() {
            return None;
        }
        let tls = super::free_addr();
        let extra = vec![
            "--tls-port".to_string(),
            tls.port().to_string(),
            "--tls-cert-file".to_string(),
            cert.display().to_string(),
            "--tls-key-file".to_string(),
            key.display().to_string(),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
            "--requirepass".to_string(),
            password.to_string(),
        ];
        Some((Self::with_args(extra), tls))
    }

    fn with_args(extra: Vec<String>) -> RedisServer {
        let mut r = RedisServer {
            addr: super::free_addr(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// (Re)starts it on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.addr.port().to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // PONG, or NOAUTH when a password is required: either way it answers.
        while !self
            .command("PING")
            .is_some_and(|a| a == "+PONG" || a.starts_with("-NOAUTH"))
        {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) it: a Redis that accepts but never answers.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: signals our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// One inline command; the first line of the answer.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        Some(text.lines().next()?.to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.freeze(false);
        self.stop();
    }
}
