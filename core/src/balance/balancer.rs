//! One service's decision logic, shared by the HTTP and TCP proxies.
//!
//! A [`Balancer`] owns the service's pool and its three hooks. For every request or
//! connection the proxy calls, in order: [`Balancer::key`] (persistence-key hook),
//! [`Balancer::admit`] (persistence table, then select-server hook, the backend's slot taken,
//! waiting in the queue when everything usable is full; see `admission.rs`), and at the end
//! [`Balancer::on_response`] (the persistence hook's response step, http only). Failed
//! connects come back through [`Balancer::connect_failed`], health checks through
//! [`Balancer::observe`].

use std::sync::Arc;
use std::time::Duration;

use pingora::http::ResponseHeader;

use super::follow::Leads;
use super::hooks::{
    HealthCheck, HealthReport, KeyOutcome, PersistenceKey, Pick, Request, SelectServer,
};
use super::identity::CookieKey;
use super::persistence::{MemoryTable, PersistenceTable};
use super::pool::{ActiveGuard, Pool, Transition};
use crate::config::ServiceConfig;
use crate::config::{Config, HealthConfig, HealthKind, PersistenceKeyKind, SchedulerKind};
use crate::observe::metrics::{BackendCounters, Metrics, ServiceCounters};
use crate::share::{Link, SharedTable};

/// Where the hooks that a configuration names as `plugin:<name>` come from (the plugin
/// registry). `service` is an index into `cfg.services`.
pub trait HookSource {
    fn select(
        &self,
        cfg: &Config,
        service: usize,
        name: &str,
    ) -> Result<Box<dyn SelectServer>, String>;
    fn key(
        &self,
        cfg: &Config,
        service: usize,
        name: &str,
    ) -> Result<Box<dyn PersistenceKey>, String>;
    fn health(
        &self,
        cfg: &Config,
        service: usize,
        name: &str,
    ) -> Result<Arc<dyn HealthCheck>, String>;
    /// The scheduler plugin's own health-check hook, if it has one, run as an agent feed:
    /// the hook, how often, and the timeout of one poll.
    fn agent_feed(&self, cfg: &Config, service: usize, name: &str) -> Option<AgentFeed>;
}

/// Reads every service's current version (they are replaced when backends change), for
/// the parts that walk all services off the request path: health checks, metrics.
pub type CurrentServices = Arc<dyn Fn() -> Arc<Vec<Arc<Balancer>>> + Send + Sync>;

/// A health-check hook run as an agent feed: the hook, its interval and the timeout of a poll.
pub type AgentFeed = (Arc<dyn HealthCheck>, Duration, Duration);

/// A configuration without plugins.
pub struct NoPlugins;

impl HookSource for NoPlugins {
    fn select(&self, _: &Config, _: usize, name: &str) -> Result<Box<dyn SelectServer>, String> {
        Err(format!("plugin {name:?} is not loaded"))
    }
    fn key(&self, _: &Config, _: usize, name: &str) -> Result<Box<dyn PersistenceKey>, String> {
        Err(format!("plugin {name:?} is not loaded"))
    }
    fn health(&self, _: &Config, _: usize, name: &str) -> Result<Arc<dyn HealthCheck>, String> {
        Err(format!("plugin {name:?} is not loaded"))
    }
    fn agent_feed(&self, _: &Config, _: usize, _: &str) -> Option<AgentFeed> {
        None
    }
}

/// What one decision made of a request or connection (see [`Balancer::decide`]).
#[derive(Debug)]
pub enum Decision {
    /// This backend, its slot taken for as long as the guard lives.
    Go(usize, ActiveGuard),
    /// What it may use is at its limit: wait for this backend (persistence names it) or,
    /// `None`, for any.
    Wait(Option<usize>),
    /// No backend can take it.
    Refuse,
}

/// How persistence took part in choosing the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Persisted {
    /// The service has no persistence, or the request had no key.
    None,
    /// The key's pin (or the backend the client named) was used.
    Hit,
    /// No pin yet: the scheduler chose, and the pin was made.
    New,
    /// The pinned or named backend could not take it: the scheduler chose another.
    Rebalanced,
}

impl Persisted {
    pub fn as_str(self) -> &'static str {
        match self {
            Persisted::None => "none",
            Persisted::Hit => "hit",
            Persisted::New => "new",
            Persisted::Rebalanced => "rebalanced",
        }
    }
}

/// One key kind of a service's persistence: its hook, and the table its keys are pinned in
/// (none for a cookie, which names its backend itself). Each kind has its own table, so pins
/// of different kinds never meet (a header value that reads like an address is not that
/// address's pin).
struct KeyKind {
    kind: PersistenceKeyKind,
    hook: Arc<dyn PersistenceKey>,
    table: Option<Arc<dyn PersistenceTable>>,
}

/// The key kinds of a service's persistence, in the order they are tried.
#[derive(Clone)]
struct Persistence {
    kinds: Arc<[KeyKind]>,
}

/// What persistence made of one request or connection: the key hook's outcome, and which key
/// kind of the service's list gave it (its table is the one to look in and pin to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<'r> {
    pub outcome: KeyOutcome<'r>,
    pub kind: usize,
}

impl Keyed<'_> {
    /// No key: the scheduler decides.
    pub const fn none() -> Self {
        Keyed {
            outcome: KeyOutcome::None,
            kind: 0,
        }
    }
}

/// One version of a service: its configuration, pool and hooks. A new version replaces it
/// when backends are added or removed (see [`Balancer::with_backends`]); hooks, the
/// persistence table and every backend's live state carry over.
pub struct Balancer {
    cfg: ServiceConfig,
    pub pool: Arc<Pool>,
    scheduler: Arc<dyn SelectServer>,
    /// Decides when a plugin scheduler has no opinion or fails.
    fallback: Option<Arc<dyn SelectServer>>,
    persistence: Option<Persistence>,
    health: Option<(Arc<dyn HealthCheck>, HealthConfig)>,
    /// A scheduler plugin's own health-check hook, run as a load/agent feed.
    agent_feed: Option<AgentFeed>,
    counters: Vec<BackendCounters>,
    service: ServiceCounters,
    no_backend_log: Arc<crate::observe::logging::RateLimit>,
    metrics: Arc<Metrics>,
    key: CookieKey,
    /// Some service follows this one: each decision is written here (client IP, backend IP).
    leads: Option<Arc<Leads>>,
    /// `follow`: the table of the followed service's decisions.
    follows: Option<Arc<Leads>>,
}

impl Balancer {
    /// Builds service number `index` of `config`, with built-in hooks and, for `plugin:`
    /// references, hooks from `plugins`. `prev` is the service of that name a reload
    /// replaces: backends that stay keep their live state (health, operator state, counts)
    /// with what the file changed applied, and pins survive when persistence is unchanged.
    pub fn new(
        config: &Config,
        index: usize,
        metrics: &Arc<Metrics>,
        plugins: &dyn HookSource,
        prev: Option<&Balancer>,
        share: Option<&Arc<Link>>,
    ) -> Result<Self, String> {
        let cfg = &config.services[index];
        let key = CookieKey::new(&config.proxy.secret);
        let pool = Arc::new(match prev {
            Some(p) => p.pool.next(
                &cfg.name,
                &cfg.backends,
                &p.cfg.backends,
                cfg.slow_start,
                &key,
            ),
            None => Pool::new(&cfg.name, &cfg.backends, cfg.slow_start, &key),
        });
        let service_counters = metrics.service(&cfg.name);
        // A kind whose table settings did not change keeps its table (and so its pins).
        let kept_table = |kind: &PersistenceKeyKind| -> Option<Arc<dyn PersistenceTable>> {
            let p = prev?;
            let (old, new) = (p.cfg.persistence.as_ref()?, cfg.persistence.as_ref()?);
            if (old.timeout, old.max_entries, old.shared)
                != (new.timeout, new.max_entries, new.shared)
            {
                return None;
            }
            let kinds = &p.persistence.as_ref()?.kinds;
            kinds.iter().find(|k| k.kind == *kind)?.table.clone()
        };
        let in_service = |e: String| format!("service {:?}: {e}", cfg.name);
        let mut agent_feed = None;
        let (scheduler, fallback): (Arc<dyn SelectServer>, _) = match &cfg.scheduler {
            SchedulerKind::Plugin(name) => {
                agent_feed = plugins.agent_feed(config, index, name);
                (
                    plugins
                        .select(config, index, name)
                        .map_err(in_service)?
                        .into(),
                    super::scheduler::builtin(&cfg.fallback_scheduler, &pool).map(Arc::from),
                )
            }
            kind => (
                super::scheduler::builtin(kind, &pool)
                    .expect("built-in scheduler")
                    .into(),
                None,
            ),
        };
        let persistence = match &cfg.persistence {
            None => None,
            Some(p) => {
                let mut kinds = Vec::with_capacity(p.keys.len());
                for kind in &p.keys {
                    let hook: Arc<dyn PersistenceKey> = match kind {
                        PersistenceKeyKind::Plugin(name) => {
                            plugins.key(config, index, name).map_err(in_service)?.into()
                        }
                        _ => super::persistence::builtin_key(kind)
                            .expect("built-in key")
                            .into(),
                    };
                    let table =
                        match kind {
                            PersistenceKeyKind::Cookie(_) => None,
                            _ => Some(kept_table(kind).unwrap_or_else(|| {
                                match share.filter(|_| p.shared) {
                                    Some(link) => SharedTable::new(
                                        link,
                                        &config.proxy.secret,
                                        &cfg.name,
                                        &kind.to_string(),
                                        p.timeout,
                                        p.max_entries,
                                        service_counters.evictions.clone(),
                                    ),
                                    None => Arc::new(MemoryTable::new(
                                        p.timeout,
                                        p.max_entries,
                                        service_counters.evictions.clone(),
                                    )),
                                }
                            })),
                        };
                    kinds.push(KeyKind {
                        kind: kind.clone(),
                        hook,
                        table,
                    });
                }
                Some(Persistence {
                    kinds: kinds.into(),
                })
            }
        };
        let health = match &cfg.health_check {
            None => None,
            Some(h) => Some((
                match &h.kind {
                    HealthKind::Plugin(name) => {
                        plugins.health(config, index, name).map_err(in_service)?
                    }
                    _ => crate::health::builtin(cfg)
                        .map_err(in_service)?
                        .expect("built-in health check"),
                },
                h.clone(),
            )),
        };
        let counters = pool
            .backends()
            .iter()
            .map(|b| metrics.backend(&cfg.name, &b.name))
            .collect();
        Ok(Balancer {
            service: service_counters,
            no_backend_log: Default::default(),
            cfg: cfg.clone(),
            pool,
            scheduler,
            fallback,
            persistence,
            health,
            agent_feed,
            counters,
            metrics: metrics.clone(),
            key,
            leads: super::follow::written_by(config, index),
            follows: super::follow::read_by(config, index),
        })
    }

    /// The next version of this service with `backends` instead: backends that stay keep
    /// their live state, pins and cookies; the hooks and the persistence table are shared;
    /// built-in schedulers are rebuilt over the new pool.
    pub fn with_backends(&self, backends: Vec<crate::config::BackendConfig>) -> Balancer {
        let mut cfg = self.cfg.clone();
        let pool = Arc::new(self.pool.next(
            &cfg.name,
            &backends,
            &cfg.backends,
            cfg.slow_start,
            &self.key,
        ));
        cfg.backends = backends;
        let builtin = |kind: &SchedulerKind| super::scheduler::builtin(kind, &pool).map(Arc::from);
        let (scheduler, fallback) = match &cfg.scheduler {
            SchedulerKind::Plugin(_) => (self.scheduler.clone(), builtin(&cfg.fallback_scheduler)),
            kind => (builtin(kind).expect("built-in scheduler"), None),
        };
        let counters = pool
            .backends()
            .iter()
            .map(|b| self.metrics.backend(&cfg.name, &b.name))
            .collect();
        Balancer {
            cfg,
            pool,
            scheduler,
            fallback,
            persistence: self.persistence.clone(),
            health: self.health.clone(),
            agent_feed: self.agent_feed.clone(),
            counters,
            service: self.service.clone(),
            no_backend_log: self.no_backend_log.clone(),
            metrics: self.metrics.clone(),
            key: self.key.clone(),
            leads: self.leads.clone(),
            follows: self.follows.clone(),
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.cfg
    }

    pub fn health(&self) -> Option<(&Arc<dyn HealthCheck>, &HealthConfig)> {
        self.health.as_ref().map(|(c, h)| (c, h))
    }

    /// The scheduler plugin's health-check hook and how often to run it as an agent feed.
    pub fn agent_feed(&self) -> Option<&AgentFeed> {
        self.agent_feed.as_ref()
    }

    /// How many persistence entries point at each backend.
    pub fn pins_per_backend(&self) -> std::collections::HashMap<super::identity::BackendId, u64> {
        let mut out = std::collections::HashMap::new();
        for t in self.tables() {
            for (id, n) in t.pins_per_backend() {
                *out.entry(id).or_insert(0) += n;
            }
        }
        out
    }

    /// The persistence tables, one per key kind that has one.
    fn tables(&self) -> impl Iterator<Item = &Arc<dyn PersistenceTable>> {
        self.persistence
            .iter()
            .flat_map(|p| p.kinds.iter().filter_map(|k| k.table.as_ref()))
    }

    /// True when a persistence hook reads the client's first bytes (tcp mode).
    pub fn wants_payload(&self) -> bool {
        self.persistence
            .as_ref()
            .is_some_and(|p| p.kinds.iter().any(|k| k.hook.wants_payload()))
    }

    /// Persistence-key hooks, in the order of the service's key kinds: the first that does not
    /// answer "no key" decides. [`KeyOutcome::NeedMore`] from a kind stops the walk (tcp
    /// inspection reads more and asks again); see [`Balancer::key_final`].
    pub fn key<'r>(&self, req: &Request<'r>) -> Keyed<'r> {
        self.key_walk(req, false)
    }

    /// [`Balancer::key`] once no more bytes will come (tcp: inspection is over): a kind that
    /// still needs more counts as "no key" and the next kind decides.
    pub fn key_final<'r>(&self, req: &Request<'r>) -> Keyed<'r> {
        self.key_walk(req, true)
    }

    fn key_walk<'r>(&self, req: &Request<'r>, last: bool) -> Keyed<'r> {
        let Some(p) = &self.persistence else {
            return Keyed::none();
        };
        for (kind, k) in p.kinds.iter().enumerate() {
            match k.hook.key(req, &self.pool) {
                KeyOutcome::None => {}
                KeyOutcome::NeedMore if last => {}
                outcome => return Keyed { outcome, kind },
            }
        }
        Keyed::none()
    }

    /// Backend `i` may take this client, which persistence (a pin, a cookie, a routing
    /// token) sends to it: a draining backend still takes it; one at its limit is waited for.
    #[inline]
    fn pinned_open(&self, i: usize, avoid: &[usize]) -> bool {
        i < self.pool.len() && self.pool.get(i).open_pinned() && !avoid.contains(&i)
    }

    /// The select-server hook, then the fallback scheduler when the hook has no opinion.
    fn select(&self, req: &Request<'_>, avoid: &[usize]) -> Pick {
        match self.scheduler.select(req, &self.pool, avoid) {
            Pick::NoOpinion => match &self.fallback {
                Some(f) => f.select(req, &self.pool, avoid),
                None => Pick::NoOpinion,
            },
            pick => pick,
        }
    }

    /// Takes a slot of backend `i`, which persistence names: wait for it when it is full.
    fn take_pinned(&self, i: usize) -> Decision {
        match self.pool.try_acquire(i) {
            Some(g) => Decision::Go(i, g),
            None => Decision::Wait(Some(i)),
        }
    }

    /// The scheduler's choice, its slot taken. Nothing chosen while an open backend is at
    /// its limit (or the chosen one filled meanwhile): wait for any.
    fn take_selected(&self, req: &Request<'_>, avoid: &[usize]) -> Decision {
        match self.select(req, avoid) {
            Pick::Backend(i) => match self.pool.try_acquire(i) {
                Some(g) => Decision::Go(i, g),
                None => Decision::Wait(None),
            },
            Pick::Reject => Decision::Refuse,
            Pick::NoOpinion => {
                let full = self
                    .pool
                    .backends()
                    .iter()
                    .enumerate()
                    .any(|(j, b)| b.open() && !b.has_room() && !avoid.contains(&j));
                match full {
                    true => Decision::Wait(None),
                    false => Decision::Refuse,
                }
            }
        }
    }

    /// Decides once, counting nothing: the backend the request names, else the one its key
    /// is pinned to (even while it drains), else the scheduler's choice (which is then
    /// pinned); its slot is taken with the decision. [`Decision::Wait`] when what it may use
    /// is at its limit; [`Decision::Refuse`] when no backend can take it, or a plugin failed
    /// under the `reject` policy. [`Balancer::admit`] waits and counts.
    pub fn decide(
        &self,
        req: &Request<'_>,
        keyed: &Keyed<'_>,
        avoid: &[usize],
    ) -> (Decision, Persisted) {
        let table = self
            .persistence
            .as_ref()
            .and_then(|p| p.kinds.get(keyed.kind)?.table.as_ref());
        match (&keyed.outcome, table) {
            (KeyOutcome::Reject, _) => (Decision::Refuse, Persisted::None),
            (KeyOutcome::Backend(i), _) if self.pinned_open(*i, avoid) => {
                (self.take_pinned(*i), Persisted::Hit)
            }
            (KeyOutcome::Backend(_), _) => (self.take_selected(req, avoid), Persisted::Rebalanced),
            (KeyOutcome::Key(k), Some(p)) => {
                let pinned = p.lookup(k);
                match pinned.and_then(|id| self.pool.index_of(id)) {
                    Some(i) if self.pinned_open(i, avoid) => (self.take_pinned(i), Persisted::Hit),
                    _ => {
                        let req = Request {
                            key: Some(k),
                            ..*req
                        };
                        let d = self.take_selected(&req, avoid);
                        if let Decision::Go(i, _) = &d {
                            let b = self.pool.get(*i);
                            p.pin(k, b.id, &b.name);
                        }
                        let how = match pinned {
                            Some(_) => Persisted::Rebalanced,
                            None => Persisted::New,
                        };
                        (d, how)
                    }
                }
            }
            _ => (self.take_selected(req, avoid), Persisted::None),
        }
    }

    /// Counts a decision that is final: the backend chosen (and, for `follow`, remembered)
    /// or none, and how persistence took part.
    pub fn count(&self, req: &Request<'_>, chosen: Option<usize>, persisted: Persisted) {
        match chosen {
            Some(i) => {
                self.counters[i].selected.inc();
                if let (Some(leads), Some(c)) = (&self.leads, req.client) {
                    leads.insert(c.ip(), self.pool.get(i).address.ip());
                }
            }
            None => {
                self.service.no_backend.inc();
                if self.no_backend_log.allow() {
                    tracing::warn!(service = %self.cfg.name, "no backend available");
                }
            }
        }
        self.count_persisted(persisted);
    }

    pub(super) fn count_persisted(&self, persisted: Persisted) {
        let lookup = match persisted {
            Persisted::None => None,
            Persisted::Hit => Some(0),
            Persisted::New => Some(1),
            Persisted::Rebalanced => Some(2),
        };
        if let Some(k) = lookup {
            self.service.persistence[k].inc();
        }
    }

    /// `follow`: the backend on the host the followed service last sent `client` to, if it
    /// is one of this service's and available.
    pub fn followed(&self, client: std::net::IpAddr) -> Option<usize> {
        let host = self.follows.as_ref()?.get(&client)?;
        self.pool
            .backends()
            .iter()
            .position(|b| b.address.ip() == host && b.available())
    }

    /// The service's metric handles.
    #[inline]
    pub fn service_counters(&self) -> &ServiceCounters {
        &self.service
    }

    /// Backend `i`'s metric handles.
    #[inline]
    pub fn backend_counters(&self, i: usize) -> &BackendCounters {
        &self.counters[i]
    }

    /// Entries in the persistence table, if the service has one.
    pub fn persistence_entries(&self) -> Option<u64> {
        self.persistence
            .as_ref()
            .map(|_| self.tables().map(|t| t.len()).sum())
    }

    /// Persistence hook's response step.
    pub fn on_response(
        &self,
        req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        resp: &mut ResponseHeader,
    ) {
        if let Some(p) = &self.persistence {
            for k in p.kinds.iter() {
                k.hook.on_response(req, named, served, &self.pool, resp);
            }
        }
    }

    /// Passive health: a failed connect counts as a failed check (when active checks are
    /// configured: they are what brings the backend back).
    pub fn connect_failed(&self, i: usize) {
        self.counters[i].connect_failures.inc();
        if self.health.is_some() {
            self.observe(i, HealthReport::DOWN, "connect failure");
        } else {
            tracing::warn!(service = %self.cfg.name, backend = %self.pool.get(i).name, "connect failed");
        }
    }

    /// Applies one health observation and logs transitions.
    pub fn observe(&self, i: usize, report: HealthReport, source: &str) {
        let Some((_, h)) = &self.health else {
            return;
        };
        if report.load.is_some() {
            self.pool.set_load(i, report.load);
        }
        let b = self.pool.get(i);
        match self.pool.observe(i, report.up, h.rise, h.fall) {
            Transition::WentDown => {
                self.counters[i].went_down.inc();
                self.metrics
                    .events
                    .push(&self.cfg.name, &b.name, "down", source);
                tracing::warn!(service = %self.cfg.name, backend = %b.name, %source, "backend is DOWN");
            }
            Transition::CameUp => {
                self.counters[i].came_up.inc();
                self.metrics
                    .events
                    .push(&self.cfg.name, &b.name, "up", source);
                tracing::info!(service = %self.cfg.name, backend = %b.name, %source, "backend is UP");
            }
            Transition::None => {}
        }
    }
}
