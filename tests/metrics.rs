//! `/metrics` after known traffic, through the real binary: requests by backend and status
//! class, bytes, latency histograms, retries, no-backend answers, persistence lookups and
//! entries, tcp connections by how they ended, listener counts, health checks, backend
//! gauges, plugin calls, process and build metrics; served by the admin listener with its
//! token as well. Every metric the example Grafana dashboard queries exists.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use common::*;

/// The value of metric `name` whose labels include all of `labels`; panics if absent.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_value(text, name, labels).unwrap_or_else(|| panic!("no {name} with {labels:?} in:\n{text}"))
}

/// The sum over every series of `name` whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name, labels)
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn series<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a str> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(move |l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
}

fn try_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(text, name, labels)
        .next()
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let (a, b, list) = two().await;
    let t = TcpBackend::start().await;
    let (web, retry, empty, db, pinned, metrics, admin) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let (dead, gone) = (free_addr(), free_addr());
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        "../examples/plugins/lua/pin-backend.lua",
        plugins.path().join("pin.lua"),
    )
    .unwrap();
    let token = plugins.path().join("token");
    std::fs::write(&token, "s3cret-s3cret-s3cret").unwrap();
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n\
         [proxy]\nthreads = 2\nmetrics = \"{metrics}\"\nplugins_dir = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{web}\"\npersistence = {{ key = \"header:X-User\" }}\n\
         health_check = {{ kind = \"http\", path = \"/health\", interval = \"100ms\" }}\n{}\n\
         [[service]]\nname = \"retry\"\nlisten = \"{retry}\"\nretries = 1\n\
         [[service.backend]]\nname = \"dead\"\naddress = \"{dead}\"\n\
         [[service.backend]]\nname = \"alive\"\naddress = \"{}\"\n\n\
         [[service]]\nname = \"empty\"\nlisten = \"{empty}\"\n\
         [[service.backend]]\nname = \"off\"\naddress = \"{gone}\"\nenabled = false\n\n\
         [[service]]\nname = \"db\"\nlisten = \"{db}\"\nmode = \"tcp\"\n{}\n\
         [[service]]\nname = \"pinned\"\nlisten = \"{pinned}\"\nscheduler = \"plugin:pin\"\n\
         [service.plugin.pin]\naddress = \"{}\"\n{}",
        token.display(),
        plugins.path().display(),
        backends_toml(&list),
        a.addr,
        backends_toml(&[(t.addr, 1)]),
        b.addr,
        backends_toml(&list),
    );
    let _p = Proxy::start(&cfg, web).await;

    // web: 10 GETs by one user on one connection (1 new pin, 9 hits), a POST on another.
    let mut c = Client::connect(web).await.unwrap();
    for _ in 0..10 {
        let r = c.get("/", &[("X-User", "u1")]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    drop(c);
    let mut post = Client::connect(web).await.unwrap();
    assert_eq!(post.send("POST", "/", b"hello").await.unwrap().status, 200);
    drop(post);
    // retry: 4 requests, those sent to the dead backend first are retried.
    let mut r = Client::connect(retry).await.unwrap();
    for _ in 0..4 {
        assert_eq!(r.get("/", &[]).await.unwrap().status, 200);
    }
    drop(r);
    // empty: 3 answers without a backend.
    for _ in 0..3 {
        assert_eq!(get_once(empty, "/").await.unwrap().status, 503);
    }
    // db: two connections, 6 bytes each way after the banner, closed by the client.
    for _ in 0..2 {
        let (banner, mut conn) = tcp_banner(db, None).await.unwrap();
        assert_eq!(banner, t.addr.to_string());
        conn.get_mut().write_all(b"hello\n").await.unwrap();
        let mut echo = String::new();
        conn.read_line(&mut echo).await.unwrap();
    }
    // pinned: 5 requests through the Lua scheduler.
    for r in bodies(pinned, 5, &[]).await {
        assert_eq!(r.body, b.addr.to_string());
    }
    // Health checks have run a few times.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let addr_len = a.addr.to_string().len() as f64;
    let w = web.to_string();
    let text = eventually_text(metrics, |m| {
        try_value(
            m,
            "plugboard_tcp_connections_total",
            &[("service", "db"), ("end", "client_close")],
        ) == Some(2.0)
            && try_value(m, "plugboard_listener_connections", &[("listener", &w)]) == Some(0.0)
    })
    .await;
    let s = |svc: &'static str| ("service", svc);
    // Requests by class over the backends; bytes (both addresses have the same length).
    assert_eq!(
        sum(
            &text,
            "plugboard_http_requests_total",
            &[s("web"), ("class", "2xx")]
        ),
        11.0
    );
    assert_eq!(
        sum(
            &text,
            "plugboard_bytes_total",
            &[s("web"), ("direction", "in")]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &text,
            "plugboard_bytes_total",
            &[s("web"), ("direction", "out")]
        ),
        11.0 * addr_len
    );
    // Latency histograms count every web request.
    assert_eq!(
        value(
            &text,
            "plugboard_http_request_duration_seconds_count",
            &[s("web")]
        ),
        11.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_http_time_to_first_byte_seconds_count",
            &[s("web")]
        ),
        11.0
    );
    assert!(
        value(
            &text,
            "plugboard_http_request_duration_seconds_sum",
            &[s("web")]
        ) > 0.0
    );
    // Persistence.
    assert_eq!(
        value(
            &text,
            "plugboard_persistence_lookups_total",
            &[s("web"), ("result", "new")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_persistence_lookups_total",
            &[s("web"), ("result", "hit")]
        ),
        9.0
    );
    assert_eq!(
        value(&text, "plugboard_persistence_entries", &[s("web")]),
        1.0
    );
    // Retries: one per failed connect to the dead backend, all answered by the live one.
    let failures = value(
        &text,
        "plugboard_backend_connect_failures_total",
        &[s("retry"), ("backend", "dead")],
    );
    assert!(failures >= 1.0, "{text}");
    assert_eq!(
        value(&text, "plugboard_retries_total", &[s("retry")]),
        failures
    );
    assert_eq!(
        value(
            &text,
            "plugboard_http_requests_total",
            &[s("retry"), ("backend", "alive"), ("class", "2xx")]
        ),
        4.0
    );
    // No backend.
    assert_eq!(
        value(
            &text,
            "plugboard_http_requests_total",
            &[s("empty"), ("backend", ""), ("class", "5xx")]
        ),
        3.0
    );
    assert_eq!(
        value(&text, "plugboard_no_backend_total", &[s("empty")]),
        3.0
    );
    // TCP: bytes each way (the banner and the echo out).
    let banner_len = t.addr.to_string().len() as f64 + 1.0;
    let tb = t.addr.to_string();
    assert_eq!(
        value(
            &text,
            "plugboard_bytes_total",
            &[s("db"), ("backend", &tb), ("direction", "in")]
        ),
        12.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_bytes_total",
            &[s("db"), ("backend", &tb), ("direction", "out")]
        ),
        2.0 * (banner_len + 6.0)
    );
    // Listeners: connections accepted (the start-up probe, then the two clients) and open.
    assert_eq!(
        value(
            &text,
            "plugboard_listener_connections_total",
            &[("listener", &w)]
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_listener_limit_waits_total",
            &[("listener", &w)]
        ),
        0.0
    );
    assert_eq!(
        value(&text, "plugboard_listener_connections", &[("listener", &w)]),
        0.0,
        "every client closed"
    );
    // Health checks and backend gauges.
    let sa = a.addr.to_string();
    assert!(
        value(
            &text,
            "plugboard_health_checks_total",
            &[s("web"), ("backend", &sa), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            "plugboard_health_check_duration_seconds_count",
            &[s("web")]
        ) >= 2.0
    );
    assert_eq!(
        value(&text, "plugboard_backend_up", &[s("web"), ("backend", &sa)]),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_backend_weight",
            &[s("web"), ("backend", &sa)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_backend_effective_weight",
            &[s("web"), ("backend", &sa)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_backend_state",
            &[s("web"), ("backend", &sa), ("state", "ready")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_backend_state",
            &[s("empty"), ("backend", "off"), ("state", "maint")]
        ),
        1.0
    );
    // Plugin calls.
    assert_eq!(
        value(
            &text,
            "plugboard_plugin_calls_total",
            &[("plugin", "pin"), s("pinned"), ("hook", "select-server")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &text,
            "plugboard_plugin_call_duration_seconds_count",
            &[("plugin", "pin"), ("hook", "select-server")]
        ),
        5.0
    );
    // Process, build, access log.
    assert!(value(&text, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&text, "process_open_fds", &[]) > 10.0);
    assert!(value(&text, "process_cpu_seconds_total", &[]) >= 0.0);
    assert_eq!(
        value(
            &text,
            "plugboard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&text, "plugboard_access_log_dropped_total", &[]), 0.0);

    // Every metric the Grafana dashboard in examples/ queries exists.
    let dashboard = std::fs::read_to_string("../examples/grafana/plugboard.json").unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let names: std::collections::BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("plugboard_") || w.starts_with("process_"))
        .collect();
    assert!(names.len() > 15, "{names:?}");
    for n in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
            "the dashboard queries {n}, which /metrics does not have"
        );
    }

    // The admin listener serves the same, with its token only.
    let (code, _) = api("GET", &format!("http://{admin}/metrics"), None, None);
    assert_eq!(code, 401);
    let (code, body) = api(
        "GET",
        &format!("http://{admin}/metrics"),
        Some("s3cret-s3cret-s3cret"),
        None,
    );
    assert_eq!(code, 200);
    assert!(body.contains("plugboard_http_requests_total{"), "{body}");
}

/// Scrapes until `ready` holds (counts of connections that just ended settle within
/// milliseconds), for 5 s at most.
async fn eventually_text(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let mut text = scrape(addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ready(&text) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape(addr).await;
    }
    text
}
