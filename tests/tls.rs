//! TLS termination through the real binary, with real clients (curl, openssl s_client, a
//! rustls client) and certificates made by openssl: certificates by SNI, TLS versions, HTTP/2,
//! several services on one address by host and path, redirect to https, X-Forwarded-Proto,
//! keep-alive across parking, pipelining and the header timeout over TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::tls::{cert_table, connect, curl, get as tls_get, presented_cn, Ca, KeyType};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
fn resolve(name: &str, addr: SocketAddr) -> String {
    format!("{name}:{}:{}", addr.port(), addr.ip())
}

fn url(name: &str, addr: SocketAddr, path: &str) -> String {
    format!("https://{name}:{}{path}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_with_the_first_as_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let mail = ca.issue("mail", &["mail.example.com"], KeyType::Rsa, 365);
    let org = ca.issue("org", &["*.example.org"], KeyType::Ecdsa, 365);
    let lync = ca.issue("lync", &["lync.example.com"], KeyType::Rsa, 365);
    let auto = ca.issue("auto", &["autodiscover.example.com"], KeyType::Ecdsa, 365);
    let legacy = ca.pfx(&lync, "lync", "pw", true, true);
    let aes = ca.pfx(&auto, "auto", "pw", false, true);
    std::fs::write(dir.path().join("pw"), "pw").unwrap();
    let b = HttpBackend::start().await;
    let listen = free_addr();
    let extra = format!(
        "{}{}[[service.certificate]]\npfx = \"{}\"\npassword_file = \"{}\"\n[[service.certificate]]\npfx = \"{}\"\npassword_file = \"{}\"\n",
        cert_table(&mail),
        cert_table(&org),
        legacy.display(),
        dir.path().join("pw").display(),
        aes.display(),
        dir.path().join("pw").display()
    );
    let _p = Proxy::start(
        &service_toml("http", listen, &extra, &[(b.addr, 1)]),
        listen,
    )
    .await;
    for (sni, cn) in [
        (Some("mail.example.com"), "mail.example.com"),
        (Some("a.example.org"), "*.example.org"),
        (Some("lync.example.com"), "lync.example.com"),
        (Some("autodiscover.example.com"), "autodiscover.example.com"),
        (Some("unknown.test"), "mail.example.com"),
        (None, "mail.example.com"),
    ] {
        let (got, verified) = presented_cn(listen, sni, &ca.cert);
        assert_eq!(got, cn, "certificate for SNI {sni:?}");
        if sni.is_some_and(|s| s != "unknown.test") {
            assert!(verified, "the chain for {sni:?} verifies");
        }
    }
    // And a request through each name works, verified by curl.
    for name in [
        "mail.example.com",
        "x.example.org",
        "lync.example.com",
        "autodiscover.example.com",
    ] {
        let cafile = ca.cert.display().to_string();
        let r = curl(&[
            "--cacert",
            &cafile,
            "--resolve",
            &resolve(name, listen),
            &url(name, listen, "/"),
        ]);
        assert_eq!(
            r.map(|(s, _, body)| (s, body)),
            Ok((200, b.addr.to_string())),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let c = ca.issue("mail", &["mail.example.com"], KeyType::Ecdsa, 365);
    let b = HttpBackend::start().await;
    let (any, only13) = (free_addr(), free_addr());
    let cfg = format!(
        "{}\n[[service]]\nname = \"only13\"\nlisten = \"{only13}\"\ntls = {{ min_version = \"1.3\" }}\n{}[[service.backend]]\naddress = \"{}\"\n",
        service_toml("http", any, &cert_table(&c), &[(b.addr, 1)]),
        cert_table(&c),
        b.addr
    );
    let _p = Proxy::start(&cfg, any).await;
    let cafile = ca.cert.display().to_string();
    let get = |addr: SocketAddr, extra: &[&str]| {
        let res = resolve("mail.example.com", addr);
        let u = url("mail.example.com", addr, "/");
        let mut args = vec!["--cacert", cafile.as_str(), "--resolve", res.as_str()];
        args.extend_from_slice(extra);
        args.push(u.as_str());
        curl(&args)
    };
    assert_eq!(
        get(any, &["--tlsv1.2", "--tls-max", "1.2", "--http1.1"])
            .unwrap()
            .1,
        "1.1"
    );
    assert_eq!(get(any, &["--tlsv1.3", "--http1.1"]).unwrap().1, "1.1");
    let (status, version, body) = get(any, &["--http2"]).unwrap();
    assert_eq!(
        (status, version.as_str(), body),
        (200, "2", b.addr.to_string()),
        "h2 over ALPN"
    );
    assert!(
        get(only13, &["--tlsv1.2", "--tls-max", "1.2"]).is_err(),
        "TLS 1.2 refused by min_version 1.3"
    );
    assert_eq!(get(only13, &["--tlsv1.3"]).unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_an_address_by_host_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let mail = ca.issue("mail", &["mail.example.com"], KeyType::Ecdsa, 365);
    let ews = ca.issue("ews", &["ews.example.com"], KeyType::Rsa, 365);
    let (a, b, c) = (
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    );
    let listen = free_addr();
    let svc = |name: &str, extra: &str, backend: SocketAddr| {
        format!("\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{extra}\n[[service.backend]]\naddress = \"{backend}\"\n")
    };
    let cfg = [
        "[proxy]\nthreads = 2\n".to_string(),
        svc("default", &cert_table(&mail), a.addr),
        svc(
            "owa",
            &format!(
                "match = {{ path_prefixes = [\"/owa\", \"/ecp\"] }}\n{}",
                cert_table(&mail)
            ),
            b.addr,
        ),
        svc(
            "ews",
            &format!(
                "match = {{ hosts = [\"ews.example.com\"] }}\n{}",
                cert_table(&ews)
            ),
            c.addr,
        ),
    ]
    .concat();
    let _p = Proxy::start(&cfg, listen).await;
    let cafile = ca.cert.display().to_string();
    let get = |name: &str, path: &str, host: Option<&str>| {
        let res = resolve(name, listen);
        let u = url(name, listen, path);
        let h = host.map(|h| format!("Host: {h}"));
        let mut args = vec!["--cacert", &cafile, "--resolve", &res];
        if let Some(h) = &h {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&u);
        curl(&args).map(|(s, _, body)| (s, body))
    };
    assert_eq!(
        get("mail.example.com", "/", None),
        Ok((200, a.addr.to_string()))
    );
    assert_eq!(
        get("mail.example.com", "/owa/inbox", None),
        Ok((200, b.addr.to_string()))
    );
    assert_eq!(
        get("mail.example.com", "/ecp", None),
        Ok((200, b.addr.to_string()))
    );
    assert_eq!(
        get("ews.example.com", "/EWS/Exchange.asmx", None),
        Ok((200, c.addr.to_string()))
    );
    // A connection made for mail.example.com asking for ews.example.com goes by Host.
    assert_eq!(
        get("mail.example.com", "/", Some("ews.example.com")),
        Ok((200, c.addr.to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_sends_clients_to_https() {
    let listen = free_addr();
    let cfg = format!("[proxy]\nthreads = 1\n[[service]]\nname = \"web80\"\nlisten = \"{listen}\"\nredirect = \"https\"\n");
    let _p = Proxy::start(&cfg, listen).await;
    let mut c = Client::connect(listen).await.unwrap();
    for (target, host, location) in [
        (
            "/owa/?a=1&b=2",
            "mail.example.com",
            "https://mail.example.com/owa/?a=1&b=2",
        ),
        ("/", "mail.example.com:80", "https://mail.example.com/"),
    ] {
        c.write_raw(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = c.read_response().await.unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.header("location"), Some(location));
    }
}
async fn tls_proxy(dir: &Path, extra: &str) -> (Ca, HttpBackend, SocketAddr, Proxy) {
    let ca = Ca::new(dir);
    let c = ca.issue("mail", &["mail.example.com"], KeyType::Ecdsa, 365);
    let b = HttpBackend::start().await;
    let listen = free_addr();
    let p = Proxy::start(
        &service_toml(
            "http",
            listen,
            &format!("{extra}\n{}", cert_table(&c)),
            &[(b.addr, 1)],
        ),
        listen,
    )
    .await;
    (ca, b, listen, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_are_kept_alive_across_parking_and_may_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, b, listen, _p) = tls_proxy(dir.path(), "").await;
    let mut s = connect(listen, "mail.example.com", &ca.cert).await.unwrap();
    let a = tls_get(&mut s, "mail.example.com", "/headers", "").await;
    let headers = a.body;
    assert_eq!(a.status, 200);
    assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
    assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
    // Silent for longer than the parking delay: the TLS session waits in the lot with the
    // socket and the next request on the same connection is served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = tls_get(&mut s, "mail.example.com", "/", "").await;
    assert_eq!((a.status, a.body), (200, b.addr.to_string()));
    // Two requests in one TLS write get two responses, in order.
    s.write_all(b"GET /big/3 HTTP/1.1\r\nHost: a\r\n\r\nGET /big/4 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut both = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while both.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("both pipelined responses")
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        both = text.match_indices("HTTP/1.1 200").map(|(i, _)| i).collect();
        if both.len() == 2 && !(text.ends_with("xxx") || text.ends_with("xxxx")) {
            both.clear();
        }
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.find("\r\n\r\nxxx").unwrap() < text.find("\r\n\r\nxxxx").unwrap(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tls_clients_are_cut_off_at_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _b, listen, _p) = tls_proxy(
        dir.path(),
        "header_timeout = \"1s\"\nidle_timeout = \"60s\"",
    )
    .await;
    // A header that never ends: 408, encrypted.
    let mut s = connect(listen, "mail.example.com", &ca.cert).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "),
        "{out:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(6));
    // A client that connects and never starts the handshake is closed too.
    let mut raw = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(6), raw.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "handshake never started: closed by header_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_replaced_under_load_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let old = ca.issue("old", &["mail.example.com"], KeyType::Ecdsa, 365);
    let new = ca.issue(
        "new",
        &["mail2.example.com", "mail.example.com"],
        KeyType::Rsa,
        365,
    );
    // The served files, replaced in place while clients keep connecting.
    let (cert, key) = (dir.path().join("served.pem"), dir.path().join("served.key"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let b = HttpBackend::start().await;
    let listen = free_addr();
    let extra = format!(
        "[[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let p = Proxy::start(
        &service_toml("http", listen, &extra, &[(b.addr, 1)]),
        listen,
    )
    .await;
    assert_eq!(
        presented_cn(listen, Some("mail.example.com"), &ca.cert).0,
        "mail.example.com"
    );

    // A full handshake and a request per connection, bounded in time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cafile = ca.cert.clone();
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, cafile) = (stop.clone(), cafile.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                match connect(listen, "mail.example.com", &cafile).await {
                    Ok(mut s) => {
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            tls_get(&mut s, "mail.example.com", "/", ""),
                        )
                        .await
                        {
                            Ok(a) if a.status == 200 => ok += 1,
                            Ok(a) => failed.push(a.head),
                            Err(_) => failed.push("no answer in 5 s".into()),
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The certificate first, then the key: in between they do not match, which must not
    // install anything.
    std::fs::copy(&new.cert, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::copy(&new.key, &key).unwrap();
    let switched = eventually(Duration::from_secs(5), async || {
        presented_cn(listen, Some("mail.example.com"), &ca.cert).0 == "mail2.example.com"
    })
    .await;
    assert!(
        switched,
        "the new certificate was not served\n{}",
        p.log_text()
    );
    // A broken replacement keeps the current certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    p.wait_log(&["certificate not reloaded"], 1, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for l in load {
        let (ok, failed) = l.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during the replacement: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 20, "load kept flowing ({total} requests)");
    let (cn, verified) = presented_cn(listen, Some("mail.example.com"), &ca.cert);
    assert_eq!((cn.as_str(), verified), ("mail2.example.com", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_cross_tls_both_ways_and_broken_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _b, listen, p) = tls_proxy(dir.path(), "").await;
    let mut s = connect(listen, "mail.example.com", &ca.cert).await.unwrap();
    // 3 MB down: many full records, several encryptions per flush.
    let a = tls_get(&mut s, "mail.example.com", "/big/3000000", "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 3_000_000);
    assert!(a.body.bytes().all(|b| b == b'x'));
    // 1 MB up in 16 KiB records, echoed back on the same connection.
    let body: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: mail.example.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let a = common::tls::read_response(&mut s).await;
    assert_eq!(a.status, 200);
    assert!(a.body == body, "echo unchanged");
    // A record where a handshake belongs: the proxy sends an alert and closes, quietly (a
    // client can do this at will); others go on.
    let mut raw = tokio::net::TcpStream::connect(listen).await.unwrap();
    // Application data before any handshake.
    let hello = [0x17, 0x03, 0x03, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];
    raw.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "closed after a broken record");
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert: {answer:?}");
    let mut s2 = connect(listen, "mail.example.com", &ca.cert).await.unwrap();
    assert_eq!(
        tls_get(&mut s2, "mail.example.com", "/", "").await.status,
        200
    );
    assert!(!p.log_text().contains("panicked"));
    assert!(!p.log_text().contains("WARN rustls"), "{}", p.log_text());
}
