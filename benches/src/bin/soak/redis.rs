//! A real `redis-server` for shared persistence, stopped and started by the chaos.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn new(addr: SocketAddr, dir: std::path::PathBuf) -> Redis {
        let mut r = Redis {
            addr,
            dir,
            child: None,
        };
        r.start();
        r
    }

    /// Starts it, empty, and waits until it accepts connections.
    pub fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.addr.port().to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/soak installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
