//! The TLS example configurations run as their comments say, through the real binary: only
//! addresses are pointed at loopback and the backends' CA at the test's; the example
//! certificates (PEM, and a legacy-encrypted PFX with its root in a separate file) are used
//! as shipped, and clients verify them against `examples/certs/root.pem`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::tls::{connect, get, Ca, KeyType, TlsBackend};
use common::*;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The text of example `name`, with its certificate paths made absolute (the test writes it
/// elsewhere), the metrics address freed and `ca = "certs/root.pem"` of `backend_tls` pointed
/// at `backend_ca`.
fn example(name: &str, backend_ca: &std::path::Path) -> String {
    let text = std::fs::read_to_string(examples().join(name)).unwrap();
    let certs = format!("\"{}/certs/", examples().display());
    text.replace(
        "ca = \"certs/root.pem\"",
        &format!("ca = \"{}\"", backend_ca.display()),
    )
    .replace("\"certs/", &certs)
    .replace("127.0.0.1:9100", &free_addr().to_string())
}

/// Replaces each occurrence of `from`, in order, by the next of `to`.
fn replace_each(text: &str, from: &str, to: impl IntoIterator<Item = SocketAddr>) -> String {
    let mut out = text.to_string();
    for addr in to {
        assert!(out.contains(from), "fewer than expected {from:?}");
        out = out.replacen(from, &addr.to_string(), 1);
    }
    assert!(!out.contains(from), "more than expected {from:?}");
    out
}

fn example_root() -> PathBuf {
    examples().join("certs/root.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lync_pool_terminates_443_with_mcx_affinity_and_re_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let fe_cert = ca.issue("fe", &["lyncweb.example.com"], KeyType::Rsa, 365);
    let fe = [
        TlsBackend::start(&fe_cert).await,
        TlsBackend::start(&fe_cert).await,
    ];
    // Port 80 of the front ends: the plain health-check port (one for both: same IP here).
    let plain = HttpBackend::start().await;
    let plain2 = HttpBackend::start().await;
    let (https, http) = (free_addr(), free_addr());
    let text = example("lync-pool.toml", &ca.cert)
        .replace("0.0.0.0:443", &https.to_string())
        .replace("0.0.0.0:80", &http.to_string())
        .replace("port = 80,", &format!("port = {},", plain.addr.port()))
        .replace("interval = \"5s\"", "interval = \"200ms\"");
    let text = replace_each(&text, "10.0.20.11:443", [fe[0].addr]);
    let text = replace_each(&text, "10.0.20.12:443", [fe[1].addr]);
    let text = replace_each(&text, "10.0.20.11:80", [plain.addr]);
    let text = replace_each(&text, "10.0.20.12:80", [plain2.addr]);
    let p = Proxy::start(&text, https).await;

    // The PFX's certificate, verified against the separate root file.
    let mut homes = std::collections::HashSet::new();
    let mut cookies = Vec::new();
    for _ in 0..4 {
        let mut c = connect(https, "lyncweb.example.com", &example_root())
            .await
            .unwrap_or_else(|e| panic!("TLS to the example: {e}\n{}", p.log_text()));
        let a = get(&mut c, "lyncweb.example.com", "/Mcx/McxService.svc", "").await;
        assert_eq!(a.status, 200, "{}\n{}", a.head, p.log_text());
        let set = a.header("set-cookie").expect("MS-WSMAN set").to_string();
        assert!(set.starts_with("MS-WSMAN=") && !set.contains("HttpOnly"));
        homes.insert(a.body.clone());
        cookies.push((set.split(';').next().unwrap().to_string(), a.body));
    }
    assert_eq!(homes.len(), 2, "least connections spread: {homes:?}");
    for (cookie, home) in &cookies {
        let mut c = connect(https, "lyncweb.example.com", &example_root())
            .await
            .unwrap();
        for _ in 0..3 {
            let a = get(
                &mut c,
                "lyncweb.example.com",
                "/Autodiscover/AutodiscoverService.svc/root",
                &format!("Cookie: {cookie}\r\n"),
            )
            .await;
            assert_eq!(&a.body, home, "the cookie keeps its front end");
        }
    }
    for b in &fe {
        assert_eq!(
            b.failed_handshakes
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
    assert!(
        !p.log_text().contains("backend is DOWN"),
        "{}",
        p.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_2010_publishes_a_service_per_path_on_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let cas_cert = ca.issue("cas", &["mail.example.com"], KeyType::Ecdsa, 365);
    // Two CAS servers per HTTPS service (owa, ews, activesync, outlook-anywhere,
    // autodiscover), so that each service's backends are told apart.
    let mut cas = Vec::new();
    for _ in 0..10 {
        cas.push(TlsBackend::start(&cas_cert).await);
    }
    let (https, http) = (free_addr(), free_addr());
    let text = example("exchange-2010.toml", &ca.cert)
        .replace("0.0.0.0:443", &https.to_string())
        .replace("0.0.0.0:80", &http.to_string())
        .replace("interval = \"5s\"", "interval = \"200ms\"")
        // rpcproxy.dll answers 401 on a real CAS, 200 here.
        .replace("expect_status = 401", "expect_status = 200");
    let text = replace_each(
        &text,
        "10.0.40.11:443",
        cas.iter().step_by(2).map(|b| b.addr),
    );
    let text = replace_each(
        &text,
        "10.0.40.12:443",
        cas.iter().skip(1).step_by(2).map(|b| b.addr),
    );
    // SMTP: hub01 greets as an Exchange Hub Transport does, hub02 refuses (its banner check
    // must take it down); the proxy's port 25 goes to a free address.
    let hub01 = smtp_server(b"220 hub01.example.com Microsoft ESMTP MAIL Service ready\r\n").await;
    let hub02 = smtp_server(b"421 4.3.2 Service not available\r\n").await;
    let smtp = free_addr();
    let mut text = text
        .replace("0.0.0.0:25", &smtp.to_string())
        .replace("10.0.40.21:25", &hub01.to_string())
        .replace("10.0.40.22:25", &hub02.to_string());
    for port in ["135", "59531", "59532"] {
        text = text.replace(&format!("0.0.0.0:{port}"), &free_addr().to_string());
        for cas in ["10.0.40.11", "10.0.40.12"] {
            text = text.replace(&format!("{cas}:{port}"), &free_addr().to_string());
        }
    }
    let p = Proxy::start(&text, https).await;

    let service_of = |body: &str| -> usize {
        cas.iter()
            .position(|b| b.addr.to_string() == body)
            .unwrap_or_else(|| panic!("answer from no CAS: {body:?}"))
            / 2
    };
    let cases = [
        ("/owa/", 0),
        ("/ecp/", 0),
        ("/", 0),
        ("/EWS/Exchange.asmx", 1),
        ("/ews/exchange.asmx", 1),
        ("/Microsoft-Server-ActiveSync?Cmd=Ping", 2),
        ("/rpc/rpcproxy.dll?cas01:6001", 3),
        ("/RPC/rpcproxy.dll", 3),
        ("/Autodiscover/Autodiscover.xml", 4),
        ("/autodiscover/autodiscover.xml", 4),
    ];
    let mut c = connect(https, "mail.example.com", &example_root())
        .await
        .unwrap_or_else(|e| panic!("TLS to the example: {e}\n{}", p.log_text()));
    for (path, service) in cases {
        let a = get(&mut c, "mail.example.com", path, "").await;
        assert_eq!(a.status, 200, "{path}: {}\n{}", a.head, p.log_text());
        assert_eq!(service_of(&a.body), service, "{path} went elsewhere");
    }
    // Port 80 sends browsers to https.
    let r = get_once(http, "/owa/").await.unwrap();
    assert_eq!(r.status, 301);
    // Every CAS of every HTTPS service is checked (over TLS) and up. (The RPC services'
    // backends do not exist here.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    for svc in [
        "owa",
        "ews",
        "activesync",
        "outlook-anywhere",
        "autodiscover",
    ] {
        let down = format!("backend is DOWN service={svc} ");
        assert!(!p.log_text().contains(&down), "{}", p.log_text());
    }
    for b in &cas {
        assert_eq!(
            b.failed_handshakes
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(b.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
    }
    // Each service has its own health check page.
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(examples().join("exchange-2010.toml"))
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    let pages: std::collections::HashSet<&str> = summary
        .lines()
        .filter_map(|l| l.trim().strip_prefix("health https GET "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(pages.len(), 5, "{summary}");
    assert!(
        summary.contains(r#"health tcp expect_regex "^220 .*ESMTP""#),
        "{summary}"
    );
    // SMTP: the refusing server is taken down by its banner, and mail goes to hub01 only.
    p.wait_log(
        &["backend is DOWN", "service=smtp", "backend=hub02"],
        1,
        Duration::from_secs(5),
    )
    .await;
    for _ in 0..6 {
        let (banner, _) = tcp_banner(smtp, None).await.unwrap();
        assert!(banner.starts_with("220 hub01"), "{banner}");
    }
    assert!(
        !p.log_text().contains("backend=hub01"),
        "hub01 changed state: {}",
        p.log_text()
    );
}

/// A server that greets every connection with `banner` and holds it until the client closes.
async fn smtp_server(banner: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let mut buf = [0u8; 256];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}
