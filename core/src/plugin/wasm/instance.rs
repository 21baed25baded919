//! One instance of a WASM plugin: its store, its hook functions, and the call scope that lets
//! host functions see the current request.

use std::sync::Arc;
use std::time::Duration;

use pingora::http::ResponseHeader;
use wasmtime::{Memory, ResourceLimiter, Store, Trap, TypedFunc};

use crate::balance::hooks::{HealthReport, Key, KeyOutcome, Request};
use crate::balance::pool::Pool;
use crate::plugin::contract::NetScope;
use crate::plugin::log::PluginLog;
use crate::plugin::runtime::{Alive, Fault, FaultKind, HealthCall, Instance, Limits, SelectCall};
use crate::plugin::shared::SharedData;

use crate::plugin::clock::TICK;

/// What the host functions see during one call.
#[derive(Default)]
pub(super) struct Call {
    pub req: Option<*const Request<'static>>,
    pub pool: Option<*const Pool>,
    pub avoid: Option<*const [usize]>,
    pub resp: Option<*mut ResponseHeader>,
    /// Health-check calls only: where the network functions may go, and until when.
    pub net: Option<NetScope>,
    /// Health-check calls only: the backend being checked (for `set_load`, `set_agent`).
    pub backend: Option<usize>,
}

// SAFETY: the pointers are set only for the duration of one call, on the thread making it
// (see `CallScope`); between calls they are `None`, so moving the store to another thread
// (instances are made on a background thread) moves no live reference.
unsafe impl Send for Call {}

impl Call {
    pub fn req(&self) -> Option<&Request<'static>> {
        // SAFETY: set by `WasmInstance::begin` from a reference that outlives the call and
        // cleared by `CallScope` when the call returns.
        self.req.map(|p| unsafe { &*p })
    }
    pub fn pool(&self) -> Option<&Pool> {
        // SAFETY: as for `req`.
        self.pool.map(|p| unsafe { &*p })
    }
    pub fn avoid(&self) -> &[usize] {
        // SAFETY: as for `req`.
        self.avoid.map(|p| unsafe { &*p }).unwrap_or(&[])
    }
}

/// Store data of one instance.
pub struct State {
    limiter: Limiter,
    memory: Option<Memory>,
    pub(super) call: Call,
    pub(super) key: Vec<u8>,
    pub(super) key_set: bool,
    pub(super) backend: Option<i32>,
    pub(super) load: Option<u8>,
    pub(super) last_response: Vec<u8>,
    pub(super) log: Arc<PluginLog>,
    /// The plugin's shared data in this service (the `shared_*` host functions).
    pub(super) shared: Arc<SharedData>,
    /// The last error the plugin logged, to explain a refused `plugboard_init`.
    pub(super) last_error: Option<String>,
}

impl State {
    pub(super) fn new(limits: Limits, log: Arc<PluginLog>, shared: Arc<SharedData>) -> Self {
        State {
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
            log,
            shared,
            last_error: None,
        }
    }

    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    pub(super) fn set_memory(&mut self, m: Memory) {
        self.memory = Some(m);
    }

    pub(super) fn memory(&self) -> Option<Memory> {
        self.memory
    }
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

pub(super) fn deadline_ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}

/// Turns a wasmtime error into a fault of the right kind.
pub(super) fn classify(store: &Store<State>, e: wasmtime::Error, what: &str) -> Fault {
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
pub struct WasmInstance {
    store: Store<State>,
    select: Option<TypedFunc<i32, i32>>,
    key: Option<TypedFunc<(), i32>>,
    response: Option<TypedFunc<(i32, i32), i32>>,
    health: Option<TypedFunc<i32, i32>>,
    ticks: u64,
    _alive: Alive,
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

/// Erases a request's lifetime for the duration of one call (see [`CallScope`]).
fn erase(req: &Request<'_>) -> *const Request<'static> {
    (req as *const Request<'_>).cast::<Request<'static>>()
}

impl WasmInstance {
    /// Hands the instance its settings (`plugboard_init`).
    pub(super) fn init(
        mut store: Store<State>,
        instance: wasmtime::Instance,
        settings: &str,
        limits: Limits,
    ) -> Result<Self, Fault> {
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
        let memory = store.data().memory().expect("set at instantiation");
        memory
            .write(&mut store, ptr as u32 as usize, settings.as_bytes())
            .map_err(|_| init_fault("plugboard_alloc returned memory out of bounds".into()))?;
        let rc = init
            .call(&mut store, (ptr, len))
            .map_err(|e| classify(&store, e, "plugboard_init"))?;
        if rc != 0 {
            let why = store.data_mut().last_error.take().unwrap_or_default();
            return Err(init_fault(format!(
                "plugboard_init refused its settings (code {rc}){}{why}",
                if why.is_empty() { "" } else { ": " }
            )));
        }
        Ok(WasmInstance {
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
            _alive: Alive::new(),
        })
    }

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
}

impl Instance for WasmInstance {
    fn select(&mut self, c: &SelectCall<'_, '_>) -> Result<Option<usize>, Fault> {
        let f = self
            .select
            .clone()
            .ok_or_else(|| missing("select-server"))?;
        let n = c.pool.len() as i32;
        let call = Call {
            req: Some(erase(c.req)),
            pool: Some(c.pool),
            avoid: Some(c.avoid as *const [usize]),
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

    fn key<'r>(&mut self, req: &Request<'r>, pool: &Pool) -> Result<KeyOutcome<'r>, Fault> {
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

    fn health(&mut self, c: &HealthCall<'_>) -> Result<HealthReport, Fault> {
        let f = self.health.clone().ok_or_else(|| missing("health-check"))?;
        let call = Call {
            pool: Some(c.pool),
            net: Some(c.net),
            backend: Some(c.backend),
            ..Call::default()
        };
        let scope = self.begin(call, deadline_ticks(c.budget));
        let r = f
            .call(&mut *scope.0, c.backend as i32)
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
