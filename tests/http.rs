//! http mode, through the real binary against real backends on loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn service(listen: SocketAddr, extra: &str, backends: &[(SocketAddr, u32)]) -> String {
    service_toml("http", listen, extra, backends)
}

async fn three(weights: [u32; 3]) -> (Vec<HttpBackend>, Vec<(SocketAddr, u32)>) {
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(HttpBackend::start().await);
    }
    let list = bs.iter().zip(weights).map(|(b, w)| (b.addr, w)).collect();
    (bs, list)
}

/// Sends `n` GETs on one kept-alive connection; returns the bodies.
async fn keepalive_gets(to: SocketAddr, n: usize) -> Vec<String> {
    let mut c = Client::connect(to).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        out.push(r.body);
    }
    out
}

async fn check_weighted(scheduler: &str) {
    let (bs, list) = three([1, 1, 2]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, &format!("scheduler = \"{scheduler}\""), &list),
        listen,
    )
    .await;
    // Each request on the kept-alive connection is balanced on its own.
    let bodies = keepalive_gets(listen, 400).await;
    let t = tally(bodies.iter().map(|s| s.as_str()));
    for (b, expected) in bs.iter().zip([100.0, 100.0, 200.0]) {
        assert_near(
            *t.get(&b.addr.to_string()).unwrap_or(&0),
            expected,
            0.10,
            scheduler,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights() {
    check_weighted("round_robin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_honours_weights_when_idle() {
    check_weighted("least_connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_spreads_over_all() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "scheduler = \"random_two\"", &list),
        listen,
    )
    .await;
    let bodies = keepalive_gets(listen, 300).await;
    let t = tally(bodies.iter().map(|s| s.as_str()));
    for b in &bs {
        // Sequential requests leave every backend idle, so the choice is uniform.
        assert_near(
            *t.get(&b.addr.to_string()).unwrap_or(&0),
            100.0,
            0.35,
            "random_two",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_busy_backend() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "scheduler = \"least_connections\"", &list),
        listen,
    )
    .await;
    // Hold two slow requests: they land on two different backends.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                Client::connect(listen)
                    .await
                    .unwrap()
                    .get("/slow/1500", &[])
                    .await
                    .unwrap()
                    .body
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every quick request meanwhile goes to the one idle backend.
    let quick = keepalive_gets(listen, 20).await;
    let busy: Vec<String> = futures_join(slow).await;
    assert_ne!(busy[0], busy[1], "slow requests should spread");
    let idle = bs
        .iter()
        .map(|b| b.addr.to_string())
        .find(|a| !busy.contains(a))
        .unwrap();
    assert!(
        quick.iter().all(|b| *b == idle),
        "quick requests {quick:?} should all go to {idle}"
    );
}

async fn futures_join(hs: Vec<tokio::task::JoinHandle<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_is_sticky_per_client_ip() {
    let (_bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "scheduler = \"source_hash\"", &list),
        listen,
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for i in 2..30u8 {
        let ip: IpAddr = [127, 0, 0, i].into();
        let mut first = None;
        for _ in 0..3 {
            let r = Client::connect_from(listen, Some(ip))
                .await
                .unwrap()
                .get("/", &[])
                .await
                .unwrap();
            assert_eq!(
                *first.get_or_insert(r.body.clone()),
                r.body,
                "client {ip} moved"
            );
        }
        seen.insert(first.unwrap());
    }
    assert_eq!(seen.len(), 3, "28 client IPs should use all three backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_persistence_sticks_and_expires() {
    let (_bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let extra =
        "scheduler = \"round_robin\"\npersistence = { key = \"source_ip\", timeout = \"1s\" }";
    let _p = Proxy::start(&service(listen, extra, &list), listen).await;
    let ip: IpAddr = [127, 0, 0, 7].into();
    let get = || async move {
        Client::connect_from(listen, Some(ip))
            .await
            .unwrap()
            .get("/", &[])
            .await
            .unwrap()
            .body
    };
    // Sticky across new connections, and kept alive by activity for longer than the timeout.
    let pinned = get().await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get().await, pinned);
    }
    // Other clients spread as round robin does.
    let others: std::collections::HashSet<String> = futures_join(
        (20..26u8)
            .map(|i| {
                tokio::spawn(async move {
                    Client::connect_from(listen, Some([127, 0, 0, i].into()))
                        .await
                        .unwrap()
                        .get("/", &[])
                        .await
                        .unwrap()
                        .body
                })
            })
            .collect(),
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(others.len(), 3);
    // Idle past the timeout: the entry is gone and the client is balanced afresh. Round robin
    // has handed out 1 + 6 picks, so the next one is not the first backend again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let after = get().await;
    assert_ne!(after, pinned, "entry should have expired");
    assert_eq!(get().await, after, "and the new choice is pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserted_cookie_pins_and_rejects_forgeries() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "persistence = { key = \"cookie:SRV\" }", &list),
        listen,
    )
    .await;
    let mut c = Client::connect(listen).await.unwrap();
    let r = c.get("/", &[]).await.unwrap();
    let set = r.header("set-cookie").expect("cookie inserted").to_string();
    assert!(
        set.starts_with("SRV=") && set.ends_with("; Path=/"),
        "{set}"
    );
    let value = set["SRV=".len()..set.find(';').unwrap()].to_string();
    assert!(
        !bs.iter()
            .any(|b| value.contains(&b.addr.port().to_string())),
        "cookie reveals address: {value}"
    );
    let cookie = format!("SRV={value}");
    for _ in 0..30 {
        let r2 = c.get("/", &[("Cookie", &cookie)]).await.unwrap();
        assert_eq!(r2.body, r.body);
        assert!(
            r2.header("set-cookie").is_none(),
            "no new cookie when the request carries a valid one"
        );
    }
    // A forged value is treated as absent: balanced and given a real cookie.
    let r3 = c
        .get("/", &[("Cookie", "SRV=0123456789abcdef")])
        .await
        .unwrap();
    assert_eq!(r3.status, 200);
    assert!(r3.header("set-cookie").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_persistence_keeps_users_sticky() {
    let (_bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "persistence = { key = \"header:X-User\" }", &list),
        listen,
    )
    .await;
    let mut c = Client::connect(listen).await.unwrap();
    let mut homes = std::collections::HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let first = c.get("/", &[("X-User", user)]).await.unwrap().body;
        for _ in 0..5 {
            assert_eq!(
                c.get("/", &[("X-User", user)]).await.unwrap().body,
                first,
                "{user} moved"
            );
        }
        homes.insert(first);
    }
    assert!(homes.len() >= 2, "users should spread: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_removes_and_restores_backend() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let extra = "health_check = { kind = \"http\", path = \"/health\", interval = \"200ms\", timeout = \"500ms\", rise = 2, fall = 3 }";
    let p = Proxy::start(&service(listen, extra, &list), listen).await;
    let sick = bs[1].addr.to_string();
    bs[1].set_health(503);
    let down = format!("backend={sick}");
    p.wait_log(&["backend is DOWN", &down], 1, Duration::from_secs(5))
        .await;
    let bodies = keepalive_gets(listen, 60).await;
    assert!(!bodies.contains(&sick), "{sick} still receives traffic");
    bs[1].set_health(200);
    p.wait_log(&["backend is UP", &down], 1, Duration::from_secs(5))
        .await;
    let bodies = keepalive_gets(listen, 60).await;
    assert_near(
        bodies.iter().filter(|b| **b == sick).count(),
        20.0,
        0.15,
        "restored backend",
    );
}

/// Pooled upstream connections are reused, each for its own backend only (the reuse check of
/// vendor/PATCHES.md patch 1): 200 requests over two kept-alive clients alternate exactly
/// between the two backends, and each backend saw a handful of connections, not 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_for_their_own_backend() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(&service(listen, "", &list[..2]), listen).await;
    let (mut c1, mut c2) = (
        Client::connect(listen).await.unwrap(),
        Client::connect(listen).await.unwrap(),
    );
    let mut bodies = Vec::new();
    for i in 0..200 {
        let c = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        bodies.push(c.get("/", &[]).await.unwrap().body);
    }
    for pair in bodies.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "round robin broken: a request reached the wrong backend"
        );
    }
    for b in &bs[..2] {
        assert_eq!(b.hits(), 100);
        let conns = b.accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            conns <= 4,
            "{} took {conns} connections for 100 requests",
            b.addr
        );
    }
}

/// A backend that reads the request and resets the connection before answering, as one dying
/// with connections in its accept queue does: on a new upstream connection pingora does not
/// retry that; Plugboard retries a GET elsewhere and marks the backend, as for a refused connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_response_is_retried_elsewhere() {
    let good = HttpBackend::start().await;
    let bad = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad_addr = bad.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in bad.incoming().flatten() {
            let _ = std::io::Read::read(&mut s, &mut [0; 4096]);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    let listen = free_addr();
    let list = [(bad_addr, 1), (good.addr, 1)];
    let extra = "health_check = { kind = \"tcp\", interval = \"10s\", rise = 1, fall = 2 }";
    let p = Proxy::start(&service(listen, extra, &list), listen).await;
    for i in 0..6 {
        let r = get_once(listen, "/").await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", p.log_text());
    }
    assert!(p.log_text().contains("backend is DOWN"), "{}", p.log_text());
}

/// The upstream pool (vendor/PATCHES.md, patch 2) has no task per idle connection: it must
/// still keep a connection for reuse, and close it once idle for `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_idle_timeout() {
    use std::sync::atomic::Ordering::SeqCst;
    let b = HttpBackend::start().await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "idle_timeout = \"1s\"", &[(b.addr, 1)]),
        listen,
    )
    .await;
    keepalive_gets(listen, 20).await;
    assert_eq!(
        b.accepted.load(SeqCst),
        1,
        "20 GETs took more than one connection"
    );
    assert_eq!(b.open.load(SeqCst), 1, "the idle connection was not kept");
    let closed = eventually(Duration::from_secs(5), async || b.open.load(SeqCst) == 0).await;
    assert!(closed, "the idle upstream connection outlived idle_timeout");
    keepalive_gets(listen, 2).await;
    assert_eq!(
        b.accepted.load(SeqCst),
        2,
        "no new connection after the idle one closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_costs_no_failed_get() {
    let (mut bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let extra = "health_check = { kind = \"tcp\", interval = \"10s\", rise = 1, fall = 2 }";
    let p = Proxy::start(&service(listen, extra, &list), listen).await;
    // Warm up kept-alive upstream connections to every backend, then kill one.
    keepalive_gets(listen, 30).await;
    let dead = bs[0].addr.to_string();
    bs[0].kill();
    let mut c = Client::connect(listen).await.unwrap();
    for i in 0..150 {
        // Alternate kept-alive and fresh client connections.
        let r = if i % 2 == 0 {
            c.get("/", &[]).await.unwrap()
        } else {
            get_once(listen, "/").await.unwrap()
        };
        assert_eq!(r.status, 200, "request {i} failed: {r:?}\n{}", p.log_text());
        assert_ne!(r.body, dead);
    }
    // Passive marking: failed connects took it down without waiting for the 10 s check.
    assert!(p.log_text().contains("backend is DOWN"), "{}", p.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_backend_gets_nothing() {
    let a = HttpBackend::start().await;
    let b = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{listen}\"\n[[service.backend]]\naddress = \"{}\"\n[[service.backend]]\naddress = \"{}\"\nenabled = false\n",
        a.addr, b.addr
    );
    let _p = Proxy::start(&cfg, listen).await;
    keepalive_gets(listen, 50).await;
    assert_eq!(a.hits(), 50);
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_left_gives_503_and_keeps_connection() {
    let dead = free_addr();
    let listen = free_addr();
    let extra = "health_check = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let p = Proxy::start(&service(listen, extra, &[(dead, 1)]), listen).await;
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    let mut c = Client::connect(listen).await.unwrap();
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get("/", &[]))
            .await
            .expect("no hang")
            .unwrap();
        assert_eq!(r.status, 503);
    }
    assert!(p.log_text().contains("no backend available"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_x_forwarded_for() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let _p = Proxy::start(&service(listen, "", &[(a.addr, 1)]), listen).await;
    let mut c = Client::connect_from(listen, Some([127, 0, 0, 9].into()))
        .await
        .unwrap();
    c.get("/", &[]).await.unwrap();
    c.get("/", &[("X-Forwarded-For", "10.1.1.1")])
        .await
        .unwrap();
    let seen = a.forwarded.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["127.0.0.9".to_string(), "10.1.1.1, 127.0.0.9".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_returning_backend() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let extra = "scheduler = \"round_robin\"\nslow_start = \"3s\"\nhealth_check = { kind = \"http\", path = \"/health\", interval = \"100ms\", rise = 1, fall = 1 }";
    let p = Proxy::start(&service(listen, extra, &list), listen).await;
    let back = bs[2].addr.to_string();
    bs[2].set_health(500);
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    bs[2].set_health(200);
    assert!(
        eventually(Duration::from_secs(2), async || keepalive_gets(listen, 10)
            .await
            .contains(&back))
        .await,
        "backend never returned"
    );
    // Early in the ramp it gets well below its full third.
    let early = keepalive_gets(listen, 100)
        .await
        .iter()
        .filter(|b| **b == back)
        .count();
    assert!(early < 25, "early share {early}/100 should be ramping");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let late = keepalive_gets(listen, 99)
        .await
        .iter()
        .filter(|b| **b == back)
        .count();
    assert_near(late, 33.0, 0.1, "full weight after the ramp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_both_ways_on_one_connection() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let _p = Proxy::start(&service(listen, "", &[(a.addr, 1)]), listen).await;
    let mut c = Client::connect(listen).await.unwrap();
    let upload: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for _ in 0..2 {
        let r = c.send("POST", "/echo", &upload).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_bytes(), &upload[..]);
        let r = c.get("/big/1048576", &[]).await.unwrap();
        assert_eq!(r.body.len(), 1_048_576);
        assert!(r.body.bytes().all(|b| b == b'x'));
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.body, a.addr.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_clients_are_closed_after_idle_timeout() {
    let a = HttpBackend::start().await;
    for timeout in ["800ms", "3s"] {
        // 800 ms: closed while waiting in its task; 3 s: parked after 1 s, closed from the lot.
        let listen = free_addr();
        let _p = Proxy::start(
            &service(
                listen,
                &format!("idle_timeout = \"{timeout}\""),
                &[(a.addr, 1)],
            ),
            listen,
        )
        .await;
        let limit: Duration = humantime::parse_duration(timeout).unwrap();
        let start = Instant::now();
        // Never sends a request.
        let mut silent = Client::connect(listen).await.unwrap();
        // Kept alive after one request.
        let mut idle = Client::connect(listen).await.unwrap();
        idle.get("/", &[]).await.unwrap();
        // Busy: a request every 2/3 of the timeout keeps it open past the timeout.
        let mut busy = Client::connect(listen).await.unwrap();
        for _ in 0..4 {
            busy.get("/", &[]).await.unwrap();
            tokio::time::sleep(limit * 2 / 3).await;
        }
        assert!(silent.closed_within(Duration::from_secs(5)).await);
        assert!(idle.closed_within(Duration::from_secs(5)).await);
        assert!(start.elapsed() < limit * 8 / 3 + Duration::from_secs(5));
        assert_eq!(busy.get("/", &[]).await.unwrap().status, 200, "{timeout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_served_after_being_parked() {
    let (a, b) = (HttpBackend::start().await, HttpBackend::start().await);
    let listen = free_addr();
    let _p = Proxy::start(
        &service(
            listen,
            "idle_timeout = \"20s\"",
            &[(a.addr, 1), (b.addr, 1)],
        ),
        listen,
    )
    .await;
    let mut silent = Client::connect(listen).await.unwrap();
    let mut kept = Client::connect(listen).await.unwrap();
    assert_eq!(kept.get("/", &[]).await.unwrap().status, 200);
    let body = "p".repeat(200_000);
    for round in 0..2 {
        // Longer than PARK_AFTER (1 s): both wait in the parking lot, outside any task.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = silent.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "round {round}");
        let r = kept.send("POST", "/echo", body.as_bytes()).await.unwrap();
        assert_eq!((r.status, r.body.len()), (200, body.len()), "round {round}");
        assert_eq!(r.body, body);
    }
    // Still balanced round robin and kept alive across parking.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(kept.get("/", &[]).await.unwrap().body);
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service(listen, "", &[(a.addr, 1)])
        .replace("[proxy]\n", "[proxy]\ngrace_period = \"30s\"\n");
    let p = Proxy::start(&cfg, listen).await;
    let mut parked_idle = Client::connect(listen).await.unwrap();
    parked_idle.get("/", &[]).await.unwrap();
    let mut parked_silent = Client::connect(listen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut idle = Client::connect(listen).await.unwrap();
    idle.get("/", &[]).await.unwrap();
    let mut silent = Client::connect(listen).await.unwrap();
    let pid = p.pid().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // Well inside the 30 s grace period: idle connections need no grace.
    for c in [&mut idle, &mut silent, &mut parked_idle, &mut parked_silent] {
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_listen_address_is_refused_at_start() {
    let (listen, err) = refused_on_busy_address(|l| service(l, "", &[(free_addr(), 1)]));
    assert!(
        err.contains(&format!("cannot listen on {listen}")) && err.contains("service http-svc"),
        "{err}"
    );
}

/// A health endpoint on its own port that records the `Host` of each check and answers
/// with a settable status.
struct HealthPort {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hosts: Arc<Mutex<Vec<String>>>,
}

impl HealthPort {
    async fn start() -> HealthPort {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (status.clone(), hosts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let (s, h) = (s.clone(), h.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(host) = req.lines().find_map(|l| {
                        l.strip_prefix("Host: ")
                            .or_else(|| l.strip_prefix("host: "))
                    }) {
                        h.lock().unwrap().push(host.trim().to_string());
                    }
                    let code = s.load(Ordering::SeqCst);
                    let _ = conn
                        .write_all(
                            format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        HealthPort {
            addr,
            status,
            hosts,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_port_and_host_are_used() {
    let a = HttpBackend::start().await;
    let check = HealthPort::start().await;
    let listen = free_addr();
    let extra = format!(
        "health_check = {{ kind = \"http\", path = \"/status\", port = {}, host = \"health.example\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}",
        check.addr.port()
    );
    let p = Proxy::start(&service(listen, &extra, &[(a.addr, 1)]), listen).await;
    let checked = eventually(Duration::from_secs(5), async || {
        !check.hosts.lock().unwrap().is_empty()
    })
    .await;
    assert!(checked, "the check port was never checked");
    assert!(check
        .hosts
        .lock()
        .unwrap()
        .iter()
        .all(|h| h == "health.example"));
    assert_eq!(get_once(listen, "/").await.unwrap().status, 200);
    // The check port fails: the backend goes down although its traffic port is fine.
    check.status.store(503, Ordering::SeqCst);
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    assert_eq!(get_once(listen, "/").await.unwrap().status, 503);
    assert_eq!(a.hits(), 1, "the traffic port served only the one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_a_failed_connect() {
    let a = HttpBackend::start().await;
    let dead = free_addr();
    let listen = free_addr();
    let cfg = service(
        listen,
        "scheduler = \"round_robin\"\nretries = 2",
        &[(a.addr, 1), (dead, 1)],
    );
    let _p = Proxy::start(&cfg, listen).await;
    // GETs are retried on the live backend; POSTs that hit the dead one fail (the body may
    // not be replayable, and a POST may not be idempotent).
    let mut c = Client::connect(listen).await.unwrap();
    for _ in 0..4 {
        assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(listen).await.unwrap();
        statuses.push(c.send("POST", "/echo", b"data").await.unwrap().status);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().any(|s| *s >= 500),
        "a POST to the dead backend was retried: {statuses:?}"
    );
}
