//! Running the proxy: SIGTERM lets requests in flight finish, JSON logs, backends given by
//! host name and by IPv6 address, readiness told to systemd, the example systemd unit.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// SIGTERM with a request in flight (the backend holds it 2 s) and an idle kept-alive client:
/// the idle client is closed at once, the request is answered, and the proxy exits as soon as
/// it has been, well inside the 30 s grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service_toml("http", listen, "", &[(a.addr, 1)])
        .replace("[proxy]\n", "[proxy]\ngrace_period = \"30s\"\n");
    let mut p = Proxy::start(&cfg, listen).await;
    let mut idle = Client::connect(listen).await.unwrap();
    idle.get("/", &[]).await.unwrap();
    let slow = tokio::spawn(async move { get_once(listen, "/slow/2000").await });
    // The signal comes while the backend holds the request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    p.terminate();
    assert!(
        idle.closed_within(Duration::from_secs(1)).await,
        "the idle client is closed at once"
    );
    let r = slow
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, a.addr.to_string().as_str())
    );
    let status = p
        .wait_exit(Duration::from_secs(15))
        .expect("the proxy exits");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}\n{}", p.log_text());
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM, with nothing in flight after about 1.7 s\n{}",
        p.log_text()
    );
    assert!(get_once(listen, "/").await.is_err(), "no longer listening");
}

/// SIGTERM on a proxy with nothing in flight exits at once, even with a 30 s grace period and
/// idle kept-alive clients (one in its task, one parked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_proxy_exits_at_once() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service_toml("http", listen, "", &[(a.addr, 1)])
        .replace("[proxy]\n", "[proxy]\ngrace_period = \"30s\"\n");
    let mut p = Proxy::start(&cfg, listen).await;
    let mut parked = Client::connect(listen).await.unwrap();
    parked.get("/", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut idle = Client::connect(listen).await.unwrap();
    idle.get("/", &[]).await.unwrap();
    let signalled = Instant::now();
    p.terminate();
    let status = p
        .wait_exit(Duration::from_secs(5))
        .expect("the proxy exits");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}\n{}", p.log_text());
    assert!(
        took < Duration::from_millis(1500),
        "exited {took:?} after SIGTERM\n{}",
        p.log_text()
    );
    assert!(
        p.log_text().contains("SIGTERM: no connection in flight"),
        "{}",
        p.log_text()
    );
    for c in [&mut idle, &mut parked] {
        assert!(c.closed_within(Duration::from_secs(1)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let listen = free_addr();
    let cfg = service_toml("http", listen, "", &[(free_addr(), 1)])
        .replace("[proxy]\n", "[proxy]\nlog_format = \"json\"\n");
    let p = Proxy::start(&cfg, listen).await;
    // A connect failure makes a warning with fields.
    let _ = get_once(listen, "/").await;
    p.wait_log(&["connect failed"], 1, Duration::from_secs(5))
        .await;
    let log = p.log_text();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    let warn = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "connect failed")
        .expect("the connect failure");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["fields"]["service"], "http-svc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_by_host_name_and_ipv6_address() {
    let v4 = HttpBackend::start().await;
    let free_v6 = std::net::TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .expect("an IPv6 loopback address");
    let v6 = HttpBackend::start_on(free_v6).await;
    let listen = free_addr();
    let cfg = format!(
        "[proxy]\nthreads = 2\n\n[[service]]\nname = \"web\"\nlisten = \"{listen}\"\n[[service.backend]]\naddress = \"localhost:{}\"\n[[service.backend]]\naddress = \"{}\"\n",
        v4.addr.port(),
        v6.addr
    );
    let _p = Proxy::start(&cfg, listen).await;
    let mut c = Client::connect(listen).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.body);
    }
    assert!(seen.contains(&v4.addr.to_string()), "{seen:?}");
    assert!(seen.contains(&v6.addr.to_string()), "{seen:?}");
}

/// systemd's side of `Type=notify`: the proxy sends `READY=1` to `$NOTIFY_SOCKET`, and by then
/// every listener (the service's, the admin API's, the metrics') accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_ready_once_every_listener_accepts() {
    let a = HttpBackend::start().await;
    let (listen, admin, metrics) = (free_addr(), free_addr(), free_addr());
    let cfg = with_admin(
        admin,
        &service_toml("http", listen, "", &[(a.addr, 1)]).replacen(
            "[proxy]\n",
            &format!("[proxy]\nmetrics = \"{metrics}\"\n"),
            1,
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let path = dir.path().join("plugboard.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf)).await;
    let ready: Vec<(SocketAddr, bool)> = [listen, admin, metrics]
        .into_iter()
        .map(|addr| (addr, std::net::TcpStream::connect(addr).is_ok()))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("READY=1 within 20 s").unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        ready.iter().all(|(_, ok)| *ok),
        "accepting when ready: {ready:?}"
    );
}

/// The unit in examples/systemd parses without a complaint from systemd (paths pointed at
/// this build and an example configuration).
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let have = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have && !missing_dependency("systemd", "systemd-analyze checks the example unit") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("examples/systemd/plugboard.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("plugboard.service");
    let quickstart = root.join("examples/quickstart.toml");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/plugboard", BIN).replace(
            "/etc/plugboard/plugboard.toml",
            quickstart.to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}
