//! `plugboard plugin check`: load one plugin file (or a stock plugin by name) and run each of
//! its hooks once on a sample request, printing what it decided.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::ResponseHeader;

use super::contract::NetScope;
use super::log::PluginLog;
use super::runtime::{
    hook_names, Fault, HealthCall, Limits, SelectCall, HOOK_HEALTH, HOOK_KEY, HOOK_RESPONSE,
    HOOK_SELECT,
};
use super::slot::{Runtimes, Source};
use super::stock;
use crate::balance::hooks::{Key, KeyOutcome, Request};
use crate::balance::identity::CookieKey;
use crate::balance::pool::Pool;
use crate::config::{BackendConfig, Mode, DEFAULT_SECRET};

/// Loads `path` (a file, or a stock plugin's name), then runs each of its hooks once on a
/// sample request (`GET /` from 127.0.0.1:40000 with `X-User: alice`) and a pool of three
/// backends (127.0.0.1:9001-9003). Returns a human report, or why the plugin cannot load.
pub fn exercise(path: &Path, settings: &str, limits: Limits) -> Result<String, String> {
    let runtimes = Runtimes::new()?;
    // A path that does not exist may name a stock plugin.
    let loaded = match (path.exists(), path.to_str().and_then(stock::get)) {
        (false, Some(bytes)) => runtimes.load(
            Source::Stock(path.to_str().unwrap_or(""), bytes),
            settings,
            limits,
        )?,
        _ => runtimes.load(Source::File(path), settings, limits)?,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} plugin, ABI version {}",
        path.display(),
        loaded.kind(),
        loaded.abi
    );
    let _ = writeln!(out, "hooks: {}", hook_names(loaded.hooks));
    let log = Arc::new(PluginLog::new(&path.display().to_string(), "sample", None));
    let mut inst = loaded
        .code
        .instantiate(settings, limits, log)
        .map_err(|f| format!("cannot start with settings {settings}: {}", f.message))?;
    let backends: Vec<BackendConfig> = (1..=3)
        .map(|i| {
            let address = SocketAddr::from(([127, 0, 0, 1], 9000 + i));
            BackendConfig {
                hostname: None,
                name: address.to_string(),
                address,
                weight: 1,
                enabled: true,
                max_connections: None,
            }
        })
        .collect();
    let pool = Pool::new("sample", &backends, None, &CookieKey::new(DEFAULT_SECRET));
    let first = usize::from(loaded.kind() == "lua");
    let listed: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{} {}", i + first, b.address))
        .collect();
    let _ = writeln!(
        out,
        "sample backends: {} (numbered from {first})",
        listed.join(", ")
    );
    let mut header =
        pingora::http::RequestHeader::build("GET", b"/", None).map_err(|e| e.to_string())?;
    let _ = header.insert_header("host", "example.test");
    let _ = header.insert_header("x-user", "alice");
    let _ = header.insert_header("cookie", "session=s1");
    let req = Request {
        service: "sample",
        mode: Mode::Http,
        client: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        http: Some(&header),
        payload: &[],
        key: None,
    };
    let show = |r: Result<String, Fault>| match r {
        Ok(s) => s,
        Err(f) => format!("FAILED ({}): {}", f.kind.as_str(), f.message),
    };
    // Backends as the plugin numbers them: from 1 in Lua, from 0 in WASM.
    let name = |i: usize| match pool.backends().get(i) {
        Some(b) if b.name == b.address.to_string() => {
            format!("backend {} ({})", i + first, b.address)
        }
        Some(b) => format!("backend {} {} ({})", i + first, b.name, b.address),
        None => format!("backend {}, which does not exist", i + first),
    };
    if loaded.hooks & HOOK_SELECT != 0 {
        let call = SelectCall {
            req: &req,
            pool: &pool,
            avoid: &[],
        };
        let r = inst.select(&call).map(|p| match p {
            Some(i) => name(i),
            None => "no opinion".into(),
        });
        let _ = writeln!(out, "select-server: {}", show(r));
    }
    if loaded.hooks & HOOK_KEY != 0 {
        let r = inst.key(&req, &pool).map(|k| match k {
            KeyOutcome::Key(Key::Owned(b)) => format!("key {:?}", String::from_utf8_lossy(&b)),
            KeyOutcome::Backend(i) => format!("names {}", name(i)),
            KeyOutcome::NeedMore => "needs more bytes".into(),
            other => format!("{other:?}"),
        });
        let _ = writeln!(out, "persistence-key: {}", show(r));
    }
    if loaded.hooks & HOOK_RESPONSE != 0 {
        let mut resp = ResponseHeader::build(200, None).map_err(|e| e.to_string())?;
        let r = inst.on_response(&req, None, 0, &pool, &mut resp).map(|_| {
            let added: Vec<String> = resp
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            format!("added [{}]", added.join(", "))
        });
        let _ = writeln!(out, "response step: {}", show(r));
    }
    if loaded.hooks & HOOK_HEALTH != 0 {
        let target = pool.get(0).address;
        let budget = Duration::from_secs(1);
        let call = HealthCall {
            pool: &pool,
            backend: 0,
            target,
            budget,
            net: NetScope {
                target,
                deadline: Instant::now() + budget,
            },
        };
        let r = inst.health(&call).map(|h| {
            format!(
                "{} load {:?} (checked {target})",
                if h.up { "up" } else { "down" },
                h.load
            )
        });
        let _ = writeln!(out, "health-check: {}", show(r));
    }
    Ok(out)
}
