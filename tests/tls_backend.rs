//! TLS towards backends (`backend_tls`), through the real binary: Lync-style MCX affinity on a
//! TLS front end re-encrypted to TLS-only backends (which count any plaintext sent to them),
//! HTTPS health checks, verification against a CA and by SNI, and `verify = false`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::tls::{connect, Ca, Issued, KeyType, TlsBackend};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cert_table(c: &Issued) -> String {
    format!(
        "[[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.cert.display(),
        c.key.display()
    )
}

fn config(listen: SocketAddr, extra: &str, backends: &[SocketAddr]) -> String {
    let mut s = format!(
        "[proxy]\nthreads = 2\n\n[[service]]\nname = \"lync\"\nlisten = \"{listen}\"\n{extra}\n"
    );
    for b in backends {
        s.push_str(&format!("[[service.backend]]\naddress = \"{b}\"\n"));
    }
    s
}

/// One request on a TLS client connection: status, Set-Cookie (if any), body.
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, String) {
    let c = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: lync.example.com\r\n{c}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let lower = head.to_ascii_lowercase();
            let len: usize = lower
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let set = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("set-cookie:")
                    .then(|| l[11..].trim().to_string())
            });
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (
                status,
                set,
                String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string(),
            );
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
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
        let (status, set, body) = get(&mut c, "/Mcx/McxService.svc", None).await;
        assert_eq!(status, 200);
        let set = set.expect("MS-WSMAN set on every response without it");
        assert!(set.starts_with("MS-WSMAN=") && !set.to_ascii_lowercase().contains("httponly"));
        cookies.push((set.split(';').next().unwrap().to_string(), body));
    }
    // With the cookie: the same backend every time, no new cookie.
    for (cookie, home) in &cookies {
        let mut c = connect(listen, "lync.example.com", &ca.cert).await.unwrap();
        for _ in 0..3 {
            let (status, set, body) = get(&mut c, "/Mcx/McxService.svc", Some(cookie)).await;
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
        let (_, _, body) = get(&mut c, "/", None).await;
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
