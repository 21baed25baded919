//! WASM and Lua plugins through the real binary: each hook, faults and their policy, hot
//! reload under load, and refusal of broken plugins.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A minimal ABI-v1 module implementing select-server with `body` (WAT, leaves an i32).
fn wat_scheduler(body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "plugboard_abi_version") (result i32) (i32.const 1))
  (func (export "plugboard_hooks") (result i32) (i32.const 1))
  (func (export "plugboard_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "plugboard_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "plugboard_select_server") (param $n i32) (result i32) {body}))"#
    )
}

/// Config with one http service per `(name, extra)` on its own port, all over `backends`.
fn services(
    plugins_dir: &Path,
    metrics: Option<SocketAddr>,
    list: &[(SocketAddr, &str)],
    backends: &[(SocketAddr, u32)],
) -> String {
    let mut s = format!(
        "[proxy]\nthreads = 2\nplugins_dir = \"{}\"\n",
        plugins_dir.display()
    );
    if let Some(m) = metrics {
        s.push_str(&format!("metrics = \"{m}\"\n"));
    }
    for (i, (listen, extra)) in list.iter().enumerate() {
        s.push_str(&format!(
            "\n[[service]]\nname = \"s{i}\"\nlisten = \"{listen}\"\n{extra}\n{}",
            backends_toml(backends)
        ));
    }
    s
}

/// The value of a counter line starting with `prefix` (labels included), or 0.
fn counter(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_and_lua_schedulers_pin_all_traffic() {
    let Some(wasm) = sdk_plugin("pin-backend") else {
        return;
    };
    let (a, b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, dir.path().join("pin-wasm.wasm")).unwrap();
    std::fs::copy(
        "../examples/plugins/lua/pin-backend.lua",
        dir.path().join("pin-lua.lua"),
    )
    .unwrap();
    let (l1, l2) = (free_addr(), free_addr());
    let cfg = services(
        dir.path(),
        None,
        &[
            (
                l1,
                &format!(
                    "scheduler = \"plugin:pin-wasm\"\n[service.plugin.pin-wasm]\naddress = \"{}\"",
                    b.addr
                ),
            ),
            (
                l2,
                &format!(
                    "scheduler = \"plugin:pin-lua\"\n[service.plugin.pin-lua]\naddress = \"{}\"",
                    a.addr
                ),
            ),
        ],
        &list,
    );
    let _p = Proxy::start(&cfg, l1).await;
    for r in bodies(l1, 50, &[]).await {
        assert_eq!(r.body, b.addr.to_string());
    }
    for r in bodies(l2, 50, &[]).await {
        assert_eq!(r.body, a.addr.to_string());
    }
    assert_eq!((a.hits(), b.hits()), (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_key_plugins_keep_users_sticky() {
    let Some(wasm) = sdk_plugin("header-key") else {
        return;
    };
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(HttpBackend::start().await);
    }
    let list: Vec<_> = bs.iter().map(|b| (b.addr, 1)).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, dir.path().join("hk-wasm.wasm")).unwrap();
    std::fs::copy(
        "../examples/plugins/lua/header-key.lua",
        dir.path().join("hk-lua.lua"),
    )
    .unwrap();
    let (l1, l2) = (free_addr(), free_addr());
    let settings = "header = \"X-User\"\necho = true";
    let cfg = services(
        dir.path(),
        None,
        &[
            (l1, &format!("persistence = {{ key = \"plugin:hk-wasm\" }}\n[service.plugin.hk-wasm]\n{settings}")),
            (l2, &format!("persistence = {{ key = \"plugin:hk-lua\" }}\n[service.plugin.hk-lua]\n{settings}")),
        ],
        &list,
    );
    let _p = Proxy::start(&cfg, l1).await;
    for listen in [l1, l2] {
        let mut homes = std::collections::HashSet::new();
        for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            let rs = bodies(listen, 6, &[("X-User", user)]).await;
            let first = &rs[0];
            for r in &rs {
                assert_eq!(r.body, first.body, "{user} moved");
                // The backend's name, its address by default.
                assert_eq!(
                    r.header("x-plugboard-backend"),
                    Some(first.body.as_str()),
                    "response step"
                );
            }
            // The key is case-insensitive in this plugin.
            let upper = bodies(listen, 1, &[("X-User", &user.to_uppercase())]).await;
            assert_eq!(upper[0].body, first.body);
            homes.insert(first.body.clone());
        }
        assert!(homes.len() >= 2, "users spread: {homes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_plugins_mark_backends_down_and_up() {
    let Some(wasm) = sdk_plugin("http-health") else {
        return;
    };
    let (a, b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, dir.path().join("hh-wasm.wasm")).unwrap();
    std::fs::write(
        dir.path().join("hh-lua.lua"),
        "function health_check(b)\n  local status = net.http_get(b.target, config.path, 500)\n  return status == 200, 10\nend\n",
    )
    .unwrap();
    let (l1, l2) = (free_addr(), free_addr());
    let check = "interval = \"200ms\", timeout = \"1s\", rise = 2, fall = 2";
    let cfg = services(
        dir.path(),
        None,
        &[
            (l1, &format!("health_check = {{ kind = \"plugin:hh-wasm\", {check} }}\n[service.plugin.hh-wasm]\npath = \"/health\"")),
            (l2, &format!("health_check = {{ kind = \"plugin:hh-lua\", {check} }}\n[service.plugin.hh-lua]\npath = \"/health\"")),
        ],
        &list,
    );
    let p = Proxy::start(&cfg, l1).await;
    b.set_health(503);
    for listen in [l1, l2] {
        let ok = eventually(Duration::from_secs(5), async || {
            bodies(listen, 10, &[])
                .await
                .iter()
                .all(|r| r.body == a.addr.to_string())
        })
        .await;
        assert!(ok, "{listen}: backend not taken out\n{}", p.log_text());
    }
    b.set_health(200);
    for listen in [l1, l2] {
        let ok = eventually(Duration::from_secs(5), async || {
            bodies(listen, 10, &[])
                .await
                .iter()
                .any(|r| r.body == b.addr.to_string())
        })
        .await;
        assert!(ok, "{listen}: backend not brought back");
    }
}

/// Every fault kind, WASM and Lua: requests keep succeeding (fallback policy), faults are
/// counted by kind, and the `reject` policy refuses instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_plugins_fall_back_and_are_counted() {
    let (_a, _b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("w-trap.wasm", &wat_scheduler("unreachable"), "trap"),
        ("w-loop.wasm", &wat_scheduler("(loop $l (br $l)) (i32.const 0)"), "timeout"),
        (
            "w-mem.wasm",
            &wat_scheduler("(loop $l (br_if $l (i32.ne (memory.grow (i32.const 64)) (i32.const -1)))) unreachable"),
            "memory",
        ),
        ("w-bad.wasm", &wat_scheduler("(i32.const 99)"), "invalid"),
        ("l-trap.lua", "function select_server(req, b) error('boom') end", "trap"),
        ("l-loop.lua", "function select_server(req, b) while true do end end", "timeout"),
        (
            "l-mem.lua",
            "function select_server(req, b)\n  return #string.rep('x', 64 * 1048576)\nend",
            "memory",
        ),
        ("l-bad.lua", "function select_server(req, b) return 99 end", "invalid"),
    ];
    let mut svc = Vec::new();
    for (file, text, _) in cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let name = file.split('.').next().unwrap();
        svc.push((free_addr(), format!("scheduler = \"plugin:{name}\"")));
    }
    let reject = free_addr();
    svc.push((
        reject,
        "scheduler = \"plugin:w-trap\"\non_plugin_error = \"reject\"".into(),
    ));
    let metrics = free_addr();
    let list_ref: Vec<(SocketAddr, &str)> = svc.iter().map(|(a, e)| (*a, e.as_str())).collect();
    let cfg = services(dir.path(), Some(metrics), &list_ref, &list);
    let p = Proxy::start(&cfg, svc[0].0).await;
    for ((listen, _), (file, _, _)) in svc.iter().zip(cases.iter()) {
        for r in bodies(*listen, 10, &[]).await {
            assert_eq!(r.status, 200, "{file}: {r:?}");
        }
    }
    for r in bodies(reject, 3, &[]).await {
        assert_eq!(r.status, 503, "reject policy");
    }
    let text = scrape(metrics).await;
    for (i, (file, _, kind)) in cases.iter().enumerate() {
        let name = file.split('.').next().unwrap();
        let labels = format!("plugin=\"{name}\",service=\"s{i}\"");
        let n = counter(
            &text,
            &format!("plugboard_plugin_faults_total{{kind=\"{kind}\",{labels}}}"),
        );
        // Every request either ran the plugin into its fault or was answered without calling
        // it (circuit open after repeated faults, or no fresh instance ready yet).
        let skipped = ["circuit_open", "not_ready"]
            .iter()
            .map(|r| counter(&text, &format!("plugboard_plugin_skipped_total{{plugin=\"{name}\",reason=\"{r}\",service=\"s{i}\"}}")))
            .sum::<f64>();
        assert!(
            n >= 1.0 && n + skipped == 10.0,
            "{file}: {n} {kind} faults, {skipped} skipped\n{text}\n{}",
            p.log_text()
        );
    }
    assert!(p.log_text().contains("plugin failed"), "faults are logged");
}

/// Replacing a plugin file under continuous load switches behaviour without a failed request;
/// broken and deleted replacements leave the last good version running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load() {
    let (a, b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    let lua = |addr: SocketAddr| {
        format!("function select_server(req, backends)\n  for i, b in ipairs(backends) do if b.address == \"{addr}\" then return i end end\nend\n")
    };
    let pick = |i: i32| wat_scheduler(&format!("(i32.const {i})"));
    std::fs::write(dir.path().join("pin.lua"), lua(a.addr)).unwrap();
    std::fs::write(dir.path().join("wpin.wasm"), pick(0)).unwrap();
    let (l1, l2) = (free_addr(), free_addr());
    let cfg = services(
        dir.path(),
        None,
        &[
            (l1, "scheduler = \"plugin:pin\""),
            (l2, "scheduler = \"plugin:wpin\""),
        ],
        &list,
    );
    let p = Proxy::start(&cfg, l1).await;

    // Continuous load on both services: kept-alive and fresh connections, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for (k, listen) in [l1, l2, l1, l2].into_iter().enumerate() {
        let (stop, failures, seen) = (stop.clone(), failures.clone(), seen.clone());
        load.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut c = Client::connect(listen).await.unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                n += 1;
                let r = if k >= 2 && n.is_multiple_of(3) {
                    get_once(listen, "/").await
                } else {
                    c.get("/", &[]).await
                };
                match r {
                    Ok(r) if r.status == 200 => seen.lock().unwrap().push((k % 2, r.body)),
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        c = Client::connect(listen).await.unwrap();
                    }
                }
            }
        }));
    }
    let latest = |svc: usize| {
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(s, _)| *s == svc)
            .map(|(_, b)| b.clone())
    };
    let both = eventually(Duration::from_secs(5), async || {
        latest(0).is_some() && latest(1).is_some()
    })
    .await;
    assert!(both, "no traffic yet\n{}", p.log_text());
    assert_eq!(latest(0), Some(a.addr.to_string()));
    assert_eq!(latest(1), Some(a.addr.to_string()));

    // Atomic replacement (write + rename) of the Lua file, in-place rewrite of the WASM file.
    let tmp = dir.path().join("pin.lua.tmp");
    std::fs::write(&tmp, lua(b.addr)).unwrap();
    std::fs::rename(&tmp, dir.path().join("pin.lua")).unwrap();
    std::fs::write(dir.path().join("wpin.wasm"), pick(1)).unwrap();
    for svc in [0, 1] {
        let ok = eventually(Duration::from_secs(5), async || {
            latest(svc) == Some(b.addr.to_string())
        })
        .await;
        assert!(ok, "service {svc} did not switch\n{}", p.log_text());
    }

    // Broken replacements are refused; deleting a file keeps the last good version.
    std::fs::write(dir.path().join("pin.lua"), "function select_server(\n").unwrap();
    std::fs::write(dir.path().join("wpin.wasm"), b"\0asm garbage").unwrap();
    p.wait_log(
        &["the previous version keeps running"],
        2,
        Duration::from_secs(5),
    )
    .await;
    std::fs::remove_file(dir.path().join("pin.lua")).unwrap();
    p.wait_log(&["plugin file deleted"], 1, Duration::from_secs(5))
        .await;
    let mark = seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(seen.len() > mark, "load kept flowing");
    assert!(
        seen[mark..].iter().all(|(_, b_)| *b_ == b.addr.to_string()),
        "last good versions keep serving"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request failed during reloads\n{}",
        p.log_text()
    );
    let log = p.log_text();
    assert!(log.contains("plugin reloaded"), "{log}");
    assert!(
        log.contains("syntax error"),
        "a broken Lua file is reported: {log}"
    );
    assert!(
        log.contains("not a valid WASM module"),
        "a broken WASM file is reported: {log}"
    );
    assert!(log.contains("plugin file deleted"), "{log}");
}

#[test]
fn broken_or_unsuitable_plugins_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("syn.lua"),
        "function select_server(\n  return 1\nend\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"\x7fELF not wasm").unwrap();
    std::fs::write(
        dir.path().join("sched.lua"),
        "function select_server(req, b) return 1 end\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("picky.lua"),
        "assert(config.port, 'setting port is required')\nfunction select_server() end\n",
    )
    .unwrap();
    let cfg = format!(
        r#"[proxy]
plugins_dir = "{}"

[[service]]
name = "a"
listen = "127.0.0.1:1"
scheduler = "plugin:syn"
[[service.backend]]
address = "127.0.0.1:2"

[[service]]
name = "b"
listen = "127.0.0.1:3"
scheduler = "plugin:junk"
persistence = {{ key = "plugin:sched" }}
health_check = {{ kind = "plugin:nothere" }}
[[service.backend]]
address = "127.0.0.1:2"

[[service]]
name = "c"
listen = "127.0.0.1:4"
scheduler = "plugin:picky"
[[service.backend]]
address = "127.0.0.1:2"
"#,
        dir.path().display()
    );
    let (_d, path) = write_config(&cfg);
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "F");
    let lines: Vec<&str> = err.lines().collect();
    let expect = [
        "F:7:13: plugin:syn: ",
        "F:14:13: plugin:junk: ",
        "F:15:23: plugin:sched: ",
        "F:16:25: plugin:nothere: not found: no nothere.wasm or nothere.lua in",
        "F:23:13: plugin:picky: ",
    ];
    assert_eq!(lines.len(), expect.len(), "{err}");
    for (l, e) in lines.iter().zip(expect) {
        assert!(l.starts_with(e), "{l:?} should start with {e:?}");
    }
    assert!(
        lines[0].contains("syntax error: syn.lua:2:"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("not a WASM module"), "{}", lines[1]);
    assert!(
        lines[2]
            .contains("does not implement the persistence-key hook (it implements: select-server)"),
        "{}",
        lines[2]
    );
    assert!(
        lines[4].contains("setting port is required"),
        "{}",
        lines[4]
    );
}

#[test]
fn plugin_check_runs_each_hook_once() {
    let lua = std::process::Command::new(BIN)
        .args([
            "plugin",
            "check",
            "../examples/plugins/lua/header-key.lua",
            "--settings",
            r#"{"header":"X-User","echo":true}"#,
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&lua.stdout);
    assert!(
        lua.status.success(),
        "{}",
        String::from_utf8_lossy(&lua.stderr)
    );
    assert!(out.contains("lua plugin, ABI version 1"), "{out}");
    assert!(
        out.contains("hooks: persistence-key, response step"),
        "{out}"
    );
    assert!(out.contains("persistence-key: key \"alice\""), "{out}");
    assert!(
        out.contains("response step: added [x-plugboard-backend: 127.0.0.1:9001]"),
        "{out}"
    );
    let Some(wasm) = sdk_plugin("pin-backend") else {
        return;
    };
    let w = std::process::Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&wasm)
        .args(["--settings", r#"{"address":"127.0.0.1:9003"}"#])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&w.stdout);
    assert!(
        out.contains("wasm plugin, ABI version 1")
            && out.contains("select-server: backend 2 (127.0.0.1:9003)"),
        "{out}"
    );
    let bad = std::process::Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&wasm)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "settings refused");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot start with settings"));
}

#[test]
fn example_plugin_configs_pass_check() {
    for cfg in [
        "../examples/plugins/lua-pin.toml",
        "../examples/plugins/wasm-pin.toml",
    ] {
        if cfg.contains("wasm") && sdk_plugin("pin-backend").is_none() {
            continue;
        }
        let out = std::process::Command::new(BIN)
            .args(["check", "--config", cfg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cfg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// tcp mode: a persistence-key plugin reading the client's first bytes. The proxy waits for a
/// whole first message (even split over several writes), forwards the bytes unchanged, and
/// balances without a key when the client says nothing within `inspect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_payload_key_sees_the_whole_first_message() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(TcpBackend::start().await);
    }
    let list: Vec<_> = bs.iter().map(|b| (b.addr, 1)).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("user.lua"),
        r#"-- key = the word after "USER " on the first line; false = wait for more bytes
function persistence_key(req)
  local line = string.match(req.payload or "", "^([^\n]*)\n")
  if line == nil then
    if #(req.payload or "") < 200 then return false end
    return nil
  end
  return string.match(line, "^USER (%w+)")
end
"#,
    )
    .unwrap();
    let listen = free_addr();
    let extra =
        "mode = \"tcp\"\npersistence = { key = \"plugin:user\" }\ninspect_timeout = \"300ms\"";
    let cfg = services(dir.path(), None, &[(listen, extra)], &list);
    let _p = Proxy::start(&cfg, listen).await;
    // Sends `parts` with pauses, then reads the banner and the echo of everything sent.
    let session = |parts: Vec<&'static [u8]>| async move {
        let s = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut r = BufReader::new(s);
        let mut sent = Vec::new();
        for p in &parts {
            r.get_mut().write_all(p).await.unwrap();
            sent.extend_from_slice(p);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let mut banner = String::new();
        r.read_line(&mut banner).await.unwrap();
        let mut echo = vec![0u8; sent.len()];
        r.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, sent, "bytes forwarded unchanged");
        banner.trim().to_string()
    };
    let mut homes = std::collections::HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let first: &'static [u8] = Box::leak(
            format!("USER {user}\nhello\n")
                .into_bytes()
                .into_boxed_slice(),
        );
        let home = session(vec![first]).await;
        // The same first message split over three writes lands on the same backend.
        let (a, rest) = first.split_at(3);
        let (b, c) = rest.split_at(4);
        for _ in 0..3 {
            assert_eq!(session(vec![a, b, c]).await, home, "{user} moved");
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "users spread: {homes:?}");
    // A client that says nothing is balanced without a key after inspect_timeout.
    let t = std::time::Instant::now();
    let (banner, _) = tcp_banner(listen, None).await.unwrap();
    assert!(bs.iter().any(|b| b.addr.to_string() == banner));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "waited for the first bytes"
    );
}

/// Messages speak the plugin author's language: a Lua plugin's backend numbers count from 1
/// (`plugin check` and the fault log alike), and a runtime fault names the file (and, for
/// Lua, the line), for WASM too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_messages_name_the_file_and_count_lua_backends_from_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("two.lua"),
        "function select_server(req, backends) return 2 end",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["plugin", "check"])
        .arg(dir.path().join("two.lua"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("select-server: backend 2 (127.0.0.1:9002)"),
        "{text}"
    );
    assert!(
        text.contains("sample backends: 1 127.0.0.1:9001, 2 127.0.0.1:9002, 3 127.0.0.1:9003 (numbered from 1)"),
        "{text}"
    );

    let cases = [
        ("seven.lua", "function select_server(req, backends) return 7 end".to_string()),
        (
            "faulty.lua",
            "-- a scheduler with a bug on line 4\nfunction select_server(req, backends)\n  local t = nil\n  return t.x\nend\n".to_string(),
        ),
        ("w-trap.wasm", wat_scheduler("unreachable")),
    ];
    let backends = [(free_addr(), 1), (free_addr(), 1), (free_addr(), 1)];
    let mut svc = Vec::new();
    for (file, text) in &cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let name = file.split('.').next().unwrap();
        svc.push((free_addr(), format!("scheduler = \"plugin:{name}\"")));
    }
    let list: Vec<(SocketAddr, &str)> = svc.iter().map(|(a, e)| (*a, e.as_str())).collect();
    let cfg = services(dir.path(), None, &list, &backends);
    let p = Proxy::start(&cfg, svc[0].0).await;
    for (listen, _) in &svc {
        let _ = get_once(*listen, "/").await;
    }
    let wanted = [
        [
            "plugin=seven",
            "file=seven.lua",
            "returned backend 7, but the pool has 3",
        ],
        [
            "plugin=faulty",
            "file=faulty.lua",
            "faulty.lua:4: attempt to index nil",
        ],
        ["plugin=w-trap", "file=w-trap.wasm", "trap"],
    ];
    for needles in wanted {
        let mut needles = needles.to_vec();
        needles.push("plugin failed");
        p.wait_log(&needles, 1, Duration::from_secs(10)).await;
    }
    // The start-up log: one line per service, one per plugin with its hooks; again after a
    // reload.
    let log = p.log_text();
    let listen = format!("listen={}", svc[0].0);
    let service = [listen.as_str(), "service=s0", "mode=http", "tls=false"];
    let plugin = [
        "plugin loaded",
        "plugin=faulty",
        "kind=lua",
        "faulty.lua",
        "hooks=select-server",
    ];
    for needles in [&service[..], &plugin[..]] {
        assert!(
            log.lines().any(|l| needles.iter().all(|n| l.contains(n))),
            "no line with {needles:?}:\n{log}"
        );
    }
    // SAFETY: a plain kill(2) on our child.
    unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
    p.wait_log(&plugin, 2, Duration::from_secs(10)).await;
    p.wait_log(&service, 2, Duration::from_secs(10)).await;
}

/// README's plugin guide, step 1: the Rust template copied outside this repository, with its
/// `plugboard-sdk` path pointed at this repository's `sdk/`, builds to wasm32 and passes
/// `plugboard plugin check`.
#[test]
fn rust_template_builds_outside_the_repository() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    common::assert_wasm_target();
    let copy = tempfile::tempdir().unwrap();
    assert!(
        !copy.path().starts_with(&repo),
        "the copy must be outside the repository"
    );
    let crate_dir = copy.path().join("my-sched");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    let template = repo.join("examples/plugins/round-robin");
    std::fs::copy(template.join("src/lib.rs"), crate_dir.join("src/lib.rs")).unwrap();
    // Step 1: rename the package, point the SDK dependency at this repository's sdk/.
    let manifest = std::fs::read_to_string(template.join("Cargo.toml")).unwrap();
    let sdk_line = "plugboard-sdk = { path = \"../../../sdk\" }";
    assert!(manifest.contains(sdk_line), "{manifest}");
    let manifest = manifest
        .replace("name = \"round-robin\"", "name = \"my-sched\"")
        .replace(
            sdk_line,
            &format!(
                "plugboard-sdk = {{ path = \"{}\" }}",
                repo.join("sdk").display()
            ),
        );
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap();
    // Step 2. A target directory shared between runs keeps it quick; offline, as the SDK's
    // dependencies are in cargo's cache once the workspace has built.
    let target = std::env::temp_dir().join("plugboard-template-test-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the copied template does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Step 3.
    let wasm = target.join("wasm32-unknown-unknown/release/my_sched.wasm");
    let check = std::process::Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&wasm)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("hooks: select-server"),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
