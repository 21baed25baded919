//! A binding is a plugin slot used by one service: the service's settings and error policy,
//! its log, its circuit breaker, and the instances that run its calls.
//!
//! Request-path calls use this thread's instance, held by the binding per thread (no lock,
//! nothing compiled or instantiated): a worker without a current instance takes a ready one
//! from the binding's spares ([`super::spares`]). The instances go with the binding: a reload
//! that replaces it hands every thread's instance to the factory to drop. A call that faults discards its instance; repeated
//! faults open the circuit breaker ([`super::breaker`]).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{Histogram, IntCounter};
use thread_local::ThreadLocal;

use super::breaker::Breaker;
use super::log::PluginLog;
use super::runtime::{Fault, FaultKind, Instance, Limits};
use super::shared::SharedData;
use super::slot::{Loaded, Slot};
use super::spares::{Factory, Spares};
use crate::config::PluginErrorPolicy;
use crate::observe::logging::RateLimit;
use crate::observe::metrics::{PluginMetrics, HOOKS};

/// Why a call did not produce an answer.
#[derive(Debug)]
pub enum CallError {
    /// The plugin ran and failed.
    Fault(Fault),
    /// The plugin was not called: its circuit is open, or no instance is ready yet.
    Skipped(&'static str),
}

/// Counters of one binding, resolved once.
struct Counters {
    faults: [IntCounter; 5],
    circuit_open: IntCounter,
    not_ready: IntCounter,
    /// Calls made and their durations, per hook (in the order of `metrics::HOOKS`).
    calls: [IntCounter; 3],
    durations: [Histogram; 3],
}

/// The hooks, as indexes of the call counters.
pub const SELECT_HOOK: usize = 0;
pub const KEY_HOOK: usize = 1;
pub const HEALTH_HOOK: usize = 2;

fn kind_index(k: FaultKind) -> usize {
    match k {
        FaultKind::Trap => 0,
        FaultKind::Timeout => 1,
        FaultKind::Memory => 2,
        FaultKind::Invalid => 3,
        FaultKind::Init => 4,
    }
}

pub struct Binding {
    /// Each worker thread's instance. Owned by the binding rather than by a process-wide
    /// thread-local table, which kept every replaced binding's instances until the thread
    /// ended: about 1 MB per reload under load, found by the chaos soak.
    instances: ThreadLocal<RefCell<Cached>>,
    pub slot: Arc<Slot>,
    pub service: String,
    pub settings: Arc<str>,
    pub policy: PluginErrorPolicy,
    pub limits: Limits,
    pub log: Arc<PluginLog>,
    /// What its instances share across worker threads.
    pub shared: Arc<SharedData>,
    counters: Counters,
    fault_log: RateLimit,
    pub breaker: Breaker,
    spares: Spares,
    factory: Arc<Factory>,
}

/// An instance and the generation of the version it runs.
type Cached = Option<(u64, Box<dyn Instance>)>;

/// What a new binding needs.
pub struct BindingSpec {
    pub slot: Arc<Slot>,
    pub service: String,
    pub settings: Arc<str>,
    pub policy: PluginErrorPolicy,
    pub limits: Limits,
    /// Threads that may call it at once (the size of its spares queue is one more).
    pub threads: usize,
}

impl Binding {
    pub fn new(spec: BindingSpec, metrics: &PluginMetrics, factory: Arc<Factory>) -> Arc<Binding> {
        let (p, s) = (spec.slot.name.as_str(), spec.service.as_str());
        let fault = |k: &str| metrics.faults.with_label_values(&[p, s, k]);
        let b = Arc::new(Binding {
            instances: ThreadLocal::new(),
            log: Arc::new(PluginLog::new(
                p,
                s,
                Some(metrics.log_dropped.with_label_values(&[p, s])),
            )),
            counters: Counters {
                faults: [
                    fault("trap"),
                    fault("timeout"),
                    fault("memory"),
                    fault("invalid"),
                    fault("init"),
                ],
                circuit_open: metrics.skipped.with_label_values(&[p, s, "circuit_open"]),
                not_ready: metrics.skipped.with_label_values(&[p, s, "not_ready"]),
                calls: HOOKS.map(|h| metrics.calls.with_label_values(&[p, s, h])),
                durations: HOOKS.map(|h| metrics.call_seconds.with_label_values(&[p, h])),
            },
            shared: super::shared::find(p, s),
            slot: spec.slot,
            service: spec.service,
            settings: spec.settings,
            policy: spec.policy,
            limits: spec.limits,
            fault_log: RateLimit::default(),
            breaker: Breaker::default(),
            spares: Spares::new(spec.threads + 1),
            factory: factory.clone(),
        });
        factory.register(&b);
        b
    }

    /// A fresh instance of the current version (slow: never on the request path).
    pub fn instantiate(&self) -> Result<(u64, Box<dyn Instance>), Fault> {
        let loaded = self.slot.current();
        Ok((loaded.generation, self.make(&loaded)?))
    }

    /// An instance of `loaded` with this binding's settings, log and shared data.
    fn make(&self, loaded: &Loaded) -> Result<Box<dyn Instance>, Fault> {
        loaded.code.instantiate_with(
            &self.settings,
            self.limits,
            self.log.clone(),
            self.shared.clone(),
        )
    }

    /// Fills this binding's spares with instances of the current version (factory thread, and
    /// once at start-up so that the first requests find them).
    pub fn refill(&self) {
        let loaded = self.slot.current();
        let made = self.spares.fill(loaded.generation, || self.make(&loaded));
        if let Err(f) = made {
            self.fault("instantiate", &f);
        }
    }

    /// Runs `f` on this thread's instance of the current version. Faults discard the instance
    /// and feed the breaker; the caller decides what the service does instead (the policy).
    pub fn call<R>(
        &self,
        hook: usize,
        f: impl FnOnce(&mut dyn Instance) -> Result<R, Fault>,
    ) -> Result<R, CallError> {
        if !self.breaker.allows() {
            self.counters.circuit_open.inc();
            return Err(CallError::Skipped("circuit open"));
        }
        let generation = self.slot.generation();
        let mut entry = self.instances.get_or(|| RefCell::new(None)).borrow_mut();
        if entry.as_ref().map(|(g, _)| *g) != Some(generation) {
            match self.spares.take(generation, &self.factory) {
                Some(fresh) => {
                    if let Some((_, old)) = entry.replace((generation, fresh)) {
                        self.factory.dispose(old);
                    }
                }
                // A stale instance (a reload just happened) keeps serving until a fresh
                // one is ready; with none at all the call is skipped.
                None if entry.is_some() => {}
                None => {
                    self.factory.poke();
                    self.counters.not_ready.inc();
                    return Err(CallError::Skipped("no instance ready"));
                }
            }
            self.factory.poke();
        }
        let (_, inst) = entry.as_mut().expect("filled above");
        let started = Instant::now();
        let r = f(inst.as_mut());
        self.counted(hook, started.elapsed());
        match r {
            Ok(r) => {
                self.breaker.success();
                Ok(r)
            }
            Err(fault) => {
                if let Some((_, old)) = entry.take() {
                    self.factory.dispose(old);
                }
                self.factory.poke();
                Err(CallError::Fault(fault))
            }
        }
    }

    /// Counts a call of `hook` that took `took`.
    pub fn counted(&self, hook: usize, took: std::time::Duration) {
        self.counters.calls[hook].inc();
        self.counters.durations[hook].observe(took.as_secs_f64());
    }

    /// Counts and logs a fault (at most once per second per binding) and feeds the breaker.
    pub fn fault(&self, hook: &str, f: &Fault) {
        self.counters.faults[kind_index(f.kind)].inc();
        let tripped = self.breaker.failure();
        if self.fault_log.allow() || tripped.is_some() {
            let loaded = self.slot.current();
            tracing::warn!(
                plugin = %self.slot.name,
                file = %loaded.file,
                service = %self.service,
                hook,
                kind = f.kind.as_str(),
                policy = ?self.policy,
                "plugin failed: {}",
                f.message
            );
        }
        if let Some(ms) = tripped {
            tracing::warn!(
                plugin = %self.slot.name,
                service = %self.service,
                "plugin keeps failing: not called for {ms} ms (policy {:?} answers instead)",
                self.policy
            );
        }
    }

    /// Reports a failed call (a fault is counted; a skip is already counted).
    pub fn failed(&self, hook: &str, e: &CallError) {
        if let CallError::Fault(f) = e {
            self.fault(hook, f);
        }
    }

    pub fn rejects(&self) -> bool {
        self.policy == PluginErrorPolicy::Reject
    }
}

impl Drop for Binding {
    /// Workers' instances are dropped on the factory thread, as a discarded one is: a Lua
    /// state or a WASM store can take milliseconds to free, and the last holder of a binding
    /// may be a worker finishing a request.
    fn drop(&mut self) {
        for cell in self.instances.iter_mut() {
            if let Some((_, inst)) = cell.get_mut().take() {
                self.factory.dispose(inst);
            }
        }
    }
}
