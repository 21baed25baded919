//! Shared persistence (`[proxy] redis`, `persistence.shared = true`) with a real
//! `redis-server` and two instances of the real binary: pins made through one hold through the
//! other, for header keys and RDP users (rdp-cookie); Redis frozen or killed under load fails
//! nothing; once it is back, new pins are shared again.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use tokio::io::AsyncWriteExt;

const USERS: usize = 50;

struct Pair {
    a: Instance,
    b: Instance,
    http: Vec<HttpBackend>,
    _rdp: Vec<TcpBackend>,
}

struct Instance {
    web: SocketAddr,
    rds: SocketAddr,
    metrics: SocketAddr,
    proxy: Proxy,
}

impl Instance {
    async fn start(redis: &RedisServer, http: &[HttpBackend], rdp: &[TcpBackend]) -> Instance {
        let (web, rds, metrics) = (free_addr(), free_addr(), free_addr());
        let list = |addrs: Vec<SocketAddr>| {
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| format!("[[service.backend]]\nname = \"b{i}\"\naddress = \"{a}\"\n"))
                .collect::<String>()
        };
        // random_two: each instance on its own would choose differently for most users.
        let cfg = format!(
            "[proxy]\nthreads = 2\nmetrics = \"{metrics}\"\nredis = \"{}\"\n\n\
             [[service]]\nname = \"web\"\nlisten = \"{web}\"\nscheduler = \"random_two\"\n\
             persistence = {{ key = \"header:X-User\", timeout = \"20m\", shared = true }}\n{}\n\
             [[service]]\nname = \"rds\"\nlisten = \"{rds}\"\nmode = \"tcp\"\nscheduler = \"random_two\"\n\
             inspect_timeout = \"1s\"\n\
             persistence = {{ key = \"plugin:rdp-cookie\", timeout = \"8h\", shared = true }}\n{}",
            redis.url(),
            list(http.iter().map(|b| b.addr).collect()),
            list(rdp.iter().map(|b| b.addr).collect()),
        );
        let proxy = Proxy::start(&cfg, web).await;
        Instance {
            web,
            rds,
            metrics,
            proxy,
        }
    }

    /// The backend (its address) that served user `user` over HTTP.
    async fn web_user(&self, user: &str) -> std::io::Result<String> {
        let mut c = Client::connect(self.web).await?;
        let r = tokio::time::timeout(Duration::from_secs(5), c.get("/", &[("X-User", user)]))
            .await
            .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
        if r.status != 200 {
            return Err(std::io::Error::other(format!("status {}", r.status)));
        }
        Ok(r.body)
    }

    /// The backend an RDP client with `mstshash=user` reached.
    async fn rdp_user(&self, user: &str) -> String {
        let (mut s, banner) = {
            let mut s = tcp_connect(self.rds, None).await.unwrap();
            s.write_all(&rdp::connection_request(
                format!("Cookie: mstshash={user}\r\n").as_bytes(),
            ))
            .await
            .unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let mut line = String::new();
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line),
            )
            .await
            .expect("banner within 5 s")
            .unwrap();
            (r.into_inner(), line.trim_end().to_string())
        };
        let _ = s.shutdown().await;
        banner
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = scrape(self.metrics).await;
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn wait_metric(&self, name: &str, at_least: f64) {
        let ok = eventually(Duration::from_secs(10), async || {
            self.metric(name).await >= at_least
        })
        .await;
        assert!(
            ok,
            "{name} stayed below {at_least} (at {}):\n{}",
            self.metric(name).await,
            self.proxy.log_text()
        );
    }
}

impl Pair {
    async fn start(redis: &RedisServer) -> Pair {
        let mut http = Vec::new();
        let mut rdp = Vec::new();
        for _ in 0..3 {
            http.push(HttpBackend::start().await);
            rdp.push(TcpBackend::start().await);
        }
        let a = Instance::start(redis, &http, &rdp).await;
        let b = Instance::start(redis, &http, &rdp).await;
        for i in [&a, &b] {
            i.wait_metric("plugboard_redis_up", 1.0).await;
        }
        Pair {
            a,
            b,
            http,
            _rdp: rdp,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_made_through_one_instance_hold_through_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let p = Pair::start(&redis).await;
    let mut web = Vec::new();
    let mut rdp = Vec::new();
    for u in 0..USERS {
        web.push(p.a.web_user(&format!("user{u}")).await.unwrap());
        rdp.push(p.a.rdp_user(&format!("user{u}")).await);
    }
    // Spread over the backends: each instance alone would not reproduce this assignment.
    let spread = tally(web.iter().map(String::as_str));
    assert!(spread.len() >= 2, "{spread:?}");
    p.b.wait_metric("plugboard_redis_pins_received_total", (2 * USERS) as f64)
        .await;
    for u in 0..USERS {
        assert_eq!(
            p.b.web_user(&format!("user{u}")).await.unwrap(),
            web[u],
            "user{u} over HTTP"
        );
        assert_eq!(
            p.b.rdp_user(&format!("user{u}")).await,
            rdp[u],
            "RDP user{u}"
        );
    }
    // Through B every one of them was a hit on a pin B never made itself.
    let hits =
        p.b.metric("plugboard_persistence_lookups_total{result=\"hit\"")
            .await;
    assert!(hits >= (2 * USERS) as f64, "hits on B: {hits}");
    // In Redis: the backend's name, under a hashed key (no user name in clear).
    let keys = redis.command("DBSIZE").unwrap();
    assert!(keys.starts_with(':'), "{keys}");
    assert!(keys[1..].parse::<usize>().unwrap() >= 2 * USERS, "{keys}");
    assert_eq!(redis.command("KEYS *user1*").unwrap(), "*0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_or_killed_under_load_fails_nothing_and_sharing_resumes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let p = Pair::start(&redis).await;
    for u in 0..10 {
        p.a.web_user(&format!("early{u}")).await.unwrap();
    }
    p.b.wait_metric("plugboard_redis_pins_received_total", 10.0)
        .await;

    // Load through both instances, old and new users, while Redis freezes, thaws, dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (a, b, stop) = (p.a.web, p.b.web, stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut n) = (0usize, Vec::new(), 0usize);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && n < 20_000
                && std::time::Instant::now() < deadline
            {
                let to = if n % 2 == 0 { a } else { b };
                let user = if n % 3 == 0 {
                    format!("early{}", n % 10)
                } else {
                    format!("load{n}")
                };
                let r = async {
                    let mut c = Client::connect(to).await?;
                    tokio::time::timeout(Duration::from_secs(5), c.get("/", &[("X-User", &user)]))
                        .await
                        .map_err(|_| std::io::Error::other("no answer within 5 s"))?
                }
                .await;
                match r {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{user}: status {}", r.status)),
                    Err(e) => failed.push(format!("{user}: {e}")),
                }
                n += 1;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.freeze(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.freeze(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    for i in [&p.a, &p.b] {
        let down = eventually(Duration::from_secs(10), async || {
            i.metric("plugboard_redis_up").await == 0.0
        })
        .await;
        assert!(down, "plugboard_redis_up did not fall to 0");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 50, "only {ok} requests ran");
    // The outage is logged once per instance, not per request.
    let log = p.a.proxy.log_text();
    assert!(log.contains("Redis unreachable"), "{log}");
    assert!(log.matches("Redis unreachable").count() <= 2, "{log}");

    redis.restart();
    for i in [&p.a, &p.b] {
        i.wait_metric("plugboard_redis_up", 1.0).await;
    }
    let before = p.b.metric("plugboard_redis_pins_received_total").await;
    let mut after = Vec::new();
    for u in 0..USERS {
        after.push(p.a.web_user(&format!("after{u}")).await.unwrap());
    }
    p.b.wait_metric("plugboard_redis_pins_received_total", before + USERS as f64)
        .await;
    for (u, backend) in after.iter().enumerate() {
        assert_eq!(&p.b.web_user(&format!("after{u}")).await.unwrap(), backend);
    }
    assert!(p.http.iter().all(|b| b.hits() > 0));
}

/// `rediss://` with `redis_ca_file` and `redis_password_file`: pins are shared over TLS, and
/// an instance that does not trust the server's certificate shares nothing (and still serves).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_are_shared_over_tls_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::tls::Ca::new(dir.path());
    let cert = ca.issue("redis", &["127.0.0.1"], common::tls::KeyType::Ecdsa, 30);
    let password = "a redis password for the tls test";
    let Some((redis, tls)) = RedisServer::start_tls(&cert.cert, &cert.key, password) else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("redis.password"), password).unwrap();
    let backends = [
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    ];
    let start = async |ca_file: Option<&std::path::Path>| {
        let (web, metrics) = (free_addr(), free_addr());
        let list: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "[[service.backend]]\nname = \"b{i}\"\naddress = \"{}\"\n",
                    b.addr
                )
            })
            .collect();
        let ca_line = ca_file
            .map(|p| format!("redis_ca_file = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let cfg = format!(
            "[proxy]\nthreads = 2\nmetrics = \"{metrics}\"\nredis = \"rediss://{tls}/0\"\n\
             redis_password_file = \"{}\"\n{ca_line}\n\
             [[service]]\nname = \"web\"\nlisten = \"{web}\"\nscheduler = \"random_two\"\n\
             persistence = {{ key = \"header:X-User\", timeout = \"20m\", shared = true }}\n{list}",
            secrets.path().join("redis.password").display()
        );
        (web, metrics, Proxy::start(&cfg, web).await)
    };
    let up = async |metrics: SocketAddr| {
        scrape(metrics)
            .await
            .lines()
            .any(|l| l == "plugboard_redis_up 1")
    };
    let (a, ma, pa) = start(Some(&ca.cert)).await;
    let (b, mb, pb) = start(Some(&ca.cert)).await;
    for (m, p) in [(ma, &pa), (mb, &pb)] {
        assert!(
            eventually(Duration::from_secs(10), async || up(m).await).await,
            "not connected over TLS:\n{}",
            p.log_text()
        );
    }
    let get = async |to: SocketAddr, user: &str| {
        let mut c = Client::connect(to).await.unwrap();
        c.get("/", &[("X-User", user)]).await.unwrap().body
    };
    let mut first = Vec::new();
    for u in 0..20 {
        first.push(get(a, &format!("tls{u}")).await);
    }
    let received = async || {
        scrape(mb)
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix("plugboard_redis_pins_received_total ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(10), async || received().await >= 20).await);
    for (u, backend) in first.iter().enumerate().rev() {
        assert_eq!(&get(b, &format!("tls{u}")).await, backend, "tls{u}");
    }
    // Without the CA the server's certificate is not trusted: no connection, requests served.
    let (c, mc, pc) = start(None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!up(mc).await, "connected without trusting the certificate");
    assert!(!get(c, "tls0").await.is_empty());
    assert!(
        pc.log_text().contains("Redis unreachable"),
        "{}",
        pc.log_text()
    );
    drop(redis);
}
