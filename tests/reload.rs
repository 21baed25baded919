//! Reloading the configuration while the proxy serves, through the real binary: twenty
//! reloads (by `plugboard ctl reload` and by SIGHUP) that add, remove and reorder backends
//! and add and remove a whole service fail no request, drop no TCP connection and move no
//! pinned client; a broken file is refused with its lines and the old configuration keeps
//! serving; the operator's runtime changes survive a reload unless the file changed them;
//! plugins and certificates the new file names are loaded (or refused) before the switch.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use common::*;

fn hup(p: &Proxy) {
    let ok = Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

fn config_path(p: &Proxy) -> std::path::PathBuf {
    p.dir.path().join("plugboard.toml")
}

/// Replaces the file the proxy was started with (a rename, as editors and deploy tools do).
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The backend rows of `ctl status`: (service, backend, state).
fn status(admin: SocketAddr) -> Vec<(String, String, String)> {
    let (code, out, err) = ctl(admin, None, &["status"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].to_string(), c[1].to_string(), c[3].to_string())
        })
        .collect()
}

/// Round `n` of the reload test: which backends `web` has, in which order, and whether the
/// `extra` service exists.
fn round_config(
    n: usize,
    admin: SocketAddr,
    web: SocketAddr,
    db: SocketAddr,
    extra: SocketAddr,
    http: &[SocketAddr],
    tcp: &[SocketAddr],
) -> String {
    let mut backends = vec![(http[0], 1), (http[1], 1)];
    // b2 comes and goes; b3 is there every third round.
    if n.is_multiple_of(2) {
        backends.push((http[2], 1));
    }
    if n.is_multiple_of(3) {
        backends.push((http[3], 2));
    }
    if n % 4 >= 2 {
        backends.reverse();
    }
    let mut cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[proxy]\nthreads = 2\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{web}\"\nmode = \"http\"\n\
         persistence = {{ key = \"header:X-User\" }}\n{}\n\
         [[service]]\nname = \"db\"\nlisten = \"{db}\"\nmode = \"tcp\"\n\
         connect_timeout = \"{}ms\"\n{}\n",
        backends_toml(&backends),
        // A change of a setting alone is a reload too.
        1000 + n,
        backends_toml(&tcp.iter().map(|a| (*a, 1)).collect::<Vec<_>>()),
    );
    if n % 2 == 1 {
        cfg.push_str(&format!(
            "[[service]]\nname = \"extra\"\nlisten = \"{extra}\"\nmode = \"http\"\n{}",
            backends_toml(&[(http[3], 1)])
        ));
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request_and_drop_no_connection() {
    let mut http = Vec::new();
    for _ in 0..4 {
        http.push(HttpBackend::start().await);
    }
    let (t0, t1) = (TcpBackend::start().await, TcpBackend::start().await);
    let ha: Vec<SocketAddr> = http.iter().map(|b| b.addr).collect();
    let ta = [t0.addr, t1.addr];
    let (admin, web, db, extra) = (free_addr(), free_addr(), free_addr(), free_addr());
    let cfg = |n| round_config(n, admin, web, db, extra, &ha, &ta);
    let p = Proxy::start(&cfg(0), web).await;

    // Users pinned to b0 or b1, which every round keeps.
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut c = Client::connect(web).await.unwrap();
    let mut pinned = HashMap::new();
    for u in &users {
        let r = c.get("/", &[("X-User", u)]).await.unwrap();
        assert_eq!(r.status, 200);
        if r.body == ha[0].to_string() || r.body == ha[1].to_string() {
            pinned.insert(u.clone(), r.body);
        }
    }
    assert!(pinned.len() >= 4, "users pinned to b0/b1: {pinned:?}");

    // Load: kept-alive clients (each for its pinned users), and a client that connects for
    // every request (a listener that stopped accepting even briefly would refuse it).
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    let pinned_list: Vec<(String, String)> = pinned.into_iter().collect();
    for chunk in pinned_list.chunks(pinned_list.len().div_ceil(3)) {
        let (stop, chunk) = (stop.clone(), chunk.to_vec());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(web).await.unwrap();
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            'run: while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (u, backend) in &chunk {
                    match c.get("/", &[("X-User", u)]).await {
                        Ok(r) if r.status == 200 && r.body == *backend => ok += 1,
                        other => {
                            failed.push(format!("{u} (pinned to {backend}): {other:?}"));
                            match Client::connect(web).await {
                                Ok(n) => c = n,
                                Err(_) => break 'run,
                            }
                        }
                    }
                }
            }
            (ok, failed)
        }));
    }
    {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match get_once(web, "/").await {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => failed.push(format!("new connection: {other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    // Long-lived TCP connections through `db`, open across every reload.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(tcp_banner(db, None).await.unwrap());
    }

    for n in 1..=20 {
        rewrite(&config_path(&p), &cfg(n));
        if n % 5 == 0 {
            let before = p.log_text().matches("configuration reloaded").count();
            hup(&p);
            p.wait_log(
                &["configuration reloaded"],
                before + 1,
                Duration::from_secs(10),
            )
            .await;
        } else {
            let (code, out, err) = ctl(admin, None, &["reload"]);
            assert_eq!(code, 0, "round {n}: {out}{err}\n{}", p.log_text());
            assert!(out.starts_with("reloaded: "), "{out}");
            if n % 2 == 1 {
                assert!(out.contains(&format!("now listening: {extra}")), "{out}");
            } else {
                assert!(
                    out.contains(&format!("stopped listening: {extra}")),
                    "{out}"
                );
            }
        }
        // The service set and the backends are the file's.
        let rows = status(admin);
        let web_rows: Vec<&String> = rows.iter().filter(|r| r.0 == "web").map(|r| &r.1).collect();
        assert_eq!(
            web_rows.contains(&&ha[2].to_string()),
            n % 2 == 0,
            "round {n}: {rows:?}"
        );
        assert_eq!(
            web_rows.contains(&&ha[3].to_string()),
            n % 3 == 0,
            "round {n}: {rows:?}"
        );
        let extra_up = get_once(extra, "/").await;
        if n % 2 == 1 {
            let r = extra_up.unwrap_or_else(|e| panic!("round {n}: extra: {e}"));
            assert_eq!(r.body, ha[3].to_string());
        } else {
            assert!(extra_up.is_err(), "round {n}: extra still answers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in load {
        let (ok, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:#?}");
        total += ok;
    }
    assert!(total > 200, "the load ran ({total} requests)");
    // Every TCP connection opened before the first reload still relays.
    for (i, (banner, conn)) in conns.iter_mut().enumerate() {
        let msg = format!("still here {i}\n");
        conn.get_mut().write_all(msg.as_bytes()).await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("connection {i} to {banner} is silent"))
            .unwrap();
        assert_eq!(line, msg, "connection {i} to {banner}");
    }
    assert_eq!(t0.open() + t1.open(), 4);
    let log = p.log_text();
    assert!(!log.contains("reload refused"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_with_its_lines_and_the_old_one_keeps_serving() {
    let (a, b, list) = two().await;
    let (listen, admin) = (free_addr(), free_addr());
    let good = with_admin(admin, &service_toml("http", listen, "", &list));
    let p = Proxy::start(&good, listen).await;
    let path = config_path(&p);
    // Two mistakes: a scheduler that does not exist, a weight out of range.
    let broken = good
        .replacen(
            "mode = \"http\"",
            "mode = \"http\"\nscheduler = \"fastest\"",
            1,
        )
        .replacen("weight = 1", "weight = 9999", 1);
    rewrite(&path, &broken);
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    let file = path.display().to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(&file)).collect();
    assert!(lines.len() >= 2, "each error with its line: {err}");
    assert!(lines.iter().any(|l| l.contains("fastest")), "{err}");
    assert!(lines.iter().any(|l| l.contains("weight")), "{err}");
    // The API answers the same list.
    let (code, text) = api("POST", &format!("http://{admin}/api/v1/reload"), None, None);
    assert_eq!(code, 400, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(body["errors"].as_array().unwrap().len() >= 2, "{body}");
    // SIGHUP: refused and logged with the line.
    hup(&p);
    p.wait_log(&["reload refused", "fastest"], 1, Duration::from_secs(10))
        .await;
    // Still serving, both backends.
    let seen = tally(
        bodies(listen, 10, &[])
            .await
            .iter()
            .map(|r| r.body.as_str()),
    );
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A file whose new address is busy is refused too, nothing changed.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap();
    let with_busy = format!(
        "{good}\n[[service]]\nname = \"second\"\nlisten = \"{taken}\"\nmode = \"http\"\n{}",
        backends_toml(&[(a.addr, 1)])
    );
    rewrite(&path, &with_busy);
    let (code, _, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {taken}")), "{err}");
    assert_eq!(status(admin).iter().filter(|r| r.0 == "second").count(), 0);

    // Fixed: applied, with the second service; the first address kept its socket.
    drop(busy);
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("now listening: {taken}")), "{out}");
    assert_eq!(get_once(taken, "/").await.unwrap().body, a.addr.to_string());
    let seen = tally(
        bodies(listen, 10, &[])
            .await
            .iter()
            .map(|r| r.body.as_str()),
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_changes_survive_a_reload_unless_the_file_changed_the_backend() {
    let (a, b, list) = two().await;
    let c = HttpBackend::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = with_admin(admin, &service_toml("http", listen, "", &list));
    let p = Proxy::start(&cfg, listen).await;
    // A change that only a restart applies is reported, and the rest of the reload applies.
    rewrite(&config_path(&p), &cfg.replace("threads = 2", "threads = 3"));
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: [proxy] threads changed: it takes effect at the next restart"),
        "{out}"
    );
    rewrite(&config_path(&p), &cfg);
    let (sa, sb, sc) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    assert_eq!(ctl(admin, None, &["drain", "http-svc", &sb]).0, 0);
    assert_eq!(
        ctl(admin, None, &["add", "http-svc", &sc, "--name", "fe-c"]).0,
        0
    );
    // The same file again: the drain and the added backend stay.
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = status(admin);
    assert!(
        rows.contains(&("http-svc".into(), sb.clone(), "drain".into())),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.1 == "fe-c"), "{rows:?}");
    let seen = tally(
        bodies(listen, 12, &[])
            .await
            .iter()
            .map(|r| r.body.as_str()),
    );
    assert_eq!(
        seen.get(sb.as_str()),
        None,
        "drained b takes no new client: {seen:?}"
    );
    assert!(seen.contains_key(sc.as_str()), "{seen:?}");
    // The file changes b's weight: its values apply, the drain is dropped.
    let changed = cfg.replacen(
        &format!("address = \"{sb}\"\nweight = 1"),
        &format!("address = \"{sb}\"\nweight = 3"),
        1,
    );
    assert_ne!(changed, cfg, "the test edits b's weight");
    rewrite(&config_path(&p), &changed);
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = status(admin);
    assert!(
        rows.contains(&("http-svc".into(), sb.clone(), "ready".into())),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.1 == "fe-c"), "{rows:?}");
    assert!(rows.iter().any(|r| r.1 == sa), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_can_change_from_http_to_tcp_and_back() {
    let (a, _b, list) = two().await;
    let t = TcpBackend::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let http = with_admin(admin, &service_toml("http", listen, "", &list));
    let tcp = with_admin(admin, &service_toml("tcp", listen, "", &[(t.addr, 1)]));
    let p = Proxy::start(&http, listen).await;
    // A kept-alive http client from before: its connection is not cut by the change.
    let mut before = Client::connect(listen).await.unwrap();
    assert_eq!(before.get("/", &[]).await.unwrap().status, 200);
    rewrite(&config_path(&p), &tcp);
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("now listening: {listen}")), "{out}");
    let (banner, _) = tcp_banner(listen, None).await.unwrap();
    assert_eq!(banner, t.addr.to_string());
    let r = before.get("/", &[]).await.unwrap();
    assert_eq!(r.status, 200, "the old http connection still served");
    rewrite(&config_path(&p), &http);
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = get_once(listen, "/").await.unwrap();
    assert!(list.iter().any(|(x, _)| x.to_string() == r.body), "{r:?}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_and_certificates_are_loaded_before_the_switch() {
    let (a, b, list) = two().await;
    let (listen, secure, admin) = (free_addr(), free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let head = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[proxy]\nthreads = 2\nplugins_dir = \"{}\"\n",
        plugins.display()
    );
    let plain = |extra: &str| {
        format!(
            "{head}\n[[service]]\nname = \"web\"\nlisten = \"{listen}\"\n{extra}\n{}",
            backends_toml(&list)
        )
    };
    let pinned = |to: SocketAddr| {
        plain(&format!(
            "scheduler = \"plugin:pin\"\n[service.plugin.pin]\naddress = \"{to}\"\n"
        ))
    };
    let p = Proxy::start(&plain(""), listen).await;
    let path = config_path(&p);
    let served = async || {
        let list = bodies(listen, 10, &[]).await;
        tally(list.iter().map(|r| r.body.as_str()))
            .into_keys()
            .collect::<std::collections::BTreeSet<_>>()
    };

    // The plugin file is not there yet: refused at the line of the reference.
    rewrite(&path, &pinned(b.addr));
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{}:", path.display())) && err.contains("plugin:pin"),
        "{err}"
    );
    assert_eq!(served().await.len(), 2, "round robin as before");
    // With the plugin: loaded, and its settings apply.
    std::fs::copy(
        "../examples/plugins/lua/pin-backend.lua",
        plugins.join("pin.lua"),
    )
    .unwrap();
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        served().await.into_iter().collect::<Vec<_>>(),
        [b.addr.to_string()]
    );
    rewrite(&path, &pinned(a.addr));
    assert_eq!(ctl(admin, None, &["reload"]).0, 0);
    assert_eq!(
        served().await.into_iter().collect::<Vec<_>>(),
        [a.addr.to_string()]
    );

    // A TLS service whose certificate does not exist yet: refused, nothing listens.
    let ca = common::tls::Ca::new(dir.path());
    let cert_path = dir.path().join("web.pem");
    let with_tls = format!(
        "{}\n[[service]]\nname = \"secure\"\nlisten = \"{secure}\"\n\
         [[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        pinned(a.addr),
        cert_path.display(),
        dir.path().join("web.key").display(),
        backends_toml(&list)
    );
    rewrite(&path, &with_tls);
    let (code, _, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("web.pem"), "{err}");
    assert!(std::net::TcpStream::connect(secure).is_err());
    // Issued: the reload loads it and the new address serves TLS with it.
    let issued = ca.issue("web", &["web.example.com"], common::tls::KeyType::Ecdsa, 30);
    assert_eq!(issued.cert, cert_path);
    let (code, out, err) = ctl(admin, None, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let resolve = format!("web.example.com:{}:{}", secure.port(), secure.ip());
    let url = format!("https://web.example.com:{}/", secure.port());
    let cafile = ca.cert.display().to_string();
    let (status, _, body) =
        common::tls::curl(&["--cacert", &cafile, "--resolve", &resolve, &url]).unwrap();
    assert_eq!(status, 200);
    assert!(list.iter().any(|(x, _)| x.to_string() == body), "{body}");
}

/// `plugboard_plugin_instances` from the admin's metrics.
async fn plugin_instances(admin: SocketAddr) -> i64 {
    let text = scrape(admin).await;
    text.lines()
        .find_map(|l| l.strip_prefix("plugboard_plugin_instances "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no plugboard_plugin_instances in\n{text}"))
}

/// A reload replaces a service's plugin binding; the instances the workers held for the old
/// one go with it. They were kept in a process-wide thread-local table until the chaos soak
/// showed the proxy growing by about 1 MB per reload under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_plugin_bindings_take_their_instances_with_them() {
    let (a, b, list) = two().await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        "../examples/plugins/lua/pin-backend.lua",
        plugins.join("pin.lua"),
    )
    .unwrap();
    let threads = 2;
    let config = |to: SocketAddr| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[proxy]\nthreads = {threads}\nplugins_dir = \"{}\"\n\n\
             [[service]]\nname = \"web\"\nlisten = \"{listen}\"\nscheduler = \"plugin:pin\"\n\
             [service.plugin.pin]\naddress = \"{to}\"\n{}",
            plugins.display(),
            backends_toml(&list)
        )
    };
    let p = Proxy::start(&config(a.addr), listen).await;
    let path = config_path(&p);
    // One binding holds at most a spare per thread plus one, and one instance per worker.
    let bound = (2 * threads + 1) as i64;
    let rounds = 12;
    for round in 0..rounds {
        let to = if round % 2 == 0 { b.addr } else { a.addr };
        rewrite(&path, &config(to));
        let (code, out, err) = ctl(admin, None, &["reload"]);
        assert_eq!(code, 0, "{out}{err}");
        for _ in 0..4 {
            let served = bodies(listen, 3, &[]).await;
            assert!(served.iter().all(|r| r.body == to.to_string()));
        }
    }
    let mut last = 0;
    let settled = eventually(Duration::from_secs(5), async || {
        last = plugin_instances(admin).await;
        last <= bound
    })
    .await;
    assert!(
        settled,
        "{last} plugin instances alive after {rounds} reloads; one binding needs at most {bound}"
    );
}
