//! TLS on `mode = "tcp"` services, through the real binary: termination with a persistence
//! hook that reads the decrypted first bytes, TLS on both sides (re-encryption to TLS-only
//! backends), and clients that never complete a handshake.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::rdp::{connection_request, routing_token};
use common::tls::{cert_table, connect, read_response, Ca, KeyType, TlsBackend};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_service_terminates_tls_and_the_hook_reads_decrypted_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let cert = ca.issue("gw", &["gw.example.com"], KeyType::Ecdsa, 30);
    let backends = [
        TcpBackend::start().await,
        TcpBackend::start().await,
        TcpBackend::start().await,
    ];
    let listen = free_addr();
    let cfg = service_toml(
        "tcp",
        listen,
        &format!(
            "persistence = {{ key = \"plugin:rdp-cookie\", timeout = \"1h\" }}\ninspect_timeout = \"1s\"\n{}",
            cert_table(&cert)
        ),
        &backends.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
    );
    let proxy = Proxy::start(&cfg, listen).await;
    // A routing token inside the TLS stream picks its backend: the hook saw plaintext.
    for (i, target) in backends.iter().enumerate() {
        for _ in 0..3 {
            let tls = connect(listen, "gw.example.com", &ca.cert).await.unwrap();
            let mut r = BufReader::new(tls);
            let cr = connection_request(format!("{}\r\n", routing_token(target.addr)).as_bytes());
            r.get_mut().write_all(&cr).await.unwrap();
            let mut banner = String::new();
            tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut banner))
                .await
                .expect("banner in time")
                .unwrap();
            assert_eq!(
                banner.trim_end(),
                target.addr.to_string(),
                "token for backend {i}\n{}",
                proxy.log_text()
            );
            // The backend echoes the request unchanged, decrypted by the proxy.
            let mut echo = vec![0u8; cr.len()];
            r.read_exact(&mut echo).await.unwrap();
            assert_eq!(echo, cr);
            // Half-close through TLS (close_notify): the backend closes, so do we.
            r.get_mut().shutdown().await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest))
                .await
                .expect("closed after half-close")
                .ok();
        }
    }
    // Bulk both ways through the TLS stream, well beyond one record and one relay buffer.
    let tls = connect(listen, "gw.example.com", &ca.cert).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    writer.await.unwrap();
    let banner_end = got.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(got.len() - banner_end, data.len());
    assert!(got[banner_end..] == data[..], "bulk echo unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_service_re_encrypts_to_tls_backends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let front = ca.issue("front", &["ldap.example.com"], KeyType::Rsa, 30);
    let back = ca.issue("back", &["dc.example.com"], KeyType::Ecdsa, 30);
    let backends = [
        TlsBackend::start(&back).await,
        TlsBackend::start(&back).await,
    ];
    let listen = free_addr();
    let extra = format!(
        "backend_tls = {{ ca = \"{}\", sni = \"dc.example.com\" }}\n{}",
        ca.cert.display(),
        cert_table(&front)
    );
    let cfg = service_toml(
        "tcp",
        listen,
        &extra,
        &backends.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
    );
    let proxy = Proxy::start(&cfg, listen).await;
    for n in 0..6 {
        let mut tls = connect(listen, "ldap.example.com", &ca.cert).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let a = read_response(&mut tls).await;
        assert_eq!(a.status, 200, "request {n}\n{}", proxy.log_text());
    }
    let hits: usize = backends.iter().map(|b| b.hits.load(Ordering::SeqCst)).sum();
    assert_eq!(hits, 6);
    assert!(backends.iter().all(|b| b.hits.load(Ordering::SeqCst) > 0));
    let plaintext: usize = backends
        .iter()
        .map(|b| b.failed_handshakes.load(Ordering::SeqCst))
        .sum();
    assert_eq!(plaintext, 0, "nothing reached a backend without TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tls_clients_that_do_not_handshake_cost_nothing_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let cert = ca.issue("gw", &["gw.example.com"], KeyType::Ecdsa, 30);
    let backend = TcpBackend::start().await;
    let listen = free_addr();
    let cfg = service_toml(
        "tcp",
        listen,
        &format!("inspect_timeout = \"500ms\"\n{}", cert_table(&cert)),
        &[(backend.addr, 1)],
    );
    let _proxy = Proxy::start(&cfg, listen).await;
    let before = backend.conns();
    // Plaintext where a ClientHello belongs: refused (an alert at most), the backend never
    // sees it.
    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    c.write_all(b"hello backend\r\n").await.unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(3)).await);
    // A client that connects and says nothing is closed after inspect_timeout.
    let mut silent = tokio::net::TcpStream::connect(listen).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert_eq!(backend.conns(), before, "no backend connection for either");
    // A real client still gets through.
    let tls = connect(listen, "gw.example.com", &ca.cert).await.unwrap();
    let mut r = BufReader::new(tls);
    let mut banner = String::new();
    r.read_line(&mut banner).await.unwrap();
    assert_eq!(banner.trim_end(), backend.addr.to_string());
}

/// Whether the proxy closes `c` within `limit` (whatever it sends first: a TLS alert).
async fn closed_within(c: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(limit, c.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}
