//! What a Lua plugin sees: the `req` and `backends` arguments, and the `net`, `agent`, `log`
//! and `print` globals. Fields are served on demand from the current call (through
//! `__index`), so building the arguments costs nothing per call; every table a plugin is
//! handed is read-only.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, Table, Value, Variadic};

use crate::balance::hooks::Request;
use crate::balance::pool::{AdminState, Pool};
use crate::plugin::contract::{self, agent_prop, field, prop, NetScope};
use crate::plugin::log::PluginLog;

/// The current call, shared by the instance and the functions it gives Lua.
#[derive(Default)]
pub struct Ctx {
    req: Cell<Option<*const Request<'static>>>,
    pool: Cell<Option<*const Pool>>,
    avoid: Cell<Option<*const [usize]>>,
    /// Health-check calls: the checked backend and where the network helpers may go.
    pub health: Cell<Option<(usize, NetScope)>>,
    /// Load reported with `agent.set_load` during this call.
    pub load: Cell<Option<u8>>,
    pub log: RefCell<Option<Arc<PluginLog>>>,
}

impl Ctx {
    /// Points the context at one call's data; [`Ctx::clear`] must follow before the data goes.
    pub fn set(&self, req: Option<&Request<'_>>, pool: &Pool, avoid: &[usize]) {
        self.req
            .set(req.map(|r| (r as *const Request<'_>).cast::<Request<'static>>()));
        self.pool.set(Some(pool as *const Pool));
        self.avoid.set(Some(avoid as *const [usize]));
        self.load.set(None);
    }

    pub fn clear(&self) {
        self.req.set(None);
        self.pool.set(None);
        self.avoid.set(None);
        self.health.set(None);
    }

    // SAFETY (the three accessors): set from references that outlive the call and cleared
    // when it returns (see `LuaInstance::scoped`).
    fn req(&self) -> Option<&Request<'static>> {
        self.req.get().map(|p| unsafe { &*p })
    }
    fn pool(&self) -> Option<&Pool> {
        self.pool.get().map(|p| unsafe { &*p })
    }
    fn avoid(&self) -> &[usize] {
        self.avoid.get().map(|p| unsafe { &*p }).unwrap_or(&[])
    }

    fn log(&self, level: i32, message: &str) {
        if let Some(l) = &*self.log.borrow() {
            l.line(level, message);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

fn err(message: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(message.into())
}

/// The `req` argument: methods `header` and `cookie`, other fields from `__index`.
pub fn request_table(lua: &Lua, ctx: &Rc<Ctx>) -> mlua::Result<Table> {
    let req = lua.create_table()?;
    let c = ctx.clone();
    req.raw_set(
        "header",
        lua.create_function(move |lua, (_, name): (Value, mlua::LuaString)| {
            let v = c.req().and_then(|r| r.header(&name.to_str().ok()?));
            v.map(|v| lua.create_string(v)).transpose()
        })?,
    )?;
    let c = ctx.clone();
    req.raw_set(
        "cookie",
        lua.create_function(move |lua, (_, name): (Value, mlua::LuaString)| {
            let v = c.req().and_then(|r| r.cookie(&name.to_str().ok()?));
            v.map(|v| lua.create_string(v)).transpose()
        })?,
    )?;
    let c = ctx.clone();
    let index = lua.create_function(move |lua, (_, k): (Value, mlua::LuaString)| {
        let Some(req) = c.req() else {
            return Ok(Value::Nil);
        };
        let k = k.as_bytes();
        let Some(&(_, f)) = field::NAMES.iter().find(|(n, _)| n.as_bytes() == &*k) else {
            return Ok(Value::Nil);
        };
        if f == field::CLIENT_PORT {
            return Ok(req
                .client
                .map_or(Value::Nil, |a| Value::Integer(a.port() as _)));
        }
        SCRATCH.with(|b| {
            let mut b = b.borrow_mut();
            if contract::request_field(req, f, &mut b) {
                lua.create_string(&*b).map(Value::String)
            } else {
                Ok(Value::Nil)
            }
        })
    })?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", index)?;
    req.set_metatable(Some(meta))?;
    req.set_readonly(true);
    Ok(req)
}

/// The metatable of a backend entry: live fields from the pool, `target` in health calls.
pub fn backend_meta(lua: &Lua, ctx: &Rc<Ctx>) -> mlua::Result<Table> {
    let c = ctx.clone();
    let index = lua.create_function(move |lua, (t, k): (Table, mlua::LuaString)| {
        let (Some(pool), Ok(i)) = (c.pool(), t.raw_get::<usize>("index")) else {
            return Ok(Value::Nil);
        };
        let i = i.wrapping_sub(1);
        let k = k.as_bytes();
        match &*k {
            b"healthy" => {
                let v = contract::backend_prop(pool, c.avoid(), i as i64, prop::AVAILABLE);
                return Ok(Value::Boolean(v == 1));
            }
            b"agent_admin" => {
                return Ok(match pool.backends().get(i) {
                    Some(b) => Value::String(lua.create_string(b.agent().admin().name())?),
                    None => Value::Nil,
                })
            }
            b"target" => {
                return Ok(match c.health.get() {
                    Some((b, scope)) if b == i => {
                        Value::String(lua.create_string(scope.target.to_string())?)
                    }
                    _ => Value::Nil,
                })
            }
            _ => {}
        }
        let Some(&(_, p)) = prop::NAMES.iter().find(|(n, _)| n.as_bytes() == &*k) else {
            return Ok(Value::Nil);
        };
        let v = contract::backend_prop(pool, c.avoid(), i as i64, p);
        Ok(if prop::is_flag(p) {
            Value::Boolean(v == 1)
        } else if v < 0 {
            Value::Nil
        } else {
            Value::Integer(v as _)
        })
    })?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", index)?;
    Ok(meta)
}

/// The `backends` argument for `pool`: static fields stored, live ones from `meta`.
pub fn backends_table(lua: &Lua, pool: &Pool, meta: &Table) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(pool.len(), 0)?;
    for (i, b) in pool.backends().iter().enumerate() {
        let e = lua.create_table_with_capacity(0, 4)?;
        e.raw_set("index", i + 1)?;
        e.raw_set("name", b.name.as_str())?;
        e.raw_set("address", b.address.to_string())?;
        e.raw_set("cookie_id", lua.create_string(b.cookie_id)?)?;
        e.set_metatable(Some(meta.clone()))?;
        e.set_readonly(true);
        t.raw_set(i + 1, e)?;
    }
    t.set_readonly(true);
    Ok(t)
}

/// `log(level, ...)`, `print(...)`, `net.*` and `agent.*`.
pub fn install_globals(lua: &Lua, ctx: &Rc<Ctx>) -> mlua::Result<()> {
    let g = lua.globals();
    let join = |args: &Variadic<Value>| -> String {
        args.iter()
            .map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}")))
            .collect::<Vec<_>>()
            .join("\t")
    };
    let c = ctx.clone();
    g.raw_set(
        "print",
        lua.create_function(move |_, args: Variadic<Value>| {
            c.log(2, &join(&args));
            Ok(())
        })?,
    )?;
    let c = ctx.clone();
    g.raw_set(
        "log",
        lua.create_function(move |_, (level, args): (String, Variadic<Value>)| {
            let level = match level.as_str() {
                "error" => 0,
                "warn" => 1,
                "info" => 2,
                "debug" => 3,
                other => return Err(err(format!("log: unknown level {other:?}"))),
            };
            c.log(level, &join(&args));
            Ok(())
        })?,
    )?;
    g.raw_set("net", net_table(lua, ctx)?)?;
    g.raw_set("agent", agent_table(lua, ctx)?)?;
    Ok(())
}

/// The scope of the running health check, or the error a helper raises outside one.
fn scope(c: &Ctx, what: &str) -> mlua::Result<(usize, NetScope)> {
    c.health
        .get()
        .ok_or_else(|| err(format!("{what} is only available in health_check")))
}

/// `net.tcp(address, send, timeout_ms, want)` and `net.http_get(address, path, timeout_ms)`:
/// health checks only, to the checked backend's host, within the check's timeout. They return
/// `nil, reason` when refused or when the connection fails.
fn net_table(lua: &Lua, ctx: &Rc<Ctx>) -> mlua::Result<Table> {
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
                let (_, scope) = scope(&c, "net.tcp")?;
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| err(format!("net.tcp: bad address {addr:?}: {e}")))?;
                let timeout = match scope.admit(addr, Duration::from_millis(ms.unwrap_or(1000))) {
                    Ok(t) => t,
                    Err(why) => return Ok((None, Some(why))),
                };
                let send = send.map(|s| s.as_bytes().to_vec()).unwrap_or_default();
                match crate::plugin::net::tcp_exchange(addr, &send, want.unwrap_or(0), timeout) {
                    Some(r) => Ok((Some(lua.create_string(r)?), None)),
                    None => Ok((None, Some("connection failed".to_string()))),
                }
            },
        )?,
    )?;
    let c = ctx.clone();
    net.raw_set(
        "http_get",
        lua.create_function(
            move |lua, (addr, path, ms): (String, String, Option<u64>)| {
                let (_, scope) = scope(&c, "net.http_get")?;
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| err(format!("net.http_get: bad address {addr:?}: {e}")))?;
                if !crate::plugin::net::valid_path(&path) {
                    return Err(err(format!("net.http_get: invalid path {path:?}")));
                }
                let timeout = match scope.admit(addr, Duration::from_millis(ms.unwrap_or(1000))) {
                    Ok(t) => t,
                    Err(why) => return Ok((None, Some(Value::String(lua.create_string(why)?)))),
                };
                match crate::plugin::net::http_get(addr, &path, timeout) {
                    Some((status, body)) => {
                        Ok((Some(status), Some(Value::String(lua.create_string(body)?))))
                    }
                    None => Ok((
                        None,
                        Some(Value::String(lua.create_string("connection failed")?)),
                    )),
                }
            },
        )?,
    )?;
    Ok(net)
}

/// `agent.set_load(n|nil)`, `set_weight_percent(p)`, `set_maxconn(n)`,
/// `set_admin("ready"|"drain"|"maint")`, `set_up(bool)`: health checks only, applied at once
/// to the checked backend, exactly as the WASM ABI's `set_load`/`set_agent`.
fn agent_table(lua: &Lua, ctx: &Rc<Ctx>) -> mlua::Result<Table> {
    let agent = lua.create_table()?;
    let setter = |prop: i32, name: &'static str| {
        let c = ctx.clone();
        lua.create_function(move |_, v: Value| {
            let (i, _) = scope(&c, name)?;
            let value = match (prop, &v) {
                (agent_prop::ADMIN, Value::String(s)) => {
                    match AdminState::from_name(&s.to_string_lossy()) {
                        Some(a) => a as i64,
                        None => {
                            return Err(err(format!(
                                "{name}: expected \"ready\", \"drain\" or \"maint\""
                            )))
                        }
                    }
                }
                (agent_prop::UP, Value::Boolean(b)) => *b as i64,
                (_, Value::Integer(n)) => *n,
                (_, Value::Number(n)) if n.fract() == 0.0 => *n as i64,
                _ => return Err(err(format!("{name}: bad value {v:?}"))),
            };
            let pool = c.pool().ok_or_else(|| err("no pool"))?;
            Ok(contract::agent_update(prop, value).is_some_and(|u| pool.set_agent(i, u)))
        })
    };
    agent.raw_set(
        "set_weight_percent",
        setter(agent_prop::WEIGHT_PERCENT, "agent.set_weight_percent")?,
    )?;
    agent.raw_set(
        "set_maxconn",
        setter(agent_prop::MAXCONN, "agent.set_maxconn")?,
    )?;
    agent.raw_set("set_admin", setter(agent_prop::ADMIN, "agent.set_admin")?)?;
    agent.raw_set("set_up", setter(agent_prop::UP, "agent.set_up")?)?;
    let c = ctx.clone();
    agent.raw_set(
        "set_load",
        lua.create_function(move |_, v: Option<i64>| {
            let (i, _) = scope(&c, "agent.set_load")?;
            let load = match v {
                None => None,
                Some(l) if (0..=100).contains(&l) => Some(l as u8),
                Some(l) => return Err(err(format!("agent.set_load: {l} is not 0-100"))),
            };
            let pool = c.pool().ok_or_else(|| err("no pool"))?;
            pool.set_load(i, load);
            c.load.set(load);
            Ok(true)
        })?,
    )?;
    Ok(agent)
}
