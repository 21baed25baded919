//! tcp mode, through the real binary against real backends on loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn service(listen: SocketAddr, extra: &str, backends: &[(SocketAddr, u32)]) -> String {
    service_toml("tcp", listen, extra, backends)
}

async fn three(weights: [u32; 3]) -> (Vec<TcpBackend>, Vec<(SocketAddr, u32)>) {
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(TcpBackend::start().await);
    }
    let list = bs.iter().zip(weights).map(|(b, w)| (b.addr, w)).collect();
    (bs, list)
}

async fn banners(to: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tcp_banner(to, None).await.unwrap().0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights() {
    let (bs, list) = three([1, 1, 2]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "scheduler = \"round_robin\"", &list),
        listen,
    )
    .await;
    let t = tally(banners(listen, 400).await.iter().map(|s| s.as_str()));
    for (b, expected) in bs.iter().zip([100.0, 100.0, 200.0]) {
        assert_near(
            *t.get(&b.addr.to_string()).unwrap_or(&0),
            expected,
            0.10,
            "tcp round robin",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_honours_weights_when_idle() {
    let (bs, list) = three([1, 1, 2]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "scheduler = \"least_connections\"", &list),
        listen,
    )
    .await;
    let mut names = Vec::new();
    for _ in 0..400 {
        let (name, r) = tcp_banner(listen, None).await.unwrap();
        drop(r);
        // Wait for the proxy to see the close, so that every connection finds all idle.
        let b = bs.iter().find(|b| b.addr.to_string() == name).unwrap();
        eventually(Duration::from_secs(2), async || b.open() == 0).await;
        // The proxy drops its count right after the backend closes.
        tokio::time::sleep(Duration::from_millis(10)).await;
        names.push(name);
    }
    let t = tally(names.iter().map(|s| s.as_str()));
    for (b, expected) in bs.iter().zip([100.0, 100.0, 200.0]) {
        assert_near(
            *t.get(&b.addr.to_string()).unwrap_or(&0),
            expected,
            0.10,
            "tcp least_connections",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_and_random_two() {
    let (_bs, list) = three([1, 1, 1]).await;
    let l1 = free_addr();
    let l2 = free_addr();
    let cfg = format!(
        "{}\n[[service]]\nname = \"r2\"\nlisten = \"{l2}\"\nmode = \"tcp\"\nscheduler = \"random_two\"\n{}",
        service(l1, "scheduler = \"source_hash\"", &list),
        backends_toml(&list)
    );
    let _p = Proxy::start(&cfg, l1).await;
    let mut homes = std::collections::HashSet::new();
    for i in 2..20u8 {
        let ip: IpAddr = [127, 0, 1, i].into();
        let first = tcp_banner(l1, Some(ip)).await.unwrap().0;
        for _ in 0..2 {
            assert_eq!(
                tcp_banner(l1, Some(ip)).await.unwrap().0,
                first,
                "{ip} moved"
            );
        }
        homes.insert(first);
    }
    assert_eq!(homes.len(), 3);
    let t = tally(banners(l2, 150).await.iter().map(|s| s.as_str()));
    assert_eq!(t.len(), 3, "random_two uses every backend: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_with_long_held_connections() {
    let (bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "scheduler = \"least_connections\"", &list),
        listen,
    )
    .await;
    // Six held connections: two per backend.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(tcp_banner(listen, None).await.unwrap());
    }
    let t = tally(held.iter().map(|(b, _)| b.as_str()));
    assert!(
        bs.iter().all(|b| t.get(&b.addr.to_string()) == Some(&2)),
        "{t:?}"
    );
    // Close both connections of one backend: the next two connections go there.
    let target = bs[1].addr.to_string();
    held.retain(|(b, _)| *b != target);
    assert!(eventually(Duration::from_secs(3), async || bs[1].open() == 0).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..2 {
        held.push(tcp_banner(listen, None).await.unwrap());
        assert_eq!(held.last().unwrap().0, target);
    }
    // With all at two again, a new one goes anywhere but all stay balanced.
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_persistence_and_timeout() {
    let (_bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let extra = "persistence = { key = \"source_ip\", timeout = \"1s\" }";
    let _p = Proxy::start(&service(listen, extra, &list), listen).await;
    let ip: IpAddr = [127, 0, 0, 5].into();
    let pinned = tcp_banner(listen, Some(ip)).await.unwrap().0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(tcp_banner(listen, Some(ip)).await.unwrap().0, pinned);
    }
    let mut all = std::collections::HashSet::new();
    for i in 10..16u8 {
        all.insert(
            tcp_banner(listen, Some([127, 0, 0, i].into()))
                .await
                .unwrap()
                .0,
        );
    }
    assert_eq!(all.len(), 3, "clients spread over the pool");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // 1 + 6 round-robin picks so far: the next fresh pick is a different backend.
    assert_ne!(tcp_banner(listen, Some(ip)).await.unwrap().0, pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_one_mebibyte_both_ways_intact() {
    let b = TcpBackend::start().await;
    let listen = free_addr();
    let _p = Proxy::start(&service(listen, "", &[(b.addr, 1)]), listen).await;
    let (banner, stream) = tcp_banner(listen, None).await.unwrap();
    assert_eq!(banner, b.addr.to_string());
    let mut s = stream.into_inner();
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        // Half-close: the backend sees EOF, finishes echoing and closes its side.
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async { r.read_to_end(&mut back).await.unwrap() };
    tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, recv) })
        .await
        .expect("transfer stalled");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_reaches_client_and_client_can_still_send() {
    // A backend that says "bye", closes its sending side at once, then reads to the end.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Every connection, the proxy's start-up probe included.
        while let Ok((mut s, _)) = backend.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
            });
        }
    });
    let listen = free_addr();
    let _p = Proxy::start(&service(listen, "", &[(addr, 1)]), listen).await;
    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut first))
        .await
        .expect("the backend's FIN did not reach the client")
        .unwrap();
    assert_eq!(first, b"bye");
    // The other direction is still open: bytes sent after the FIN arrive, then ours closes it.
    let late = vec![b'x'; 100_000];
    c.write_all(&late).await.unwrap();
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(got) if got.is_empty() => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the client's FIN did not reach the backend");
    assert_eq!(got.map(|g| g.len()), Some(late.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_listen_address_is_refused_at_start() {
    let (listen, err) = refused_on_busy_address(|l| service(l, "", &[(free_addr(), 1)]));
    assert!(
        err.contains(&format!("cannot listen on {listen}")) && err.contains("service tcp-svc"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_backend_gets_nothing() {
    let a = TcpBackend::start().await;
    let b = TcpBackend::start().await;
    let listen = free_addr();
    let cfg = format!(
        "[[service]]\nname = \"l4\"\nmode = \"tcp\"\nlisten = \"{listen}\"\n[[service.backend]]\naddress = \"{}\"\n[[service.backend]]\naddress = \"{}\"\nenabled = false\n",
        a.addr, b.addr
    );
    let _p = Proxy::start(&cfg, listen).await;
    banners(listen, 30).await;
    // The harness's readiness probe may add one connection to the enabled backend.
    assert!(a.conns() >= 30);
    assert_eq!(b.conns(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_takes_down_and_brings_back() {
    let (mut bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let extra = "health_check = { kind = \"tcp\", interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2 }";
    let p = Proxy::start(&service(listen, extra, &list), listen).await;
    let addr = bs[0].addr;
    bs[0].kill();
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    // Every connection succeeds and none is even attempted on the dead backend.
    for b in banners(listen, 30).await {
        assert_ne!(b, addr.to_string());
    }
    assert!(p.log_text().contains("backend is DOWN"));
    bs[0] = TcpBackend::start_on(addr).await;
    p.wait_log(&["backend is UP"], 1, Duration::from_secs(5))
        .await;
    let t = tally(banners(listen, 30).await.iter().map(|s| s.as_str()));
    assert_near(
        *t.get(&addr.to_string()).unwrap_or(&0),
        10.0,
        0.2,
        "restored backend",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_retried_elsewhere() {
    let (mut bs, list) = three([1, 1, 1]).await;
    let listen = free_addr();
    let _p = Proxy::start(&service(listen, "", &list), listen).await;
    let dead = bs[2].addr.to_string();
    bs[2].kill();
    for b in banners(listen, 60).await {
        assert_ne!(b, dead);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_closes_promptly() {
    let listen = free_addr();
    let extra = "health_check = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let p = Proxy::start(&service(listen, extra, &[(free_addr(), 1)]), listen).await;
    p.wait_log(&["backend is DOWN"], 1, Duration::from_secs(5))
        .await;
    let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed, not hung");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(p.log_text().contains("no backend available"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let b = TcpBackend::start().await;
    let listen = free_addr();
    let _p = Proxy::start(
        &service(listen, "idle_timeout = \"500ms\"", &[(b.addr, 1)]),
        listen,
    )
    .await;
    let (_, mut r) = tcp_banner(listen, None).await.unwrap();
    // Activity keeps it open...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        r.get_mut().write_all(b"ping\n").await.unwrap();
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line)
            .await
            .unwrap();
        assert_eq!(line, "ping\n");
    }
    // ...silence closes it.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), r.read(&mut buf))
        .await
        .expect("closed by idle timeout");
    assert!(matches!(n, Ok(0) | Err(_)));
}
