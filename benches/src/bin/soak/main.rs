//! The chaos soak (`scripts/soak [MINUTES]`): the real `plugboard` binary under mixed load on
//! loopback (HTTP kept alive and on new connections, HTTPS, long-lived TCP, RDP connection
//! requests, UDP) while backends are killed and restarted, the scheduler plugin is swapped for
//! good and faulty versions, the configuration is reloaded (and a bad one refused), Redis is
//! stopped and started, and backends are drained and re-enabled through the admin API.
//!
//! `soak --plugboard PATH [--minutes M] [--seed N] [--chaos kill,plugins,reload,redis,drain]`
//! prints a markdown report and exits 1 when a
//! goal is missed: zero failed idempotent requests, zero dropped long-lived connections that
//! were not on a killed backend, zero persistence violations, memory, descriptors and threads
//! flat after warm-up.

mod account;
mod backends;
mod chaos;
mod config;
mod load;
mod redis;
mod report;
mod sample;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use account::Books;
use backends::{Backend, Kind};
use chaos::{replace, Chaos, Rng};
use config::{render, Layout, PLUGINS};

/// Backends per service group: one can be killed and two stay.
const PER_GROUP: usize = 3;
/// Concurrent clients of each kind.
const KEEPALIVE: usize = 8;
const NEW_CONN: usize = 3;
const HTTPS: usize = 3;
const LONG_LIVED: usize = 12;
const RDP_USERS: usize = 4;
const UDP_FLOWS: usize = 4;

struct Args {
    plugboard: PathBuf,
    run: Duration,
    seed: u64,
    actions: Vec<usize>,
}

fn args() -> Args {
    let mut plugboard = None;
    let mut minutes = 15.0f64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut actions: Vec<usize> = (0..chaos::ACTIONS.len()).collect();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--plugboard" => plugboard = Some(PathBuf::from(v)),
            "--minutes" => minutes = v.parse().expect("--minutes: a number"),
            "--seed" => seed = v.parse().expect("--seed: a number"),
            "--chaos" => {
                actions = v
                    .split(',')
                    .map(|name| {
                        chaos::ACTIONS
                            .iter()
                            .position(|a| *a == name)
                            .unwrap_or_else(|| {
                                panic!("--chaos: {name}? (one of {:?})", chaos::ACTIONS)
                            })
                    })
                    .collect();
                assert!(!actions.is_empty(), "--chaos: at least one action");
            }
            _ => {
                panic!("usage: soak --plugboard PATH [--minutes M] [--seed N] [--chaos ACTION,...]")
            }
        }
    }
    assert!(
        (0.5..=120.0).contains(&minutes),
        "--minutes: between 0.5 and 120"
    );
    Args {
        plugboard: plugboard.expect("--plugboard PATH is required"),
        run: Duration::from_secs_f64(minutes * 60.0),
        seed,
        actions,
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A self-signed certificate for the https service (openssl, as the tests make theirs).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=bench.example.com"])
        .args(["-addext", "subjectAltName=DNS:bench.example.com"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed (scripts/soak installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

async fn group(kind: Kind, prefix: &str) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..PER_GROUP {
        v.push(Backend::start(kind, format!("{prefix}{i}")).await);
    }
    v
}

fn names(list: &[Backend]) -> Vec<(String, SocketAddr)> {
    list.iter().map(|b| (b.name.clone(), b.addr)).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("plugboard-soak-{}", std::process::id()));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    eprintln!(
        "soak: seed {} for {:.1} minutes, files in {}",
        a.seed,
        a.run.as_secs_f64() / 60.0,
        dir.display()
    );
    let (cert, key) = certificate(&dir);
    let http = group(Kind::Http, "h").await;
    let stream = group(Kind::Stream, "t").await;
    let rdp = group(Kind::Rdp, "r").await;
    let udp = group(Kind::Udp, "u").await;
    let layout = Layout {
        admin: free_addr(),
        web: free_addr(),
        fresh: free_addr(),
        secure: free_addr(),
        stream: free_addr(),
        rds: free_addr(),
        dgram: free_addr(),
        redis: free_addr(),
        plugins: plugins.clone(),
        cert,
        key,
        http: names(&http),
        stream_backends: names(&stream),
        rdp: names(&rdp),
        udp: names(&udp),
    };
    let redis = redis::Redis::new(layout.redis, dir.clone());
    replace(&plugins.join("sched.lua"), PLUGINS[0].1);
    let config = dir.join("plugboard.toml");
    replace(&config, &render(&layout, 0, false));

    let log = dir.join("plugboard.log");
    let mut child = Command::new(&a.plugboard)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start plugboard");
    let pid = child.id();
    let ready = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(layout.web).await.is_err()
        || tokio::net::TcpStream::connect(layout.admin).await.is_err()
    {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("plugboard exited with {s}; see {}", log.display());
        }
        assert!(
            Instant::now() < ready,
            "plugboard did not listen; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let all: Vec<Backend> = [http, stream, rdp, udp].into_iter().flatten().collect();
    let books = Arc::new(Books::new(all.iter().map(|b| b.name.clone())));
    let start = books.start;
    let end = start + a.run;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..KEEPALIVE {
        tasks.spawn(load::http_keepalive(layout.web, i, books.clone(), end));
    }
    for _ in 0..NEW_CONN {
        tasks.spawn(load::http_new(layout.fresh, books.clone(), end));
    }
    for _ in 0..HTTPS {
        tasks.spawn(load::https(layout.secure, books.clone(), end));
    }
    for i in 0..LONG_LIVED {
        let life = Duration::from_secs(10 + 5 * (i as u64 % 5));
        tasks.spawn(load::long_lived(layout.stream, i, life, books.clone(), end));
    }
    for i in 0..RDP_USERS {
        tasks.spawn(load::rdp(layout.rds, i, books.clone(), end));
    }
    for i in 0..UDP_FLOWS {
        tasks.spawn(load::udp(layout.dgram, i, books.clone(), end));
    }
    let every = if a.run > Duration::from_secs(300) {
        5
    } else {
        2
    };
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < end {
            samples.extend(sample::take(pid, start));
            tokio::time::sleep(Duration::from_secs(every)).await;
        }
        samples
    });

    let mut chaos = Chaos {
        rng: Rng::new(a.seed),
        actions: a.actions.clone(),
        books: books.clone(),
        backends: Arc::new(all),
        layout,
        config,
        plugboard: a.plugboard.clone(),
        redis,
        round: 0,
    };
    chaos.run(end).await;
    while tasks.join_next().await.is_some() {}
    let samples = sampler.await.unwrap();
    let alive = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let _ = child.wait();

    let ok = report::print(&books, &samples, a.run, a.seed, alive);
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("soak: goals missed; the proxy's log is {}", log.display());
        std::process::exit(1);
    }
}
