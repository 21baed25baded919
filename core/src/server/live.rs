//! The services as they are now, and the front ends that use them.
//!
//! A change to a service (a backend added or removed at run time) builds the service's next
//! [`Balancer`] and installs it everywhere at once: in the route table of every http address
//! that serves it, in its tcp or udp listener, in the list the health checks, metrics and admin API
//! read. Requests and connections already running keep the version they started with. A
//! reload (`reload.rs`) replaces all of it the same way.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;

use crate::balance::balancer::Balancer;
use crate::config::Config;
use crate::io::limits::Limit;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::plugin::registry::Registry;
use crate::proxy::http::phases::{Route, Routes};

use super::frontends::FrontendsHandle;
use super::fronts::{Fronts, ServiceLimits};

/// What a reload builds with and never changes.
pub struct Context {
    pub metrics: Arc<Metrics>,
    pub conf: Arc<ServerConf>,
    /// `[proxy] max_connections` (a change needs a restart).
    pub process: Limit,
    pub frontends: FrontendsHandle,
    /// `[proxy] access_log` (a change needs a restart).
    pub access_log: Option<Arc<AccessLog>>,
    /// `[proxy] redis` (a change needs a restart).
    pub share: Option<Arc<crate::share::Link>>,
}

/// What changes with a reload, behind one lock (which also makes changes one at a time).
pub struct State {
    /// The configuration as last loaded (with the runtime changes a reload re-applied).
    pub cfg: Config,
    pub fronts: Fronts,
    pub limits: ServiceLimits,
    /// Owns the plugin registry (its directory watcher holds only a weak reference).
    pub plugins: Option<Arc<Registry>>,
    /// Reloads certificates when their files change.
    pub cert_watcher: Option<notify::RecommendedWatcher>,
}

pub struct Live {
    services: ArcSwap<Vec<Arc<Balancer>>>,
    /// Bumped after every change (the health checks restart their loops on it).
    changed: tokio::sync::watch::Sender<u64>,
    state: Mutex<State>,
    /// One reload at a time; held across its awaits, which `state` cannot be.
    pub reloading: tokio::sync::Mutex<()>,
    pub(super) ctx: Context,
}

impl Live {
    pub fn new(balancers: Vec<Arc<Balancer>>, state: State, ctx: Context) -> Live {
        Live {
            services: ArcSwap::from_pointee(balancers),
            changed: tokio::sync::watch::channel(0).0,
            state: Mutex::new(state),
            reloading: tokio::sync::Mutex::new(()),
            ctx,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs a new list of services and tells the health checks.
    pub(super) fn set_services(&self, list: Vec<Arc<Balancer>>) {
        self.services.store(Arc::new(list));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Every service, in file order.
    pub fn balancers(&self) -> Arc<Vec<Arc<Balancer>>> {
        self.services.load_full()
    }

    pub fn get(&self, service: &str) -> Option<Arc<Balancer>> {
        self.services
            .load()
            .iter()
            .find(|b| b.config().name == service)
            .cloned()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// The configuration as last loaded.
    pub fn config(&self) -> Config {
        self.state().cfg.clone()
    }

    /// [`Live::balancers`] as a function, for the parts that must not know this type.
    pub fn current(self: &Arc<Self>) -> crate::balance::balancer::CurrentServices {
        let me = self.clone();
        Arc::new(move || me.balancers())
    }

    /// Notified after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Replaces service `service` by what `next` makes of its current version, everywhere
    /// at once; nothing changes if `next` or building a front end's table fails.
    pub fn update(
        &self,
        service: &str,
        next: impl FnOnce(&Balancer) -> Result<Balancer, String>,
    ) -> Result<Arc<Balancer>, String> {
        let st = self.state();
        let now = self.services.load_full();
        let i = now
            .iter()
            .position(|b| b.config().name == service)
            .ok_or_else(|| format!("no service {service:?}"))?;
        let new = Arc::new(next(&now[i])?);
        let mut list = (*now).clone();
        list[i] = new.clone();
        let find = |name: &str| list.iter().find(|b| b.config().name == name).cloned();
        // Build every table first, install them after: a failure leaves everything as it was.
        let mut http = Vec::new();
        for f in st
            .fronts
            .http
            .iter()
            .filter(|f| f.services.iter().any(|s| s == service))
        {
            let routes = f
                .services
                .iter()
                .map(|s| {
                    let b = find(s).expect("a service of this address");
                    Route::new(b, self.ctx.access_log.as_ref())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tls = f.routes.load().tls();
            http.push((f, Routes::new(routes, tls, self.ctx.access_log.as_ref())));
        }
        let mut tcp = Vec::new();
        for f in st.fronts.tcp.iter().filter(|f| f.service == service) {
            tcp.push((f, f.conns.target().with_balancer(new.clone())?));
        }
        for f in st.fronts.udp.iter().filter(|f| f.service == service) {
            f.target.set(new.clone());
        }
        for (f, routes) in http {
            f.routes.store(Arc::new(routes));
        }
        for (f, target) in tcp {
            f.conns.set_target(target);
        }
        self.set_services(list);
        Ok(new)
    }
}
