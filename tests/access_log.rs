//! The access log through the real binary: every field of HTTP lines (JSON and text) for real
//! traffic, including a no-backend 503, a retried request, persistence outcomes and TLS; TCP
//! lines for each way a connection ends; a logrotate-style rename plus SIGUSR1 under load
//! loses no line.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use common::tls::{Ca, KeyType};
use common::*;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The log's lines once it has at least `n` (the writer flushes within milliseconds).
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let ok = eventually(Duration::from_secs(5), async || lines(path).len() >= n).await;
    assert!(
        ok,
        "{} has {} lines, expected {n}",
        path.display(),
        lines(path).len()
    );
    lines(path)
}

fn json_lines(path: &Path) -> Vec<Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// An address where nothing listens (bound, then released: connects are refused).
fn dead_addr() -> SocketAddr {
    free_addr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lines_hold_every_field_in_json() {
    let (a, b, list) = two().await;
    let (web, retry, empty, secure, admin) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let cert = ca.issue("web", &["web.example.com"], KeyType::Ecdsa, 30);
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[proxy]\nthreads = 2\naccess_log = {{ path = \"access.log\" }}\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{web}\"\npersistence = {{ key = \"header:X-User\" }}\n{}\n\
         [[service]]\nname = \"retry\"\nlisten = \"{retry}\"\nretries = 1\n\
         [[service.backend]]\nname = \"dead\"\naddress = \"{dead}\"\n\
         [[service.backend]]\nname = \"alive\"\naddress = \"{}\"\n\n\
         [[service]]\nname = \"empty\"\nlisten = \"{empty}\"\n\
         [[service.backend]]\naddress = \"{}\"\nenabled = false\n\n\
         [[service]]\nname = \"secure\"\nlisten = \"{secure}\"\n{}{}",
        backends_toml(&list),
        a.addr,
        a.addr,
        common::tls::cert_table(&cert),
        backends_toml(&[(b.addr, 1)]),
    );
    let p = Proxy::start(&cfg, web).await;
    let log = p.dir.path().join("access.log");

    // Persistence: new, then hit; then the pinned backend goes into maintenance: rebalanced.
    let mut c = Client::connect(web).await.unwrap();
    let first = c.get("/users?id=7", &[("X-User", "u1")]).await.unwrap();
    let again = c.get("/users?id=7", &[("X-User", "u1")]).await.unwrap();
    assert_eq!(first.body, again.body);
    let pinned = if first.body == a.addr.to_string() {
        &a
    } else {
        &b
    };
    let pinned_name = pinned.addr.to_string();
    assert_eq!(ctl(admin, None, &["maint", "web", &pinned_name]).0, 0);
    let moved = c.get("/users?id=7", &[("X-User", "u1")]).await.unwrap();
    assert_ne!(moved.body, first.body);
    // A request with a body.
    let posted = c.send("POST", "/form", b"hello").await.unwrap();
    assert_eq!(posted.status, 200);
    drop(c);
    // Retried: the round robin sends some requests to the dead backend first.
    let mut r = Client::connect(retry).await.unwrap();
    for _ in 0..4 {
        assert_eq!(r.get("/", &[]).await.unwrap().status, 200);
    }
    drop(r);
    // No backend: 503.
    assert_eq!(get_once(empty, "/").await.unwrap().status, 503);
    // TLS, with SNI.
    let resolve = format!("web.example.com:{}:{}", secure.port(), secure.ip());
    let url = format!("https://web.example.com:{}/tls", secure.port());
    let cafile = ca.cert.display().to_string();
    let (status, _, _) = common::tls::curl(&[
        "--http1.1",
        "--cacert",
        &cafile,
        "--resolve",
        &resolve,
        &url,
    ])
    .unwrap();
    assert_eq!(status, 200);
    // HTTP/2: the version is known, the SNI is not (see README).
    let url2 = format!("https://web.example.com:{}/h2", secure.port());
    let (status, version, _) =
        common::tls::curl(&["--http2", "--cacert", &cafile, "--resolve", &resolve, &url2]).unwrap();
    assert_eq!((status, version.as_str()), (200, "2"));

    wait_lines(&log, 11).await;
    let all = json_lines(&log);
    let web_lines: Vec<&Value> = all.iter().filter(|l| l["service"] == "web").collect();
    assert_eq!(web_lines.len(), 4, "{all:#?}");
    let l = web_lines[0];
    assert!(
        humantime::parse_rfc3339(l["time"].as_str().unwrap()).is_ok(),
        "{l}"
    );
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "test");
    assert_eq!(l["path"], "/users?id=7");
    assert_eq!(l["status"], 200);
    assert_eq!(l["backend"], pinned_name);
    assert_eq!(l["request_bytes"], 0);
    assert_eq!(l["response_bytes"], first.body.len());
    let (ttfb, total) = (
        l["ttfb_ms"].as_f64().unwrap(),
        l["total_ms"].as_f64().unwrap(),
    );
    assert!(ttfb > 0.0 && ttfb <= total, "{l}");
    assert_eq!(l["persistence"], "new");
    assert_eq!(l["retries"], 0);
    assert_eq!(l["tls"], Value::Null);
    assert_eq!(web_lines[1]["persistence"], "hit");
    assert_eq!(web_lines[2]["persistence"], "rebalanced");
    assert_ne!(web_lines[2]["backend"], pinned_name);
    assert_eq!(web_lines[3]["method"], "POST");
    assert_eq!(web_lines[3]["request_bytes"], 5);
    assert_eq!(web_lines[3]["persistence"], "none");

    let retried: Vec<&Value> = all.iter().filter(|l| l["service"] == "retry").collect();
    assert_eq!(retried.len(), 4);
    assert!(
        retried
            .iter()
            .all(|l| l["status"] == 200 && l["backend"] == "alive"),
        "{retried:#?}"
    );
    assert!(retried.iter().any(|l| l["retries"] == 1), "{retried:#?}");

    let none = all.iter().find(|l| l["service"] == "empty").unwrap();
    assert_eq!(none["status"], 503);
    assert_eq!(none["backend"], Value::Null);
    assert_eq!(none["ttfb_ms"], Value::Null);

    let h2 = all.iter().find(|l| l["path"] == "/h2").unwrap();
    assert_eq!(h2["tls"]["version"], "TLSv1.3");
    assert_eq!(h2["status"], 200);
    let tls = all.iter().find(|l| l["path"] == "/tls").unwrap();
    assert_eq!(tls["tls"]["version"], "TLSv1.3");
    assert_eq!(tls["tls"]["sni"], "web.example.com");
    assert_eq!(tls["path"], "/tls");
    assert_eq!(tls["backend"], b.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_and_tcp_lines_say_how_each_connection_ended() {
    let a = HttpBackend::start().await;
    let t = TcpBackend::start().await;
    let (web, tcp, refused, nobody, quiet) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let dead = dead_addr();
    let cfg = format!(
        "[proxy]\nthreads = 2\naccess_log = {{ path = \"access.log\", format = \"text\" }}\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{web}\"\n{}\n\
         [[service]]\nname = \"db\"\nlisten = \"{tcp}\"\nmode = \"tcp\"\nidle_timeout = \"1s\"\n{}\n\
         [[service]]\nname = \"down\"\nlisten = \"{refused}\"\nmode = \"tcp\"\nretries = 1\n{}\n\
         [[service]]\nname = \"none\"\nlisten = \"{nobody}\"\nmode = \"tcp\"\n\
         [[service.backend]]\naddress = \"{}\"\nenabled = false\n\n\
         [[service]]\nname = \"quiet\"\nlisten = \"{quiet}\"\nmode = \"tcp\"\naccess_log = false\n{}",
        backends_toml(&[(a.addr, 1)]),
        backends_toml(&[(t.addr, 1)]),
        backends_toml(&[(dead, 1), (dead_addr(), 1)]),
        t.addr,
        backends_toml(&[(t.addr, 1)]),
    );
    let p = Proxy::start(&cfg, web).await;
    let log = p.dir.path().join("access.log");

    let r = get_once(web, "/report?q=1").await.unwrap();
    assert_eq!(r.status, 200);
    // Client closes after an echo.
    let (banner, mut conn) = tcp_banner(tcp, None).await.unwrap();
    conn.get_mut().write_all(b"hello\n").await.unwrap();
    let mut echo = String::new();
    conn.read_line(&mut echo).await.unwrap();
    drop(conn);
    // Idle for the 1 s idle timeout.
    let (_, mut idle) = tcp_banner(tcp, None).await.unwrap();
    let mut rest = String::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_line(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "closed by the idle timeout: {closed:?}"
    );
    // Connect failure (refused, retried once), and no backend at all.
    let mut s = tokio::net::TcpStream::connect(refused).await.unwrap();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 8]),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(nobody).await.unwrap();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 8]),
    )
    .await;
    // Not logged.
    let _ = tcp_banner(quiet, None).await.unwrap();

    let all = wait_lines(&log, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = if lines(&log).len() > all.len() {
        lines(&log)
    } else {
        all
    };
    assert_eq!(all.len(), 5, "{all:#?}");
    let http = all.iter().find(|l| l.contains(" web ")).unwrap();
    assert!(http.starts_with("127.0.0.1:"), "{http}");
    assert!(
        http.contains(&format!(
            " web {} 200 0/{} ttfb=",
            a.addr,
            a.addr.to_string().len()
        )),
        "{http}"
    );
    assert!(http.contains(" persistence=none retries=0 "), "{http}");
    assert!(http.ends_with(" \"GET test/report?q=1\""), "{http}");

    let db: Vec<&String> = all.iter().filter(|l| l.contains(" db ")).collect();
    assert_eq!(db.len(), 2, "{all:#?}");
    let by_client = db
        .iter()
        .find(|l| l.contains("end=client_close"))
        .expect("client_close");
    assert!(
        by_client.contains(&format!(" db {} tcp 6/{} ", t.addr, banner.len() + 1 + 6)),
        "{by_client}"
    );
    let idle_line = db
        .iter()
        .find(|l| l.contains("end=idle_timeout"))
        .expect("idle_timeout");
    let ms: f64 = idle_line
        .split(" duration=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms >= 1000.0, "{idle_line}");
    let down = all.iter().find(|l| l.contains(" down ")).unwrap();
    // Both backends refused: one retry, the line names the last one tried.
    assert!(
        down.contains("end=connect_failure") && down.contains("retries=1"),
        "{down}"
    );
    assert!(down.contains(" tcp 0/0 ") && down.contains(":"), "{down}");
    let none = all.iter().find(|l| l.contains(" none ")).unwrap();
    assert!(
        none.contains(" none - tcp 0/0 ") && none.contains("end=no_backend"),
        "{none}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_and_sigusr1_under_load_lose_no_line() {
    let (_a, _b, list) = two().await;
    let web = free_addr();
    let cfg = format!(
        "[proxy]\nthreads = 2\naccess_log = {{ path = \"access.log\" }}\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{web}\"\n{}",
        backends_toml(&list)
    );
    let p = Proxy::start(&cfg, web).await;
    let log = p.dir.path().join("access.log");
    let rotated = p.dir.path().join("access.log.1");
    const PER_CLIENT: usize = 500;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(web).await.unwrap();
            for _ in 0..PER_CLIENT {
                assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
            }
        }));
    }
    // Rotate while the clients run: rename, then tell the proxy.
    let ok = eventually(Duration::from_secs(10), async || lines(&log).len() >= 200).await;
    assert!(ok, "traffic is logged");
    std::fs::rename(&log, &rotated).unwrap();
    let ok = Command::new("kill")
        .args(["-USR1", &p.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    for c in clients {
        c.await.unwrap();
    }
    let total = 4 * PER_CLIENT;
    let ok = eventually(Duration::from_secs(5), async || {
        lines(&rotated).len() + lines(&log).len() >= total
    })
    .await;
    let (old, new) = (lines(&rotated).len(), lines(&log).len());
    assert!(
        ok && old + new == total,
        "{old} + {new} lines for {total} requests"
    );
    assert!(new > 0, "lines after the reopen go to the new file");
    assert!(
        p.log_text().contains("access log reopened"),
        "{}",
        p.log_text()
    );
}
