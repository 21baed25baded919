//! Plugins: WASM modules (wasmtime) and Lua scripts (mlua) that implement the hook traits.
//!
//! - A **slot** is one plugin file (`<plugins_dir>/<name>.wasm` or `.lua`). It holds the
//!   current compiled version behind an `ArcSwap`, so a reload swaps it atomically.
//! - A **binding** is a slot used by one service, with that service's `[service.plugin.<name>]`
//!   settings and error policy. Its adapters ([`PluginSelect`], [`PluginKey`],
//!   [`PluginHealth`]) implement the hook traits, so the balancer cannot tell them from
//!   built-ins.
//! - An **instance** (a wasmtime store + instance, or a Lua state) belongs to one binding on one
//!   thread: request-path calls use a thread-local cache, so no lock is taken and the module is
//!   never compiled on the hot path. When a slot's version changes, each thread builds a new
//!   instance on its next call; a call already running finishes on the old one. A failed call
//!   (trap, deadline, memory cap, bad answer) drops the instance, and the next call gets a
//!   fresh one.
//! - Health-check calls do blocking network I/O through host functions, so each health binding
//!   runs its instance on a thread of its own, never on a worker thread.

pub mod lua;
pub mod net;
pub mod stock;
pub mod wasm;
mod watch;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::ResponseHeader;
use prometheus::IntCounterVec;

use crate::config::{Config, ConfigError, ConfigErrors, Hook, PluginErrorPolicy};
use crate::hooks::{
    HealthCheck, HealthReport, Key, KeyOutcome, PersistenceKey, Pick, Request, SelectServer,
};
use crate::logging::RateLimit;
use crate::pool::Pool;

/// Bits of the hook set a plugin implements (also the WASM ABI's `plugboard_hooks` value).
pub const HOOK_SELECT: u32 = 1;
pub const HOOK_KEY: u32 = 2;
pub const HOOK_HEALTH: u32 = 4;
pub const HOOK_RESPONSE: u32 = 8;

pub fn hook_bit(h: Hook) -> u32 {
    match h {
        Hook::SelectServer => HOOK_SELECT,
        Hook::PersistenceKey => HOOK_KEY,
        Hook::HealthCheck => HOOK_HEALTH,
    }
}

/// Names of the hooks in a bit set, for messages.
pub fn hook_names(bits: u32) -> String {
    let names: Vec<&str> = [
        (HOOK_SELECT, "select-server"),
        (HOOK_KEY, "persistence-key"),
        (HOOK_HEALTH, "health-check"),
        (HOOK_RESPONSE, "response step"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Per-call limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one request-path call.
    pub deadline: Duration,
    /// Memory cap of one instance, bytes.
    pub memory: usize,
}

/// Why a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Trap,
    Timeout,
    Memory,
    /// A well-formed call with a nonsensical answer (unknown backend, bad code).
    Invalid,
    /// The plugin could not be instantiated or refused its settings.
    Init,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Invalid => "invalid",
            FaultKind::Init => "init",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

impl Fault {
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Fault {
            kind,
            message: message.into(),
        }
    }
}

/// One compiled version of a plugin file.
pub struct Loaded {
    pub code: Code,
    /// Hook bits the plugin implements.
    pub hooks: u32,
    /// ABI version (WASM) or 1 (Lua).
    pub abi: u32,
    /// Changes with every successful (re)load of the slot.
    pub generation: u64,
}

pub enum Code {
    Wasm(wasmtime::Module),
    Lua(Arc<str>),
}

impl Loaded {
    pub fn kind(&self) -> &'static str {
        match self.code {
            Code::Wasm(_) => "wasm",
            Code::Lua(_) => "lua",
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Where a plugin's code comes from.
pub enum Source<'a> {
    File(&'a Path),
    /// An embedded stock plugin (WASM).
    Stock(&'a str, &'static [u8]),
}

/// Compiles a plugin file and reads which hooks it implements. A Lua script's top level runs
/// with `settings` as its `config`.
pub fn load_file(
    host: &wasm::Host,
    path: &Path,
    settings: &str,
    limits: Limits,
) -> Result<Loaded, String> {
    load(host, Source::File(path), settings, limits)
}

pub fn load(
    host: &wasm::Host,
    source: Source<'_>,
    settings: &str,
    limits: Limits,
) -> Result<Loaded, String> {
    let wasm = |bytes: &[u8]| -> Result<(Code, u32, u32), String> {
        let module = host.compile(bytes)?;
        let (hooks, abi) = host.inspect(&module, limits)?;
        Ok((Code::Wasm(module), hooks, abi))
    };
    let (code, hooks, abi) = match source {
        Source::Stock(_, bytes) => wasm(bytes)?,
        Source::File(path) => match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "wasm" => wasm(&std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?)?,
            "lua" => {
                let src = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
                let hooks = lua::inspect(&src, settings, limits)?;
                (Code::Lua(src.into()), hooks, 1)
            }
            _ => return Err("a plugin file must end in .wasm or .lua".into()),
        },
    };
    Ok(Loaded {
        code,
        hooks,
        abi,
        generation: GENERATION.fetch_add(1, Relaxed),
    })
}

/// One plugin file, hot-swappable.
pub struct Slot {
    pub name: String,
    pub path: PathBuf,
    current: ArcSwap<Loaded>,
    /// Hooks the configuration uses from this plugin: a new version must implement them.
    required: u32,
    /// Settings of every service that uses this slot: a new version must accept each.
    settings: Vec<Arc<str>>,
}

impl Slot {
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }
}

/// A slot used by one service.
pub struct Binding {
    /// Index into the thread-local instance cache.
    id: usize,
    pub slot: Arc<Slot>,
    pub service: String,
    settings: Arc<str>,
    policy: PluginErrorPolicy,
    limits: Limits,
    host: Arc<wasm::Host>,
    faults: IntCounterVec,
    log: RateLimit,
}

static BINDING_IDS: AtomicUsize = AtomicUsize::new(0);

/// A live instance of some version of a plugin.
pub enum Instance {
    Wasm(wasm::Instance),
    Lua(lua::Instance),
}

/// What a select-server call may see besides the request.
pub struct SelectArgs<'a> {
    pub pool: &'a Pool,
    pub avoid: &'a [usize],
}

impl Instance {
    fn new(
        host: &wasm::Host,
        loaded: &Loaded,
        settings: &str,
        limits: Limits,
    ) -> Result<Self, Fault> {
        Ok(match &loaded.code {
            Code::Wasm(m) => Instance::Wasm(host.instantiate(m, settings, limits)?),
            Code::Lua(src) => Instance::Lua(lua::Instance::new(src, settings, limits)?),
        })
    }

    fn select(&mut self, req: &Request<'_>, a: &SelectArgs<'_>) -> Result<Option<usize>, Fault> {
        match self {
            Instance::Wasm(i) => i.select(req, a),
            Instance::Lua(i) => i.select(req, a),
        }
    }

    fn key<'r>(&mut self, req: &Request<'r>, pool: &Pool) -> Result<KeyOutcome<'r>, Fault> {
        match self {
            Instance::Wasm(i) => i.key(req, pool),
            Instance::Lua(i) => i.key(req, pool),
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
        match self {
            Instance::Wasm(i) => i.on_response(req, named, served, pool, resp),
            Instance::Lua(i) => i.on_response(req, named, served, pool, resp),
        }
    }

    fn health(
        &mut self,
        pool: &Pool,
        backend: usize,
        target: SocketAddr,
        budget: Duration,
    ) -> Result<HealthReport, Fault> {
        match self {
            Instance::Wasm(i) => i.health(pool, backend, target, budget),
            Instance::Lua(i) => i.health(pool, backend, target, budget),
        }
    }
}

thread_local! {
    /// Instances of this thread, indexed by binding id: (slot generation, instance).
    static INSTANCES: RefCell<Vec<Option<(u64, Instance)>>> = const { RefCell::new(Vec::new()) };
}

impl Binding {
    /// Runs `f` on this thread's instance of the current version, creating it if needed.
    /// A failed call drops the instance.
    fn call<R>(&self, f: impl FnOnce(&mut Instance) -> Result<R, Fault>) -> Result<R, Fault> {
        let loaded = self.slot.current.load();
        INSTANCES.with(|cell| {
            let mut cache = cell.borrow_mut();
            if cache.len() <= self.id {
                cache.resize_with(self.id + 1, || None);
            }
            let entry = &mut cache[self.id];
            if entry.as_ref().map(|(g, _)| *g) != Some(loaded.generation) {
                *entry = None;
                let inst = Instance::new(&self.host, &loaded, &self.settings, self.limits)?;
                *entry = Some((loaded.generation, inst));
            }
            let (_, inst) = entry.as_mut().expect("just filled");
            let r = f(inst);
            if r.is_err() {
                *entry = None;
            }
            r
        })
    }

    /// Counts and logs a fault (at most once per second per binding).
    fn fault(&self, hook: &str, f: &Fault) {
        self.faults
            .with_label_values(&[&self.slot.name, &self.service, f.kind.as_str()])
            .inc();
        if self.log.allow() {
            tracing::warn!(
                plugin = %self.slot.name,
                service = %self.service,
                hook,
                kind = f.kind.as_str(),
                policy = ?self.policy,
                "plugin failed: {}",
                f.message
            );
        }
    }

    fn rejects(&self) -> bool {
        self.policy == PluginErrorPolicy::Reject
    }
}

/// select-server hook backed by a plugin.
pub struct PluginSelect(pub Arc<Binding>);

impl SelectServer for PluginSelect {
    fn select(&self, req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        let args = SelectArgs { pool, avoid };
        let r = self.0.call(|i| i.select(req, &args)).and_then(|p| match p {
            Some(i) if i >= pool.len() => Err(Fault::new(
                FaultKind::Invalid,
                format!("returned backend {i}, but the pool has {}", pool.len()),
            )),
            p => Ok(p),
        });
        match r {
            Ok(Some(i)) if pool.get(i).available() && !avoid.contains(&i) => Pick::Backend(i),
            // An unavailable pick (the plugin may not know about this request's failures)
            // or no opinion: the fallback scheduler decides.
            Ok(_) => Pick::NoOpinion,
            Err(f) => {
                self.0.fault("select-server", &f);
                if self.0.rejects() {
                    Pick::Reject
                } else {
                    Pick::NoOpinion
                }
            }
        }
    }
}

/// persistence-key hook (and its response step) backed by a plugin.
pub struct PluginKey {
    pub binding: Arc<Binding>,
    /// tcp mode: the plugin reads the client's first bytes.
    pub tcp: bool,
}

impl PersistenceKey for PluginKey {
    fn wants_payload(&self) -> bool {
        self.tcp
    }

    fn key<'r>(&self, req: &Request<'r>, pool: &Pool) -> KeyOutcome<'r> {
        let r = self.binding.call(|i| i.key(req, pool));
        match r {
            Ok(KeyOutcome::Backend(i)) if i >= pool.len() => {
                let f = Fault::new(
                    FaultKind::Invalid,
                    format!("named backend {i}, but the pool has {}", pool.len()),
                );
                self.binding.fault("persistence-key", &f);
                if self.binding.rejects() {
                    KeyOutcome::Reject
                } else {
                    KeyOutcome::None
                }
            }
            Ok(o) => o,
            Err(f) => {
                self.binding.fault("persistence-key", &f);
                if self.binding.rejects() {
                    KeyOutcome::Reject
                } else {
                    KeyOutcome::None
                }
            }
        }
    }

    fn on_response(
        &self,
        req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        pool: &Pool,
        resp: &mut ResponseHeader,
    ) {
        if self.binding.slot.current.load().hooks & HOOK_RESPONSE == 0 {
            return;
        }
        if let Err(f) = self
            .binding
            .call(|i| i.on_response(req, named, served, pool, resp))
        {
            self.binding.fault("response step", &f);
        }
    }
}

/// A health check request for a binding's health thread.
struct HealthJob {
    pool: Arc<Pool>,
    backend: usize,
    target: SocketAddr,
    budget: Duration,
    reply: tokio::sync::oneshot::Sender<Result<HealthReport, Fault>>,
}

/// health-check hook backed by a plugin, run on a thread of its own.
pub struct PluginHealth {
    binding: Arc<Binding>,
    jobs: Mutex<mpsc::Sender<HealthJob>>,
    budget: Duration,
}

impl PluginHealth {
    pub fn new(binding: Arc<Binding>, budget: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<HealthJob>();
        let b = binding.clone();
        std::thread::Builder::new()
            .name(format!("health-{}", binding.slot.name))
            .spawn(move || {
                let mut inst: Option<(u64, Instance)> = None;
                for job in rx {
                    let loaded = b.slot.current();
                    if inst.as_ref().map(|(g, _)| *g) != Some(loaded.generation) {
                        inst = Instance::new(&b.host, &loaded, &b.settings, b.limits)
                            .map(|i| (loaded.generation, i))
                            .ok();
                    }
                    let r = match inst.as_mut() {
                        Some((_, i)) => i.health(&job.pool, job.backend, job.target, job.budget),
                        None => Err(Fault::new(
                            FaultKind::Init,
                            "plugin could not be instantiated",
                        )),
                    };
                    if r.is_err() {
                        inst = None;
                    }
                    let _ = job.reply.send(r);
                }
            })
            .expect("spawn plugin health thread");
        PluginHealth {
            binding,
            jobs: Mutex::new(tx),
            budget,
        }
    }
}

#[async_trait]
impl HealthCheck for PluginHealth {
    async fn check(
        &self,
        pool: &Arc<Pool>,
        backend: usize,
        target: SocketAddr,
    ) -> Option<HealthReport> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = HealthJob {
            pool: pool.clone(),
            backend,
            target,
            budget: self.budget,
            reply,
        };
        if self.jobs.lock().ok()?.send(job).is_err() {
            return None;
        }
        match rx.await.ok()? {
            Ok(r) => Some(r),
            Err(f) => {
                self.binding.fault("health-check", &f);
                self.binding.rejects().then_some(HealthReport::DOWN)
            }
        }
    }
}

/// Every plugin slot of a configuration, with the watcher that reloads them.
pub struct Registry {
    pub host: Arc<wasm::Host>,
    slots: HashMap<String, Arc<Slot>>,
    limits: Limits,
    faults: IntCounterVec,
    _watcher: Mutex<Option<watch::Watcher>>,
}

impl Registry {
    /// Resolves and loads every plugin the configuration refers to. Errors are reported at
    /// the line of the reference.
    pub fn load(cfg: &Config, faults: IntCounterVec) -> Result<Registry, ConfigErrors> {
        let limits = Limits {
            deadline: cfg.proxy.plugin_deadline,
            memory: cfg.proxy.plugin_memory,
        };
        let host = Arc::new(wasm::Host::new().map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: cfg.path.clone(),
                line: 0,
                col: 0,
                message: format!("cannot start the WASM engine: {e}"),
            }])
        })?);
        let mut errors = Vec::new();
        let mut slots: HashMap<String, Arc<Slot>> = HashMap::new();
        let mut failed: HashMap<String, ()> = HashMap::new();
        for r in &cfg.plugin_refs {
            let err = |message: String| ConfigError {
                file: cfg.path.clone(),
                line: r.line,
                col: r.col,
                message,
            };
            if failed.contains_key(&r.name) {
                continue;
            }
            if !slots.contains_key(&r.name) {
                let dir = cfg.proxy.plugins_dir.as_deref();
                let file = dir.and_then(|d| resolve(d, &r.name));
                let settings = settings_json(cfg, r.service, &r.name);
                let loaded = match (&file, stock::get(&r.name)) {
                    (Some(path), _) => load_file(&host, path, &settings, limits)
                        .map_err(|e| format!("plugin:{}: {}: {e}", r.name, path.display())),
                    (None, Some(Ok(bytes))) => load(&host, Source::Stock(&r.name, bytes), &settings, limits)
                        .map_err(|e| format!("plugin:{}: stock plugin: {e}", r.name)),
                    (None, Some(Err(e))) => Err(format!("plugin:{}: {e}", r.name)),
                    (None, None) => Err(match dir {
                        Some(d) => format!(
                            "plugin:{}: not found: no {}.wasm or {}.lua in {}, and no stock plugin of that name (stock: {})",
                            r.name,
                            r.name,
                            r.name,
                            d.display(),
                            stock::names().collect::<Vec<_>>().join(", ")
                        ),
                        None => format!(
                            "plugin:{}: not a stock plugin (stock: {}), and no [proxy] plugins_dir is set to find it in",
                            r.name,
                            stock::names().collect::<Vec<_>>().join(", ")
                        ),
                    }),
                };
                match loaded {
                    Ok(l) => {
                        // A stock plugin's slot watches the path a file overriding it would have.
                        let path = file.unwrap_or_else(|| {
                            dir.unwrap_or(Path::new("."))
                                .join(format!("{}.wasm", r.name))
                        });
                        slots.insert(
                            r.name.clone(),
                            Arc::new(Slot {
                                name: r.name.clone(),
                                path,
                                current: ArcSwap::from_pointee(l),
                                required: 0,
                                settings: Vec::new(),
                            }),
                        );
                    }
                    Err(e) => {
                        errors.push(err(e));
                        failed.insert(r.name.clone(), ());
                        continue;
                    }
                }
            }
            let slot = slots.get_mut(&r.name).expect("inserted above");
            let have = slot.current.load().hooks;
            if have & hook_bit(r.hook) == 0 {
                errors.push(err(format!(
                    "plugin:{}: {} does not implement the {} hook (it implements: {})",
                    r.name,
                    slot.path.display(),
                    r.hook.as_str(),
                    hook_names(have)
                )));
                continue;
            }
            let settings: Arc<str> = settings_json(cfg, r.service, &r.name).into();
            let s = Arc::get_mut(slot).expect("not shared during load");
            s.required |= hook_bit(r.hook);
            if !s.settings.contains(&settings) {
                // Check that this version accepts these settings, as a reload will.
                let loaded = s.current.load();
                if let Err(f) = Instance::new(&host, &loaded, &settings, limits) {
                    errors.push(err(format!(
                        "plugin:{}: refused the settings of service {:?}: {}",
                        r.name, cfg.services[r.service].name, f.message
                    )));
                    continue;
                }
                s.settings.push(settings);
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Registry {
            host,
            slots,
            limits,
            faults,
            _watcher: Mutex::new(None),
        })
    }

    /// The binding of plugin `name` for service number `service` of `cfg`.
    pub fn bind(&self, cfg: &Config, service: usize, name: &str) -> Option<Arc<Binding>> {
        let slot = self.slots.get(name)?.clone();
        Some(Arc::new(Binding {
            id: BINDING_IDS.fetch_add(1, Relaxed),
            slot,
            service: cfg.services[service].name.clone(),
            settings: settings_json(cfg, service, name).into(),
            policy: cfg.services[service].on_plugin_error,
            limits: self.limits,
            host: self.host.clone(),
            faults: self.faults.clone(),
            log: RateLimit::default(),
        }))
    }

    /// Starts watching the plugins directory; changed files are reloaded in the background.
    pub fn watch(self: &Arc<Self>, dir: &Path) -> Result<(), String> {
        if self.slots.is_empty() {
            return Ok(());
        }
        let w = watch::Watcher::start(dir, Arc::downgrade(self))?;
        *self._watcher.lock().expect("not poisoned") = Some(w);
        Ok(())
    }

    /// Reloads the slot whose file is `path`, if any. A version that fails to load, lacks a
    /// hook the configuration uses, or refuses a service's settings is not installed.
    pub fn reload(&self, path: &Path) {
        let Some(slot) = self
            .slots
            .values()
            .find(|s| s.path == path || resolve_alt(&s.path) == path)
        else {
            return;
        };
        if !path.exists() {
            tracing::warn!(plugin = %slot.name, path = %path.display(), "plugin file deleted; services keep its last good version");
            return;
        }
        let first = slot.settings.first().map_or("{}", |s| s);
        let result = load_file(&self.host, path, first, self.limits).and_then(|l| {
            if l.hooks & slot.required != slot.required {
                return Err(format!(
                    "the configuration uses the {} hook(s), the new version implements only: {}",
                    hook_names(slot.required & !l.hooks),
                    hook_names(l.hooks)
                ));
            }
            for s in &slot.settings {
                Instance::new(&self.host, &l, s, self.limits)
                    .map_err(|f| format!("refused its settings: {}", f.message))?;
            }
            Ok(l)
        });
        match result {
            Ok(l) => {
                tracing::info!(plugin = %slot.name, path = %path.display(), kind = l.kind(), hooks = %hook_names(l.hooks), "plugin reloaded");
                slot.current.store(Arc::new(l));
            }
            Err(e) => {
                tracing::error!(plugin = %slot.name, "{}: {e}; the previous version keeps running", path.display());
            }
        }
    }
}

/// `plugboard plugin check`: loads a plugin file (or a stock plugin by name), then runs each of its hooks once on a sample
/// request (`GET /` from 127.0.0.1:40000 with `X-User: alice`) and a pool of three backends
/// (127.0.0.1:9001-9003). Returns a human report, or the reason the plugin cannot load.
pub fn exercise(path: &Path, settings: &str, limits: Limits) -> Result<String, String> {
    use std::fmt::Write;
    let host = wasm::Host::new()?;
    host.start_epoch_ticker();
    // A path that does not exist may name a stock plugin.
    let loaded = match (path.exists(), path.to_str().and_then(stock::get)) {
        (false, Some(Ok(bytes))) => load(
            &host,
            Source::Stock(path.to_str().unwrap_or(""), bytes),
            settings,
            limits,
        )?,
        (false, Some(Err(e))) => return Err(e),
        _ => load_file(&host, path, settings, limits)?,
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
    let mut inst = Instance::new(&host, &loaded, settings, limits)
        .map_err(|f| format!("cannot start with settings {settings}: {}", f.message))?;
    let backends: Vec<crate::config::BackendConfig> = (1..=3)
        .map(|i| crate::config::BackendConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
            weight: 1,
            enabled: true,
        })
        .collect();
    let pool = Pool::new(&backends, None);
    let mut header =
        pingora::http::RequestHeader::build("GET", b"/", None).map_err(|e| e.to_string())?;
    let _ = header.insert_header("host", "example.test");
    let _ = header.insert_header("x-user", "alice");
    let _ = header.insert_header("cookie", "session=s1");
    let req = Request {
        service: "sample",
        mode: crate::config::Mode::Http,
        client: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        http: Some(&header),
        payload: &[],
        key: None,
    };
    let show = |r: Result<String, Fault>| match r {
        Ok(s) => s,
        Err(f) => format!("FAILED ({}): {}", f.kind.as_str(), f.message),
    };
    if loaded.hooks & HOOK_SELECT != 0 {
        let r = inst
            .select(
                &req,
                &SelectArgs {
                    pool: &pool,
                    avoid: &[],
                },
            )
            .map(|p| match p {
                Some(i) if i < pool.len() => format!("backend {} ({})", i, pool.get(i).address),
                Some(i) => format!("backend {i}, which does not exist"),
                None => "no opinion".into(),
            });
        let _ = writeln!(out, "select-server: {}", show(r));
    }
    if loaded.hooks & HOOK_KEY != 0 {
        let r = inst.key(&req, &pool).map(|k| match k {
            KeyOutcome::Key(Key::Owned(b)) => format!("key {:?}", String::from_utf8_lossy(&b)),
            KeyOutcome::Backend(i) => format!("names backend {i}"),
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
        let r = inst
            .health(&pool, 0, target, Duration::from_secs(1))
            .map(|h| {
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

/// The `.lua` twin of a `.wasm` path (a stock plugin may be overridden by either).
fn resolve_alt(p: &Path) -> PathBuf {
    p.with_extension("lua")
}

/// `<dir>/<name>.wasm`, else `<dir>/<name>.lua`.
pub fn resolve(dir: &Path, name: &str) -> Option<PathBuf> {
    ["wasm", "lua"]
        .iter()
        .map(|e| dir.join(format!("{name}.{e}")))
        .find(|p| p.is_file())
}

fn settings_json(cfg: &Config, service: usize, name: &str) -> String {
    cfg.services[service]
        .plugin_settings
        .get(name)
        .cloned()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
        .to_string()
}
