//! udp mode, through the real binary against real UDP echo backends on loopback: flows
//! balanced once and kept, replies from the listening address, idle expiry, health checks,
//! source-IP persistence, `follow` after real TCP connections, reload, odd datagrams.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// A UDP backend that answers every datagram with `<its address>|<the datagram>`, and
/// counts the source addresses (flows, as the proxy makes them) it has seen.
struct UdpEcho {
    addr: SocketAddr,
    sources: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    _task: JoinSet<()>,
}

impl UdpEcho {
    async fn start_on(addr: SocketAddr) -> UdpEcho {
        let s = UdpSocket::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("udp backend on {addr}: {e}"));
        let addr = s.local_addr().unwrap();
        let sources: Arc<Mutex<HashMap<SocketAddr, usize>>> = Default::default();
        let seen = sources.clone();
        let mut task = JoinSet::new();
        task.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else {
                    continue;
                };
                *seen.lock().unwrap().entry(from).or_default() += 1;
                let mut reply = format!("{addr}|").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, from).await;
            }
        });
        UdpEcho {
            addr,
            sources,
            _task: task,
        }
    }

    async fn start() -> UdpEcho {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Distinct source addresses seen: the proxy's flows to this backend.
    fn flows(&self) -> usize {
        self.sources.lock().unwrap().len()
    }
}

/// A free UDP port on `ip` (bound and released).
fn free_udp_port(ip: IpAddr) -> u16 {
    loop {
        let tcp = free_addr().port();
        if std::net::UdpSocket::bind(SocketAddr::new(ip, tcp)).is_ok() {
            return tcp;
        }
    }
}

/// Sends `msg` from `sock` to `to` and waits for one reply; returns the backend that
/// answered, the reply's payload and the address it came from.
async fn ask(
    sock: &UdpSocket,
    to: SocketAddr,
    msg: &[u8],
) -> Option<(String, Vec<u8>, SocketAddr)> {
    sock.send_to(msg, to).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let reply = &buf[..n];
    let bar = reply.iter().position(|&b| b == b'|')?;
    Some((
        String::from_utf8_lossy(&reply[..bar]).into_owned(),
        reply[bar + 1..].to_vec(),
        from,
    ))
}

/// [`ask`], which must be answered: no datagram is lost on loopback, a flow's first one
/// included (the listening sockets are bound before the proxy says it is starting).
async fn ask_one(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> (String, Vec<u8>, SocketAddr) {
    match ask(sock, to, msg).await {
        Some(r) => r,
        None => panic!("no reply through {to}"),
    }
}

async fn client(from: IpAddr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap()
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// A configuration with a metrics endpoint (what the test waits for) and `services`.
fn config(metrics: SocketAddr, services: &str) -> String {
    format!("[proxy]\nthreads = 2\nmetrics = \"{metrics}\"\n\n{services}")
}

fn udp_service(name: &str, listen: SocketAddr, extra: &str, backends: &[SocketAddr]) -> String {
    let mut s =
        format!("[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nmode = \"udp\"\n{extra}\n");
    for b in backends {
        s.push_str(&format!("[[service.backend]]\naddress = \"{b}\"\n"));
    }
    s.push('\n');
    s
}

/// The value of the metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_flows_stick_to_one_backend_and_spread() {
    let bs = [
        UdpEcho::start().await,
        UdpEcho::start().await,
        UdpEcho::start().await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let _p = Proxy::start(
        &config(
            metrics,
            &udp_service("u", listen, "scheduler = \"round_robin\"", &addrs),
        ),
        metrics,
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(client(localhost()).await);
    }
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for (n, c) in clients.iter().enumerate() {
        let mut seen = None;
        for k in 0..4 {
            let msg = format!("client {n} datagram {k}");
            let (backend, payload, from) = ask_one(c, listen, msg.as_bytes()).await;
            assert_eq!(payload, msg.as_bytes());
            assert_eq!(from, listen, "the reply comes from the listening address");
            match &seen {
                None => seen = Some(backend),
                Some(b) => assert_eq!(*b, backend, "flow {n} moved"),
            }
        }
        *per_backend.entry(seen.unwrap()).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for (b, n) in &per_backend {
        assert!((12..=22).contains(n), "{b}: {n} flows of 50");
    }
    // One flow per client on the backends' side too.
    assert_eq!(bs.iter().map(|b| b.flows()).sum::<usize>(), 50);
    let text = scrape(metrics).await;
    assert_eq!(
        metric(&text, "plugboard_udp_flows_total{service=\"u\"}"),
        Some(50.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "plugboard_udp_flows_active{service=\"u\"}"),
        Some(50.0)
    );
    assert_eq!(
        metric(
            &text,
            "plugboard_udp_datagrams_total{direction=\"in\",service=\"u\"}"
        ),
        Some(200.0)
    );
    assert_eq!(
        metric(
            &text,
            "plugboard_udp_datagrams_total{direction=\"out\",service=\"u\"}"
        ),
        Some(200.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_counts_flows() {
    let bs = [UdpEcho::start().await, UdpEcho::start().await];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let _p = Proxy::start(
        &config(
            metrics,
            &udp_service("u", listen, "scheduler = \"least_connections\"", &addrs),
        ),
        metrics,
    )
    .await;
    let mut clients = Vec::new();
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let c = client(localhost()).await;
        let (b, _, _) = ask_one(&c, listen, b"x").await;
        *per_backend.entry(b).or_default() += 1;
        clients.push(c);
    }
    // Open flows count as connections: the backends take turns.
    assert_eq!(
        per_backend.values().copied().collect::<Vec<_>>(),
        vec![10, 10]
    );
    let text = scrape(metrics).await;
    for b in &bs {
        let line = format!(
            "plugboard_backend_active{{backend=\"{}\",service=\"u\"}}",
            b.addr
        );
        assert_eq!(metric(&text, &line), Some(10.0), "{line}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flow_ends_and_is_balanced_again() {
    let bs = [UdpEcho::start().await, UdpEcho::start().await];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let _p = Proxy::start(
        &config(
            metrics,
            &udp_service(
                "u",
                listen,
                "scheduler = \"round_robin\"\nidle_timeout = \"500ms\"",
                &addrs,
            ),
        ),
        metrics,
    )
    .await;
    let c = client(localhost()).await;
    let (first, _, _) = ask_one(&c, listen, b"a").await;
    // Datagrams within the idle timeout keep the flow (and its backend).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(ask_one(&c, listen, b"b").await.0, first);
    }
    let text = scrape(metrics).await;
    assert_eq!(
        metric(&text, "plugboard_udp_flows_active{service=\"u\"}"),
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let text = scrape(metrics).await;
    assert_eq!(
        metric(&text, "plugboard_udp_flows_active{service=\"u\"}"),
        Some(0.0),
        "{text}"
    );
    // A new flow: round robin's next backend, from a new socket of the proxy.
    let (second, _, _) = ask_one(&c, listen, b"c").await;
    assert_ne!(first, second);
    let text = scrape(metrics).await;
    assert_eq!(
        metric(&text, "plugboard_udp_flows_total{service=\"u\"}"),
        Some(2.0)
    );
    assert_eq!(bs.iter().map(|b| b.flows()).sum::<usize>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_by_health_check_gets_no_flows() {
    // Two backend hosts; the tcp health check probes port `check` on each.
    let (h1, h2) = (IpAddr::from([127, 0, 0, 31]), IpAddr::from([127, 0, 0, 32]));
    let port = free_udp_port(h1);
    let check = free_addr().port();
    let b1 = UdpEcho::start_on(SocketAddr::new(h1, port)).await;
    let b2 = UdpEcho::start_on(SocketAddr::new(h2, port)).await;
    let mut c1 = TcpBackend::start_on(SocketAddr::new(h1, check)).await;
    let _c2 = TcpBackend::start_on(SocketAddr::new(h2, check)).await;
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let extra = format!(
        "scheduler = \"round_robin\"\nhealth_check = {{ kind = \"tcp\", port = {check}, interval = \"100ms\", timeout = \"200ms\", rise = 1, fall = 1 }}"
    );
    let _p = Proxy::start(
        &config(
            metrics,
            &udp_service("u", listen, &extra, &[b1.addr, b2.addr]),
        ),
        metrics,
    )
    .await;
    // Both up: flows go to both.
    let mut seen = HashMap::<String, usize>::new();
    let mut on_b1 = None;
    for _ in 0..6 {
        let c = client(localhost()).await;
        let (b, _, _) = ask_one(&c, listen, b"x").await;
        if b == b1.addr.to_string() && on_b1.is_none() {
            on_b1 = Some(c);
        }
        *seen.entry(b).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    c1.kill();
    let down = eventually(Duration::from_secs(5), async || {
        let t = scrape(metrics).await;
        metric(
            &t,
            &format!(
                "plugboard_backend_up{{backend=\"{}\",service=\"u\"}}",
                b1.addr
            ),
        ) == Some(0.0)
    })
    .await;
    assert!(down, "backend 1 not marked down");
    // New flows avoid it.
    for _ in 0..6 {
        let c = client(localhost()).await;
        assert_eq!(ask_one(&c, listen, b"y").await.0, b2.addr.to_string());
    }
    // A flow that was on it is balanced again at its next datagram.
    let c = on_b1.expect("a flow on backend 1");
    assert_eq!(ask_one(&c, listen, b"z").await.0, b2.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_persistence_holds_across_client_ports() {
    let bs = [
        UdpEcho::start().await,
        UdpEcho::start().await,
        UdpEcho::start().await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let _p = Proxy::start(
        &config(
            metrics,
            &udp_service(
                "u",
                listen,
                "scheduler = \"round_robin\"\npersistence = { key = \"source_ip\", timeout = \"8h\" }",
                &addrs,
            ),
        ),
        metrics,
    )
    .await;
    let mut used = HashMap::<String, usize>::new();
    for host in 21..30u8 {
        let ip = IpAddr::from([127, 0, 0, host]);
        let a = client(ip).await;
        let b = client(ip).await;
        let (first, _, _) = ask_one(&a, listen, b"a").await;
        let (second, _, _) = ask_one(&b, listen, b"b").await;
        assert_eq!(first, second, "two ports of {ip} on two backends");
        *used.entry(first).or_default() += 1;
    }
    // Each address pinned where round robin sent it: all three backends have clients.
    assert_eq!(used.len(), 3, "{used:?}");
}

/// A tcp service "rds" (with `tcp_extra`) over one TCP backend on each of `hosts`, and a udp
/// service following it (round robin otherwise) over one UDP echo on each of the same hosts.
/// Returns the backends, the tcp listen address (the udp one has the same port on localhost)
/// and the running proxy.
async fn follow_setup(
    hosts: &[IpAddr],
    tcp_extra: &str,
) -> (Vec<TcpBackend>, Vec<UdpEcho>, SocketAddr, Proxy) {
    let tcp_port = free_addr().port();
    let udp_port = free_udp_port(hosts[0]);
    let mut tcp_backends = Vec::new();
    let mut udp_backends = Vec::new();
    for &h in hosts {
        tcp_backends.push(TcpBackend::start_on(SocketAddr::new(h, tcp_port)).await);
        udp_backends.push(UdpEcho::start_on(SocketAddr::new(h, udp_port)).await);
    }
    let tcp_listen = free_addr();
    let udp_listen = SocketAddr::new(localhost(), tcp_listen.port());
    let mut services = format!(
        "[[service]]\nname = \"rds\"\nlisten = \"{tcp_listen}\"\nmode = \"tcp\"\n{tcp_extra}\n"
    );
    for b in &tcp_backends {
        services.push_str(&format!("[[service.backend]]\naddress = \"{}\"\n", b.addr));
    }
    services.push('\n');
    // Round robin alone would send most clients elsewhere than their session.
    services.push_str(&udp_service(
        "rds-udp",
        udp_listen,
        "scheduler = \"round_robin\"\nfollow = \"rds\"",
        &udp_backends.iter().map(|b| b.addr).collect::<Vec<_>>(),
    ));
    let p = Proxy::start(&config(free_addr(), &services), tcp_listen).await;
    (tcp_backends, udp_backends, tcp_listen, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sends_the_flow_to_the_host_of_the_tcp_session() {
    let hosts = [
        IpAddr::from([127, 0, 0, 11]),
        IpAddr::from([127, 0, 0, 12]),
        IpAddr::from([127, 0, 0, 13]),
    ];
    let (_tcp_backends, udp_backends, tcp_listen, _p) =
        follow_setup(&hosts, "scheduler = \"least_connections\"").await;
    let udp_listen = SocketAddr::new(localhost(), tcp_listen.port());
    let udp_port = udp_backends[0].addr.port();
    let mut sessions = Vec::new();
    let mut hosts_used = HashMap::<IpAddr, usize>::new();
    for n in 51..63u8 {
        let ip = IpAddr::from([127, 0, 0, n]);
        // The TCP session (kept open, as RDP keeps it).
        let (banner, conn) = tcp_banner(tcp_listen, Some(ip)).await.unwrap();
        let host: SocketAddr = banner.parse().unwrap();
        *hosts_used.entry(host.ip()).or_default() += 1;
        sessions.push(conn);
        // Its UDP transport, from two client ports.
        for _ in 0..2 {
            let c = client(ip).await;
            let (b, _, _) = ask_one(&c, udp_listen, b"rdp-udp").await;
            assert_eq!(
                b,
                SocketAddr::new(host.ip(), udp_port).to_string(),
                "client {ip}"
            );
        }
    }
    assert_eq!(hosts_used.len(), 3, "{hosts_used:?}");
    // A client with no TCP session is balanced by the udp service itself.
    let c = client(IpAddr::from([127, 0, 0, 70])).await;
    ask_one(&c, udp_listen, b"lone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ignores_a_host_that_is_not_available_here() {
    let h = [IpAddr::from([127, 0, 0, 14]), IpAddr::from([127, 0, 0, 15])];
    let tcp_port = free_addr().port();
    let udp_port = free_udp_port(h[0]);
    let tcp_b = TcpBackend::start_on(SocketAddr::new(h[0], tcp_port)).await;
    // The udp service has only the other host.
    let udp_b = UdpEcho::start_on(SocketAddr::new(h[1], udp_port)).await;
    let tcp_listen = free_addr();
    let udp_listen = SocketAddr::new(localhost(), tcp_listen.port());
    let services = format!(
        "[[service]]\nname = \"rds\"\nlisten = \"{tcp_listen}\"\nmode = \"tcp\"\n[[service.backend]]\naddress = \"{}\"\n\n{}",
        tcp_b.addr,
        udp_service("rds-udp", udp_listen, "follow = \"rds\"", &[udp_b.addr])
    );
    let _p = Proxy::start(&config(free_addr(), &services), tcp_listen).await;
    let ip = IpAddr::from([127, 0, 0, 64]);
    let (_banner, _conn) = tcp_banner(tcp_listen, Some(ip)).await.unwrap();
    let c = client(ip).await;
    assert_eq!(
        ask_one(&c, udp_listen, b"x").await.0,
        udp_b.addr.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_datagrams_are_relayed_and_never_break_the_proxy() {
    let b = UdpEcho::start().await;
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let _p = Proxy::start(
        &config(metrics, &udp_service("u", listen, "", &[b.addr])),
        metrics,
    )
    .await;
    let c = client(localhost()).await;
    // Empty.
    let (_, payload, _) = ask_one(&c, listen, b"").await;
    assert!(payload.is_empty());
    // Binary junk.
    let junk: Vec<u8> = (0..=255u8).cycle().take(1500).collect();
    assert_eq!(ask_one(&c, listen, &junk).await.1, junk);
    // The largest datagram over IPv4 (65,507 bytes): the backend gets it whole; its reply
    // (longer by its prefix) cannot be sent, and nothing breaks.
    let count = || b.sources.lock().unwrap().values().sum::<usize>();
    let before = count();
    let big = vec![0xabu8; 65_507];
    c.send_to(&big, listen).await.unwrap();
    let arrived = eventually(Duration::from_secs(2), async || count() == before + 1).await;
    assert!(arrived, "the largest datagram did not reach the backend");
    // A datagram larger than any can be is refused by the client's own kernel.
    assert!(c.send_to(&vec![0u8; 70_000], listen).await.is_err());
    // Still relaying.
    assert_eq!(ask_one(&c, listen, b"after").await.1, b"after");
    let text = scrape(metrics).await;
    assert!(text.contains("plugboard_udp_datagrams_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_limit_drops_new_flows_and_counts_them() {
    let b = UdpEcho::start().await;
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let _p = Proxy::start(
        &config(
            metrics,
            &udp_service("u", listen, "max_connections = 3", &[b.addr]),
        ),
        metrics,
    )
    .await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        let c = client(localhost()).await;
        ask_one(&c, listen, b"in").await;
        kept.push(c);
    }
    let extra = client(localhost()).await;
    assert!(ask(&extra, listen, b"over").await.is_none());
    // Flows already open go on.
    assert!(ask(&kept[0], listen, b"still").await.is_some());
    let text = scrape(metrics).await;
    assert_eq!(
        metric(
            &text,
            "plugboard_udp_dropped_total{reason=\"flow_limit\",service=\"u\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_changes_and_removes_a_udp_service() {
    let (a, b) = (UdpEcho::start().await, UdpEcho::start().await);
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let tcp_b = TcpBackend::start().await;
    let tcp_listen = free_addr();
    let tcp_only = format!(
        "[[service]]\nname = \"t\"\nlisten = \"{tcp_listen}\"\nmode = \"tcp\"\n[[service.backend]]\naddress = \"{}\"\n\n",
        tcp_b.addr
    );
    let p = Proxy::start(&config(metrics, &tcp_only), metrics).await;
    let path = p.dir.path().join("plugboard.toml");
    let reload = |text: String| {
        std::fs::write(&path, text).unwrap();
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
    };
    let c = client(localhost()).await;
    assert!(ask(&c, listen, b"none yet").await.is_none());
    // Added.
    reload(config(
        metrics,
        &format!("{tcp_only}{}", udp_service("u", listen, "", &[a.addr])),
    ));
    let up = eventually(Duration::from_secs(5), async || {
        ask(&c, listen, b"1")
            .await
            .is_some_and(|r| r.0 == a.addr.to_string())
    })
    .await;
    assert!(up, "udp service not added: {}", p.log_text());
    // Changed: new flows go to the new backend list.
    reload(config(
        metrics,
        &format!(
            "{tcp_only}{}",
            udp_service("u", listen, "idle_timeout = \"300ms\"", &[b.addr])
        ),
    ));
    let moved = eventually(Duration::from_secs(5), async || {
        let c = client(localhost()).await;
        ask(&c, listen, b"2")
            .await
            .is_some_and(|r| r.0 == b.addr.to_string())
    })
    .await;
    assert!(moved, "udp service not changed: {}", p.log_text());
    // Removed: nothing answers any more.
    reload(config(metrics, &tcp_only));
    let gone = eventually(Duration::from_secs(5), async || {
        let c = client(localhost()).await;
        ask(&c, listen, b"3").await.is_none()
    })
    .await;
    assert!(gone, "udp service not removed: {}", p.log_text());
    // The tcp service went on throughout.
    assert_eq!(
        tcp_banner(tcp_listen, None).await.unwrap().0,
        tcp_b.addr.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_open_flows_and_maint_moves_them() {
    let bs = [UdpEcho::start().await, UdpEcho::start().await];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let admin = free_addr();
    let _p = Proxy::start(
        &with_admin(
            admin,
            &udp_service("u", listen, "scheduler = \"round_robin\"", &addrs),
        ),
        admin,
    )
    .await;
    let a = bs[0].addr.to_string();
    let mut on_a = Vec::new();
    for _ in 0..4 {
        let c = client(localhost()).await;
        if ask_one(&c, listen, b"x").await.0 == a {
            on_a.push(c);
        }
    }
    assert_eq!(on_a.len(), 2);
    // Drain: no new flow goes to a; its open flows stay.
    let (code, _, err) = ctl(admin, None, &["drain", "u", &a]);
    assert_eq!(code, 0, "{err}");
    for _ in 0..4 {
        let c = client(localhost()).await;
        assert_eq!(ask_one(&c, listen, b"new").await.0, bs[1].addr.to_string());
    }
    for c in &on_a {
        assert_eq!(ask_one(c, listen, b"open").await.0, a);
    }
    // Maint: the open flows move at their next datagram.
    assert_eq!(ctl(admin, None, &["maint", "u", &a]).0, 0);
    for c in &on_a {
        assert_eq!(ask_one(c, listen, b"moved").await.0, bs[1].addr.to_string());
    }
}

fn have_xfreerdp() -> bool {
    let have = |p: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    (have("xfreerdp") && have("xvfb-run"))
        || missing_dependency(
            "rdp-clients",
            "xfreerdp and xvfb-run are not installed (Debian: freerdp2-x11 xvfb)",
        )
}

/// `follow` after the TCP connections of a real RDP client: xfreerdp connects (from
/// 127.0.0.1) through the tcp service, which pins it by address to one host; every UDP flow
/// of that client then goes to the same host, where round robin alone would alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_after_real_xfreerdp_connections() {
    if !have_xfreerdp() {
        return;
    }
    let hosts = [IpAddr::from([127, 0, 0, 16]), IpAddr::from([127, 0, 0, 17])];
    let (tcp_backends, udp_backends, tcp_listen, _p) = follow_setup(
        &hosts,
        "persistence = { key = \"source_ip\", timeout = \"8h\" }",
    )
    .await;
    let udp_listen = SocketAddr::new(localhost(), tcp_listen.port());
    let udp_port = udp_backends[0].addr.port();
    let target = format!("/v:{tcp_listen}");
    tokio::task::spawn_blocking(move || {
        let status = std::process::Command::new("timeout")
            .arg("20")
            .args(["xvfb-run", "-a", "-s", "-nolisten tcp"])
            .args(["xfreerdp", &target, "/u:alice", "/p:x", "/cert-ignore"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run xfreerdp");
        assert_ne!(status.code(), Some(124), "xfreerdp timed out");
    })
    .await
    .unwrap();
    let used: Vec<usize> = (0..2).filter(|&i| tcp_backends[i].conns() > 0).collect();
    assert_eq!(used.len(), 1, "xfreerdp's connections on one host");
    let host = hosts[used[0]];
    for _ in 0..4 {
        let c = client(localhost()).await;
        let (b, _, _) = ask_one(&c, udp_listen, b"rdp-udp").await;
        assert_eq!(b, SocketAddr::new(host, udp_port).to_string());
    }
}

/// A persistence-key plugin reads a flow's first datagram as its payload: flows of one user,
/// from any address and port, go to one backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_key_reads_the_first_datagram() {
    let bs = [
        UdpEcho::start().await,
        UdpEcho::start().await,
        UdpEcho::start().await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::new(localhost(), free_udp_port(localhost()));
    let metrics = free_addr();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("user.lua"),
        "-- key = the word after \"USER \"; a datagram comes whole: never false\n\
         function persistence_key(req)\n  return string.match(req.payload or \"\", \"^USER (%w+)\")\nend\n",
    )
    .unwrap();
    let cfg = format!(
        "[proxy]\nthreads = 2\nmetrics = \"{metrics}\"\nplugins_dir = \"{}\"\n\n{}",
        dir.path().display(),
        udp_service(
            "u",
            listen,
            "scheduler = \"round_robin\"\npersistence = { key = \"plugin:user\" }",
            &addrs
        )
    );
    let _p = Proxy::start(&cfg, metrics).await;
    let mut homes = HashMap::new();
    for round in 0..3u8 {
        for user in ["alice", "bob", "carol", "dave"] {
            let c = client(IpAddr::from([127, 0, 0, 40 + round])).await;
            let msg = format!("USER {user}");
            let (b, payload, _) = ask_one(&c, listen, msg.as_bytes()).await;
            assert_eq!(payload, msg.as_bytes(), "forwarded unchanged");
            assert_eq!(homes.entry(user).or_insert(b.clone()), &b, "{user} moved");
        }
    }
    assert!(
        homes
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 2
    );
}
