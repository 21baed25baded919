//! WASM plugins on wasmtime, with the core-module ABI documented in `sdk/ABI.md`.
//!
//! A call is a plain core-wasm function call (tens of nanoseconds): the host does not encode
//! the request into guest memory; the guest reads what it needs through imported host
//! functions. During a call the store's data points at the current request, pool and response
//! (raw pointers set just before the call and cleared right after, so host functions never see
//! a dangling one). Every call is bounded by an epoch deadline and the instance's memory by a
//! resource limiter; there is no WASI, so a plugin has no file or network access except the
//! health-check host functions, which exist only during health-check calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use pingora::http::ResponseHeader;
use wasmtime::{
    Caller, Config as WasmConfig, Engine, Linker, Memory, Module, ResourceLimiter, Store, Trap,
    TypedFunc,
};

use super::{
    Fault, FaultKind, Limits, SelectArgs, HOOK_HEALTH, HOOK_KEY, HOOK_RESPONSE, HOOK_SELECT,
};
use crate::hooks::{HealthReport, Key, KeyOutcome, Request};
use crate::pool::Pool;

/// The ABI version this host implements; a module must export `plugboard_abi_version`
/// returning it.
pub const ABI_VERSION: i32 = 1;

/// Epoch tick: deadlines are counted in these.
const TICK: Duration = Duration::from_millis(1);

/// Request fields readable with `request_get`.
pub mod field {
    pub const SERVICE: i32 = 0;
    pub const MODE: i32 = 1;
    pub const CLIENT_IP: i32 = 2;
    pub const CLIENT_PORT: i32 = 3;
    pub const KEY: i32 = 4;
    pub const METHOD: i32 = 5;
    pub const PATH: i32 = 6;
    pub const HOST: i32 = 7;
    pub const PAYLOAD: i32 = 8;
}

/// Backend properties readable with `backend_get`.
pub mod prop {
    pub const WEIGHT: i32 = 0;
    pub const ACTIVE: i32 = 1;
    pub const LOAD: i32 = 2;
    pub const HEALTHY: i32 = 3;
    pub const ENABLED: i32 = 4;
    pub const EFFECTIVE_WEIGHT: i32 = 5;
    pub const AGENT_WEIGHT_PERCENT: i32 = 6;
    pub const AGENT_MAXCONN: i32 = 7;
    pub const AGENT_ADMIN: i32 = 8;
    pub const AGENT_UP: i32 = 9;
}

/// Engine and linker shared by every WASM plugin.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    ticking: AtomicBool,
}

/// What the host functions see during one call.
#[derive(Default)]
struct Call {
    req: Option<*const Request<'static>>,
    pool: Option<*const Pool>,
    avoid: Option<*const [usize]>,
    resp: Option<*mut ResponseHeader>,
    /// Health-check calls only: the backend's check address; enables the network functions.
    target: Option<SocketAddr>,
    /// Health-check calls only: the backend being checked (for `set_load`, `set_agent`).
    backend: Option<usize>,
}

/// Store data of one instance.
pub struct State {
    limiter: Limiter,
    memory: Option<Memory>,
    call: Call,
    key: Vec<u8>,
    key_set: bool,
    backend: Option<i32>,
    load: Option<u8>,
    last_response: Vec<u8>,
}

struct Limiter {
    max: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl Host {
    pub fn new() -> Result<Host, String> {
        let mut cfg = WasmConfig::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg).map_err(|e| e.to_string())?;
        let mut linker = Linker::new(&engine);
        define_imports(&mut linker).map_err(|e| e.to_string())?;
        Ok(Host {
            engine,
            linker,
            ticking: AtomicBool::new(false),
        })
    }

    /// Starts the thread that advances the epoch every millisecond (once).
    pub fn start_epoch_ticker(&self) {
        if self.ticking.swap(true, Relaxed) {
            return;
        }
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            })
            .expect("spawn epoch thread");
    }

    /// Compiles a binary module (or WAT text, convenient for tests and tiny plugins).
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, String> {
        let text = bytes.trim_ascii_start();
        if !(bytes.starts_with(b"\0asm") || text.starts_with(b"(") || text.starts_with(b";;")) {
            return Err("not a WASM module: it does not start with the \\0asm header".into());
        }
        Module::new(&self.engine, bytes).map_err(|e| format!("not a valid WASM module: {e:#}"))
    }

    /// Reads the ABI version and hook set of a module by instantiating it once.
    pub fn inspect(&self, module: &Module, limits: Limits) -> Result<(u32, u32), String> {
        let (mut store, instance) = self.raw_instance(module, limits).map_err(|f| f.message)?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "plugboard_abi_version")
            .map_err(|_| {
                "does not export plugboard_abi_version: not a Plugboard plugin".to_string()
            })?
            .call(&mut store, ())
            .map_err(|e| format!("plugboard_abi_version failed: {e}"))?;
        if version != ABI_VERSION {
            return Err(format!(
                "plugin ABI version {version}, this Plugboard implements version {ABI_VERSION}"
            ));
        }
        let hooks = instance
            .get_typed_func::<(), i32>(&mut store, "plugboard_hooks")
            .map_err(|_| "does not export plugboard_hooks".to_string())?
            .call(&mut store, ())
            .map_err(|e| format!("plugboard_hooks failed: {e}"))? as u32;
        let exports = [
            (HOOK_SELECT, "plugboard_select_server"),
            (HOOK_KEY, "plugboard_persistence_key"),
            (HOOK_HEALTH, "plugboard_health_check"),
            (HOOK_RESPONSE, "plugboard_on_response"),
        ];
        for (bit, name) in exports {
            if hooks & bit != 0 && instance.get_func(&mut store, name).is_none() {
                return Err(format!("announces hook {bit} but does not export {name}"));
            }
        }
        Ok((
            hooks & (HOOK_SELECT | HOOK_KEY | HOOK_HEALTH | HOOK_RESPONSE),
            version as u32,
        ))
    }

    fn raw_instance(
        &self,
        module: &Module,
        limits: Limits,
    ) -> Result<(Store<State>, wasmtime::Instance), Fault> {
        let state = State {
            limiter: Limiter {
                max: limits.memory,
                hit: false,
            },
            memory: None,
            call: Call::default(),
            key: Vec::with_capacity(64),
            key_set: false,
            backend: None,
            load: None,
            last_response: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(limits.deadline));
        store.epoch_deadline_trap();
        let instance = self
            .linker
            .instantiate(&mut store, module)
            .map_err(|e| classify(&store, e, "instantiate"))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| {
            Fault::new(FaultKind::Init, "does not export its memory as \"memory\"")
        })?;
        store.data_mut().memory = Some(memory);
        Ok((store, instance))
    }

    /// Instantiates a module and hands it its settings (`plugboard_init`).
    pub fn instantiate(
        &self,
        module: &Module,
        settings: &str,
        limits: Limits,
    ) -> Result<Instance, Fault> {
        let (mut store, instance) = self.raw_instance(module, limits)?;
        let init_fault = |m: String| Fault::new(FaultKind::Init, m);
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "plugboard_alloc")
            .map_err(|_| init_fault("does not export plugboard_alloc".into()))?;
        let init = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, "plugboard_init")
            .map_err(|_| init_fault("does not export plugboard_init".into()))?;
        let len = settings.len() as i32;
        store.set_epoch_deadline(deadline_ticks(limits.deadline.max(Duration::from_secs(1))));
        let ptr = alloc
            .call(&mut store, len)
            .map_err(|e| classify(&store, e, "plugboard_alloc"))?;
        let memory = store.data().memory.expect("set at instantiation");
        memory
            .write(&mut store, ptr as u32 as usize, settings.as_bytes())
            .map_err(|_| init_fault("plugboard_alloc returned memory out of bounds".into()))?;
        let rc = init
            .call(&mut store, (ptr, len))
            .map_err(|e| classify(&store, e, "plugboard_init"))?;
        if rc != 0 {
            return Err(init_fault(format!(
                "plugboard_init refused its settings (code {rc})"
            )));
        }
        Ok(Instance {
            select: instance
                .get_typed_func(&mut store, "plugboard_select_server")
                .ok(),
            key: instance
                .get_typed_func(&mut store, "plugboard_persistence_key")
                .ok(),
            response: instance
                .get_typed_func(&mut store, "plugboard_on_response")
                .ok(),
            health: instance
                .get_typed_func(&mut store, "plugboard_health_check")
                .ok(),
            ticks: deadline_ticks(limits.deadline),
            store,
        })
    }
}

fn deadline_ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}

/// Turns a wasmtime error into a fault of the right kind.
fn classify(store: &Store<State>, e: wasmtime::Error, what: &str) -> Fault {
    if store.data().limiter.hit {
        return Fault::new(
            FaultKind::Memory,
            format!("{what}: memory limit reached: {e}"),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            Fault::new(FaultKind::Timeout, format!("{what}: deadline exceeded"))
        }
        Some(t) => Fault::new(FaultKind::Trap, format!("{what}: trap: {t}")),
        None => Fault::new(FaultKind::Trap, format!("{what}: {e:#}")),
    }
}

/// One instance of a WASM plugin with its hook functions resolved.
pub struct Instance {
    store: Store<State>,
    select: Option<TypedFunc<i32, i32>>,
    key: Option<TypedFunc<(), i32>>,
    response: Option<TypedFunc<(i32, i32), i32>>,
    health: Option<TypedFunc<i32, i32>>,
    ticks: u64,
}

/// Clears the call pointers when a call ends, however it ends.
struct CallScope<'a>(&'a mut Store<State>);

impl Drop for CallScope<'_> {
    fn drop(&mut self) {
        self.0.data_mut().call = Call::default();
    }
}

fn missing(hook: &str) -> Fault {
    Fault::new(FaultKind::Invalid, format!("{hook} hook is not exported"))
}

impl Instance {
    fn begin(&mut self, call: Call, ticks: u64) -> CallScope<'_> {
        let d = self.store.data_mut();
        d.call = call;
        d.key_set = false;
        d.backend = None;
        d.load = None;
        d.limiter.hit = false;
        self.store.set_epoch_deadline(ticks);
        CallScope(&mut self.store)
    }

    pub fn select(
        &mut self,
        req: &Request<'_>,
        a: &SelectArgs<'_>,
    ) -> Result<Option<usize>, Fault> {
        let f = self
            .select
            .clone()
            .ok_or_else(|| missing("select-server"))?;
        let n = a.pool.len() as i32;
        let call = Call {
            req: Some(erase(req)),
            pool: Some(a.pool),
            avoid: Some(a.avoid as *const [usize]),
            ..Call::default()
        };
        let ticks = self.ticks;
        let scope = self.begin(call, ticks);
        let r = f
            .call(&mut *scope.0, n)
            .map_err(|e| classify(scope.0, e, "plugboard_select_server"))?;
        match r {
            -1 => Ok(None),
            i if i >= 0 => Ok(Some(i as usize)),
            other => Err(Fault::new(
                FaultKind::Invalid,
                format!("select-server returned {other}"),
            )),
        }
    }

    pub fn key<'r>(&mut self, req: &Request<'r>, pool: &Pool) -> Result<KeyOutcome<'r>, Fault> {
        let f = self.key.clone().ok_or_else(|| missing("persistence-key"))?;
        let call = Call {
            req: Some(erase(req)),
            pool: Some(pool),
            ..Call::default()
        };
        let ticks = self.ticks;
        let scope = self.begin(call, ticks);
        let r = f
            .call(&mut *scope.0, ())
            .map_err(|e| classify(scope.0, e, "plugboard_persistence_key"))?;
        let d = scope.0.data();
        match r {
            0 => Ok(KeyOutcome::None),
            1 if d.key_set => Ok(KeyOutcome::Key(Key::Owned(d.key.as_slice().into()))),
            2 => Ok(KeyOutcome::NeedMore),
            3 => match d.backend {
                Some(i) if i >= 0 => Ok(KeyOutcome::Backend(i as usize)),
                _ => Err(Fault::new(
                    FaultKind::Invalid,
                    "returned 3 (backend) without a valid set_backend",
                )),
            },
            other => Err(Fault::new(
                FaultKind::Invalid,
                format!("persistence-key returned {other}"),
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
            .ok_or_else(|| missing("response step"))?;
        let call = Call {
            req: Some(erase(req)),
            pool: Some(pool),
            resp: Some(resp),
            ..Call::default()
        };
        let ticks = self.ticks;
        let scope = self.begin(call, ticks);
        let named = named.map_or(-1, |i| i as i32);
        f.call(&mut *scope.0, (named, served as i32))
            .map_err(|e| classify(scope.0, e, "plugboard_on_response"))?;
        Ok(())
    }

    pub fn health(
        &mut self,
        pool: &Pool,
        backend: usize,
        target: SocketAddr,
        budget: Duration,
    ) -> Result<HealthReport, Fault> {
        let f = self.health.clone().ok_or_else(|| missing("health-check"))?;
        let call = Call {
            pool: Some(pool),
            target: Some(target),
            backend: Some(backend),
            ..Call::default()
        };
        let scope = self.begin(call, deadline_ticks(budget));
        let r = f
            .call(&mut *scope.0, backend as i32)
            .map_err(|e| classify(scope.0, e, "plugboard_health_check"))?;
        let load = scope.0.data().load;
        match r {
            0 => Ok(HealthReport { up: false, load }),
            1 => Ok(HealthReport { up: true, load }),
            other => Err(Fault::new(
                FaultKind::Invalid,
                format!("health-check returned {other}"),
            )),
        }
    }
}

/// Erases a request's lifetime for the duration of one call (see [`CallScope`]).
fn erase(req: &Request<'_>) -> *const Request<'static> {
    (req as *const Request<'_>).cast::<Request<'static>>()
}

/// Guest memory and host state of the calling instance.
fn split<'a>(caller: &'a mut Caller<'_, State>) -> Option<(&'a mut [u8], &'a mut State)> {
    let mem = caller.data().memory?;
    Some(mem.data_and_store_mut(caller))
}

fn slice(mem: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    mem.get(p..p.checked_add(l)?)
}

/// Copies `src` into the guest buffer (as much as fits); returns its full length, or -2 when
/// the buffer is out of bounds.
fn write_out(mem: &mut [u8], buf: i32, cap: i32, src: &[u8]) -> i32 {
    let (p, c) = (buf as u32 as usize, cap as u32 as usize);
    let Some(dst) = p.checked_add(c).and_then(|end| mem.get_mut(p..end)) else {
        return -2;
    };
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    src.len() as i32
}

impl Call {
    fn req(&self) -> Option<&Request<'static>> {
        // SAFETY: set by `Instance::begin` from a reference that outlives the call and cleared
        // by `CallScope` when the call returns.
        self.req.map(|p| unsafe { &*p })
    }
    fn pool(&self) -> Option<&Pool> {
        // SAFETY: as for `req`.
        self.pool.map(|p| unsafe { &*p })
    }
    fn avoid(&self) -> &[usize] {
        // SAFETY: as for `req`.
        self.avoid.map(|p| unsafe { &*p }).unwrap_or(&[])
    }
}

/// Formats a request field into `out`; returns false when the field is absent.
pub fn request_field(req: &Request<'_>, field: i32, out: &mut Vec<u8>) -> bool {
    use std::io::Write;
    out.clear();
    match field {
        field::SERVICE => out.extend_from_slice(req.service.as_bytes()),
        field::MODE => out.extend_from_slice(req.mode.as_str().as_bytes()),
        field::CLIENT_IP => match req.client {
            Some(c) => {
                let _ = write!(out, "{}", c.ip());
            }
            None => return false,
        },
        field::CLIENT_PORT => match req.client {
            Some(c) => {
                let _ = write!(out, "{}", c.port());
            }
            None => return false,
        },
        field::KEY => match req.key {
            Some(Key::Ip(ip)) => {
                let _ = write!(out, "{ip}");
            }
            Some(Key::Borrowed(b)) => out.extend_from_slice(b),
            Some(Key::Owned(b)) => out.extend_from_slice(b),
            None => return false,
        },
        field::METHOD => match req.http {
            Some(h) => out.extend_from_slice(h.method.as_str().as_bytes()),
            None => return false,
        },
        field::PATH => match req.http {
            Some(h) => out.extend_from_slice(h.uri.path().as_bytes()),
            None => return false,
        },
        field::HOST => match req
            .header("host")
            .or_else(|| req.http.and_then(|h| h.uri.host()).map(str::as_bytes))
        {
            Some(h) => out.extend_from_slice(h),
            None => return false,
        },
        field::PAYLOAD => {
            if req.http.is_some() {
                return false;
            }
            out.extend_from_slice(req.payload)
        }
        _ => return false,
    }
    true
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
}

/// Shared body of `request_header` and `request_cookie`: a value looked up by a name the
/// guest passes, copied into its buffer.
fn named_value(
    c: &mut Caller<'_, State>,
    np: i32,
    nl: i32,
    buf: i32,
    cap: i32,
    lookup: impl for<'r> Fn(&Request<'r>, &str) -> Option<&'r [u8]>,
) -> i32 {
    let Some((mem, st)) = split(c) else {
        return -2;
    };
    let Some(req) = st.call.req() else { return -1 };
    let Some(name) = slice(mem, np, nl).and_then(|n| std::str::from_utf8(n).ok()) else {
        return -2;
    };
    match lookup(req, name) {
        Some(v) => write_out(mem, buf, cap, v),
        None => -1,
    }
}

fn define_imports(l: &mut Linker<State>) -> wasmtime::Result<()> {
    const M: &str = "plugboard";
    l.func_wrap(
        M,
        "request_get",
        |mut c: Caller<'_, State>, f: i32, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(req) = st.call.req() else { return -1 };
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if request_field(req, f, &mut s) {
                    write_out(mem, buf, cap, &s)
                } else {
                    -1
                }
            })
        },
    )?;
    l.func_wrap(
        M,
        "request_header",
        |mut c: Caller<'_, State>, np: i32, nl: i32, buf: i32, cap: i32| -> i32 {
            named_value(&mut c, np, nl, buf, cap, |req, name| req.header(name))
        },
    )?;
    l.func_wrap(
        M,
        "request_cookie",
        |mut c: Caller<'_, State>, np: i32, nl: i32, buf: i32, cap: i32| -> i32 {
            named_value(&mut c, np, nl, buf, cap, |req, name| req.cookie(name))
        },
    )?;
    l.func_wrap(M, "backend_count", |c: Caller<'_, State>| -> i32 {
        c.data().call.pool().map_or(0, |p| p.len() as i32)
    })?;
    l.func_wrap(
        M,
        "backend_get",
        |c: Caller<'_, State>, i: i32, what: i32| -> i64 {
            let call = &c.data().call;
            let Some(pool) = call.pool() else { return -1 };
            if i < 0 || i as usize >= pool.len() {
                return -1;
            }
            let b = pool.get(i as usize);
            match what {
                prop::WEIGHT => b.weight as i64,
                prop::ACTIVE => b.active() as i64,
                prop::LOAD => b.load().map_or(-1, |l| l as i64),
                prop::HEALTHY => (b.healthy() && !call.avoid().contains(&(i as usize))) as i64,
                prop::ENABLED => b.enabled() as i64,
                prop::EFFECTIVE_WEIGHT => b.effective_weight() as i64,
                prop::AGENT_WEIGHT_PERCENT => b.agent().weight_percent() as i64,
                prop::AGENT_MAXCONN => b.agent().maxconn() as i64,
                prop::AGENT_ADMIN => b.agent().admin() as i64,
                prop::AGENT_UP => b.agent().up() as i64,
                _ => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "backend_address",
        |mut c: Caller<'_, State>, i: i32, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(pool) = st.call.pool() else {
                return -1;
            };
            if i < 0 || i as usize >= pool.len() {
                return -1;
            }
            write_out(
                mem,
                buf,
                cap,
                pool.get(i as usize).address.to_string().as_bytes(),
            )
        },
    )?;
    l.func_wrap(
        M,
        "set_key",
        |mut c: Caller<'_, State>, p: i32, len: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(k) = slice(mem, p, len) else {
                return -2;
            };
            st.key.clear();
            st.key.extend_from_slice(k);
            st.key_set = true;
            0
        },
    )?;
    l.func_wrap(
        M,
        "set_backend",
        |mut c: Caller<'_, State>, i: i32| -> i32 {
            c.data_mut().backend = Some(i);
            0
        },
    )?;
    l.func_wrap(
        M,
        "set_load",
        |mut c: Caller<'_, State>, load: i32| -> i32 {
            if !(-1..=100).contains(&load) {
                return -2;
            }
            let d = c.data_mut();
            let (Some(pool), Some(i)) = (d.call.pool(), d.call.backend) else {
                return -3;
            };
            let load = u8::try_from(load).ok();
            pool.set_load(i, load);
            d.load = load;
            0
        },
    )?;
    l.func_wrap(
        M,
        "set_agent",
        |c: Caller<'_, State>, prop: i32, value: i64| -> i32 {
            let d = c.data();
            let (Some(pool), Some(i)) = (d.call.pool(), d.call.backend) else {
                return -3;
            };
            if pool.set_agent(i, prop, value) {
                0
            } else {
                -2
            }
        },
    )?;
    l.func_wrap(
        M,
        "response_add_header",
        |mut c: Caller<'_, State>, np: i32, nl: i32, vp: i32, vl: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(resp) = st.call.resp else { return -1 };
            let (Some(n), Some(v)) = (slice(mem, np, nl), slice(mem, vp, vl)) else {
                return -2;
            };
            let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n),
                http::HeaderValue::from_bytes(v),
            ) else {
                return -3;
            };
            // SAFETY: as for `Call::req`.
            match unsafe { &mut *resp }.append_header(n, v) {
                Ok(_) => 0,
                Err(_) => -3,
            }
        },
    )?;
    l.func_wrap(
        M,
        "log",
        |mut c: Caller<'_, State>, level: i32, p: i32, len: i32| {
            let Some((mem, _)) = split(&mut c) else {
                return;
            };
            let Some(m) = slice(mem, p, len) else { return };
            let m = String::from_utf8_lossy(m);
            match level {
                0 => tracing::error!(target: "plugin", "{m}"),
                1 => tracing::warn!(target: "plugin", "{m}"),
                2 => tracing::info!(target: "plugin", "{m}"),
                _ => tracing::debug!(target: "plugin", "{m}"),
            }
        },
    )?;
    l.func_wrap(
        M,
        "check_target",
        |mut c: Caller<'_, State>, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            match st.call.target {
                Some(t) => write_out(mem, buf, cap, t.to_string().as_bytes()),
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "tcp_exchange",
        |mut c: Caller<'_, State>,
         ap: i32,
         al: i32,
         sp: i32,
         sl: i32,
         want: i32,
         timeout_ms: i32|
         -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            if st.call.target.is_none() {
                return -3;
            }
            let (Some(a), Some(send)) = (slice(mem, ap, al), slice(mem, sp, sl)) else {
                return -2;
            };
            let Some(addr) = std::str::from_utf8(a).ok().and_then(|a| a.parse().ok()) else {
                return -2;
            };
            match super::net::tcp_exchange(
                addr,
                send,
                want.max(0) as usize,
                Duration::from_millis(timeout_ms.max(1) as u64),
            ) {
                Some(r) => {
                    st.last_response = r;
                    st.last_response.len() as i32
                }
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "http_get",
        |mut c: Caller<'_, State>, ap: i32, al: i32, pp: i32, pl: i32, timeout_ms: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            if st.call.target.is_none() {
                return -3;
            }
            let (Some(a), Some(p)) = (slice(mem, ap, al), slice(mem, pp, pl)) else {
                return -2;
            };
            let Some(addr) = std::str::from_utf8(a).ok().and_then(|a| a.parse().ok()) else {
                return -2;
            };
            let Ok(path) = std::str::from_utf8(p) else {
                return -2;
            };
            match super::net::http_get(addr, path, Duration::from_millis(timeout_ms.max(1) as u64))
            {
                Some((status, body)) => {
                    st.last_response = body;
                    status as i32
                }
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "last_response",
        |mut c: Caller<'_, State>, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            write_out(mem, buf, cap, &st.last_response)
        },
    )?;
    Ok(())
}
