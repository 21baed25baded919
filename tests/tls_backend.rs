//! TLS towards backends (`backend_tls`), through the real binary: Lync-style MCX affinity on a
//! TLS front end re-encrypted to TLS-only backends (which count any plaintext sent to them),
//! HTTPS health checks, verification against a CA and by SNI, and `verify = false`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::tls::{cert_table, connect, get, Ca, KeyType, TlsBackend};
use common::*;
fn config(listen: SocketAddr, extra: &str, backends: &[SocketAddr]) -> String {
    let mut s = format!(
        "[proxy]\nthreads = 2\n\n[[service]]\nname = \"lync\"\nlisten = \"{listen}\"\n{extra}\n"
    );
    for b in backends {
        s.push_str(&format!("[[service.backend]]\naddress = \"{b}\"\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcx_affinity_over_tls_reencrypted_to_tls_backends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let front = ca.issue("front", &["lync.example.com"], KeyType::Rsa, 365);
    // Backends are addressed by IP: their certificates name the IP (verified, no SNI sent).
    let fe = ca.issue("fe", &["127.0.0.1"], KeyType::Ecdsa, 365);
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(TlsBackend::start(&fe).await);
    }
    let listen = free_addr();
    let extra = format!(
        "persistence = {{ key = \"plugin:mcx-affinity\" }}\nbackend_tls = {{ ca = \"{}\" }}\nhealth_check = {{ kind = \"http\", path = \"/health\", interval = \"200ms\", timeout = \"1s\", rise = 1, fall = 1 }}\n{}",
        ca.cert.display(),
        cert_table(&front)
    );
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&config(listen, &extra, &addrs), listen).await;

    // Every response to a request without the cookie sets it, on one kept-alive connection.
    let mut c = connect(listen, "lync.example.com", &ca.cert).await.unwrap();
    let mut cookies = Vec::new();
    for _ in 0..6 {
        let a = get(&mut c, "lync.example.com", "/Mcx/McxService.svc", "").await;
        let (status, set, body) = (a.status, a.header("set-cookie").map(str::to_string), a.body);
        assert_eq!(status, 200);
        let set = set.expect("MS-WSMAN set on every response without it");
        assert!(set.starts_with("MS-WSMAN=") && !set.to_ascii_lowercase().contains("httponly"));
        cookies.push((set.split(';').next().unwrap().to_string(), body));
    }
    // With the cookie: the same backend every time, no new cookie.
    for (cookie, home) in &cookies {
        let mut c = connect(listen, "lync.example.com", &ca.cert).await.unwrap();
        for _ in 0..3 {
            let a = get(
                &mut c,
                "lync.example.com",
                "/Mcx/McxService.svc",
                &format!("Cookie: {cookie}\r\n"),
            )
            .await;
            let (status, set, body) =
                (a.status, a.header("set-cookie").map(str::to_string), a.body);
            assert_eq!((status, set, &body), (200, None, home));
        }
    }
    let homes: std::collections::HashSet<_> = cookies.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(
        homes.len(),
        3,
        "spread over the three front ends: {homes:?}"
    );
    // The HTTPS health check sees a backend fail and takes it out.
    bs[0].health.store(503, Ordering::SeqCst);
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    for _ in 0..6 {
        let body = get(&mut c, "lync.example.com", "/", "").await.body;
        assert_ne!(body, bs[0].addr.to_string());
    }
    // Nothing ever reached a backend in plaintext (health checks included).
    for b in &bs {
        assert_eq!(
            b.failed_handshakes.load(Ordering::SeqCst),
            0,
            "plaintext sent to {}",
            b.addr
        );
        assert!(b.hits.load(Ordering::SeqCst) > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_certificates_are_verified_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let stranger = Ca::new(&other_dir);
    // Trusted, named pool.example.com: verified through `sni`.
    let named =
        TlsBackend::start(&ca.issue("pool", &["pool.example.com"], KeyType::Ecdsa, 365)).await;
    // Issued by a CA the proxy does not trust.
    let untrusted =
        TlsBackend::start(&stranger.issue("x", &["127.0.0.1"], KeyType::Ecdsa, 365)).await;
    let (l1, l2, l3) = (free_addr(), free_addr(), free_addr());
    let cafile = ca.cert.display();
    let cfg = [
        config(
            l1,
            &format!("backend_tls = {{ ca = \"{cafile}\", sni = \"pool.example.com\" }}"),
            &[named.addr],
        ),
        config(
            l2,
            &format!("backend_tls = {{ ca = \"{cafile}\" }}"),
            &[untrusted.addr],
        )
        .replace("[proxy]\nthreads = 2\n", "")
        .replace("name = \"lync\"", "name = \"strict\""),
        config(l3, "backend_tls = { verify = false }", &[untrusted.addr])
            .replace("[proxy]\nthreads = 2\n", "")
            .replace("name = \"lync\"", "name = \"lax\""),
    ]
    .concat();
    let _p = Proxy::start(&cfg, l1).await;
    assert_eq!(
        get_once(l1, "/").await.unwrap().body,
        named.addr.to_string()
    );
    let r = get_once(l2, "/").await.unwrap();
    assert!(r.status >= 500, "an untrusted backend is refused: {r:?}");
    assert_eq!(untrusted.hits.load(Ordering::SeqCst), 0);
    assert_eq!(
        get_once(l3, "/").await.unwrap().status,
        200,
        "verify = false accepts it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_may_use_a_plain_port_of_a_tls_backend() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let fe = TlsBackend::start(&ca.issue("fe", &["127.0.0.1"], KeyType::Ecdsa, 365)).await;
    // The same host's plain HTTP port answers the check (Lync's /meet/blank.html on 80).
    let plain = HttpBackend::start().await;
    let listen = free_addr();
    let extra = format!(
        "backend_tls = {{ ca = \"{}\" }}\nhealth_check = {{ kind = \"http\", path = \"/health\", port = {}, tls = false, interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }}",
        ca.cert.display(),
        plain.addr.port()
    );
    let p = Proxy::start(&config(listen, &extra, &[fe.addr]), listen).await;
    // Checks keep passing over plain HTTP, so traffic keeps flowing over TLS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get_once(listen, "/").await.unwrap().body,
        fe.addr.to_string()
    );
    assert!(
        !p.log_text().contains("backend is DOWN"),
        "{}",
        p.log_text()
    );
    // The plain port failing takes the backend out.
    plain.set_health(503);
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    assert_eq!(fe.failed_handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_stream_both_ways_through_tls_on_both_sides() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let front = ca.issue("front", &["mail.example.com"], KeyType::Ecdsa, 365);
    let cas = TlsBackend::start(&ca.issue("cas", &["127.0.0.1"], KeyType::Ecdsa, 365)).await;
    let listen = free_addr();
    let extra = format!(
        "backend_tls = {{ ca = \"{}\" }}\n{}",
        ca.cert.display(),
        cert_table(&front)
    );
    let p = Proxy::start(&config(listen, &extra, &[cas.addr]), listen).await;
    let tls = connect(listen, "mail.example.com", &ca.cert).await.unwrap();
    let mut s = tokio::io::BufReader::new(tls);
    s.get_mut()
        .write_all(b"POST /duplex HTTP/1.1\r\nHost: mail.example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Each chunk comes back before the next is sent: neither direction waits for the other
    // to finish, and nothing buffers a whole body.
    let mut line = String::new();
    let read_line = async |s: &mut tokio::io::BufReader<_>, line: &mut String| {
        line.clear();
        tokio::time::timeout(Duration::from_secs(5), s.read_line(line))
            .await
            .unwrap_or_else(|_| panic!("nothing streamed back\n{}", p.log_text()))
            .unwrap();
    };
    read_line(&mut s, &mut line).await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        read_line(&mut s, &mut line).await;
        if line == "\r\n" {
            break;
        }
    }
    for i in 0..5 {
        let msg = format!("rpc-{i}");
        s.get_mut()
            .write_all(format!("{:x}\r\n{msg}\r\n", msg.len()).as_bytes())
            .await
            .unwrap();
        s.get_mut().flush().await.unwrap();
        read_line(&mut s, &mut line).await;
        assert_eq!(line.trim(), format!("{:x}", msg.len()));
        read_line(&mut s, &mut line).await;
        assert_eq!(line.trim(), msg);
    }
    s.get_mut().write_all(b"0\r\n\r\n").await.unwrap();
    read_line(&mut s, &mut line).await;
    assert_eq!(line.trim(), "0");
}
