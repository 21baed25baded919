//! The PROXY protocol through the real binary, against HAProxy itself: HAProxy in front
//! sending v1 or v2 to an `accept_proxy` service (http, and tcp with TLS passthrough), and
//! HAProxy as the backend of a `send_proxy` service (`accept-proxy`, answering with the
//! addresses the header gave it), plain and re-encrypted; who may send a header and what
//! is refused; health checks that send one only when told.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::haproxy::{echo_addresses, in_front, Haproxy};
use common::tls::{cert_table, connect, get, Ca, KeyType};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// `config` with a JSON access log in the proxy's directory.
fn with_access_log(config: &str) -> String {
    config.replacen(
        "threads = 2\n",
        "threads = 2\naccess_log = { path = \"access.log\" }\n",
        1,
    )
}

/// The access log's lines once there are `n`.
async fn access_log(p: &Proxy, n: usize) -> Vec<serde_json::Value> {
    let path = p.dir.path().join("access.log");
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ok = eventually(Duration::from_secs(5), async || read().len() >= n).await;
    assert!(ok, "access log never had {n} lines: {:?}", read());
    read()
}

/// Waits for the proxy to close `s` without answering anything.
async fn refused(mut s: TcpStream, what: &str) {
    let mut b = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: answered {:?}", String::from_utf8_lossy(&b[..n])),
        Err(_) => panic!("{what}: still open after 5 s"),
    }
}

/// HAProxy in http mode in front of an http `accept_proxy` service, with `server_opt`
/// (`send-proxy` or `send-proxy-v2`): the backends see the original clients in
/// X-Forwarded-For; the access log and source-IP persistence use them.
async fn haproxy_in_front_of_http(server_opt: &str) {
    let (a, b, list) = two().await;
    let listen = free_addr();
    let extra = "accept_proxy = true\ntrusted_proxies = [\"127.0.0.1\"]\npersistence = { key = \"source_ip\" }";
    let cfg = with_access_log(&service_toml("http", listen, extra, &list));
    let proxy = Proxy::start(&cfg, listen).await;
    let front = free_addr();
    let Some(_h) = Haproxy::start(&in_front("http", front, listen, server_opt), front).await else {
        return;
    };
    let mut clients = Vec::new();
    for from in ["127.0.0.5", "127.0.0.5", "127.0.0.6"] {
        let mut s = tcp_connect(front, ip(from)).await.unwrap();
        clients.push(s.local_addr().unwrap());
        let r = get(&mut s, "test", "/", "").await;
        assert_eq!(r.status, 200, "{}", proxy.log_text());
    }
    let mut seen: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|x| x.forwarded.lock().unwrap().clone())
        .collect();
    seen.sort();
    assert_eq!(seen, ["127.0.0.5", "127.0.0.5", "127.0.0.6"]);
    // Lines come in the order requests finished on their worker threads, which may differ from
    // the order the client saw its responses in: match them by the client's address.
    let lines = access_log(&proxy, 3).await;
    let line_of = |client: &SocketAddr| {
        lines
            .iter()
            .find(|l| l["client"] == client.to_string())
            .unwrap_or_else(|| panic!("no access log line for {client}: {lines:?}"))
    };
    // Pinned by the carried address: HAProxy's own (127.0.0.1) would be one key for all.
    let pins: Vec<&str> = clients
        .iter()
        .map(|c| line_of(c)["persistence"].as_str().unwrap())
        .collect();
    assert_eq!(pins, ["new", "hit", "new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_sends_v2_to_an_http_service() {
    haproxy_in_front_of_http("send-proxy-v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_sends_v1_to_an_http_service() {
    haproxy_in_front_of_http("send-proxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_of_a_tcp_service_that_terminates_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let cert = ca.issue("pb", &["pb.example.com"], KeyType::Ecdsa, 30);
    let backend = TcpBackend::start().await;
    let listen = free_addr();
    let extra = format!("accept_proxy = true\n{}", cert_table(&cert));
    let cfg = with_access_log(&service_toml("tcp", listen, &extra, &[(backend.addr, 1)]));
    let proxy = Proxy::start(&cfg, listen).await;
    let front = free_addr();
    let sections = in_front("tcp", front, listen, "send-proxy-v2");
    let Some(_h) = Haproxy::start(&sections, front).await else {
        return;
    };
    // The header is consumed exactly: the ClientHello behind it reaches the TLS handshake.
    let tls = connect(front, "pb.example.com", &ca.cert).await.unwrap();
    let me = tls.get_ref().0.local_addr().unwrap();
    let mut r = BufReader::new(tls);
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut banner))
        .await
        .expect("banner in time")
        .unwrap();
    assert_eq!(banner.trim_end(), backend.addr.to_string());
    r.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest)).await;
    // HAProxy's readiness probe made a connection too (a header, then nothing: tls_error).
    let lines = access_log(&proxy, 2).await;
    let ours = lines.iter().find(|l| l["client"] == me.to_string());
    let ours = ours.unwrap_or_else(|| panic!("no line for {me}: {lines:?}"));
    assert_eq!(ours["backend"], backend.addr.to_string(), "{ours}");
}

/// HAProxy in tcp mode passes TLS through with a v2 header to an http service that
/// terminates it: Plugboard's own TLS session starts right after the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_of_an_http_service_that_terminates_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let cert = ca.issue("pb", &["pb.example.com"], KeyType::Ecdsa, 30);
    let backend = HttpBackend::start().await;
    let listen = free_addr();
    let extra = format!("accept_proxy = true\n{}", cert_table(&cert));
    let cfg = with_access_log(&service_toml("http", listen, &extra, &[(backend.addr, 1)]));
    let proxy = Proxy::start(&cfg, listen).await;
    let front = free_addr();
    let sections = in_front("tcp", front, listen, "send-proxy-v2");
    let Some(_h) = Haproxy::start(&sections, front).await else {
        return;
    };
    let mut tls = connect(front, "pb.example.com", &ca.cert).await.unwrap();
    let me = tls.get_ref().0.local_addr().unwrap();
    for _ in 0..2 {
        let r = get(&mut tls, "pb.example.com", "/", "").await;
        assert_eq!(r.status, 200, "{}", proxy.log_text());
    }
    let lines = access_log(&proxy, 2).await;
    assert!(
        lines.iter().all(|l| l["client"] == me.to_string()),
        "{lines:?}"
    );
    assert_eq!(lines[0]["tls"]["sni"], "pb.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_and_missing_or_slow_headers_are_refused() {
    let backend = HttpBackend::start().await;
    let listen = free_addr();
    let metrics = free_addr();
    let extra = "accept_proxy = true\ntrusted_proxies = [\"127.0.0.1\"]\nheader_timeout = \"1s\"";
    let cfg = service_toml("http", listen, extra, &[(backend.addr, 1)]).replacen(
        "[proxy]\n",
        &format!("[proxy]\nmetrics = \"{metrics}\"\n"),
        1,
    );
    let proxy = Proxy::start(&cfg, listen).await;
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let v1 = b"PROXY TCP4 192.0.2.9 127.0.0.1 1000 80\r\n";

    let mut s = tcp_connect(listen, ip("127.0.0.7")).await.unwrap();
    s.write_all(&[&v1[..], request].concat()).await.unwrap();
    refused(s, "a peer not in trusted_proxies").await;

    let mut s = tcp_connect(listen, ip("127.0.0.1")).await.unwrap();
    s.write_all(request).await.unwrap();
    refused(s, "a request without a header").await;

    let mut s = tcp_connect(listen, ip("127.0.0.1")).await.unwrap();
    s.write_all(b"PROXY TCP4 ").await.unwrap();
    let started = Instant::now();
    refused(s, "a header cut short").await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed before header_timeout"
    );

    // LOCAL (the balancer's own check): the peer's address stands.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    for header in [&local[..], v1] {
        let mut s = tcp_connect(listen, ip("127.0.0.1")).await.unwrap();
        s.write_all(header).await.unwrap();
        let r = get(&mut s, "t", "/", "").await;
        assert_eq!(r.status, 200, "{}", proxy.log_text());
    }
    assert_eq!(
        *backend.forwarded.lock().unwrap(),
        ["127.0.0.1", "192.0.2.9"]
    );
    // Every connection but the two served is counted as refused: the three above and the
    // harness's readiness probe (a connect without a header).
    let text = scrape(metrics).await;
    let value = |family: &str| -> u64 {
        let prefix = format!("{family}{{listener=\"{listen}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in:\n{text}"))
    };
    let accepted = value("plugboard_listener_connections_total");
    assert!(accepted >= 5, "{text}");
    assert_eq!(
        value("plugboard_listener_refused_total"),
        accepted - 2,
        "{text}"
    );
}

/// A combined certificate and key file for HAProxy's `crt`, for 127.0.0.1.
fn haproxy_cert(ca: &Ca) -> String {
    let c = ca.issue("echo", &["127.0.0.1"], KeyType::Ecdsa, 30);
    let pem = [
        std::fs::read(&c.cert).unwrap(),
        std::fs::read(&c.key).unwrap(),
    ]
    .concat();
    let path = ca.dir.join("echo-combined.pem");
    std::fs::write(&path, pem).unwrap();
    format!("ssl crt {}", path.display())
}

/// A `send_proxy` service in `mode` in front of HAProxy's `accept-proxy` echo (TLS with
/// `tls`); two clients on kept-alive connections, alternating, each see their own address
/// and the address they connected to, as HAProxy read them from the header.
async fn send_to_haproxy(mode: &str, version: &str, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let echo = free_addr();
    let bind_extra = if tls {
        haproxy_cert(&ca)
    } else {
        String::new()
    };
    let Some(h) = Haproxy::start(&echo_addresses(echo, &bind_extra), echo).await else {
        return;
    };
    let listen = free_addr();
    let mut extra = format!("send_proxy = \"{version}\"");
    if tls {
        extra.push_str(&format!(
            "\nbackend_tls = {{ ca = \"{}\" }}",
            ca.cert.display()
        ));
    }
    let proxy = Proxy::start(&service_toml(mode, listen, &extra, &[(echo, 1)]), listen).await;
    let mut a = tcp_connect(listen, ip("127.0.0.5")).await.unwrap();
    let mut b = tcp_connect(listen, ip("127.0.0.6")).await.unwrap();
    for _ in 0..2 {
        for s in [&mut a, &mut b] {
            let me = s.local_addr().unwrap();
            let r = get(s, "test", "/", "").await;
            assert_eq!(
                (r.status, r.body),
                (200, format!("{me} {listen}")),
                "{mode} {version} tls {tls}\n{}\n{}",
                proxy.log_text(),
                h.log_text()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_service_sends_v1_and_v2_to_haproxy() {
    send_to_haproxy("http", "v1", false).await;
    send_to_haproxy("http", "v2", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_service_sends_v1_and_v2_to_haproxy() {
    send_to_haproxy("tcp", "v1", false).await;
    send_to_haproxy("tcp", "v2", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_precedes_tls_to_the_backend() {
    send_to_haproxy("http", "v2", true).await;
    send_to_haproxy("tcp", "v1", true).await;
}

/// A backend that records the first bytes of every connection (what arrives within 300 ms,
/// up to 512 bytes) and answers nothing.
struct Recorder {
    addr: SocketAddr,
    first: Arc<Mutex<Vec<Vec<u8>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let first = Arc::new(Mutex::new(Vec::new()));
        let f = first.clone();
        let _task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut b = [0u8; 512];
                    let until = tokio::time::Instant::now() + Duration::from_millis(300);
                    while got.len() < 512 {
                        match tokio::time::timeout_at(until, s.read(&mut b)).await {
                            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&b[..n]),
                            _ => break,
                        }
                    }
                    f.lock().unwrap().push(got);
                });
            }
        });
        Recorder { addr, first, _task }
    }

    /// The first bytes of the first two connections.
    async fn two(&self) -> Vec<Vec<u8>> {
        let ok = eventually(Duration::from_secs(5), async || {
            self.first.lock().unwrap().len() >= 2
        })
        .await;
        assert!(ok, "fewer than two health checks in 5 s");
        self.first.lock().unwrap()[..2].to_vec()
    }
}

/// The health checks of a `send_proxy = "v2"` service with `check`, recorded. The service
/// is http, so no client traffic (the start-up probe) reaches the recorder.
async fn checks(check: &str) -> (Vec<Vec<u8>>, SocketAddr) {
    let rec = Recorder::start().await;
    let listen = free_addr();
    let extra = format!("send_proxy = \"v2\"\nhealth_check = {{ {check}, interval = \"100ms\" }}");
    let cfg = service_toml("http", listen, &extra, &[(rec.addr, 1)]);
    let _p = Proxy::start(&cfg, listen).await;
    (rec.two().await, rec.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_send_a_header_only_when_told() {
    let (plain, _) = checks("kind = \"tcp\"").await;
    assert!(plain.iter().all(|b| b.is_empty()), "{plain:?}");
    let (plain, _) = checks("kind = \"http\"").await;
    assert!(
        plain.iter().all(|b| b.starts_with(b"GET / HTTP/1.1\r\n")),
        "{plain:?}"
    );

    for kind in ["tcp", "http"] {
        let (sent, backend) = checks(&format!("kind = \"{kind}\", send_proxy = true")).await;
        for b in sent {
            let h = ppp::v2::Header::try_from(&b[..]).expect("a v2 header first");
            let ppp::v2::Addresses::IPv4(a) = h.addresses else {
                panic!("{:?}", h.addresses)
            };
            // The check's own connection: from this host, to the backend.
            assert_eq!(a.source_address.to_string(), "127.0.0.1");
            assert_eq!(
                (a.destination_address.into(), a.destination_port),
                (backend.ip(), backend.port())
            );
            let rest = &b[h.len()..];
            match kind {
                "tcp" => assert!(rest.is_empty(), "{rest:?}"),
                _ => assert!(rest.starts_with(b"GET / HTTP/1.1\r\n"), "{rest:?}"),
            }
        }
    }
}

/// HAProxy with `accept-proxy` refuses a connection without a header: an http check
/// without `send_proxy` marks it down (503), one with it keeps it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_expects_the_header_is_up_only_when_checks_send_it() {
    for send in [false, true] {
        let echo = free_addr();
        let Some(_h) = Haproxy::start(&echo_addresses(echo, ""), echo).await else {
            return;
        };
        let listen = free_addr();
        let extra = format!("send_proxy = \"v1\"\nhealth_check = {{ kind = \"http\", interval = \"100ms\", rise = 1, fall = 1, send_proxy = {send} }}");
        let p = Proxy::start(&service_toml("http", listen, &extra, &[(echo, 1)]), listen).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut s = tcp_connect(listen, None).await.unwrap();
        let r = get(&mut s, "test", "/", "").await;
        let want = if send { 200 } else { 503 };
        assert_eq!(r.status, want, "send_proxy = {send}: {}", p.log_text());
    }
}

/// A reload turns `accept_proxy` on for an address it keeps: new connections need the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_accept_proxy_on() {
    let backend = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = |extra: &str| service_toml("http", listen, extra, &[(backend.addr, 1)]);
    let p = Proxy::start(&cfg(""), listen).await;
    let mut s = tcp_connect(listen, None).await.unwrap();
    assert_eq!(get(&mut s, "t", "/", "").await.status, 200);

    let on = "accept_proxy = true\ntrusted_proxies = [\"127.0.0.0/8\"]";
    std::fs::write(p.dir.path().join("plugboard.toml"), cfg(on)).unwrap();
    // SAFETY: a plain kill(2) on our child.
    unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
    p.wait_log(&["configuration reloaded"], 1, Duration::from_secs(10))
        .await;
    let mut s = tcp_connect(listen, None).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    refused(s, "a request without a header after the reload").await;
    let mut s = tcp_connect(listen, None).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 1000 80\r\n")
        .await
        .unwrap();
    assert_eq!(get(&mut s, "t", "/", "").await.status, 200);
    assert_eq!(
        *backend.forwarded.lock().unwrap(),
        ["127.0.0.1", "192.0.2.44"]
    );
}
