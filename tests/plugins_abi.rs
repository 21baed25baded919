//! The plugin ABI in four languages through the real binary: the `/admin` scheduler example
//! in Rust (SDK), C (clang, `sdk/c/plugboard.h`), AssemblyScript and Lua sends `/admin` to
//! the first backend and the rest round robin across the others; and shared data gives one
//! global rotation across two worker threads (WASM and Lua).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Most connections opened while waiting for both workers to serve.
const MAX_CONNS: usize = 64;

/// The Lua examples and test plugins, by path in the repository.
fn repo_file(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A proxy with `[proxy] threads = 2` whose one http service is scheduled by `plugin` (copied
/// into its plugins directory, returned, as `sched.<ext>`), over `backends`.
async fn proxy_with(
    plugin: &PathBuf,
    backends: &[HttpBackend],
) -> (Proxy, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ext = plugin.extension().unwrap().to_str().unwrap();
    std::fs::copy(plugin, dir.path().join(format!("sched.{ext}"))).unwrap();
    let listen = free_addr();
    let list: Vec<_> = backends.iter().map(|b| (b.addr, 1)).collect();
    let cfg = format!(
        "[proxy]\nthreads = 2\nplugins_dir = \"{}\"\n\n[[service]]\nname = \"web\"\nlisten = \"{listen}\"\nscheduler = \"plugin:sched\"\n{}",
        dir.path().display(),
        backends_toml(&list)
    );
    let proxy = Proxy::start(&cfg, listen).await;
    (proxy, listen, dir)
}

/// `seq` is one strict rotation over `members`: every member in the first `members.len()`
/// answers, then each answer repeats the one `members.len()` before it.
fn assert_strict_rotation(seq: &[String], members: &[String], what: &str) {
    let k = members.len();
    let mut first: Vec<&String> = seq.iter().take(k).collect();
    first.sort();
    let mut want: Vec<&String> = members.iter().collect();
    want.sort();
    assert_eq!(
        first, want,
        "{what}: the first {k} answers are not each backend once: {seq:?}"
    );
    for i in k..seq.len() {
        assert_eq!(
            seq[i],
            seq[i - k],
            "{what}: answer {i} breaks the rotation: {seq:?}"
        );
    }
    let counts = tally(seq.iter().map(String::as_str));
    let (lo, hi) = (
        counts.values().min().unwrap(),
        counts.values().max().unwrap(),
    );
    assert!(
        hi - lo <= 1,
        "{what}: counts {counts:?} differ by more than 1"
    );
}

/// `/admin` and `/admin/...` go to the first backend; everything else, sent in turn over
/// several connections, rotates strictly over the other three.
async fn admin_scheduler(plugin: PathBuf, what: &str) {
    let backends = [
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    ];
    let (proxy, listen, _plugins) = proxy_with(&plugin, &backends).await;
    let first = backends[0].addr.to_string();
    let rest: Vec<String> = backends[1..].iter().map(|b| b.addr.to_string()).collect();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(listen).await.unwrap());
    }
    for (i, path) in ["/admin", "/admin/users?id=3", "/admin/x"]
        .iter()
        .enumerate()
    {
        let r = clients[i % 4].get(path, &[]).await.unwrap();
        assert_eq!((r.status, &r.body), (200, &first), "{what}: {path}");
    }
    let mut seq = Vec::new();
    for i in 0..30 {
        let path = ["/", "/app/x", "/login?next=/admin", "/adm"][i % 4];
        let r = clients[i % 4].get(path, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{what}: {path}");
        seq.push(r.body);
    }
    assert!(
        !seq.contains(&first),
        "{what}: a non-admin request reached the first backend: {seq:?}"
    );
    assert_strict_rotation(&seq, &rest, what);
    assert!(
        !proxy.log_text().contains("plugin failed"),
        "{what}: {}",
        proxy.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_scheduler_in_rust() {
    if let Some(p) = sdk_plugin("rust-admin") {
        admin_scheduler(p, "rust").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_scheduler_in_c() {
    if let Some(p) = sdk_plugin("c-admin") {
        admin_scheduler(p, "c").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_scheduler_in_assemblyscript() {
    if let Some(p) = sdk_plugin("as-admin") {
        admin_scheduler(p, "assemblyscript").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_scheduler_in_lua() {
    admin_scheduler(repo_file("examples/plugins/lua/admin.lua"), "lua").await;
}

/// Both workers serve: connections are opened (each sending one request) until the plugin
/// has logged a second instance (instances are per worker thread). Then requests go in turn
/// over every connection. The answers are one strict rotation over the three backends, which
/// two per-thread counters would break as soon as the turns alternate between threads.
async fn global_rotation(plugin: PathBuf, what: &str) {
    let backends = [
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    ];
    let (proxy, listen, _plugins) = proxy_with(&plugin, &backends).await;
    let members: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let serving = |n: u32| format!("rotation instance {n} serving");
    let mut clients = Vec::new();
    let mut seq = Vec::new();
    while clients.len() < MAX_CONNS && !proxy.log_text().contains(&serving(1)) {
        let mut c = Client::connect(listen).await.unwrap();
        seq.push(c.get("/", &[]).await.unwrap().body);
        clients.push(c);
    }
    let log = proxy.log_text();
    assert!(
        log.contains(&serving(0)) && log.contains(&serving(1)),
        "{what}: {MAX_CONNS} connections did not reach both workers:\n{log}"
    );
    for i in 0..90 {
        let n = clients.len();
        seq.push(clients[i % n].get("/", &[]).await.unwrap().body);
    }
    let log = proxy.log_text();
    assert!(
        !log.contains(&serving(2)),
        "{what}: a third instance served:\n{log}"
    );
    assert!(!log.contains("plugin failed"), "{what}: {log}");
    assert_strict_rotation(&seq, &members, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_counter_rotates_globally_across_worker_threads_wasm() {
    if let Some(p) = sdk_plugin("c-rotation") {
        global_rotation(p, "wasm").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_counter_rotates_globally_across_worker_threads_lua() {
    global_rotation(repo_file("tests/plugins/rotation.lua"), "lua").await;
}

/// A hostile guest: every `shared_*` host function with pointers and lengths outside its
/// memory, and keys and values over their limits, gets the ABI's error codes and never takes
/// the proxy down. The module answers backend 1 only if every code was the documented one
/// (backend 0 at the first that was not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_host_functions_check_every_pointer_and_limit() {
    let checks = [
        // Out of memory bounds: -2.
        "(call $set (i32.const 65530) (i32.const 100) (i32.const 16) (i32.const 1))",
        "(call $set (i32.const 0) (i32.const -5) (i32.const 16) (i32.const 1))",
        "(call $set (i32.const 0) (i32.const 3) (i32.const 65535) (i32.const 2))",
        "(call $cas (i32.const 0) (i32.const 3) (i32.const 70000) (i32.const 5) (i32.const 16) (i32.const 1))",
        // Over a limit: -4 (a 257-byte key, a 4097-byte value).
        "(call $set (i32.const 0) (i32.const 257) (i32.const 16) (i32.const 1))",
        "(call $set (i32.const 0) (i32.const 3) (i32.const 16) (i32.const 4097))",
        "(call $get (i32.const 0) (i32.const 257) (i32.const 0) (i32.const 0))",
        // A good set, then its value copied to a buffer outside memory: -2.
        "(call $set (i32.const 0) (i32.const 3) (i32.const 16) (i32.const 4))",
        "(call $get (i32.const 0) (i32.const 3) (i32.const 65535) (i32.const 10))",
        // Compare-and-set: expected absent but present (0); expected matches, removes (1).
        "(call $cas (i32.const 0) (i32.const 3) (i32.const 0) (i32.const -1) (i32.const 16) (i32.const 1))",
        "(call $cas (i32.const 0) (i32.const 3) (i32.const 16) (i32.const 4) (i32.const 0) (i32.const -1))",
        "(call $get (i32.const 0) (i32.const 3) (i32.const 0) (i32.const 0))",
        // Counters outside 0-63: i64::MIN (compared as "is the minimum").
        "(i64.eq (call $add (i32.const 64) (i64.const 1)) (i64.const 0x8000000000000000))",
        "(i64.eq (call $add (i32.const -1) (i64.const 1)) (i64.const 0x8000000000000000))",
    ];
    let expect = [-2, -2, -2, -2, -4, -4, -4, 0, -2, 0, 1, -1, 1, 1];
    let body: String = checks
        .iter()
        .zip(expect)
        .map(|(c, e)| format!("(if (i32.ne {c} (i32.const {e})) (then (return (i32.const 0))))\n"))
        .collect();
    let wat = format!(
        r#"(module
  (import "plugboard" "shared_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "plugboard" "shared_set" (func $set (param i32 i32 i32 i32) (result i32)))
  (import "plugboard" "shared_cas" (func $cas (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "plugboard" "shared_counter_add" (func $add (param i32 i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "abc")
  (data (i32.const 16) "vvvv")
  (func (export "plugboard_abi_version") (result i32) (i32.const 1))
  (func (export "plugboard_hooks") (result i32) (i32.const 1))
  (func (export "plugboard_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "plugboard_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "plugboard_select_server") (param $n i32) (result i32)
{body}    (i32.const 1)))"#
    );
    let file = tempfile::Builder::new().suffix(".wasm").tempfile().unwrap();
    std::fs::write(file.path(), wat).unwrap();
    let backends = [HttpBackend::start().await, HttpBackend::start().await];
    let (proxy, listen, _plugins) = proxy_with(&file.path().to_path_buf(), &backends).await;
    let answers = bodies(listen, 4, &[]).await;
    for r in &answers {
        assert_eq!(
            r.body,
            backends[1].addr.to_string(),
            "a host function answered another code"
        );
    }
    assert!(
        !proxy.log_text().contains("plugin failed"),
        "{}",
        proxy.log_text()
    );
}

/// Shared data outlives the instances: a new version of the plugin file, then a configuration
/// reload (SIGHUP), each bring new instances, which number themselves from shared counter 1
/// after the old ones and carry on the rotation of shared counter 0 where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_survives_file_and_configuration_reloads() {
    let backends = [
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    ];
    let plugin = repo_file("tests/plugins/rotation.lua");
    let (proxy, listen, plugins) = proxy_with(&plugin, &backends).await;
    let members: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut client = Client::connect(listen).await.unwrap();
    let mut seq = Vec::new();
    for _ in 0..4 {
        seq.push(client.get("/", &[]).await.unwrap().body);
    }
    let source = std::fs::read_to_string(&plugin).unwrap();
    let tmp = plugins.path().join("sched.lua.new");
    std::fs::write(&tmp, format!("-- version 2\n{source}")).unwrap();
    std::fs::rename(&tmp, plugins.path().join("sched.lua")).unwrap();
    proxy
        .wait_log(&["plugin reloaded"], 1, Duration::from_secs(10))
        .await;
    // Requests until the new version's instance has served (bounded in count and time).
    let mut until = async |seq: &mut Vec<String>, line: &str| {
        for _ in 0..200 {
            if proxy.log_text().contains(line) {
                return true;
            }
            seq.push(client.get("/", &[]).await.unwrap().body);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(
        until(&mut seq, "rotation instance 1 serving").await,
        "no new instance after the file reload:\n{}",
        proxy.log_text()
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success(), "kill -HUP");
    proxy
        .wait_log(&["configuration reloaded"], 1, Duration::from_secs(10))
        .await;
    assert!(
        until(&mut seq, "rotation instance 2 serving").await,
        "no new instance after the configuration reload:\n{}",
        proxy.log_text()
    );
    for _ in 0..6 {
        seq.push(client.get("/", &[]).await.unwrap().body);
    }
    let log = proxy.log_text();
    assert_eq!(
        log.matches("rotation instance 0 serving").count(),
        1,
        "shared counter 1 started again:\n{log}"
    );
    assert!(!log.contains("plugin failed"), "{log}");
    assert_strict_rotation(&seq, &members, "across reloads");
}
