//! A real HAProxy (Debian's `haproxy`, installed by `scripts/test`) for the PROXY protocol
//! tests: in front of Plugboard, or as its backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::missing_dependency;

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// A running `haproxy -db`, killed on drop.
pub struct Haproxy {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy with `sections` (frontends, backends) after a small `global` and
    /// `defaults`; waits until `ready` accepts. `None` when HAProxy is missing and that is an
    /// allowed skip.
    pub async fn start(sections: &str, ready: SocketAddr) -> Option<Haproxy> {
        if !std::path::Path::new(HAPROXY).is_file()
            && !missing_dependency("haproxy", &format!("{HAPROXY} is not installed"))
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 200\n\ndefaults\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n{sections}"
            ),
        )
        .unwrap();
        let log = dir.path().join("haproxy.log");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start haproxy");
        let mut h = Haproxy {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(ready).await.is_err() {
            if let Ok(Some(s)) = h.child.try_wait() {
                panic!("haproxy exited with {s}: {}", h.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {ready}: {}",
                h.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(h)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A frontend that takes a PROXY header (`accept-proxy`, plus `bind_extra` such as
/// `ssl crt FILE`) and answers every request with `client-ip:port front-ip:port` as the
/// header said them.
pub fn echo_addresses(listen: SocketAddr, bind_extra: &str) -> String {
    format!(
        "frontend echo\n    mode http\n    bind {listen} accept-proxy {bind_extra}\n    http-request return status 200 content-type text/plain lf-string \"%ci:%cp %fi:%fp\"\n"
    )
}

/// A frontend on `listen` (in `mode`) whose server is `to`, with `server_extra` (e.g.
/// `send-proxy-v2`).
pub fn in_front(mode: &str, listen: SocketAddr, to: SocketAddr, server_extra: &str) -> String {
    format!(
        "frontend front\n    mode {mode}\n    bind {listen}\n    default_backend plugboard\n\nbackend plugboard\n    mode {mode}\n    server pb {to} {server_extra}\n"
    )
}
