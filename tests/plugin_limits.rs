//! Plugins cannot escape their limits, through the real binary: Lua deadlines that `pcall`,
//! `xpcall`, coroutines and pattern matching cannot defeat, the Lua sandbox, the circuit
//! breaker, and health-check plugins that a black-holed backend cannot stall.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpListener;

/// Config with one http service per `(name, extra)` on its own port, all over `backends`.
fn services(
    plugins_dir: &Path,
    proxy: &str,
    list: &[(SocketAddr, String)],
    backends: &[(SocketAddr, u32)],
) -> String {
    let mut s = format!(
        "[proxy]\nthreads = 2\nplugins_dir = \"{}\"\n{proxy}\n",
        plugins_dir.display()
    );
    for (i, (listen, extra)) in list.iter().enumerate() {
        s.push_str(&format!(
            "\n[[service]]\nname = \"s{i}\"\nlisten = \"{listen}\"\n{extra}\n{}",
            backends_toml(backends)
        ));
    }
    s
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Lua schedulers that try to run forever, each its own service.
const RUNAWAYS: &[(&str, &str)] = &[
    (
        "pcall",
        "function select_server(req, b)\n  while true do pcall(function() while true do end end) end\nend",
    ),
    (
        "xpcall",
        "function select_server(req, b)\n  while true do\n    xpcall(function() while true do end end, function(e) for i = 1, 1e9 do end return e end)\n  end\nend",
    ),
    (
        "coroutine",
        "function select_server(req, b)\n  while true do\n    local co = coroutine.create(function() while true do end end)\n    pcall(coroutine.resume, co)\n  end\nend",
    ),
    (
        "pattern",
        "function select_server(req, b)\n  local s = string.rep('a', 60)\n  return string.find(s, string.rep('a*', 30) .. 'b') and 1 or nil\nend",
    ),
    (
        "gsub",
        "function select_server(req, b)\n  local s = string.rep('ab', 5000)\n  for i = 1, 1e9 do s = string.gsub(s, '(a-)(b-)(a-)b', '%3%2%1b') end\nend",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lua_cannot_escape_its_deadline_and_others_keep_being_served() {
    let (a, b) = (HttpBackend::start().await, HttpBackend::start().await);
    let backends = [(a.addr, 1), (b.addr, 1)];
    let dir = tempfile::tempdir().unwrap();
    let mut list = Vec::new();
    for (name, src) in RUNAWAYS {
        std::fs::write(dir.path().join(format!("{name}.lua")), src).unwrap();
        list.push((free_addr(), format!("scheduler = \"plugin:{name}\"")));
    }
    // Linear-time plain search of a megabyte, where Luau's own search is quadratic: no fault.
    std::fs::write(
        dir.path().join("plainfind.lua"),
        "local hay = string.rep('a', 1000000)\nlocal needle = string.rep('a', 500000) .. 'b'\nfunction select_server(req, b)\n  if string.find(hay, needle, 1, true) == nil and #string.split(hay, needle) == 1 then return 2 end\nend",
    )
    .unwrap();
    list.push((free_addr(), "scheduler = \"plugin:plainfind\"".into()));
    let plain = list.last().unwrap().0;
    let control = free_addr();
    list.push((control, String::new()));
    let metrics = free_addr();
    let cfg = services(
        dir.path(),
        &format!("plugin_deadline = \"300ms\"\nmetrics = \"{metrics}\""),
        &list,
        &backends,
    );
    let p = Proxy::start(&cfg, control).await;

    for (i, (name, _)) in RUNAWAYS.iter().enumerate() {
        let listen = list[i].0;
        // The runaway holds one worker thread for its deadline; meanwhile the control
        // service answers on the others.
        let stuck = tokio::spawn(async move {
            let start = Instant::now();
            let r = get_once(listen, "/").await;
            (r, start.elapsed(), Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..5 {
            let r = get_once(control, "/").await.unwrap();
            assert_eq!(r.status, 200);
        }
        let control_done = Instant::now();
        let (r, took, stuck_done) = stuck.await.unwrap();
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{name}: the fallback scheduler answers");
        assert!(
            took < Duration::from_secs(5),
            "{name}: cut off after {took:?}, deadline 300ms"
        );
        assert!(
            control_done < stuck_done,
            "{name}: the control service should answer while the runaway runs"
        );
    }
    let text = scrape(metrics).await;
    for (i, (name, _)) in RUNAWAYS.iter().enumerate() {
        let n = metric(
            &text,
            &format!("plugboard_plugin_faults_total{{kind=\"timeout\",plugin=\"{name}\",service=\"s{i}\"}}"),
        );
        assert_eq!(n, 1.0, "{name}: one timeout fault\n{text}");
    }
    for _ in 0..3 {
        let r = get_once(plain, "/").await.unwrap();
        assert_eq!(
            r.body,
            b.addr.to_string(),
            "plain search found nothing, picked backend 2"
        );
    }
    let text = scrape(metrics).await;
    assert!(
        !text
            .lines()
            .filter(|l| l.starts_with("plugboard_plugin_faults_total")
                || l.starts_with("plugboard_plugin_skipped_total"))
            .any(|l| l.contains("plugin=\"plainfind\"") && !l.ends_with(" 0")),
        "plain search faulted:\n{text}\n{}",
        p.log_text()
    );
}

#[test]
fn the_lua_sandbox_has_no_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let check = |src: &str| {
        let f = dir.path().join("s.lua");
        std::fs::write(&f, src).unwrap();
        std::process::Command::new(BIN)
            .args(["plugin", "check"])
            .arg(&f)
            .output()
            .unwrap()
    };
    // Nothing that reaches files, processes, code loading or the debugger exists.
    let out = check(
        "for _, n in ipairs({'io', 'os', 'load', 'loadstring', 'dofile', 'loadfile', 'require', 'debug', 'collectgarbage', 'getfenv', 'setfenv', 'package'}) do\n  assert(_G[n] == nil and rawget(_G, n) == nil, n .. ' is reachable')\nend\nassert(string.dump == nil, 'string.dump')\nfunction select_server() return 1 end",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The libraries are read-only: a plugin cannot change them for itself or others.
    for src in [
        "string.rep = nil\nfunction select_server() return 1 end",
        "table.insert = print\nfunction select_server() return 1 end",
        "getmetatable('').__index = {}\nfunction select_server() return 1 end",
    ] {
        let out = check(src);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{src}: {err}");
        assert!(err.contains("s.lua:1:"), "{src}: {err}");
    }
    // A top level that never ends is cut off, and named.
    let out = check("while true do end");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("deadline"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_failing_is_put_behind_a_circuit_breaker() {
    let (a, b) = (HttpBackend::start().await, HttpBackend::start().await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("boom.lua"),
        "function select_server(req, b) error('boom') end",
    )
    .unwrap();
    let listen = free_addr();
    let metrics = free_addr();
    let cfg = services(
        dir.path(),
        &format!("metrics = \"{metrics}\""),
        &[(listen, "scheduler = \"plugin:boom\"".into())],
        &[(a.addr, 1), (b.addr, 1)],
    );
    let p = Proxy::start(&cfg, listen).await;
    let mut c = Client::connect(listen).await.unwrap();
    for _ in 0..60 {
        assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
    }
    let text = scrape(metrics).await;
    let labels = "plugin=\"boom\",service=\"s0\"";
    let faults = metric(
        &text,
        &format!("plugboard_plugin_faults_total{{kind=\"trap\",{labels}}}"),
    );
    let open = metric(
        &text,
        "plugboard_plugin_skipped_total{plugin=\"boom\",reason=\"circuit_open\",service=\"s0\"}",
    );
    assert!(
        (5.0..=15.0).contains(&faults) && open >= 40.0,
        "faults {faults}, skipped while open {open}\n{text}"
    );
    assert!(
        p.log_text()
            .contains("plugin keeps failing: not called for"),
        "{}",
        p.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_backend_does_not_take_others_down() {
    let mut healthy = Vec::new();
    for _ in 0..3 {
        healthy.push(HttpBackend::start().await);
    }
    // Accepts connections and never answers.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    // An HTTP check with a 1 s timeout per check, checked every 200 ms: each check of the
    // black hole holds a check thread for the whole second.
    std::fs::write(
        dir.path().join("hc.lua"),
        "function health_check(b)\n  local status = net.http_get(b.target, '/health', 1000)\n  return status == 200\nend",
    )
    .unwrap();
    let mut list: Vec<(SocketAddr, u32)> = healthy.iter().map(|b| (b.addr, 1)).collect();
    list.push((hole_addr, 1));
    let listen = free_addr();
    let metrics = free_addr();
    let cfg = services(
        dir.path(),
        &format!("metrics = \"{metrics}\""),
        &[(
            listen,
            "health_check = { kind = \"plugin:hc\", interval = \"200ms\", timeout = \"1s\", rise = 1, fall = 2 }".into(),
        )],
        &list,
    );
    let p = Proxy::start(&cfg, listen).await;
    // The black hole goes down; the three healthy backends never do.
    let hole_down = eventually(Duration::from_secs(10), async || {
        let t = scrape(metrics).await;
        metric(
            &t,
            &format!("plugboard_backend_up{{backend=\"{hole_addr}\",service=\"s0\"}}"),
        ) == 0.0
    })
    .await;
    assert!(hole_down, "{}", p.log_text());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = scrape(metrics).await;
    for b in &healthy {
        let went_down = metric(
            &text,
            &format!(
                "plugboard_backend_transitions_total{{backend=\"{}\",service=\"s0\",to=\"down\"}}",
                b.addr
            ),
        );
        assert_eq!(went_down, 0.0, "{} was marked down\n{text}", b.addr);
    }
    for r in [get_once(listen, "/").await, get_once(listen, "/").await] {
        assert_eq!(r.unwrap().status, 200);
    }
}
