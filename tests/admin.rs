//! The admin API and `plugboard ctl` through the real binary: drain (persistence honoured),
//! maint, ready and weight take effect on the next request or connection; a bad token changes
//! nothing; the state file carries changes across a restart unless the configuration changed
//! the backend; `check` refuses unsafe admin settings.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The status table's row of `backend`, split into columns.
fn row(table: &str, backend: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|c| c.get(1).map(String::as_str) == Some(backend))
        .unwrap_or_else(|| panic!("no row for {backend}:\n{table}"))
}

/// One request per user (header `X-User`); the backend that answered each.
async fn by_user(listen: SocketAddr, users: &[String]) -> HashMap<String, String> {
    let mut c = Client::connect(listen).await.unwrap();
    let mut out = HashMap::new();
    for u in users {
        let r = c.get("/", &[("X-User", u)]).await.unwrap();
        assert_eq!(r.status, 200, "{u}: {r:?}");
        out.insert(u.clone(), r.body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_pinned_clients_maint_moves_them_ready_and_weight_apply_at_once() {
    let (a, b, list) = two().await;
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{}",
        service_toml(
            "http",
            listen,
            "persistence = { key = \"header:X-User\" }",
            &list
        )
    );
    let p = Proxy::start(&cfg, listen).await;
    let (a, b) = (a.addr.to_string(), b.addr.to_string());
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let home = by_user(listen, &users).await;
    let on_a: Vec<String> = users.iter().filter(|u| home[*u] == a).cloned().collect();
    assert!(!on_a.is_empty() && on_a.len() < users.len(), "{home:?}");

    // Drain a: its pinned users stay, every new user goes to b.
    let (code, out, err) = ctl(admin, None, &["drain", "http-svc", &a]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(row(&out, &a)[3], "drain", "{out}");
    assert_eq!(
        by_user(listen, &users).await,
        home,
        "pinned users stay while draining"
    );
    let new: Vec<String> = (0..10).map(|i| format!("new{i}")).collect();
    assert!(by_user(listen, &new).await.values().all(|v| *v == b));
    let (_, status, _) = ctl(admin, None, &["status"]);
    assert!(
        row(&status, &a)[9].parse::<u32>().unwrap() >= on_a.len() as u32,
        "pinned count shown: {status}"
    );

    // Maint: nothing new at all, its users move to b (and are pinned there).
    assert_eq!(ctl(admin, None, &["maint", "http-svc", &a]).0, 0);
    assert!(by_user(listen, &on_a).await.values().all(|v| *v == b));

    // Ready again with weight 3: new users split 3:1 in round-robin order.
    assert_eq!(ctl(admin, None, &["ready", "http-svc", &a]).0, 0);
    let (code, out, _) = ctl(admin, None, &["weight", "http-svc", &a, "3"]);
    assert_eq!(code, 0);
    assert_eq!(row(&out, &a)[5], "3", "{out}");
    let fresh: Vec<String> = (0..40).map(|i| format!("fresh{i}")).collect();
    let got = by_user(listen, &fresh).await;
    let to_a = got.values().filter(|v| **v == a).count();
    assert_eq!(to_a, 30, "weight 3 against 1");

    // Refusals: unknown backend and bad values exit 1 with the API's message, and change
    // nothing; an unreachable API exits 2.
    let (code, _, err) = ctl(admin, None, &["drain", "http-svc", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("no backend \"nope\""),
        "{err}"
    );
    let (code, _, err) = ctl(admin, None, &["weight", "http-svc", &a, "999"]);
    assert_eq!(code, 1);
    assert!(err.contains("at most 256"), "{err}");
    let (code, _, _) = ctl(free_addr(), None, &["status"]);
    assert_eq!(code, 2);
    let (status, body) = api(
        "PUT",
        &format!("http://{admin}/api/v1/services/http-svc/backends/{a}"),
        None,
        Some("{\"state\": \"sleepy\"}"),
    );
    assert_eq!(status, 400, "{body}");
    let (_, table, _) = ctl(admin, None, &["status"]);
    assert_eq!(row(&table, &a)[3], "ready");
    assert_eq!(row(&table, &a)[5], "3");
    // Changes are logged with who made them.
    p.wait_log(
        &["admin API: backend change", "client=127.0.0.1:"],
        4,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_maint_stops_new_connections_and_keeps_open_ones() {
    let (a, b) = (TcpBackend::start().await, TcpBackend::start().await);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{}",
        service_toml("tcp", listen, "", &[(a.addr, 1), (b.addr, 1)])
    );
    let _p = Proxy::start(&cfg, listen).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(tcp_banner(listen, None).await.unwrap());
    }
    assert_eq!(a.open() + b.open(), 4);
    assert_eq!(
        ctl(admin, None, &["maint", "tcp-svc", &a.addr.to_string()]).0,
        0
    );
    for _ in 0..6 {
        let (banner, _) = tcp_banner(listen, None).await.unwrap();
        assert_eq!(banner, b.addr.to_string());
    }
    // The connections a already had still carry bytes.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    for (banner, r) in &mut open {
        r.get_mut().write_all(b"ping\n").await.unwrap();
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(line, "ping\n", "{banner} still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_changes_nothing() {
    let (a, _b, list) = two().await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cr3t-t0ken-0123456789";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let wrong_file = dir.path().join("wrong.token");
    std::fs::write(&wrong_file, "s3cr3t-t0ken-0123456780").unwrap();
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n{}",
        token_file.display(),
        service_toml("http", listen, "", &list)
    );
    let p = Proxy::start(&cfg, listen).await;
    let url = format!(
        "http://{admin}/api/v1/services/http-svc/backends/{}",
        a.addr
    );
    let drain = Some("{\"state\": \"maint\"}");
    assert_eq!(api("PUT", &url, None, drain).0, 401);
    assert_eq!(
        api("PUT", &url, Some("s3cr3t-t0ken-0123456780"), drain).0,
        401
    );
    assert_eq!(
        api(
            "GET",
            &format!("http://{admin}/api/v1/services"),
            None,
            None
        )
        .0,
        401
    );
    let (code, _, err) = ctl(
        admin,
        Some(&wrong_file),
        &["maint", "http-svc", &a.addr.to_string()],
    );
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    // Nothing changed: a still answers.
    let mut c = Client::connect(listen).await.unwrap();
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= c.get("/", &[]).await.unwrap().body == a.addr.to_string();
    }
    assert!(seen_a, "a was not put in maintenance");
    // /healthz needs no token; the right token works.
    assert_eq!(
        api("GET", &format!("http://{admin}/healthz"), None, None).0,
        200
    );
    let (code, out, err) = ctl(admin, Some(&token_file), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(row(&out, &a.addr.to_string())[3], "ready");
    p.wait_log(
        &["admin API: refused, bad or missing token"],
        3,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_carries_changes_across_a_restart_unless_the_file_changed_them() {
    let (a, b, list) = two().await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("plugboard.state");
    let cfg = |extra_weight: Option<u32>| {
        let mut s = format!(
            "[admin]\nlisten = \"{admin}\"\nstate_file = \"{}\"\n\n{}",
            state.display(),
            service_toml("http", listen, "", &list)
        );
        if let Some(w) = extra_weight {
            s = s.replacen("weight = 1", &format!("weight = {w}"), 1);
        }
        s
    };
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    {
        let _p = Proxy::start(&cfg(None), listen).await;
        assert_eq!(ctl(admin, None, &["maint", "http-svc", &sa]).0, 0);
        assert_eq!(ctl(admin, None, &["weight", "http-svc", &sb, "4"]).0, 0);
    }
    {
        let p = Proxy::start(&cfg(None), listen).await;
        let (_, out, _) = ctl(admin, None, &["status"]);
        assert_eq!(row(&out, &sa)[3], "maint", "{out}\n{}", p.log_text());
        assert_eq!(row(&out, &sb)[5], "4", "{out}");
        let mut c = Client::connect(listen).await.unwrap();
        for _ in 0..4 {
            assert_eq!(c.get("/", &[]).await.unwrap().body, sb);
        }
        // Putting a back as configured removes it from the file.
        assert_eq!(ctl(admin, None, &["ready", "http-svc", &sa]).0, 0);
        assert!(!std::fs::read_to_string(&state).unwrap().contains(&sa));
    }
    {
        // The configuration now gives a weight 2 (a has no saved entry any more); b's lines
        // did not change, so its saved weight still applies.
        let p = Proxy::start(&cfg(Some(2)), listen).await;
        let (_, out, _) = ctl(admin, None, &["status"]);
        assert_eq!(row(&out, &sa)[5], "2", "{out}");
        assert_eq!(row(&out, &sb)[5], "4", "{out}\n{}", p.log_text());
    }
    {
        // Now b's configured weight changes: the configuration wins, the entry is dropped.
        let changed = cfg(Some(2)).replacen("weight = 1", "weight = 3", 1);
        let p = Proxy::start(&changed, listen).await;
        let (_, out, _) = ctl(admin, None, &["status"]);
        assert_eq!(row(&out, &sb)[5], "3", "{out}");
        assert!(p
            .log_text()
            .contains("the configuration changed this backend since"));
        assert!(!std::fs::read_to_string(&state).unwrap().contains(&sb));
    }
}

#[test]
fn check_refuses_an_open_admin_api() {
    let cases = [
        (
            "[admin]\nlisten = \"0.0.0.0:9090\"\n",
            "F:2:10: admin.listen: 0.0.0.0:9090 is not a loopback address, so a token_file is required",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:18080\"\n",
            "F:2:10: admin.listen: 127.0.0.1:18080 is also the listen address of service \"web\"",
        ),
        (
            "[admin]\ntoken_file = \"missing.token\"\n",
            "F:1:1: admin: `listen` is required",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:9\"\ntoken_file = \"missing.token\"\n",
            "F:3:14: admin.token_file: cannot read",
        ),
    ];
    for (admin, expect) in cases {
        let text = format!(
            "{admin}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:18080\"\n[[service.backend]]\naddress = \"127.0.0.1:18081\"\n"
        );
        let (_d, path) = write_config(&text);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "F");
        assert_eq!(out.status.code(), Some(2), "{admin}: {err}");
        assert!(err.contains(expect), "{admin}: {err}");
    }
}

#[test]
fn a_busy_admin_address_stops_the_start() {
    let backend = free_addr();
    let (taken, err) = refused_on_busy_address(|admin| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n{}",
            service_toml("http", free_addr(), "", &[(backend, 1)])
        )
    });
    assert!(
        err.contains(&format!("admin.listen: cannot listen on {taken}")),
        "{err}"
    );
}

/// The backends of `service` as `ctl --json status` shows them: (name, state, removing).
fn backends_of(admin: SocketAddr, service: &str) -> Vec<(String, String, bool)> {
    let (code, out, err) = ctl(admin, None, &["--json", "status"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
                b["removing"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_added_and_removed_under_load_fail_no_request() {
    let (a, b, list) = two().await;
    let c = HttpBackend::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = with_admin(admin, &service_toml("http", listen, "", &list));
    let p = Proxy::start(&cfg, listen).await;
    // Load: four kept-alive clients for a bounded time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut cl = Client::connect(listen).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                match cl.get("/", &[]).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => {
                        failed.push(format!("{other:?}"));
                        cl = Client::connect(listen).await.unwrap();
                    }
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A long request on a, in flight while a is removed: b is put in maintenance until it
    // has started, so that it goes to a.
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    assert_eq!(ctl(admin, None, &["maint", "http-svc", &sb]).0, 0);
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(listen).await.unwrap();
        let mut rs = Vec::new();
        for _ in 0..2 {
            rs.push(c.get("/slow/1500", &[]).await.unwrap());
        }
        rs
    });
    let on_a = eventually(Duration::from_secs(3), async || {
        let (_, out, _) = ctl(admin, None, &["status"]);
        row(&out, &sa)[7] != "0"
    })
    .await;
    assert!(on_a, "the long request is in flight on a");
    assert_eq!(ctl(admin, None, &["ready", "http-svc", &sb]).0, 0);
    let (code, _, err) = ctl(
        admin,
        None,
        &[
            "add",
            "http-svc",
            &c.addr.to_string(),
            "--name",
            "fe-c",
            "--weight",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let c_before = c.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.hits() > c_before, "the new backend takes traffic");
    let (code, _, err) = ctl(admin, None, &["remove", "http-svc", &a.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    let names = backends_of(admin, "http-svc");
    assert!(names
        .iter()
        .any(|(n, s, r)| *n == a.addr.to_string() && s == "maint" && *r));
    // Gone once its last request ended; nothing new reached it meanwhile.
    let gone = eventually(Duration::from_secs(5), async || {
        !backends_of(admin, "http-svc")
            .iter()
            .any(|(n, _, _)| *n == a.addr.to_string())
    })
    .await;
    assert!(gone, "{}", p.log_text());
    let a_after = a.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.hits(), a_after, "a removed backend gets nothing");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for t in load {
        let (ok, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "the load ran: {total}");
    for r in slow.await.unwrap() {
        assert_eq!(r.status, 200);
    }
    assert!(b.hits() > 0);
    // Adding a name or address that exists is refused; so is removing an unknown backend.
    let (code, _, err) = ctl(admin, None, &["add", "http-svc", &b.addr.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");
    assert_eq!(ctl(admin, None, &["remove", "http-svc", "nope"]).0, 1);
    assert_eq!(
        ctl(admin, None, &["add", "http-svc", "not an address"]).0,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tcp_backend_keeps_its_open_connections_until_they_end() {
    let (a, b) = (TcpBackend::start().await, TcpBackend::start().await);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{}",
        service_toml(
            "tcp",
            listen,
            "scheduler = \"least_connections\"",
            &[(a.addr, 1), (b.addr, 1)]
        )
    );
    let _p = Proxy::start(&cfg, listen).await;
    let mut on_a = None;
    let mut others = Vec::new();
    while on_a.is_none() {
        let (banner, r) = tcp_banner(listen, None).await.unwrap();
        if banner == a.addr.to_string() {
            on_a = Some(r);
        } else {
            others.push(r);
        }
    }
    let mut on_a = on_a.unwrap();
    assert_eq!(
        ctl(admin, None, &["remove", "tcp-svc", &a.addr.to_string()]).0,
        0
    );
    for _ in 0..4 {
        assert_eq!(
            tcp_banner(listen, None).await.unwrap().0,
            b.addr.to_string()
        );
    }
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    tokio::time::sleep(Duration::from_millis(500)).await;
    on_a.get_mut().write_all(b"still here\n").await.unwrap();
    let mut line = String::new();
    on_a.read_line(&mut line).await.unwrap();
    assert_eq!(line, "still here\n");
    assert!(backends_of(admin, "tcp-svc")
        .iter()
        .any(|(n, _, r)| *n == a.addr.to_string() && *r));
    drop(on_a);
    let gone = eventually(Duration::from_secs(5), async || {
        backends_of(admin, "tcp-svc").len() == 1
    })
    .await;
    assert!(gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_and_removed_backends_survive_a_restart_with_the_state_file() {
    let (a, b, list) = two().await;
    let c = HttpBackend::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("plugboard.state");
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\nstate_file = \"{}\"\n\n{}",
        state.display(),
        service_toml("http", listen, "", &list)
    );
    {
        let _p = Proxy::start(&cfg, listen).await;
        assert_eq!(
            ctl(
                admin,
                None,
                &["add", "http-svc", &c.addr.to_string(), "--name", "c"]
            )
            .0,
            0
        );
        assert_eq!(ctl(admin, None, &["weight", "http-svc", "c", "3"]).0, 0);
        assert_eq!(
            ctl(admin, None, &["remove", "http-svc", &a.addr.to_string()]).0,
            0
        );
    }
    let p = Proxy::start(&cfg, listen).await;
    let (_, out, _) = ctl(admin, None, &["status"]);
    assert_eq!(row(&out, "c")[5], "3", "{out}\n{}", p.log_text());
    assert!(!out.contains(&a.addr.to_string()), "{out}");
    let mut cl = Client::connect(listen).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        seen.insert(cl.get("/", &[]).await.unwrap().body);
    }
    assert_eq!(
        seen,
        [b.addr.to_string(), c.addr.to_string()]
            .into_iter()
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_requests_from_another_site_and_bodies_not_json_change_nothing() {
    let (a, _b, list) = two().await;
    let (listen, admin) = (free_addr(), free_addr());
    let _p = Proxy::start(
        &with_admin(admin, &service_toml("http", listen, "", &list)),
        listen,
    )
    .await;
    let sa = a.addr.to_string();
    let put = |headers: &[String], content_type: &str| -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .args(["-H", &format!("Content-Type: {content_type}")])
            .args(["--data", r#"{"state":"maint"}"#])
            .arg(format!(
                "http://{admin}/api/v1/services/http-svc/backends/{sa}"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    };
    let json = "application/json";
    assert_eq!(put(&["Sec-Fetch-Site: cross-site".into()], json), 403);
    assert_eq!(put(&["Origin: http://evil.example".into()], json), 403);
    assert_eq!(put(&[], "text/plain"), 415);
    let status = |admin| {
        let (_, out, _) = ctl(admin, None, &["status"]);
        row(&out, &a.addr.to_string())[3].clone()
    };
    assert_eq!(status(admin), "ready", "nothing changed");
    // The status page's own requests (same origin) are accepted.
    let same = [
        format!("Origin: http://{admin}"),
        "Sec-Fetch-Site: same-origin".to_string(),
    ];
    assert_eq!(put(&same, json), 200);
    assert_eq!(status(admin), "maint");
}
