//! The chaos: one action at a time, chosen by a seeded generator so a run can be repeated.
//! Each action that takes something away puts it back before the next one starts, so at most
//! one backend is ever killed and every service always has a live one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::account::Books;
use crate::backends::{Backend, Kind};
use crate::config::{render, Layout, PLUGINS};
use crate::redis::Redis;

/// xorshift64*: enough randomness for a schedule, and repeatable from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
    fn pause(&mut self, from_ms: u64, to_ms: u64) -> Duration {
        Duration::from_millis(from_ms + self.below(to_ms - from_ms))
    }
}

/// The chaos actions, by the names `--chaos` takes.
pub const ACTIONS: &[&str] = &["kill", "plugins", "reload", "redis", "drain"];

pub struct Chaos {
    pub rng: Rng,
    /// Indices into `ACTIONS` of the actions this run draws from (all by default; fewer to
    /// find which one a finding comes from).
    pub actions: Vec<usize>,
    pub books: Arc<Books>,
    pub backends: Arc<Vec<Backend>>,
    pub layout: Layout,
    pub config: PathBuf,
    pub plugboard: PathBuf,
    pub redis: Redis,
    pub round: u64,
}

/// Writes a file whole: a temporary file renamed over it, so a watcher never reads half.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Chaos {
    /// Runs actions until `end`, leaving everything as it was at the start.
    pub async fn run(&mut self, end: Instant) {
        while Instant::now() + Duration::from_secs(12) < end {
            let p = self.rng.pause(1000, 3000);
            tokio::time::sleep(p).await;
            let pick = self.actions[self.rng.below(self.actions.len() as u64) as usize];
            match pick {
                0 => self.kill().await,
                1 => self.plugins().await,
                2 => self.reload().await,
                3 => self.redis().await,
                _ => self.drain().await,
            }
        }
    }

    async fn kill(&mut self) {
        let b = &self.backends[self.rng.below(self.backends.len() as u64) as usize];
        self.books.action("kill a backend");
        eprintln!("soak:          killing {} ({:?})", b.name, b.kind);
        self.books.kill(&b.name);
        b.kill();
        tokio::time::sleep(self.rng.pause(2000, 4000)).await;
        b.restart().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    async fn plugins(&mut self) {
        let path = self.layout.plugins.join("sched.lua");
        self.books.action("plugin: a new good version");
        replace(&path, PLUGINS[1].1);
        tokio::time::sleep(self.rng.pause(2000, 4000)).await;
        let (what, text) = PLUGINS[2 + self.rng.below(3) as usize];
        self.books.action("plugin: a faulty version");
        eprintln!("soak:          {what}");
        replace(&path, text);
        tokio::time::sleep(self.rng.pause(2000, 4000)).await;
        self.books.action("plugin: back to the first version");
        replace(&path, PLUGINS[0].1);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    fn ctl_reload(&self) -> (bool, String) {
        let out = Command::new(&self.plugboard)
            .args([
                "ctl",
                "--admin",
                &format!("http://{}", self.layout.admin),
                "reload",
            ])
            .output()
            .expect("run plugboard ctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    async fn reload(&mut self) {
        self.round += 1;
        self.books.action("reload a changed configuration");
        replace(&self.config, &render(&self.layout, self.round, false));
        let (ok, text) = tokio::task::block_in_place(|| self.ctl_reload());
        if !ok {
            let msg = format!("a good configuration was refused: {text}");
            self.books.fail(&self.books.tally.reload_wrong, msg);
        }
        tokio::time::sleep(self.rng.pause(1000, 3000)).await;
        self.books.action("reload a bad configuration");
        replace(&self.config, &render(&self.layout, self.round, true));
        let (ok, text) = tokio::task::block_in_place(|| self.ctl_reload());
        let where_ = format!("{}:", self.config.display());
        if ok || !text.contains(&where_) || !text.contains("9999") {
            let msg = format!("a bad configuration was not refused at its line: {text}");
            self.books.fail(&self.books.tally.reload_wrong, msg);
        }
        replace(&self.config, &render(&self.layout, self.round, false));
    }

    async fn redis(&mut self) {
        self.books.action("stop redis");
        self.redis.stop();
        tokio::time::sleep(self.rng.pause(2000, 5000)).await;
        self.books.action("start redis");
        self.redis.start();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    async fn drain(&mut self) {
        let b = &self.backends[self.rng.below(self.backends.len() as u64) as usize];
        let services: &[&str] = match b.kind {
            Kind::Http => &["web", "fresh", "secure"],
            Kind::Stream => &["stream"],
            Kind::Rdp => &["rds"],
            Kind::Udp => &["dgram"],
        };
        let service = services[self.rng.below(services.len() as u64) as usize];
        let name = b.name.clone();
        self.books.action("drain a backend");
        self.books.disrupt(&name);
        self.state(service, &name, "drain").await;
        tokio::time::sleep(self.rng.pause(2000, 4000)).await;
        self.books.action("re-enable it");
        self.state(service, &name, "ready").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// `PUT /api/v1/services/SERVICE/backends/NAME` with the state; a refusal is a defect.
    async fn state(&self, service: &str, backend: &str, state: &str) {
        let r = put(
            self.layout.admin,
            &format!("/api/v1/services/{service}/backends/{backend}"),
            &format!("{{\"state\": \"{state}\"}}"),
        )
        .await;
        match r {
            Ok(s) if s.starts_with("HTTP/1.1 200") => {}
            other => self.books.fail(
                &self.books.tally.reload_wrong,
                format!("admin API {state} {service}/{backend}: {other:?}"),
            ),
        }
    }
}

async fn put(admin: SocketAddr, path: &str, body: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(admin).await?;
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    Ok(out)
}
