//! The stock plugins, loaded by name, through the real binary: rdp-cookie (raw vectors and real
//! RDP clients) and mcx-affinity (cookie rules on the wire); agent-load is in `stock_agent.rs`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::rdp::{connection_request, routing_token};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

// ---------------------------------------------------------------- RDP

/// Connection Confirm carrying RDP_NEG_FAILURE (HYBRID_REQUIRED_BY_SERVER): a live RDP stack
/// that makes real clients give up at once.
const CONFIRM: [u8; 19] = [
    0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x03, 0x00, 0x08, 0x00, 0x05,
    0x00, 0x00, 0x00,
];

/// A fake RDP server: records the first bytes of each connection (a whole TPKT, or whatever
/// arrived before 300 ms of silence), answers a Connection Request with [`CONFIRM`], closes.
struct RdpBackend {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    _tasks: JoinSet<()>,
}

impl RdpBackend {
    async fn start() -> RdpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let whole = buf.len() >= 4
                            && buf[0] == 3
                            && buf.len() >= u16::from_be_bytes([buf[2], buf[3]]) as usize;
                        if whole {
                            break;
                        }
                        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                    }
                    if buf.is_empty() {
                        return;
                    }
                    let is_cr = buf.len() > 5 && buf[0] == 3 && buf[5] & 0xf0 == 0xe0;
                    rec.lock().unwrap().push(buf);
                    if is_cr {
                        let _ = s.write_all(&CONFIRM).await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        RdpBackend {
            addr,
            received,
            _tasks: tasks,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Captured Connection Requests (`tests/vectors`).
fn vector(name: &str) -> Vec<u8> {
    let text = include_str!("vectors/rdp-connection-requests.txt");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap();
    hex(line.split_whitespace().nth(1).unwrap())
}

struct Farm {
    backends: Vec<RdpBackend>,
    listen: SocketAddr,
    proxy: Proxy,
}

impl Farm {
    async fn start(extra: &str) -> Farm {
        let mut backends = Vec::new();
        for _ in 0..3 {
            backends.push(RdpBackend::start().await);
        }
        let listen = free_addr();
        let cfg = service_toml(
            "tcp",
            listen,
            &format!("persistence = {{ key = \"plugin:rdp-cookie\", timeout = \"8h\" }}\ninspect_timeout = \"1s\"\n{extra}"),
            &backends.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
        );
        let proxy = Proxy::start(&cfg, listen).await;
        Farm {
            backends,
            listen,
            proxy,
        }
    }

    /// Which backend received `bytes` (exactly) most recently.
    fn who_got(&self, bytes: &[u8]) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.received().iter().any(|r| r == bytes))
    }

    fn total(&self) -> usize {
        self.backends.iter().map(|b| b.received().len()).sum()
    }

    /// Sends `parts` (with a pause between them), waits for the answer; returns the backend
    /// that received them, checking it received exactly these bytes.
    async fn connect(&self, parts: &[&[u8]]) -> usize {
        let before: Vec<usize> = self.backends.iter().map(|b| b.received().len()).collect();
        let mut s = TcpStream::connect(self.listen).await.unwrap();
        let mut sent = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.write_all(p).await.unwrap();
            sent.extend_from_slice(p);
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        let got = eventually(Duration::from_secs(3), async || {
            self.backends
                .iter()
                .zip(&before)
                .any(|(b, n)| b.received().len() > *n)
        })
        .await;
        assert!(
            got,
            "no backend received the connection\n{}",
            self.proxy.log_text()
        );
        let i = self
            .backends
            .iter()
            .zip(&before)
            .position(|(b, n)| b.received().len() > *n)
            .unwrap();
        assert_eq!(
            self.backends[i].received().last().unwrap(),
            &sent,
            "bytes forwarded unchanged"
        );
        i
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_cookie_vectors_tokens_split_and_garbage() {
    let farm = Farm::start("scheduler = \"round_robin\"").await;
    // The same user always lands on the same backend, whole or split over two writes.
    for name in ["ms-spec-4.1.1", "xfreerdp-admin"] {
        let v = vector(name);
        let home = farm.connect(&[&v]).await;
        for _ in 0..4 {
            assert_eq!(farm.connect(&[&v]).await, home, "{name} moved");
        }
        let (a, b) = v.split_at(7);
        assert_eq!(
            farm.connect(&[a, b]).await,
            home,
            "{name} split over two writes"
        );
    }
    // Several users spread out.
    let mut homes = std::collections::HashSet::new();
    for u in ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"] {
        homes.insert(
            farm.connect(&[&connection_request(
                format!("Cookie: mstshash={u}\r\n").as_bytes(),
            )])
            .await,
        );
    }
    assert!(homes.len() >= 2, "users spread: {homes:?}");
    // A routing token naming a pool member goes there, whatever the scheduler says.
    for target in 0..3 {
        let token = routing_token(farm.backends[target].addr);
        let cr = connection_request(format!("{token}\r\n").as_bytes());
        for _ in 0..3 {
            assert_eq!(
                farm.connect(&[&cr]).await,
                target,
                "token for backend {target}"
            );
        }
    }
    // The documented token names a server outside the pool: balanced normally.
    farm.connect(&[&vector("routing-token-doc")]).await;
    // No cookie, and garbage: balanced, bytes unchanged, no panic, no hang.
    farm.connect(&[&vector("no-cookie")]).await;
    farm.connect(&[b"GET / HTTP/1.0\r\n\r\n"]).await;
    farm.connect(&[&[0x03, 0x00, 0xff, 0xff, 0x00, 0x00]]).await;
    assert!(farm.total() > 30);
    assert!(!farm.proxy.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_health_check_needs_a_connection_confirm() {
    let rdp = RdpBackend::start().await;
    let not_rdp = TcpBackend::start().await;
    let listen = free_addr();
    let cfg = service_toml(
        "tcp",
        listen,
        "health_check = { kind = \"plugin:rdp-cookie\", interval = \"200ms\", timeout = \"1s\", rise = 1, fall = 1 }\ninspect_timeout = \"200ms\"",
        &[(rdp.addr, 1), (not_rdp.addr, 1)],
    );
    let p = Proxy::start(&cfg, listen).await;
    let down = eventually(Duration::from_secs(5), async || {
        let log = p.log_text();
        log.lines()
            .any(|l| l.contains("backend is DOWN") && l.contains(&not_rdp.addr.to_string()))
    })
    .await;
    assert!(down, "{}", p.log_text());
    let before = not_rdp.conns();
    for _ in 0..10 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(&vector("no-cookie")).await.unwrap();
        let mut a = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut a)).await;
        assert_eq!(a, CONFIRM);
    }
    // Only health checks reached the non-RDP port (each a connection of its own).
    assert!(not_rdp.conns() - before < 10);
    assert!(!rdp.received().is_empty());
}

/// Runs a real RDP client headless under xvfb-run, bounded in time.
fn rdp_client(args: &[&str]) {
    let status = Command::new("timeout")
        .arg("20")
        .args(["xvfb-run", "-a", "-s", "-nolisten tcp"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the RDP client");
    assert_ne!(status.code(), Some(124), "{args:?} timed out");
}

fn have_rdp_clients() -> bool {
    let have = |p: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    (have("xfreerdp") && have("rdesktop") && have("xvfb-run"))
        || missing_dependency(
            "rdp-clients",
            "xfreerdp, rdesktop and xvfb-run are not installed (Debian: freerdp2-x11 rdesktop xvfb)",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_cookie_with_real_clients() {
    if !have_rdp_clients() {
        return;
    }
    let farm = Farm::start("scheduler = \"round_robin\"").await;
    let port = farm.listen.port().to_string();
    let host = format!("/v:127.0.0.1:{port}");
    let xfreerdp = |user: &str| {
        let u = format!("/u:{user}");
        let h = host.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                rdp_client(&["xfreerdp", &h, &u, "/p:x", "/cert-ignore"])
            })
            .await
            .unwrap()
        }
    };
    // What xfreerdp sends, captured straight from a backend without the proxy.
    let direct = RdpBackend::start().await;
    let d = format!("/v:{}", direct.addr);
    tokio::task::spawn_blocking(move || {
        rdp_client(&["xfreerdp", &d, "/u:alice", "/p:x", "/cert-ignore"])
    })
    .await
    .unwrap();
    let alice_bytes = direct
        .received()
        .first()
        .cloned()
        .expect("xfreerdp sent a Connection Request");
    assert!(String::from_utf8_lossy(&alice_bytes).contains("Cookie: mstshash=alice\r\n"));

    // A client may retry with another security protocol: each call can open several
    // connections, and every one of them must land on the same backend.
    let counts = |farm: &Farm| {
        farm.backends
            .iter()
            .map(|b| b.received().len())
            .collect::<Vec<_>>()
    };
    let landed = |before: &[usize], after: &[usize]| -> Vec<usize> {
        (0..before.len())
            .filter(|&i| after[i] > before[i])
            .collect()
    };
    xfreerdp("alice").await;
    let home = farm
        .who_got(&alice_bytes)
        .expect("the backend received xfreerdp's bytes unchanged");
    for _ in 0..2 {
        let before = counts(&farm);
        xfreerdp("alice").await;
        assert_eq!(landed(&before, &counts(&farm)), vec![home], "alice moved");
    }
    let mut homes = std::collections::HashSet::new();
    for user in ["bob", "carol", "dave", "erin", "frank", "grace"] {
        let before = counts(&farm);
        xfreerdp(user).await;
        let l = landed(&before, &counts(&farm));
        assert_eq!(l.len(), 1, "{user} split over backends: {l:?}");
        homes.insert(l[0]);
    }
    assert!(homes.len() >= 2, "users spread: {homes:?}");

    // rdesktop sends the same cookie for alice: same backend.
    let before = counts(&farm);
    let hp = format!("127.0.0.1:{port}");
    tokio::task::spawn_blocking(move || rdp_client(&["rdesktop", "-u", "alice", &hp]))
        .await
        .unwrap();
    assert_eq!(
        landed(&before, &counts(&farm)),
        vec![home],
        "rdesktop's alice lands with xfreerdp's"
    );
    let last = farm.backends[home].received().last().unwrap().clone();
    assert!(String::from_utf8_lossy(&last).contains("Cookie: mstshash=alice"));

    // A load-balance-info routing token with an encoded address lands on that backend.
    for target in 0..3 {
        let lb = format!(
            "/load-balance-info:{}",
            routing_token(farm.backends[target].addr)
        );
        let before = counts(&farm);
        let h = host.clone();
        tokio::task::spawn_blocking(move || {
            rdp_client(&["xfreerdp", &h, "/u:zed", "/p:x", "/cert-ignore", &lb])
        })
        .await
        .unwrap();
        assert_eq!(
            landed(&before, &counts(&farm)),
            vec![target],
            "token for backend {target}\n{}",
            farm.proxy.log_text()
        );
    }
}

// ---------------------------------------------------------------- MCX

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcx_affinity_cookie_rules_on_the_wire() {
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(HttpBackend::start().await);
    }
    let listen = free_addr();
    let cfg = service_toml(
        "http",
        listen,
        "persistence = { key = \"plugin:mcx-affinity\" }\nhealth_check = { kind = \"tcp\", interval = \"100ms\", timeout = \"200ms\", rise = 1, fall = 1 }",
        &bs.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
    );
    let p = Proxy::start(&cfg, listen).await;
    let mut c = Client::connect(listen).await.unwrap();
    // Rule 4: every response to a request without the cookie sets it, on one kept-alive
    // connection too. Rules 1-3: name MS-WSMAN, not HttpOnly, no Expires/Max-Age.
    let mut first = None;
    for _ in 0..3 {
        let r = c.get("/Mcx/McxService.svc", &[]).await.unwrap();
        let set = r.all("set-cookie");
        assert_eq!(set.len(), 1, "{r:?}");
        let v = set[0];
        assert!(v.starts_with("MS-WSMAN="), "{v}");
        let lower = v.to_ascii_lowercase();
        assert!(
            !lower.contains("httponly") && !lower.contains("expires") && !lower.contains("max-age"),
            "{v}"
        );
        let value = v["MS-WSMAN=".len()..]
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert!(
            bs.iter()
                .all(|b| !value.contains(&b.addr.port().to_string())),
            "value reveals an address: {value}"
        );
        first.get_or_insert((value, r.body));
    }
    let (value, home) = first.unwrap();
    // With the cookie: sticky, and no new cookie.
    let cookie = format!("MS-WSMAN={value}");
    for _ in 0..50 {
        let r = c
            .get("/Mcx/McxService.svc", &[("Cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(r.body, home);
        assert!(r.header("set-cookie").is_none());
    }
    // A forged value is treated as absent: balanced and given a real cookie.
    let r = c
        .get("/", &[("Cookie", "MS-WSMAN=0000000000000000")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.all("set-cookie").len(), 1);
    // The pinned backend goes down: re-balanced, with a fresh cookie naming the new backend.
    let i = bs.iter().position(|b| b.addr.to_string() == home).unwrap();
    bs[i].kill();
    let moved = eventually(Duration::from_secs(5), async || {
        p.log_text().contains("backend is DOWN")
    })
    .await;
    assert!(moved);
    let r = c.get("/", &[("Cookie", &cookie)]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(r.body, home);
    let fresh = r.header("set-cookie").expect("fresh cookie").to_string();
    assert!(!fresh.contains(&value));
    let new_cookie = fresh.split(';').next().unwrap().to_string();
    for _ in 0..10 {
        assert_eq!(
            c.get("/", &[("Cookie", &new_cookie)]).await.unwrap().body,
            r.body
        );
    }
}
