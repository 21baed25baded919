//! Persistence fallback chains (`persistence = { key = ["plugin:rdp-cookie", "source_ip"] }`)
//! through the real binary: the first key kind that yields a key decides, per connection or
//! request; pins of different kinds never collide; in tcp and http mode, and shared through a
//! real redis-server by two instances.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHAIN: &str = r#"key = ["plugin:rdp-cookie", "source_ip"], timeout = "8h""#;

/// An RDP service over `backends` with the chain (round robin: without persistence,
/// consecutive connections go to different backends).
fn rdp_service(listen: SocketAddr, backends: &[SocketAddr], extra: &str) -> String {
    let list: String = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[service.backend]]\nname = \"ts{i}\"\naddress = \"{a}\"\n"))
        .collect();
    format!(
        "[[service]]\nname = \"rds\"\nlisten = \"{listen}\"\nmode = \"tcp\"\nscheduler = \"round_robin\"\ninspect_timeout = \"2s\"\npersistence = {{ {CHAIN}{extra} }}\n{list}"
    )
}

/// Opens an RDP connection from `from` carrying `cookie` (`None`: a bare Connection Request
/// with no cookie line) and returns the backend that took it (the banner it sends first).
async fn rdp(listen: SocketAddr, from: &str, cookie: Option<&str>) -> String {
    let from: IpAddr = from.parse().unwrap();
    let mut s = tcp_connect(listen, Some(from)).await.unwrap();
    let var = cookie.map_or(String::new(), |u| format!("Cookie: mstshash={u}\r\n"));
    s.write_all(&rdp::connection_request(var.as_bytes()))
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // A bare request is decided at once (no cookie to wait for), well within inspect_timeout.
    tokio::time::timeout(Duration::from_secs(1), r.read_line(&mut line))
        .await
        .expect("the backend's banner within 1 s")
        .unwrap();
    line.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_users_by_cookie_others_by_source_address() {
    let bs = [
        TcpBackend::start().await,
        TcpBackend::start().await,
        TcpBackend::start().await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = free_addr();
    let cfg = format!(
        "[proxy]\nthreads = 2\n\n{}",
        rdp_service(listen, &addrs, "")
    );
    let p = Proxy::start(&cfg, listen).await;
    // Proxy::start's own probe connection (from 127.0.0.1, no bytes) is balanced and pinned
    // too; let it finish before counting picks.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Clients without a cookie: each source address keeps its backend...
    let sources = [
        "127.0.0.21",
        "127.0.0.22",
        "127.0.0.23",
        "127.0.0.24",
        "127.0.0.25",
        "127.0.0.26",
    ];
    let mut homes = std::collections::HashMap::new();
    for src in sources {
        let home = rdp(listen, src, None).await;
        for _ in 0..5 {
            assert_eq!(rdp(listen, src, None).await, home, "{src} moved");
        }
        homes.insert(src, home);
    }
    // ...while round robin spread the first connections of the six over the three backends.
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert_eq!(distinct.len(), 3, "{homes:?}");

    // A user with a cookie is pinned by it, from any address...
    let alice = rdp(listen, "127.0.0.31", Some("alice")).await;
    for src in ["127.0.0.32", "127.0.0.33", "127.0.0.21", "127.0.0.22"] {
        assert_eq!(
            rdp(listen, src, Some("alice")).await,
            alice,
            "alice from {src}"
        );
    }
    // ...and users sharing an address (a terminal server, a NAT) are not pinned by it.
    let mut users = std::collections::HashSet::new();
    for u in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let home = rdp(listen, "127.0.0.21", Some(u)).await;
        assert_eq!(rdp(listen, "127.0.0.21", Some(u)).await, home, "{u} moved");
        users.insert(home);
    }
    assert_eq!(users.len(), 3, "users behind one address spread");
    // The address's own pin is still there for clients without a cookie.
    assert_eq!(rdp(listen, "127.0.0.21", None).await, homes["127.0.0.21"]);
    assert!(!p.log_text().contains("panicked"));
}

/// Pins of different kinds never meet: a header value equal to a client's address is not
/// that address's pin, and the same value in two headers makes two pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_of_different_kinds_never_collide() {
    let (a, b, c) = (
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    );
    let listen = free_addr();
    let cfg = service_toml(
        "http",
        listen,
        "persistence = { key = [\"header:X-A\", \"header:X-B\", \"source_ip\"] }",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
    );
    let _p = Proxy::start(&cfg, listen).await;
    let get = async |from: &str, headers: &[(&str, &str)]| {
        let mut c = Client::connect_from(listen, Some(from.parse().unwrap()))
            .await
            .unwrap();
        let r = c.get("/", headers).await.unwrap();
        assert_eq!(r.status, 200);
        r.body
    };
    // Round robin gives each new pin the next backend, and a pin found is no new choice: with
    // one shared table, the second request would find the first's pin and land there.
    let by_ip = get("127.0.0.50", &[]).await;
    let by_header = get("127.0.0.51", &[("X-A", "127.0.0.50")]).await;
    assert_ne!(by_ip, by_header, "a header value took the address's pin");
    let by_other_header = get("127.0.0.52", &[("X-B", "127.0.0.50")]).await;
    assert_ne!(by_other_header, by_ip);
    assert_ne!(by_other_header, by_header, "X-B took X-A's pin");
    // Each pin holds, and the first kind present wins.
    for _ in 0..3 {
        assert_eq!(get("127.0.0.50", &[]).await, by_ip);
        assert_eq!(get("127.0.0.53", &[("X-A", "127.0.0.50")]).await, by_header);
        assert_eq!(
            get("127.0.0.54", &[("X-B", "127.0.0.50")]).await,
            by_other_header
        );
        assert_eq!(
            get(
                "127.0.0.50",
                &[("X-B", "127.0.0.50"), ("X-A", "127.0.0.50")]
            )
            .await,
            by_header
        );
        assert_eq!(
            get("127.0.0.50", &[("X-B", "127.0.0.50")]).await,
            by_other_header
        );
    }
}

/// `shared = true`: both kinds' pins made through one instance hold through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_are_shared_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let bs = [
        TcpBackend::start().await,
        TcpBackend::start().await,
        TcpBackend::start().await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let start = async || {
        let (listen, metrics) = (free_addr(), free_addr());
        let cfg = format!(
            "[proxy]\nthreads = 2\nmetrics = \"{metrics}\"\nredis = \"{}\"\n\n{}",
            redis.url(),
            rdp_service(listen, &addrs, ", shared = true")
        );
        let p = Proxy::start(&cfg, listen).await;
        let up = eventually(Duration::from_secs(10), async || {
            scrape(metrics).await.contains("plugboard_redis_up 1")
        })
        .await;
        assert!(up, "{}", p.log_text());
        (listen, metrics, p)
    };
    let (a, _, _pa) = start().await;
    let (b, b_metrics, pb) = start().await;
    // Through a: three addresses without a cookie and three users; then b must agree.
    let mut pins = Vec::new();
    for src in ["127.0.0.61", "127.0.0.62", "127.0.0.63"] {
        pins.push((src, None, rdp(a, src, None).await));
    }
    for u in ["ann", "ben", "cat"] {
        pins.push(("127.0.0.61", Some(u), rdp(a, "127.0.0.61", Some(u)).await));
    }
    let received = eventually(Duration::from_secs(10), async || {
        let m = scrape(b_metrics).await;
        m.lines()
            .filter(|l| l.starts_with("plugboard_redis_pins_received_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            >= 6.0
    })
    .await;
    assert!(received, "b did not receive a's pins\n{}", pb.log_text());
    for (src, user, home) in &pins {
        for _ in 0..2 {
            assert_eq!(
                &rdp(b, src, *user).await,
                home,
                "{src} {user:?} through the other instance"
            );
        }
    }
}
