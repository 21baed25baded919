//! One call of each hook with 16 backends: built-in vs WASM plugin vs Lua plugin.
//!
//! The plugins are the example plugins (`examples/plugins/`): WASM ones built by
//! `scripts/build-plugins` into `target/plugins/`. What is timed is what the proxy calls per
//! request: `Balancer::decide` (select-server, its slot taken and given back) and `Balancer::key` (persistence-key); the
//! health check runs off the request path and is timed through its plugin thread.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use plugboard::balance::balancer::Keyed;
use plugboard::balance::hooks::{Key, KeyOutcome, Request};
use plugboard::config::{Config, Mode};

const BACKENDS: usize = 16;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A plugins dir with the example plugins; `None` for WASM ones that are not built.
fn plugins_dir() -> (tempfile_dir::Dir, bool) {
    let dir = tempfile_dir::Dir::new();
    let lua = root().join("examples/plugins/lua");
    std::fs::copy(lua.join("round-robin.lua"), dir.0.join("rr-lua.lua")).unwrap();
    std::fs::copy(lua.join("header-key.lua"), dir.0.join("hk-lua.lua")).unwrap();
    std::fs::write(
        dir.0.join("up-lua.lua"),
        "function health_check(b) return true end\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("up-wasm.wasm"),
        r#"(module (memory (export "memory") 1)
  (func (export "plugboard_abi_version") (result i32) (i32.const 1))
  (func (export "plugboard_hooks") (result i32) (i32.const 4))
  (func (export "plugboard_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "plugboard_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "plugboard_health_check") (param i32) (result i32) (i32.const 1)))"#,
    )
    .unwrap();
    let built = root().join("target/plugins");
    let mut wasm = true;
    for (from, to) in [("round-robin", "rr-wasm"), ("header-key", "hk-wasm")] {
        if std::fs::copy(
            built.join(format!("{from}.wasm")),
            dir.0.join(format!("{to}.wasm")),
        )
        .is_err()
        {
            wasm = false;
        }
    }
    if !wasm {
        eprintln!(
            "!!! WASM example plugins not built (run ./scripts/build-plugins): WASM rows skipped"
        );
    }
    (dir, wasm)
}

mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("plugboard-bench-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn config(dir: &Path, wasm: bool) -> Config {
    let backends: String = (0..BACKENDS)
        .map(|i| {
            format!(
                "[[service.backend]]\naddress = \"127.0.0.1:{}\"\n",
                20000 + i
            )
        })
        .collect();
    let mut services = vec![
        ("builtin", "scheduler = \"round_robin\"\npersistence = { key = \"header:X-User\" }".to_string()),
        ("lua", "scheduler = \"plugin:rr-lua\"\npersistence = { key = \"plugin:hk-lua\" }\nhealth_check = { kind = \"plugin:up-lua\" }\n[service.plugin.hk-lua]\nheader = \"X-User\"".to_string()),
    ];
    if wasm {
        services.push(("wasm", "scheduler = \"plugin:rr-wasm\"\npersistence = { key = \"plugin:hk-wasm\" }\nhealth_check = { kind = \"plugin:up-wasm\" }\n[service.plugin.hk-wasm]\nheader = \"X-User\"".to_string()));
    }
    // Shared persistence: Built::new makes the Redis link but nothing connects, and lookups
    // never leave the process, so the table is timed without a Redis.
    services.push((
        "shared",
        "scheduler = \"round_robin\"\npersistence = { key = \"header:X-User\", shared = true }"
            .to_string(),
    ));
    let mut text = format!(
        "[proxy]\nplugins_dir = \"{}\"\nredis = \"redis://127.0.0.1:1/0\"\n",
        dir.display()
    );
    for (i, (name, extra)) in services.iter().enumerate() {
        text.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{}\"\n{extra}\n{backends}",
            30000 + i
        ));
    }
    Config::parse(&dir.join("bench.toml"), &text).expect("bench config")
}

/// The request each service's hooks see.
fn request<'a>(
    b: &'a plugboard::balance::balancer::Balancer,
    header: &'a RequestHeader,
    client: SocketAddr,
) -> Request<'a> {
    Request {
        service: &b.config().name,
        mode: Mode::Http,
        client: Some(client),
        http: Some(header),
        payload: &[],
        key: None,
    }
}

fn hooks(c: &mut Criterion) {
    let (dir, wasm) = plugins_dir();
    let cfg = config(&dir.0, wasm);
    let built = plugboard::server::Built::new(cfg).expect("plugins load");
    if let Some(reg) = &built.plugins {
        reg.warm();
    }
    let balancers = &built.balancers;
    let mut header = RequestHeader::build("GET", b"/index.html", None).unwrap();
    header.insert_header("host", "example.test").unwrap();
    header.insert_header("x-user", "alice").unwrap();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();

    let mut g = c.benchmark_group("select-server");
    for b in balancers {
        let req = request(b, &header, client);
        g.bench_function(b.config().name.as_str(), |bench| {
            bench.iter(|| black_box(b.decide(black_box(&req), &Keyed::none(), &[])))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("persistence-key");
    for b in balancers {
        let req = request(b, &header, client);
        g.bench_function(b.config().name.as_str(), |bench| {
            bench.iter(|| black_box(b.key(black_box(&req))))
        });
    }
    g.finish();

    // A pinned key found again: the local table, and the shared one.
    let mut g = c.benchmark_group("persistence lookup (hit)");
    for b in balancers
        .iter()
        .filter(|b| matches!(b.config().name.as_str(), "builtin" | "shared"))
    {
        let req = request(b, &header, client);
        let key = Keyed {
            outcome: KeyOutcome::Key(Key::Borrowed(b"alice")),
            kind: 0,
        };
        b.decide(&req, &key, &[]);
        g.bench_function(b.config().name.as_str(), |bench| {
            bench.iter(|| black_box(b.decide(black_box(&req), &key, &[])))
        });
    }
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("health-check (plugin call, no I/O)");
    for b in balancers.iter().filter(|b| b.health().is_some()) {
        let (check, _) = b.health().unwrap();
        let check = Arc::clone(check);
        let pool = b.pool.clone();
        let target = pool.get(0).address;
        g.bench_function(b.config().name.as_str(), |bench| {
            bench.iter(|| rt.block_on(check.check(&pool, 0, target, Duration::from_secs(1))))
        });
    }
    g.finish();
}

criterion_group!(benches, hooks);
criterion_main!(benches);
