//! The services as they are now, and the front ends that use them.
//!
//! A change to a service (a backend added or removed at run time) builds the service's next
//! [`Balancer`] and installs it everywhere at once: in the route table of every http address
//! that serves it, in its tcp listener, in the list the health checks, metrics and admin API
//! read. Requests and connections already running keep the version they started with.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::balance::balancer::Balancer;
use crate::proxy::http::phases::{Route, Routes};
use crate::proxy::tcp::Conns;

/// An http listen address: its services, in file order, and its route table.
struct HttpFront {
    services: Vec<String>,
    routes: Arc<ArcSwap<Routes>>,
}

/// A tcp service's listener.
struct TcpFront {
    service: String,
    conns: Arc<Conns>,
}

pub struct Live {
    services: ArcSwap<Vec<Arc<Balancer>>>,
    http: Vec<HttpFront>,
    tcp: Vec<TcpFront>,
    /// Bumped after every change (the health checks restart their loops on it).
    changed: tokio::sync::watch::Sender<u64>,
    /// Starts and stops listeners (a reload).
    frontends: Option<super::frontends::FrontendsHandle>,
    /// One change at a time.
    writer: Mutex<()>,
}

impl Live {
    pub fn new(balancers: Vec<Arc<Balancer>>) -> Live {
        Live {
            services: ArcSwap::from_pointee(balancers),
            http: Vec::new(),
            tcp: Vec::new(),
            changed: tokio::sync::watch::channel(0).0,
            frontends: None,
            writer: Mutex::new(()),
        }
    }

    /// Registers the route table of an http address serving `services` (while building).
    pub fn add_http(&mut self, services: Vec<String>, routes: Arc<ArcSwap<Routes>>) {
        self.http.push(HttpFront { services, routes });
    }

    /// Registers the listener of tcp service `service` (while building).
    pub fn add_tcp(&mut self, service: String, conns: Arc<Conns>) {
        self.tcp.push(TcpFront { service, conns });
    }

    /// The running listeners (while building).
    pub fn set_frontends(&mut self, handle: super::frontends::FrontendsHandle) {
        self.frontends = Some(handle);
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
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
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
        for f in self
            .http
            .iter()
            .filter(|f| f.services.iter().any(|s| s == service))
        {
            let routes = f
                .services
                .iter()
                .map(|s| Route::new(find(s).expect("a service of this address")))
                .collect::<Result<Vec<_>, _>>()?;
            http.push((f, Routes::new(routes, f.routes.load().tls())));
        }
        let mut tcp = Vec::new();
        for f in self.tcp.iter().filter(|f| f.service == service) {
            tcp.push((f, f.conns.target().with_balancer(new.clone())?));
        }
        for (f, routes) in http {
            f.routes.store(Arc::new(routes));
        }
        for (f, target) in tcp {
            f.conns.set_target(target);
        }
        self.services.store(Arc::new(list));
        self.changed.send_modify(|v| *v += 1);
        Ok(new)
    }
}
