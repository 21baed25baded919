//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays
//! their committed corpora on stable: the parsers in this crate that read bytes a stranger
//! controls, driven the way the proxy drives them, with the invariants they must keep
//! asserted. The parsers stay private to their modules; this is the one narrow door to them.
//! Not an API: every function panics when an invariant breaks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::{RequestHeader, ResponseHeader};

use crate::balance::hooks::{find_cookie, KeyOutcome, PersistenceKey, Request};
use crate::balance::identity::CookieKey;
use crate::balance::persistence::InsertedCookie;
use crate::balance::pool::Pool;
use crate::config::{BackendConfig, Config, Mode};
use crate::plugin::contract::NetScope;
use crate::plugin::log::PluginLog;
use crate::plugin::lua::LuaRuntime;
use crate::plugin::runtime::{Code, HealthCall, Instance, Limits, Runtime};
use crate::plugin::wasm::WasmRuntime;
use crate::proxy_protocol::accept::{frame, parse, Frame, MAX_HEADER};

/// A PROXY protocol header as `proxy_protocol::accept` reads it: the first byte sets how many
/// bytes arrive per read (1-255), the rest is the stream. Framing piece by piece must agree
/// with framing the whole, and never claim more bytes than it has seen.
pub fn proxy_header(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let whole = frame_once(stream);
    let mut consumed = 0;
    let mut arrived = 0;
    loop {
        arrived = (arrived + chunk).min(stream.len()).min(MAX_HEADER);
        if arrived == consumed {
            return;
        }
        match frame(&stream[..arrived]) {
            Err(_) => return,
            Ok(Frame::More) if arrived == MAX_HEADER => return,
            Ok(Frame::More) => consumed = arrived,
            Ok(Frame::Complete(total)) => {
                assert!(
                    total >= consumed && total <= arrived,
                    "framed {total} of {arrived}"
                );
                assert_eq!(whole, Some(total), "piecewise framing disagrees");
                let _ = parse(&stream[..total]);
                return;
            }
        }
    }
}

/// The header length when all of `stream` is there at once.
fn frame_once(stream: &[u8]) -> Option<usize> {
    let seen = &stream[..stream.len().min(MAX_HEADER)];
    match frame(seen) {
        Ok(Frame::Complete(n)) if !seen.is_empty() => Some(n),
        _ => None,
    }
}

/// Where fuzzed configurations claim to live: a directory that does not exist, so relative
/// paths in them resolve to nothing.
const CONFIG_PATH: &str = "/nonexistent/plugboard-fuzz/plugboard.toml";

/// A configuration file: never a panic, and every error positioned (`FILE:LINE:COL`).
pub fn config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(CONFIG_PATH);
    if let Err(errors) = Config::parse(path, src) {
        assert!(!errors.0.is_empty(), "refused without an error");
        for e in &errors.0 {
            assert_eq!(e.file, path);
            assert!(e.line >= 1 && e.col >= 1, "unpositioned error: {e}");
        }
    }
}

/// The backends every hook target runs against.
fn pool() -> Pool {
    let backends: Vec<BackendConfig> = ["127.77.0.1:9", "10.0.0.2:80", "[::1]:8080"]
        .iter()
        .enumerate()
        .map(|(i, a)| BackendConfig {
            hostname: None,
            name: format!("b{i}"),
            address: a.parse().unwrap(),
            weight: i as u32 + 1,
            enabled: true,
            max_connections: None,
        })
        .collect();
    Pool::new("fuzz", &backends, None, &CookieKey::new(b"fuzz"))
}

thread_local! {
    static POOL: Pool = pool();
}

/// A `Cookie` header: the first byte is the cookie name's length, then the name, then the
/// header value. The value found lies inside the header; the inserted-cookie key names a
/// backend only for exactly its cookie id.
pub fn cookie(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (name, header) = rest.split_at(usize::from(n).min(rest.len()));
    if let Some(v) = find_cookie(header, name) {
        let start = v.as_ptr() as usize - header.as_ptr() as usize;
        assert!(start + v.len() <= header.len());
        assert!(!v.contains(&b';'), "a value spans pairs");
    }
    let (Ok(name), Ok(value)) = (
        std::str::from_utf8(name),
        http::HeaderValue::from_bytes(header),
    ) else {
        return;
    };
    let mut h = RequestHeader::build("GET", b"/", None).unwrap();
    h.append_header(http::header::COOKIE, value).unwrap();
    let req = request(Mode::Http, Some(&h), &[]);
    POOL.with(|pool| match InsertedCookie::new(name).key(&req, pool) {
        KeyOutcome::Backend(i) => {
            assert_eq!(req.cookie(name), Some(&pool.get(i).cookie_id[..]));
        }
        KeyOutcome::None => {}
        _ => panic!("an inserted cookie answers a backend or nothing"),
    });
}

fn request<'a>(mode: Mode, http: Option<&'a RequestHeader>, payload: &'a [u8]) -> Request<'a> {
    Request {
        service: "fuzz",
        mode,
        client: Some(SocketAddr::from(([192, 0, 2, 7], 40000))),
        http,
        payload,
        key: None,
    }
}

const LIMITS: Limits = Limits {
    deadline: Duration::from_millis(100),
    memory: 16 << 20,
};

/// The time a fuzzed health check may take, network helpers included: the checked backend's
/// host is `127.77.0.1`, where nothing listens, so a connection is refused at once.
const HEALTH_BUDGET: Duration = Duration::from_millis(20);

/// A hostile WASM guest ([`HOSTILE_WAT`]) whose program is the input: each step calls one
/// host function of the ABI with argument values taken from the input (any pointer, length,
/// index, field, property). Run as the persistence key (which reads the program from the
/// payload), the response step and the health check, so every host function is live.
pub fn wasm_abi(data: &[u8]) {
    thread_local! {
        static CODE: Arc<dyn Code> = WasmRuntime::new()
            .and_then(|rt| rt.compile(HOSTILE_WAT.as_bytes(), "hostile.wat", "{}", LIMITS))
            .expect("the hostile guest compiles")
            .code;
    }
    CODE.with(|code| run_hooks(code.as_ref(), data));
}

/// A hostile Lua plugin ([`HOSTILE_LUA`]) whose program is the input: each step calls one
/// function of the Lua API (`req`, `backends`, a backend, `agent`, `net`, `log`, `print`)
/// with values of any type made from the input. Run as the WASM guest is.
pub fn lua_api(data: &[u8]) {
    thread_local! {
        static CODE: Arc<dyn Code> = LuaRuntime
            .compile(HOSTILE_LUA.as_bytes(), "hostile.lua", "{}", LIMITS)
            .expect("the hostile script compiles")
            .code;
    }
    CODE.with(|code| run_hooks(code.as_ref(), data));
}

/// One fresh instance: the persistence key of a tcp connection whose payload is `program`
/// (the plugin keeps it), then the response step of an HTTP request with headers and cookies
/// to look up, then a health check. A fault ends the run, as it retires the instance in the
/// proxy; what matters is that the host survives.
fn run_hooks(code: &dyn Code, program: &[u8]) {
    let log = LOG.with(Arc::clone);
    let mut inst: Box<dyn Instance> = code.instantiate("{}", LIMITS, log).unwrap();
    let pool = pool();
    let mut h = RequestHeader::build("GET", b"/p?q=1", None).unwrap();
    h.append_header("cookie", "MS-WSMAN=x; s=1").unwrap();
    h.append_header("x-user", "alice").unwrap();
    let conn = request(Mode::Tcp, None, program);
    match inst.key(&conn, &pool) {
        Ok(KeyOutcome::Backend(i)) => assert!(i < pool.len(), "backend {i} of {}", pool.len()),
        Ok(_) => {}
        Err(_) => return,
    }
    let req = request(Mode::Http, Some(&h), &[]);
    let mut resp = ResponseHeader::build(200, None).unwrap();
    if inst.on_response(&req, None, 0, &pool, &mut resp).is_err() {
        return;
    }
    let target = pool.get(0).address;
    let call = HealthCall {
        pool: &pool,
        backend: 0,
        target,
        budget: HEALTH_BUDGET,
        net: NetScope {
            target,
            deadline: Instant::now() + HEALTH_BUDGET,
        },
    };
    let _ = inst.health(&call);
}

thread_local! {
    static LOG: Arc<PluginLog> = Arc::new(PluginLog::new("hostile", "fuzz", None));
}

/// The hostile WASM guest. Its program (up to 28 KiB at 0x8000) is a byte string of steps:
/// an opcode byte (modulo the 18 host functions) and the function's arguments, 4 bytes
/// little-endian each (zero past the end). It keeps no state but the program.
pub const HOSTILE_WAT: &str = include_str!("fuzz_entry/hostile.wat");

/// The hostile Lua plugin (see [`lua_api`]).
pub const HOSTILE_LUA: &str = include_str!("fuzz_entry/hostile.lua");
