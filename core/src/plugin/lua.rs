//! Lua plugins on mlua (Lua 5.4, vendored).
//!
//! Each instance is its own Lua state (per binding, per thread), so a plugin that hogs memory
//! cannot starve another. The state is sandboxed: only the `string`, `table`, `math` and `utf8`
//! libraries and a trimmed base library (no `load`, `loadstring`, `dofile`, `loadfile`,
//! `require`, `collectgarbage`, `io`, `os`, `debug`, `string.dump`); source is loaded as a text
//! chunk only. A memory limit caps the state, and an instruction-count hook stops a call that
//! exceeds its budget (`INSTRUCTIONS_PER_MS` per millisecond of the configured deadline).
//!
//! Globals a plugin defines: `select_server(req, backends)`, `persistence_key(req)`,
//! `health_check(backend)`, `on_response(served, named)`. The settings table is `config`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mlua::{
    chunk::ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState,
};
use pingora::http::ResponseHeader;

use super::{
    Fault, FaultKind, Limits, SelectArgs, HOOK_HEALTH, HOOK_KEY, HOOK_RESPONSE, HOOK_SELECT,
};
use crate::hooks::{HealthReport, Key, KeyOutcome, Request};
use crate::pool::Pool;

/// Instruction budget per millisecond of deadline (a conservative Lua 5.4 speed).
pub const INSTRUCTIONS_PER_MS: u64 = 50_000;
/// The hook runs every this many instructions.
const HOOK_EVERY: u32 = 1_000;

/// State shared between an instance and the Rust functions it exposes to Lua.
#[derive(Default)]
struct Ctx {
    req: Cell<Option<*const Request<'static>>>,
    pool: Cell<Option<*const Pool>>,
    avoid: Cell<Option<*const [usize]>>,
    /// Health-check calls: network functions allowed.
    net: Cell<bool>,
    /// Instructions left in the current call, in units of `HOOK_EVERY`.
    budget: Cell<u64>,
    out_of_budget: Cell<bool>,
}

impl Ctx {
    // SAFETY (all three): set from references that outlive the call and cleared when it
    // returns (see `Instance::scoped`).
    fn req(&self) -> Option<&Request<'static>> {
        self.req.get().map(|p| unsafe { &*p })
    }
    fn pool(&self) -> Option<&Pool> {
        self.pool.get().map(|p| unsafe { &*p })
    }
    fn avoid(&self) -> &[usize] {
        self.avoid.get().map(|p| unsafe { &*p }).unwrap_or(&[])
    }
}

/// Request fields served lazily by `req`'s `__index`.
const REQUEST_FIELDS: [(&str, i32); 8] = [
    ("service", super::wasm::field::SERVICE),
    ("mode", super::wasm::field::MODE),
    ("client_ip", super::wasm::field::CLIENT_IP),
    ("key", super::wasm::field::KEY),
    ("method", super::wasm::field::METHOD),
    ("path", super::wasm::field::PATH),
    ("host", super::wasm::field::HOST),
    ("payload", super::wasm::field::PAYLOAD),
];

fn sandbox(limits: Limits) -> Result<(Lua, Rc<Ctx>), String> {
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8,
        LuaOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let g = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "require",
        "collectgarbage",
    ] {
        g.raw_set(name, Value::Nil).map_err(|e| e.to_string())?;
    }
    if let Ok(s) = g.raw_get::<Table>("string") {
        let _ = s.raw_set("dump", Value::Nil);
    }
    let print = lua
        .create_function(|_, args: mlua::Variadic<Value>| {
            let parts: Vec<String> = args
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}")))
                .collect();
            tracing::info!(target: "plugin", "{}", parts.join("\t"));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    g.raw_set("print", print).map_err(|e| e.to_string())?;
    lua.set_memory_limit(limits.memory)
        .map_err(|e| e.to_string())?;

    let ctx = Rc::new(Ctx::default());
    let c = ctx.clone();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            let left = c.budget.get();
            if left == 0 {
                c.out_of_budget.set(true);
                return Err(mlua::Error::RuntimeError(
                    "instruction budget exhausted".into(),
                ));
            }
            c.budget.set(left - 1);
            Ok(VmState::Continue)
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((lua, ctx))
}

fn budget_units(d: Duration) -> u64 {
    (d.as_millis() as u64 * INSTRUCTIONS_PER_MS / HOOK_EVERY as u64).max(100)
}

fn load_chunk(lua: &Lua, ctx: &Ctx, src: &str, limits: Limits) -> mlua::Result<()> {
    ctx.budget
        .set(budget_units(limits.deadline.max(Duration::from_secs(1))));
    lua.load(src)
        .set_name("=plugin")
        .set_mode(ChunkMode::Text)
        .exec()
}

/// Compiles and runs a script once in a scratch sandbox with `settings` as `config`; returns
/// its hook set.
pub fn inspect(src: &str, settings: &str, limits: Limits) -> Result<u32, String> {
    let inst = Instance::new(src, settings, limits).map_err(|f| f.message)?;
    let g = inst.lua.globals();
    let mut hooks = 0;
    for (bit, name) in [
        (HOOK_SELECT, "select_server"),
        (HOOK_KEY, "persistence_key"),
        (HOOK_HEALTH, "health_check"),
        (HOOK_RESPONSE, "on_response"),
    ] {
        if matches!(g.raw_get::<Value>(name), Ok(Value::Function(_))) {
            hooks |= bit;
        }
    }
    Ok(hooks)
}

/// The first line of a Lua error, which carries `plugin:LINE:` for syntax and runtime errors.
fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        e => e.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

/// JSON settings as a Lua value.
fn to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(a) => {
            let t = lua.create_table()?;
            for (i, x) in a.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(o) => {
            let t = lua.create_table()?;
            for (k, x) in o {
                t.raw_set(k.as_str(), to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
    })
}

pub struct Instance {
    lua: Lua,
    ctx: Rc<Ctx>,
    select: Option<Function>,
    key: Option<Function>,
    response: Option<Function>,
    health: Option<Function>,
    /// The `req` argument: methods `header`/`cookie`; other fields come from `__index`,
    /// read from the current call on demand.
    req: Table,
    /// The `backends` argument, built on the first call: static fields (`address`, `index`,
    /// `weight`) are stored, live ones (`active`, `load`, `healthy`) come from `__index`.
    backends: Option<Table>,
    backend_meta: Table,
    budget: u64,
}

impl Instance {
    pub fn new(src: &str, settings: &str, limits: Limits) -> Result<Instance, Fault> {
        let init = |m: String| Fault::new(FaultKind::Init, m);
        let (lua, ctx) = sandbox(limits).map_err(init)?;
        let settings: serde_json::Value =
            serde_json::from_str(settings).map_err(|e| init(e.to_string()))?;
        let cfg = to_lua(&lua, &settings).map_err(|e| init(e.to_string()))?;
        lua.globals()
            .raw_set("config", cfg)
            .map_err(|e| init(e.to_string()))?;
        load_chunk(&lua, &ctx, src, limits).map_err(|e| init(lua_message(&e)))?;
        let g = lua.globals();
        let func = |name: &str| g.raw_get::<Option<Function>>(name).ok().flatten();
        let (select, key, response, health) = (
            func("select_server"),
            func("persistence_key"),
            func("on_response"),
            func("health_check"),
        );
        let req = lua.create_table().map_err(|e| init(e.to_string()))?;
        let c = ctx.clone();
        let header = lua
            .create_function(move |lua, (_, name): (Value, mlua::LuaString)| {
                let v = c
                    .req()
                    .and_then(|r| r.header(&name.to_str().ok()?).map(|v| v.to_vec()));
                v.map(|v| lua.create_string(v)).transpose()
            })
            .map_err(|e| init(e.to_string()))?;
        let c = ctx.clone();
        let cookie = lua
            .create_function(move |lua, (_, name): (Value, mlua::LuaString)| {
                let v = c
                    .req()
                    .and_then(|r| r.cookie(&name.to_str().ok()?).map(|v| v.to_vec()));
                v.map(|v| lua.create_string(v)).transpose()
            })
            .map_err(|e| init(e.to_string()))?;
        req.raw_set("header", header)
            .map_err(|e| init(e.to_string()))?;
        req.raw_set("cookie", cookie)
            .map_err(|e| init(e.to_string()))?;
        let c = ctx.clone();
        let req_index = lua
            .create_function(move |lua, (_, k): (Value, mlua::LuaString)| {
                let Some(req) = c.req() else {
                    return Ok(Value::Nil);
                };
                let k = k.as_bytes();
                if &*k == b"client_port" {
                    return Ok(req
                        .client
                        .map_or(Value::Nil, |a| Value::Integer(a.port() as i64)));
                }
                let Some(&(_, f)) = REQUEST_FIELDS.iter().find(|(n, _)| n.as_bytes() == &*k) else {
                    return Ok(Value::Nil);
                };
                SCRATCH.with(|b| {
                    let mut b = b.borrow_mut();
                    if super::wasm::request_field(req, f, &mut b) {
                        lua.create_string(&*b).map(Value::String)
                    } else {
                        Ok(Value::Nil)
                    }
                })
            })
            .map_err(|e| init(e.to_string()))?;
        let meta = lua.create_table().map_err(|e| init(e.to_string()))?;
        meta.raw_set("__index", req_index)
            .map_err(|e| init(e.to_string()))?;
        req.set_metatable(Some(meta))
            .map_err(|e| init(e.to_string()))?;
        let c = ctx.clone();
        let backend_index = lua
            .create_function(move |_, (t, k): (Table, mlua::LuaString)| {
                let (Some(pool), Ok(i)) = (c.pool(), t.raw_get::<usize>("index")) else {
                    return Ok(Value::Nil);
                };
                let Some(b) = pool.backends().get(i.wrapping_sub(1)) else {
                    return Ok(Value::Nil);
                };
                Ok(match &*k.as_bytes() {
                    b"active" => Value::Integer(b.active() as i64),
                    b"load" => b.load().map_or(Value::Nil, |l| Value::Integer(l as i64)),
                    b"healthy" => Value::Boolean(b.available() && !c.avoid().contains(&(i - 1))),
                    _ => Value::Nil,
                })
            })
            .map_err(|e| init(e.to_string()))?;
        let backend_meta = lua.create_table().map_err(|e| init(e.to_string()))?;
        backend_meta
            .raw_set("__index", backend_index)
            .map_err(|e| init(e.to_string()))?;
        install_net(&lua, &ctx).map_err(|e| init(e.to_string()))?;
        Ok(Instance {
            lua,
            ctx,
            select,
            key,
            response,
            health,
            req,
            backends: None,
            backend_meta,
            budget: budget_units(limits.deadline),
        })
    }

    /// Runs `f` with the call context set and cleared afterwards; maps errors to faults.
    fn scoped<R>(
        &mut self,
        req: Option<&Request<'_>>,
        pool: Option<&Pool>,
        avoid: &[usize],
        budget: u64,
        net: bool,
        f: impl FnOnce(&mut Self) -> mlua::Result<R>,
    ) -> Result<R, Fault> {
        self.ctx
            .req
            .set(req.map(|r| (r as *const Request<'_>).cast::<Request<'static>>()));
        self.ctx.pool.set(pool.map(|p| p as *const Pool));
        self.ctx.avoid.set(Some(avoid as *const [usize]));
        self.ctx.budget.set(budget);
        self.ctx.out_of_budget.set(false);
        self.ctx.net.set(net);
        let r = f(self);
        self.ctx.req.set(None);
        self.ctx.pool.set(None);
        self.ctx.avoid.set(None);
        self.ctx.net.set(false);
        r.map_err(|e| {
            if self.ctx.out_of_budget.get() {
                Fault::new(FaultKind::Timeout, "instruction budget exhausted")
            } else if matches!(e, mlua::Error::MemoryError(_))
                || e.to_string().contains("not enough memory")
            {
                Fault::new(FaultKind::Memory, "memory limit reached")
            } else {
                Fault::new(FaultKind::Trap, lua_message(&e))
            }
        })
    }

    /// The backends table for this pool (built once; live fields are served by `__index`).
    fn backends_table(&mut self, pool: &Pool) -> mlua::Result<Table> {
        if self.backends.as_ref().map(|t| t.raw_len()) != Some(pool.len()) {
            let t = self.lua.create_table_with_capacity(pool.len(), 0)?;
            for (i, b) in pool.backends().iter().enumerate() {
                let e = self.lua.create_table_with_capacity(0, 4)?;
                e.raw_set("address", b.address.to_string())?;
                e.raw_set("index", i + 1)?;
                e.raw_set("weight", b.weight)?;
                e.set_metatable(Some(self.backend_meta.clone()))?;
                t.raw_set(i + 1, e)?;
            }
            self.backends = Some(t);
        }
        Ok(self.backends.clone().expect("just set"))
    }

    pub fn select(
        &mut self,
        req: &Request<'_>,
        a: &SelectArgs<'_>,
    ) -> Result<Option<usize>, Fault> {
        let f = self
            .select
            .clone()
            .ok_or_else(|| missing("select_server"))?;
        let budget = self.budget;
        let v: Value = self.scoped(Some(req), Some(a.pool), a.avoid, budget, false, |me| {
            let backends = me.backends_table(a.pool)?;
            f.call((me.req.clone(), backends))
        })?;
        match v {
            Value::Nil => Ok(None),
            Value::Integer(i) if i >= 1 => Ok(Some(i as usize - 1)),
            Value::String(s) => {
                let s = s
                    .to_str()
                    .map_err(|e| Fault::new(FaultKind::Invalid, e.to_string()))?;
                match a
                    .pool
                    .backends()
                    .iter()
                    .position(|b| b.address.to_string() == *s)
                {
                    Some(i) => Ok(Some(i)),
                    None => Err(Fault::new(
                        FaultKind::Invalid,
                        format!("select_server returned unknown backend {:?}", &*s),
                    )),
                }
            }
            other => Err(Fault::new(
                FaultKind::Invalid,
                format!(
                    "select_server must return a 1-based index, an address or nil, not {}",
                    other.type_name()
                ),
            )),
        }
    }

    pub fn key<'r>(&mut self, req: &Request<'r>, pool: &Pool) -> Result<KeyOutcome<'r>, Fault> {
        let f = self.key.clone().ok_or_else(|| missing("persistence_key"))?;
        let budget = self.budget;
        let v: Value = self.scoped(Some(req), Some(pool), &[], budget, false, |me| {
            f.call(me.req.clone())
        })?;
        match v {
            Value::Nil => Ok(KeyOutcome::None),
            Value::Boolean(false) => Ok(KeyOutcome::NeedMore),
            Value::String(s) => Ok(KeyOutcome::Key(Key::Owned(s.as_bytes().to_vec().into()))),
            Value::Integer(i) => Ok(KeyOutcome::Key(Key::Owned(
                i.to_string().into_bytes().into(),
            ))),
            other => Err(Fault::new(
                FaultKind::Invalid,
                format!(
                    "persistence_key must return a string, nil or false, not {}",
                    other.type_name()
                ),
            )),
        }
    }

    pub fn on_response(
        &mut self,
        req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        pool: &Pool,
        resp: &mut ResponseHeader,
    ) -> Result<(), Fault> {
        let f = self
            .response
            .clone()
            .ok_or_else(|| missing("on_response"))?;
        let budget = self.budget;
        let v: Value = self.scoped(Some(req), Some(pool), &[], budget, false, |_| {
            f.call((served + 1, named.map(|n| n + 1)))
        })?;
        let Value::Table(t) = v else { return Ok(()) };
        for pair in t.pairs::<mlua::LuaString, mlua::LuaString>() {
            let (n, v) = pair.map_err(|e| Fault::new(FaultKind::Invalid, e.to_string()))?;
            let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(&n.as_bytes()),
                http::HeaderValue::from_bytes(&v.as_bytes()),
            ) else {
                return Err(Fault::new(
                    FaultKind::Invalid,
                    "on_response returned an invalid header",
                ));
            };
            let _ = resp.append_header(n, v);
        }
        Ok(())
    }

    pub fn health(
        &mut self,
        pool: &Pool,
        backend: usize,
        target: SocketAddr,
        budget: Duration,
    ) -> Result<HealthReport, Fault> {
        let f = self.health.clone().ok_or_else(|| missing("health_check"))?;
        let units = budget_units(budget);
        let (up, load): (Value, Option<i64>) =
            self.scoped(None, Some(pool), &[], units, true, |me| {
                let t = me.backends_table(pool)?;
                let b: Table = t.raw_get(backend + 1)?;
                b.raw_set("target", target.to_string())?;
                f.call(b)
            })?;
        let up = match up {
            Value::Boolean(b) => b,
            other => {
                return Err(Fault::new(
                    FaultKind::Invalid,
                    format!(
                        "health_check must return true or false, not {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let load = match load {
            None => None,
            Some(l) if (0..=100).contains(&l) => Some(l as u8),
            Some(l) => {
                return Err(Fault::new(
                    FaultKind::Invalid,
                    format!("health_check load {l} is not 0-100"),
                ))
            }
        };
        Ok(HealthReport { up, load })
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
}

fn missing(name: &str) -> Fault {
    Fault::new(FaultKind::Invalid, format!("{name} is not defined"))
}

/// `net.tcp(address, send, timeout_ms)` and `net.http_get(address, path, timeout_ms)`,
/// usable only inside `health_check`.
fn install_net(lua: &Lua, ctx: &Rc<Ctx>) -> mlua::Result<()> {
    let net = lua.create_table()?;
    let c = ctx.clone();
    net.raw_set(
        "tcp",
        lua.create_function(
            move |lua,
                  (addr, send, ms, want): (
                String,
                Option<mlua::LuaString>,
                Option<u64>,
                Option<usize>,
            )| {
                if !c.net.get() {
                    return Err(mlua::Error::RuntimeError(
                        "net.tcp is only available in health_check".into(),
                    ));
                }
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| mlua::Error::RuntimeError(format!("bad address: {e}")))?;
                let send = send.map(|s| s.as_bytes().to_vec()).unwrap_or_default();
                let r = super::net::tcp_exchange(
                    addr,
                    &send,
                    want.unwrap_or(0),
                    Duration::from_millis(ms.unwrap_or(1000)),
                );
                r.map(|r| lua.create_string(r)).transpose()
            },
        )?,
    )?;
    let c = ctx.clone();
    net.raw_set(
        "http_get",
        lua.create_function(
            move |lua, (addr, path, ms): (String, String, Option<u64>)| {
                if !c.net.get() {
                    return Err(mlua::Error::RuntimeError(
                        "net.http_get is only available in health_check".into(),
                    ));
                }
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| mlua::Error::RuntimeError(format!("bad address: {e}")))?;
                match super::net::http_get(addr, &path, Duration::from_millis(ms.unwrap_or(1000))) {
                    Some((status, body)) => Ok((Some(status), Some(lua.create_string(body)?))),
                    None => Ok((None, None)),
                }
            },
        )?,
    )?;
    lua.globals().raw_set("net", net)
}
