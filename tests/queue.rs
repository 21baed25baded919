//! Backend `max_connections` and the service's wait queue, through the real binary: backends
//! that hold every request until the test lets it go, so that what is in flight, what waits
//! and in what order it is served are decided by the test, never by timing.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Longest any step may take before the test fails (never a pass/fail threshold).
const PATIENCE: Duration = Duration::from_secs(10);

/// An HTTP/1.1 backend (keep-alive) that holds each request until [`Gate::release`] lets
/// one go, then answers 200 with `PATH ADDRESS`. It records the paths in arrival order and
/// the most requests it held at once.
struct Gate {
    addr: SocketAddr,
    arrived: Arc<Mutex<Vec<String>>>,
    most: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
    _task: JoinSet<()>,
}

impl Gate {
    async fn start() -> Gate {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(addr: SocketAddr) -> Gate {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let most = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let permits = Arc::new(Semaphore::new(0));
        let (a, m, p) = (arrived.clone(), most.clone(), permits.clone());
        let mut task = JoinSet::new();
        task.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let (a, m, p, h) = (a.clone(), m.clone(), p.clone(), held.clone());
                conns.spawn(async move {
                    let mut s = BufReader::new(s);
                    while let Some(path) = read_head(&mut s).await {
                        a.lock().unwrap().push(path.clone());
                        m.fetch_max(h.fetch_add(1, SeqCst) + 1, SeqCst);
                        p.acquire().await.unwrap().forget();
                        h.fetch_sub(1, SeqCst);
                        let body = format!("{path} {addr}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Gate {
            addr,
            arrived,
            most,
            permits,
            _task: task,
        }
    }

    /// Lets `n` held (or future) requests be answered.
    fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    fn arrived(&self) -> Vec<String> {
        self.arrived.lock().unwrap().clone()
    }

    fn most(&self) -> usize {
        self.most.load(SeqCst)
    }

    /// Waits until `n` requests have arrived.
    async fn until_arrived(&self, n: usize) {
        let ok = eventually(PATIENCE, async || self.arrived().len() >= n).await;
        assert!(ok, "{n} requests never arrived: {:?}", self.arrived());
    }
}

/// Reads one request head; its path, or `None` at the end of the connection.
async fn read_head(s: &mut BufReader<TcpStream>) -> Option<String> {
    let mut first = String::new();
    if s.read_line(&mut first).await.ok()? == 0 {
        return None;
    }
    loop {
        let mut h = String::new();
        if s.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        if h.trim_end().is_empty() {
            break;
        }
    }
    first.split(' ').nth(1).map(str::to_string)
}

/// A running proxy with 2 threads, metrics and a text access log. It is started ready on
/// its metrics address: the readiness probe's connection to a tcp listener would reach (and
/// count at) its backend.
struct Run {
    metrics: SocketAddr,
    log: PathBuf,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

impl Run {
    async fn start(services: &str) -> Run {
        let metrics = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let cfg = format!(
            "[proxy]\nthreads = 2\nmetrics = \"{metrics}\"\naccess_log = {{ path = \"{}\", format = \"text\" }}\n\n{services}",
            log.display()
        );
        Run {
            proxy: Proxy::start(&cfg, metrics).await,
            metrics,
            log,
            _dir: dir,
        }
    }

    /// Replaces what follows `[proxy]` in the configuration file with `rest` (then reload).
    fn rewrite(&self, rest: &str) {
        let path = self.proxy.dir.path().join("plugboard.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // The `[proxy]` table ends at the first blank line.
        let head = &text[..text.find("\n\n").unwrap() + 2];
        std::fs::write(&path, format!("{head}{rest}")).unwrap();
    }

    async fn scrape(&self) -> String {
        scrape(self.metrics).await
    }

    /// Waits until `series` reads `want`.
    async fn until_metric(&self, series: &str, want: f64) {
        let mut last = None;
        let ok = eventually(PATIENCE, async || {
            last = metric(&self.scrape().await, series);
            last == Some(want)
        })
        .await;
        assert!(ok, "{series} never read {want} (last {last:?})");
    }

    /// Access log lines containing `needle`.
    fn logged(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until `n` access log lines contain `needle`; returns them.
    async fn until_logged(&self, needle: &str, n: usize) -> Vec<String> {
        let ok = eventually(PATIENCE, async || self.logged(needle).len() == n).await;
        assert!(ok, "not {n} lines with {needle:?}: {:?}", self.logged(""));
        self.logged(needle)
    }
}

/// A service of one backend limited to `max` in flight, with `extra` service keys.
fn limited(
    name: &str,
    mode: &str,
    listen: SocketAddr,
    extra: &str,
    backend: SocketAddr,
    max: u32,
) -> String {
    service(
        name,
        mode,
        listen,
        extra,
        &[(backend, &format!("max_connections = {max}"))],
    )
}

/// One `[[service]]` with `extra` keys and its backends, each with its own extra keys.
fn service(
    name: &str,
    mode: &str,
    listen: SocketAddr,
    extra: &str,
    backends: &[(SocketAddr, &str)],
) -> String {
    let mut s = format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nmode = \"{mode}\"\n{extra}\n"
    );
    for (a, more) in backends {
        s.push_str(&format!("[[service.backend]]\naddress = \"{a}\"\n{more}\n"));
    }
    s
}

/// The value of the metric line that starts with `series` (name and labels), if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A GET of `path` on its own connection, in a task.
fn spawn_get(listen: SocketAddr, path: &str, headers: &[(&str, &str)]) -> JoinHandle<Response> {
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::spawn(async move {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut c = Client::connect(listen).await.unwrap();
        tokio::time::timeout(PATIENCE * 3, c.get(&path, &h))
            .await
            .expect("response in time")
            .unwrap()
    })
}

fn queue_len(service: &str) -> String {
    format!("plugboard_queue_length{{service=\"{service}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_beyond_the_limit_wait_and_are_served_in_order() {
    let gate = Gate::start().await;
    let listen = free_addr();
    let run = Run::start(&limited(
        "web",
        "http",
        listen,
        "queue_timeout = \"60s\"",
        gate.addr,
        2,
    ))
    .await;

    let mut answers = vec![spawn_get(listen, "/1", &[]), spawn_get(listen, "/2", &[])];
    gate.until_arrived(2).await;
    // Each joins the queue before the next is sent, so the queue's order is known.
    for (n, path) in ["/3", "/4", "/5"].iter().enumerate() {
        answers.push(spawn_get(listen, path, &[]));
        run.until_metric(&queue_len("web"), n as f64 + 1.0).await;
    }
    assert_eq!(
        gate.arrived().len(),
        2,
        "the queued requests did not reach the backend"
    );
    let text = run.scrape().await;
    let backend = format!("backend=\"{}\",service=\"web\"", gate.addr);
    assert_eq!(
        metric(
            &text,
            &format!("plugboard_backend_max_connections{{{backend}}}")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, &format!("plugboard_backend_active{{{backend}}}")),
        Some(2.0)
    );
    // Each slot freed goes to the oldest waiter.
    for n in 3..=5 {
        gate.release(1);
        gate.until_arrived(n).await;
        assert_eq!(
            gate.arrived()[n - 1],
            format!("/{n}"),
            "{:?}",
            gate.arrived()
        );
    }
    gate.release(2);
    for a in answers {
        assert_eq!(a.await.unwrap().status, 200);
    }
    assert_eq!(
        gate.most(),
        2,
        "the backend held more than max_connections at once"
    );
    let text = run.scrape().await;
    assert_eq!(metric(&text, &queue_len("web")), Some(0.0));
    assert_eq!(
        metric(&text, "plugboard_queued_total{service=\"web\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "plugboard_queue_wait_seconds_count{service=\"web\"}"),
        Some(3.0)
    );
    run.until_logged(" queue=served/", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_waits_end_in_503_after_queue_timeout_or_when_the_queue_is_full() {
    let (short, full) = (Gate::start().await, Gate::start().await);
    let (l1, l2) = (free_addr(), free_addr());
    let run = Run::start(
        &(limited(
            "short",
            "http",
            l1,
            "queue_timeout = \"200ms\"",
            short.addr,
            1,
        ) + &limited(
            "full",
            "http",
            l2,
            "queue_timeout = \"60s\"\nqueue_max = 1",
            full.addr,
            1,
        )),
    )
    .await;

    // queue_timeout: the held request keeps the only slot; the next waits, then gets 503.
    let held = spawn_get(l1, "/held", &[]);
    short.until_arrived(1).await;
    let r = get_once(l1, "/late").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(short.arrived(), ["/held"]);
    short.release(1);
    assert_eq!(held.await.unwrap().status, 200);

    // queue_max = 1: one waits, the next is refused at once.
    let held = spawn_get(l2, "/held", &[]);
    full.until_arrived(1).await;
    let waiting = spawn_get(l2, "/waiting", &[]);
    run.until_metric(&queue_len("full"), 1.0).await;
    let r = get_once(l2, "/refused").await.unwrap();
    assert_eq!(r.status, 503);
    full.release(2);
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(waiting.await.unwrap().status, 200);
    assert_eq!(full.arrived(), ["/held", "/waiting"]);

    let text = run.scrape().await;
    let refused =
        |labels: &str| metric(&text, &format!("plugboard_queue_refused_total{{{labels}}}"));
    assert_eq!(refused("reason=\"timeout\",service=\"short\""), Some(1.0));
    assert_eq!(refused("reason=\"full\",service=\"full\""), Some(1.0));
    assert_eq!(refused("reason=\"timeout\",service=\"full\""), Some(0.0));
    run.until_logged(" 503 ", 2).await;
    let timeout = run.logged("GET test/late");
    assert!(
        timeout[0].contains(" short - 503 ") && timeout[0].contains(" queue=timeout/"),
        "{timeout:?}"
    );
    let refused = run.logged("GET test/refused");
    assert!(refused[0].contains(" queue=full/0.0 "), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_beyond_the_limit_wait_then_are_relayed_or_closed() {
    let (a, b) = (TcpBackend::start().await, TcpBackend::start().await);
    let (l1, l2) = (free_addr(), free_addr());
    let run = Run::start(
        &(limited("wait", "tcp", l1, "queue_timeout = \"60s\"", a.addr, 1)
            + &limited("give-up", "tcp", l2, "queue_timeout = \"200ms\"", b.addr, 1)),
    )
    .await;

    let (name, first) = tcp_banner(l1, None).await.unwrap();
    assert_eq!(name, a.addr.to_string());
    let mut second = BufReader::new(TcpStream::connect(l1).await.unwrap());
    run.until_metric(&queue_len("wait"), 1.0).await;
    assert_eq!(a.conns(), 1, "the waiting connection reached the backend");
    drop(first);
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, second.read_line(&mut line))
        .await
        .expect("relayed once the first closed")
        .unwrap();
    assert_eq!(line.trim_end(), a.addr.to_string());
    second.get_mut().write_all(b"ping\n").await.unwrap();
    line.clear();
    second.read_line(&mut line).await.unwrap();
    assert_eq!(line, "ping\n");
    drop(second);

    let (_, held) = tcp_banner(l2, None).await.unwrap();
    let mut late = TcpStream::connect(l2).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, late.read(&mut buf))
        .await
        .expect("closed after queue_timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "got {:?} instead of a close", &buf[..n]);
    assert_eq!(b.conns(), 1);
    drop(held);
    // Counted once the connection's task ends, just after the close the client saw.
    run.until_metric(
        "plugboard_tcp_connections_total{end=\"queue_timeout\",service=\"give-up\"}",
        1.0,
    )
    .await;
    let text = run.scrape().await;
    assert_eq!(
        metric(&text, "plugboard_queued_total{service=\"wait\"}"),
        Some(1.0)
    );
    run.until_logged("end=queue_timeout queue=timeout/", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_wait_for_their_own_backend() {
    let (x, y) = (Gate::start().await, Gate::start().await);
    let listen = free_addr();
    let run = Run::start(&service(
        "web",
        "http",
        listen,
        "queue_timeout = \"60s\"\npersistence = { key = \"header:X-User\" }",
        &[
            (x.addr, "max_connections = 1"),
            (y.addr, "max_connections = 1"),
        ],
    ))
    .await;

    // The first request pins u1 to one backend; call it mine, the other one other.
    x.release(1);
    y.release(1);
    let r = spawn_get(listen, "/pin", &[("X-User", "u1")])
        .await
        .unwrap();
    let (mine, other) = match r.body.ends_with(&x.addr.to_string()) {
        true => (&x, &y),
        false => (&y, &x),
    };
    // The other backend keeps its permit, for u2 below.
    let held = spawn_get(listen, "/held", &[("X-User", "u1")]);
    mine.until_arrived(2).await;
    let waiting = spawn_get(listen, "/waiting", &[("X-User", "u1")]);
    run.until_metric(&queue_len("web"), 1.0).await;
    // Not pinned (a new user): the other backend has room, it does not queue.
    let free = spawn_get(listen, "/free", &[("X-User", "u2")])
        .await
        .unwrap();
    assert!(
        free.body.ends_with(&other.addr.to_string()),
        "{}",
        free.body
    );
    assert_eq!(
        metric(&run.scrape().await, &queue_len("web")),
        Some(1.0),
        "u1 still waits for its backend"
    );
    mine.release(2);
    assert_eq!(held.await.unwrap().status, 200);
    let w = waiting.await.unwrap();
    assert!(w.body.ends_with(&mine.addr.to_string()), "{}", w.body);
    assert_eq!(mine.arrived(), ["/pin", "/held", "/waiting"]);
    assert!(!other
        .arrived()
        .iter()
        .any(|p| p == "/held" || p == "/waiting"));
}

/// A HAProxy-style agent on `ip:port`: each connection gets the current answer and a close.
async fn agent(ip: IpAddr, port: u16) -> (Arc<Mutex<String>>, JoinSet<()>) {
    let answer = Arc::new(Mutex::new(String::from("up")));
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).await.unwrap();
    let a = answer.clone();
    let mut task = JoinSet::new();
    task.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let line = format!("{}\n", a.lock().unwrap());
            tokio::spawn(async move {
                let _ = s.write_all(line.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (answer, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_maxconn_sets_the_limit_live() {
    let port = free_addr().port();
    let ip: IpAddr = [127, 66, (port % 250) as u8, 1].into();
    let gate = Gate::start_on(SocketAddr::new(ip, free_addr().port())).await;
    let (answer, _agent) = agent(ip, port).await;
    let listen = free_addr();
    let plugin = format!("queue_timeout = \"60s\"\nscheduler = \"plugin:agent-load\"\n[service.plugin.agent-load]\ninterval = \"100ms\"\nprotocol = \"haproxy\"\nport = {port}");
    let run = Run::start(&limited("web", "http", listen, &plugin, gate.addr, 1)).await;
    let limit = format!(
        "plugboard_backend_max_connections{{backend=\"{}\",service=\"web\"}}",
        gate.addr
    );
    run.until_metric(&limit, 1.0).await;

    let mut answers = vec![spawn_get(listen, "/1", &[])];
    gate.until_arrived(1).await;
    answers.push(spawn_get(listen, "/2", &[]));
    run.until_metric(&queue_len("web"), 1.0).await;
    // The agent raises the limit: the waiter goes at once, and one more fits.
    *answer.lock().unwrap() = "maxconn:3".into();
    run.until_metric(&limit, 3.0).await;
    gate.until_arrived(2).await;
    answers.push(spawn_get(listen, "/3", &[]));
    gate.until_arrived(3).await;
    answers.push(spawn_get(listen, "/4", &[]));
    run.until_metric(&queue_len("web"), 1.0).await;
    // maxconn:0 withdraws the agent's limit: the configured 1 applies again, so /4 waits
    // until nothing else is in flight.
    *answer.lock().unwrap() = "maxconn:0".into();
    run.until_metric(&limit, 1.0).await;
    gate.release(3);
    gate.until_arrived(4).await;
    gate.release(1);
    for a in answers {
        assert_eq!(a.await.unwrap().status, 200);
    }
    assert_eq!(gate.arrived(), ["/1", "/2", "/3", "/4"]);
    assert_eq!(gate.most(), 3, "never more than the agent's maxconn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_reloads_move_the_waiters() {
    let (x, y) = (Gate::start().await, Gate::start().await);
    let (listen, admin) = (free_addr(), free_addr());
    let svc = |max: u32| {
        let limit = format!("max_connections = {max}");
        with_admin(
            admin,
            &service(
                "web",
                "http",
                listen,
                "queue_timeout = \"60s\"\npersistence = { key = \"header:X-User\" }",
                &[(x.addr, &limit), (y.addr, &limit)],
            ),
        )
    };
    let run = Run::start(&svc(1)).await;

    // u1 is pinned to mine, which is full; its next request waits for it.
    x.release(1);
    y.release(1);
    let r = spawn_get(listen, "/pin", &[("X-User", "u1")])
        .await
        .unwrap();
    let (mine, other) = match r.body.ends_with(&x.addr.to_string()) {
        true => (&x, &y),
        false => (&y, &x),
    };
    let held = spawn_get(listen, "/held", &[("X-User", "u1")]);
    mine.until_arrived(2).await;
    let waiting = spawn_get(listen, "/waiting", &[("X-User", "u1")]);
    run.until_metric(&queue_len("web"), 1.0).await;
    // The API shows the queue and the limit; ctl shows in-flight against it.
    let (code, body) = api(
        "GET",
        &format!("http://{admin}/api/v1/services/web"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["queue"], 1, "{view}");
    assert!(
        view["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["max_connections"] == 1),
        "{view}"
    );
    let (code, out, err) = ctl(admin, None, &["status"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&mine.addr.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.split_whitespace().any(|w| w == "1/1"), "{out}");
    // Maintenance on its backend: the waiter is rebalanced to the other, which has room.
    let (code, _, err) = ctl(admin, None, &["maint", "web", &mine.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    let w = waiting.await.unwrap();
    assert!(w.body.ends_with(&other.addr.to_string()), "{}", w.body);
    assert_eq!(
        ctl(admin, None, &["ready", "web", &mine.addr.to_string()]).0,
        0
    );
    mine.release(1);
    assert_eq!(held.await.unwrap().status, 200);

    // Both full (no key: the scheduler spreads them), a third waits; a reload that raises
    // max_connections lets it in.
    let mut answers = vec![spawn_get(listen, "/a", &[]), spawn_get(listen, "/b", &[])];
    let both = eventually(PATIENCE, async || {
        x.arrived().len() + y.arrived().len() == 5
    })
    .await;
    assert!(both, "{:?} {:?}", x.arrived(), y.arrived());
    answers.push(spawn_get(listen, "/c", &[]));
    run.until_metric(&queue_len("web"), 1.0).await;
    run.rewrite(&svc(2));
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let third = eventually(PATIENCE, async || {
        x.arrived().contains(&"/c".to_string()) || y.arrived().contains(&"/c".to_string())
    })
    .await;
    assert!(third, "{:?} {:?}", x.arrived(), y.arrived());
    run.until_metric(&queue_len("web"), 0.0).await;
    x.release(3);
    y.release(3);
    for a in answers {
        assert_eq!(a.await.unwrap().status, 200);
    }
}
