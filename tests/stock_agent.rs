//! The agent-load stock plugin through the real binary, against real agents on loopback
//! speaking the KEMP (HTTP) and HAProxy (TCP line) agent protocols.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One backend host: a TCP backend and an agent on the same loopback IP.
struct Host {
    backend: TcpBackend,
    answer: Arc<Mutex<String>>,
    agent: Option<JoinSet<()>>,
}

/// Starts `n` hosts on 127.0.1.x; the agents listen on `agent_port` and answer `answer`:
/// KEMP style over HTTP (`kemp`) or HAProxy style (`haproxy`: the line, then close).
async fn hosts(n: usize, agent_port: u16, kemp: bool) -> Vec<Host> {
    let mut out = Vec::new();
    let base = 10 + (agent_port % 200) as u8;
    for i in 0..n {
        let ip: IpAddr = [127, 0, base, i as u8 + 1].into();
        let backend = TcpBackend::start_on(SocketAddr::new(ip, free_addr().port())).await;
        let answer = Arc::new(Mutex::new(String::from(if kemp { "0" } else { "up" })));
        let listener = TcpListener::bind(SocketAddr::new(ip, agent_port))
            .await
            .unwrap();
        let a = answer.clone();
        let mut agent = JoinSet::new();
        agent.spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let line = a.lock().unwrap().clone();
                tokio::spawn(async move {
                    if kemp {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}\n",
                            line.len() + 1
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                    } else {
                        let _ = s.write_all(format!("{line}\n").as_bytes()).await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        out.push(Host {
            backend,
            answer,
            agent: Some(agent),
        });
    }
    out
}

fn set_answers(hosts: &[Host], answers: &[&str]) {
    for (h, a) in hosts.iter().zip(answers) {
        *h.answer.lock().unwrap() = a.to_string();
    }
}

async fn agent_proxy(hosts: &[Host], settings: &str) -> (SocketAddr, Proxy) {
    let listen = free_addr();
    let cfg = service_toml(
        "tcp",
        listen,
        &format!("scheduler = \"plugin:agent-load\"\n[service.plugin.agent-load]\ninterval = \"100ms\"\n{settings}"),
        &hosts.iter().map(|h| (h.backend.addr, 1)).collect::<Vec<_>>(),
    );
    let p = Proxy::start(&cfg, listen).await;
    (listen, p)
}

/// Opens `n` connections one after another; counts them per host.
async fn spread(listen: SocketAddr, hosts: &[Host], n: usize) -> Vec<usize> {
    let mut counts = vec![0; hosts.len()];
    for _ in 0..n {
        let (name, _) = tcp_banner(listen, None).await.unwrap();
        counts[hosts
            .iter()
            .position(|h| h.backend.addr.to_string() == name)
            .unwrap()] += 1;
    }
    counts
}

/// Waits for the agents' answers to be polled (interval 100 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_load_kemp() {
    let port = free_addr().port();
    let hs = hosts(3, port, true).await;
    let (listen, p) = agent_proxy(
        &hs,
        &format!("protocol = \"kemp\"\nport = {port}\npath = \"/load\""),
    )
    .await;
    set_answers(&hs, &["10", "50", "90"]);
    settle().await;
    let c = spread(listen, &hs, 300).await;
    // Inverse proportion: 90:50:10 of 150.
    assert_near(c[0], 180.0, 0.15, "load 10");
    assert_near(c[1], 100.0, 0.2, "load 50");
    assert_near(c[2], 20.0, 0.5, "load 90");
    // 101 takes a backend out.
    set_answers(&hs, &["10", "101", "10"]);
    settle().await;
    assert_eq!(spread(listen, &hs, 40).await[1], 0, "101 = down");
    // 102 drains: nothing new, what is open keeps working.
    set_answers(&hs, &["10", "10", "10"]);
    settle().await;
    let mut held = None;
    for _ in 0..6 {
        let (name, r) = tcp_banner(listen, None).await.unwrap();
        if name == hs[2].backend.addr.to_string() {
            held = Some(r);
            break;
        }
    }
    let mut held = held.expect("a connection to the third backend");
    set_answers(&hs, &["10", "10", "102"]);
    settle().await;
    assert_eq!(spread(listen, &hs, 40).await[2], 0, "102 = drain");
    held.get_mut().write_all(b"still here\n").await.unwrap();
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut held, &mut line)
        .await
        .unwrap();
    assert_eq!(
        line, "still here\n",
        "a drained backend keeps its connections"
    );
    // A dead agent does not take a healthy backend down.
    set_answers(&hs, &["10", "10", "10"]);
    settle().await;
    let mut hs = hs;
    hs[0].agent.take();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        spread(listen, &hs, 30).await[0] > 0,
        "dead agent, healthy backend"
    );
    assert!(
        p.log_text().contains("unreachable or garbled"),
        "{}",
        p.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_load_haproxy_words() {
    let port = free_addr().port();
    let hs = hosts(2, port, false).await;
    // stale_after: garbage must not reset the last report within this test.
    let (listen, _p) = agent_proxy(
        &hs,
        &format!("protocol = \"haproxy\"\nport = {port}\nstale_after = 50"),
    )
    .await;
    let share = |c: Vec<usize>| c[1] as f64 / (c[0] + c[1]) as f64;
    let check = |answers: [&'static str; 2], want: f64| {
        let hs = &hs;
        async move {
            set_answers(hs, &answers);
            settle().await;
            let s = share(spread(listen, hs, 100).await);
            assert!(
                (s - want).abs() <= 0.08,
                "{answers:?}: second backend share {s}, want {want}"
            );
        }
    };
    check(["up", "up"], 0.5).await;
    check(["100%", "25%"], 0.2).await; // percentages
    check(["weight:4", "weight:1"], 0.2).await; // absolute weights (configured weight 1)
    check(["weight:100%", "weight:300%"], 0.75).await; // weight:N%
    check(["ready", "drain"], 0.0).await; // drain
    check(["ready", "ready"], 0.75).await; // ready restores; the weights stay as last reported
    check(["100%", "100%"], 0.5).await;
    check(["up", "maint"], 0.0).await; // maint
    check(["ready,up", "ready 0%"], 0.0).await; // 0 % drains
    check(["100%", "100%"], 0.5).await;
    check(["up", "down#disk full"], 0.0).await; // down with a description
    check(["up", "up"], 0.5).await; // up restores
    check(["up", "fail"], 0.0).await;
    check(["up", "UP"], 0.5).await; // case-insensitive
    check(["up", "stopped #maintenance window"], 0.0).await;
    check(["up", "up"], 0.5).await;
    // maxconn: with one connection held on the second backend and maxconn:1, new ones avoid it.
    set_answers(&hs, &["up", "maxconn:1"]);
    settle().await;
    let mut held = Vec::new();
    while held.len() < 8 {
        let (name, r) = tcp_banner(listen, None).await.unwrap();
        held.push((name, r));
        if held
            .iter()
            .filter(|(n, _)| *n == hs[1].backend.addr.to_string())
            .count()
            == 1
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = spread(listen, &hs, 30).await;
    assert_eq!(c[1], 0, "maxconn:1 reached");
    // Garbage keeps the last report; a word not reported leaves its property unchanged.
    set_answers(&hs, &["up", "hello"]);
    settle().await;
    assert_eq!(spread(listen, &hs, 20).await[1], 0, "still at maxconn");
    drop(held);
}
