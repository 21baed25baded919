//! One Lua plugin instance: a sealed state, the script's hook functions, and the call scope.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{chunk::ChunkMode, Function, Lua, Table, Value};
use pingora::http::ResponseHeader;

use super::api::{self, Ctx};
use super::sandbox;
use crate::balance::hooks::{HealthReport, Key, KeyOutcome, Request};
use crate::balance::pool::Pool;
use crate::plugin::contract;
use crate::plugin::log::PluginLog;
use crate::plugin::runtime::{
    Alive, Fault, FaultKind, HealthCall, Instance, Limits, SelectCall, HOOK_HEALTH, HOOK_KEY,
    HOOK_RESPONSE, HOOK_SELECT,
};
use crate::plugin::shared::SharedData;

pub struct LuaInstance {
    lua: Lua,
    ctx: Rc<Ctx>,
    select: Option<Function>,
    key: Option<Function>,
    response: Option<Function>,
    health: Option<Function>,
    req: Table,
    /// The `backends` argument of the pool it was built for (by pool uid).
    backends: Option<(u64, Table)>,
    backend_meta: Table,
    deadline_ms: u64,
    _alive: Alive,
}

// SAFETY: an instance owns its Lua state and every handle into it (functions, tables, and the
// closures' shared `Ctx`); none is kept anywhere else, so moving the whole instance to another
// thread (instances are made on a background thread) moves all users of the state together.
// It is never used by two threads at once (`Instance` is `Send`, not `Sync`).
unsafe impl Send for LuaInstance {}

fn init(e: impl ToString) -> Fault {
    Fault::new(FaultKind::Init, e.to_string())
}

fn invalid(m: impl Into<String>) -> Fault {
    Fault::new(FaultKind::Invalid, m)
}

/// The first line of a Lua error, which carries `FILE:LINE:` for syntax and runtime errors.
fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        e => e.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        e => e.to_string().contains("not enough memory"),
    }
}

/// JSON settings as a Lua value.
fn to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i as _),
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

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl LuaInstance {
    /// A sealed state running `src` (named `name` in messages) with `settings` as `config`;
    /// the script's top level gets `max(deadline, 1 s)`.
    pub fn new(
        src: &str,
        name: &str,
        settings: &str,
        limits: Limits,
        log: Arc<PluginLog>,
        shared: Arc<SharedData>,
    ) -> Result<LuaInstance, Fault> {
        let lua = sandbox::new_state(limits.memory).map_err(init)?;
        let ctx = Rc::new(Ctx::default());
        *ctx.log.borrow_mut() = Some(log);
        api::install_globals(&lua, &ctx).map_err(init)?;
        let shared = super::shared::table(&lua, shared).map_err(init)?;
        lua.globals().raw_set("shared", shared).map_err(init)?;
        sandbox::seal(&lua).map_err(init)?;
        let settings: serde_json::Value = serde_json::from_str(settings).map_err(init)?;
        let cfg = to_lua(&lua, &settings).map_err(init)?;
        lua.globals().raw_set("config", cfg).map_err(init)?;
        let chunk = lua
            .load(src)
            .set_name(format!("={name}"))
            .set_mode(ChunkMode::Text);
        let budget = millis(limits.deadline.max(Duration::from_secs(1)));
        let (r, expired) = sandbox::with_deadline(budget, || chunk.exec());
        match r {
            Ok(()) => {}
            Err(_) if expired => {
                return Err(init(format!(
                    "{name}: the top level ran past its {budget} ms deadline"
                )))
            }
            Err(e) => return Err(init(lua_message(&e))),
        }
        let g = lua.globals();
        let func = |n: &str| g.raw_get::<Option<Function>>(n).ok().flatten();
        let (select, key, response, health) = (
            func("select_server"),
            func("persistence_key"),
            func("on_response"),
            func("health_check"),
        );
        let req = api::request_table(&lua, &ctx).map_err(init)?;
        let backend_meta = api::backend_meta(&lua, &ctx).map_err(init)?;
        Ok(LuaInstance {
            lua,
            ctx,
            select,
            key,
            response,
            health,
            req,
            backends: None,
            backend_meta,
            deadline_ms: millis(limits.deadline),
            _alive: Alive::new(),
        })
    }

    /// The hooks the script defines.
    pub fn hooks(&self) -> u32 {
        [
            (HOOK_SELECT, &self.select),
            (HOOK_KEY, &self.key),
            (HOOK_HEALTH, &self.health),
            (HOOK_RESPONSE, &self.response),
        ]
        .iter()
        .filter(|(_, f)| f.is_some())
        .fold(0, |h, (b, _)| h | b)
    }

    /// The backends table for `pool`, rebuilt when the pool object changes.
    fn backends(&mut self, pool: &Pool) -> mlua::Result<Table> {
        match &self.backends {
            Some((uid, t)) if *uid == pool.uid() => Ok(t.clone()),
            _ => {
                let t = api::backends_table(&self.lua, pool, &self.backend_meta)?;
                self.backends = Some((pool.uid(), t.clone()));
                Ok(t)
            }
        }
    }

    /// Runs `f` with the call context set and cleared afterwards, under the deadline; maps
    /// errors to faults.
    fn scoped<R>(
        &mut self,
        req: Option<&Request<'_>>,
        pool: &Pool,
        avoid: &[usize],
        budget_ms: u64,
        f: impl FnOnce(&mut Self) -> mlua::Result<R>,
    ) -> Result<R, Fault> {
        self.ctx.set(req, pool, avoid);
        let (r, expired) = sandbox::with_deadline(budget_ms, || f(&mut *self));
        self.ctx.clear();
        r.map_err(|e| {
            if expired {
                Fault::new(
                    FaultKind::Timeout,
                    format!("deadline of {budget_ms} ms exceeded"),
                )
            } else if is_memory(&e) {
                Fault::new(FaultKind::Memory, "memory limit reached")
            } else {
                Fault::new(FaultKind::Trap, lua_message(&e))
            }
        })
    }

    /// A backend a script named: a 1-based index, a name or an address.
    fn named_backend(pool: &Pool, v: &Value, hook: &str) -> Result<usize, Fault> {
        let n = pool.len();
        match v {
            Value::Integer(i) if (1..=n as i64).contains(i) => Ok(*i as usize - 1),
            Value::Integer(i) => Err(invalid(format!(
                "{hook} returned backend {i}, but the pool has {n} (numbered from 1)"
            ))),
            Value::Number(x) if x.fract() == 0.0 && *x >= 1.0 && *x <= n as f64 => {
                Ok(*x as usize - 1)
            }
            Value::Number(x) => Err(invalid(format!(
                "{hook} returned backend {x}, but the pool has {n} (numbered from 1)"
            ))),
            Value::String(s) => {
                let s = s.to_string_lossy();
                contract::backend_by_text(pool, &s)
                    .ok_or_else(|| invalid(format!("{hook} returned unknown backend {s:?}")))
            }
            other => Err(invalid(format!(
                "{hook} must name a backend by number (from 1), name or address, not {}",
                other.type_name()
            ))),
        }
    }
}

fn missing(name: &str) -> Fault {
    invalid(format!("{name} is not defined"))
}

impl Instance for LuaInstance {
    fn select(&mut self, c: &SelectCall<'_, '_>) -> Result<Option<usize>, Fault> {
        let f = self
            .select
            .clone()
            .ok_or_else(|| missing("select_server"))?;
        let budget = self.deadline_ms;
        let v: Value = self.scoped(Some(c.req), c.pool, c.avoid, budget, |me| {
            let backends = me.backends(c.pool)?;
            f.call((me.req.clone(), backends))
        })?;
        match v {
            Value::Nil => Ok(None),
            v => Self::named_backend(c.pool, &v, "select_server").map(Some),
        }
    }

    fn key<'r>(&mut self, req: &Request<'r>, pool: &Pool) -> Result<KeyOutcome<'r>, Fault> {
        let f = self.key.clone().ok_or_else(|| missing("persistence_key"))?;
        let budget = self.deadline_ms;
        let v: Value = self.scoped(Some(req), pool, &[], budget, |me| {
            let backends = me.backends(pool)?;
            f.call((me.req.clone(), backends))
        })?;
        match v {
            Value::Nil => Ok(KeyOutcome::None),
            Value::Boolean(false) => Ok(KeyOutcome::NeedMore),
            Value::String(s) => Ok(KeyOutcome::Key(Key::Owned(s.as_bytes().to_vec().into()))),
            Value::Integer(i) => Ok(KeyOutcome::Key(Key::Owned(
                i.to_string().into_bytes().into(),
            ))),
            Value::Table(t) => {
                let b: Value = t.raw_get("backend").map_err(|e| invalid(e.to_string()))?;
                Self::named_backend(pool, &b, "persistence_key").map(KeyOutcome::Backend)
            }
            other => Err(invalid(format!(
                "persistence_key must return a string, nil, false or {{backend = ...}}, not {}",
                other.type_name()
            ))),
        }
    }

    fn on_response(
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
        let budget = self.deadline_ms;
        let v: Value = self.scoped(Some(req), pool, &[], budget, |me| {
            let backends = me.backends(pool)?;
            f.call((me.req.clone(), served + 1, named.map(|n| n + 1), backends))
        })?;
        let Value::Table(t) = v else { return Ok(()) };
        for pair in t.pairs::<mlua::LuaString, mlua::LuaString>() {
            let (n, v) = pair.map_err(|e| invalid(e.to_string()))?;
            let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(&n.as_bytes()),
                http::HeaderValue::from_bytes(&v.as_bytes()),
            ) else {
                return Err(invalid("on_response returned an invalid header"));
            };
            let _ = resp.append_header(n, v);
        }
        Ok(())
    }

    fn health(&mut self, c: &HealthCall<'_>) -> Result<HealthReport, Fault> {
        let f = self.health.clone().ok_or_else(|| missing("health_check"))?;
        self.ctx.health.set(Some((c.backend, c.net)));
        let ctx = self.ctx.clone();
        let r = self.scoped(None, c.pool, &[], millis(c.budget), |me| {
            // `scoped` set the pool; the health scope set above survives until it clears.
            let t = me.backends(c.pool)?;
            let b: Table = t.raw_get(c.backend + 1)?;
            f.call::<(Value, Option<i64>)>(b)
        });
        let load_set = ctx.load.get();
        let (up, load) = r?;
        let up = match up {
            Value::Boolean(b) => b,
            other => {
                return Err(invalid(format!(
                    "health_check must return true or false, not {}",
                    other.type_name()
                )))
            }
        };
        let load = match load {
            None => load_set,
            Some(l) if (0..=100).contains(&l) => Some(l as u8),
            Some(l) => return Err(invalid(format!("health_check load {l} is not 0-100"))),
        };
        if load.is_some() && load != load_set {
            c.pool.set_load(c.backend, load);
        }
        Ok(HealthReport { up, load })
    }
}
