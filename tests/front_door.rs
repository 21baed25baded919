//! The front door's limits, through the real binary: header timeout, pipelining, connection
//! limits, and running out of descriptors.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

fn service(listen: SocketAddr, extra: &str, backends: &[(SocketAddr, u32)]) -> String {
    service_toml("http", listen, extra, backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_too_slowly_gets_408_within_header_timeout() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service(
        listen,
        "header_timeout = \"1s\"\nidle_timeout = \"60s\"",
        &[(a.addr, 1)],
    );
    let _p = Proxy::start(&cfg, listen).await;

    // Slowloris: a header line every 300 ms, never finished.
    let start = Instant::now();
    let mut slow = tcp_connect(listen, None).await.unwrap();
    let mut out = Vec::new();
    let dribble = async {
        use tokio::io::AsyncWriteExt;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            slow.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await?;
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), dribble).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "closed after {:?}, long before idle_timeout",
        start.elapsed()
    );

    // A header that arrives in pieces within the limit is served.
    let mut c = Client::connect(listen).await.unwrap();
    c.write_raw(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_raw(b"Host: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_raw(b"\r\n").await.unwrap();
    let r = c.read_response().await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, a.addr.to_string().as_str())
    );
    // The timeout is per request: the next request on the kept-alive connection has its own.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service(listen, "", &[(a.addr, 1)]);
    let _p = Proxy::start(&cfg, listen).await;

    let mut c = Client::connect(listen).await.unwrap();
    c.write_raw(
        b"GET /big/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /big/5 HTTP/1.1\r\nHost: x\r\n\r\nGET /big/7 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    for n in [3, 5, 7] {
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_response())
            .await
            .expect("a response to every pipelined request")
            .unwrap();
        assert_eq!(r.body, "x".repeat(n));
    }
    // A request with a body, then one without, in one write.
    c.write_raw(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /big/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await.unwrap();
    assert_eq!(r.body, "hello");
    let r = tokio::time::timeout(Duration::from_secs(5), c.read_response())
        .await
        .expect("the request after the body")
        .unwrap();
    assert_eq!(r.body, "xx");
    // The connection still works one request at a time, also after being parked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get("/big/1", &[]).await.unwrap().body, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_above_max_connections_makes_new_clients_wait() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service(listen, "max_connections = 2", &[(a.addr, 1)]);
    let _p = Proxy::start(&cfg, listen).await;
    let mut first = Client::connect(listen).await.unwrap();
    let mut second = Client::connect(listen).await.unwrap();
    assert_eq!(first.get("/", &[]).await.unwrap().status, 200);
    assert_eq!(second.get("/", &[]).await.unwrap().status, 200);
    // The third connects (the kernel's backlog) but is not served while two are open.
    let mut third = Client::connect(listen).await.unwrap();
    third
        .write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(800), third.read_response())
            .await
            .is_err(),
        "served above max_connections"
    );
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(5), third.read_response())
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(second.get("/", &[]).await.unwrap().status, 200);
}

/// Opens `n` connections to `to` and keeps them, silent.
async fn hold(to: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(tcp_connect(to, None).await.unwrap());
    }
    v
}

/// With 128 descriptors: hold 300 connections, watch the proxy's CPU for 2 s (a spinning
/// accept loop would burn it all), then let go and check it serves again.
async fn survives_descriptor_exhaustion(extra_proxy: &str) -> Proxy {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let cfg = service(listen, "", &[(a.addr, 1)])
        .replace("[proxy]\n", &format!("[proxy]\n{extra_proxy}"));
    let p = Proxy::start_with_nofile(&cfg, listen, 128).await;
    let held = hold(listen, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = p.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = p.cpu_ticks() - before;
    assert!(
        used < 60,
        "the proxy used {used}/200 ticks of CPU while out of room: spinning?\n{}",
        p.log_text()
    );
    drop(held);
    let served = eventually(
        Duration::from_secs(15),
        async || matches!(get_once(listen, "/").await, Ok(r) if r.status == 200),
    )
    .await;
    assert!(
        served,
        "not serving again after the connections closed\n{}",
        p.log_text()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_connections_than_descriptors_wait_in_the_backlog() {
    let p = survives_descriptor_exhaustion("").await;
    let log = p.log_text();
    assert!(
        log.contains("connection limit derived from the descriptor limit"),
        "{log}"
    );
    assert!(
        !log.contains("accept failed"),
        "the derived limit should keep accept from failing\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    // A configured limit far above the descriptors: accept itself fails with EMFILE.
    let p = survives_descriptor_exhaustion("max_connections = 100000\n").await;
    let log = p.log_text();
    let failures = log.matches("accept failed").count();
    assert!(failures >= 1, "EMFILE was never hit\n{log}");
    assert!(
        failures <= 10,
        "accept failures are logged once a second, not {failures} times"
    );
    assert!(
        log.contains("descriptors allow about"),
        "the configured limit is warned about\n{log}"
    );
}
