//! Turns a validated [`Config`] into a running pingora server, in two steps: [`Built::new`]
//! makes everything the configuration describes once (metrics, plugins compiled and bound,
//! balancers), which `check` stops after; [`Built::serve`] binds the listeners and wires the
//! pingora services for `run`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::api::AdminApp;
use crate::admin::control::Control;
use crate::admin::state_file::StateFile;
use crate::balance::balancer::{Balancer, HookSource, NoPlugins};
use crate::config::{Config, Mode};
use crate::health::HealthService;
use crate::io::limits::{self, Limit, Limits};
use crate::observe::metrics::{Metrics, MetricsApp};
use crate::plugin::registry::Registry;
use crate::proxy::http::listener::{HttpListener, Settings, Timeouts};
use crate::proxy::http::phases::{HttpService, Route, Routes};
use crate::proxy::tcp::{Conns, Target, TcpListenerUnit};
use crate::tls;
use crate::tls::server::CertStore;

pub mod frontends;
pub mod live;

use frontends::{Frontends, Unit};
use live::Live;

/// What a configuration builds before anything listens.
pub struct Built {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub plugins: Option<Arc<Registry>>,
    pub balancers: Vec<Arc<Balancer>>,
}

impl Built {
    /// Loads the plugins (errors at their config lines) and builds every service's balancer.
    pub fn new(cfg: Config) -> Result<Built, String> {
        // Before pingora builds any connector, which would install its own default.
        tls::provider();
        let metrics = Arc::new(Metrics::new());
        let plugins = if cfg.plugin_refs.is_empty() {
            None
        } else {
            Some(Arc::new(
                Registry::load(&cfg, metrics.plugins()).map_err(|e| e.to_string())?,
            ))
        };
        let hooks: &dyn HookSource = match &plugins {
            Some(r) => r.as_ref(),
            None => &NoPlugins,
        };
        let balancers = (0..cfg.services.len())
            .map(|i| {
                Balancer::new(&cfg, i, &metrics, hooks)
                    .map(Arc::new)
                    .map_err(|e| format!("{}: {e}", cfg.path.display()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Built {
            cfg,
            metrics,
            plugins,
            balancers,
        })
    }

    /// Builds the pingora server: one listening service per configured service (listen
    /// sockets bound now, so a busy address is an error here), the health checker, and the
    /// metrics endpoint when configured. Plugin instances are made before anything listens,
    /// and the plugins directory is watched from now on.
    pub fn serve(self) -> Result<Server, String> {
        let cfg = &self.cfg;
        let conf = ServerConf {
            threads: cfg.proxy.threads,
            grace_period_seconds: Some(cfg.proxy.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(cfg.proxy.grace_period.as_secs()),
            pid_file: format!("/tmp/plugboard-{}.pid", std::process::id()),
            upgrade_sock: format!("/tmp/plugboard-upgrade-{}.sock", std::process::id()),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let conf = server.configuration.clone();
        if let Some(reg) = &self.plugins {
            reg.warm();
            if let Some(dir) = &cfg.proxy.plugins_dir {
                reg.watch(dir)?;
            }
        }
        let process = Limit::new(process_max_connections(cfg));
        let limits = |s: &crate::config::ServiceConfig| Limits {
            service: s.max_connections.map(Limit::new),
            process: process.clone(),
        };
        let mut live = Live::new(self.balancers.clone());
        let (mut frontends, handle) = Frontends::new(cfg.proxy.threads);
        let mut cert_stores = Vec::new();
        for b in self
            .balancers
            .iter()
            .filter(|b| b.config().mode == Mode::Tcp)
        {
            let s = b.config();
            let front = match &s.tls {
                None => None,
                Some(t) => {
                    let store = Arc::new(cert_store(cfg, s, std::slice::from_ref(b))?);
                    cert_stores.push(store.clone());
                    Some(tls::server::server_config(t, store)?)
                }
            };
            let conns = Conns::new(Target::new(b.clone(), front)?);
            let limits = Arc::new(ArcSwap::from_pointee(limits(s)));
            for addr in &s.listen {
                let name = format!("{} (tcp {addr})", s.name);
                let unit = TcpListenerUnit::bind(name, *addr, conns.clone(), limits.clone())?;
                frontends.add(*addr, Unit::Tcp(unit));
            }
            live.add_tcp(s.name.clone(), conns);
        }
        // One listener per http address, serving every service that listens there.
        for (addr, on) in http_addresses(&self.balancers) {
            let lead = on
                .iter()
                .find(|b| b.config().route.is_none())
                .unwrap_or(&on[0])
                .config();
            let names: Vec<&str> = on.iter().map(|b| b.config().name.as_str()).collect();
            let routes = on
                .iter()
                .map(|b| Route::new(b.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let routes = Arc::new(ArcSwap::from_pointee(Routes::new(
                routes,
                lead.tls.is_some(),
            )));
            live.add_http(
                names.iter().map(|n| n.to_string()).collect(),
                routes.clone(),
            );
            let proxy = pingora::proxy::http_proxy(&conf, HttpService::new(routes));
            let timeouts = Timeouts {
                idle: lead.idle_timeout,
                header: lead.header_timeout,
            };
            let tls = match &lead.tls {
                None => None,
                Some(t) => {
                    let store = Arc::new(cert_store(cfg, lead, &on)?);
                    cert_stores.push(store.clone());
                    Some(tls::server::server_config(t, store)?)
                }
            };
            let unit = HttpListener::bind(
                format!("{} (http {addr})", names.join(", ")),
                addr,
                proxy,
                Settings { timeouts, tls },
                limits(lead),
            )?;
            frontends.add(addr, Unit::Http(unit));
        }
        server.add_service(frontends);
        live.set_frontends(handle);
        if !cert_stores.is_empty() {
            let watcher = tls::watch::watch(cert_stores)?;
            server.add_service(background_service(
                "certificate reload",
                KeepUntilShutdown(watcher),
            ));
        }
        let live = Arc::new(live);
        server.add_service(background_service(
            "health checks",
            HealthService {
                services: live.current(),
                changed: live.subscribe(),
                plugins: self.plugins.clone(),
            },
        ));
        if let Some(admin) = &cfg.admin {
            // Saved runtime changes apply before the first client is served.
            let state = match &admin.state_file {
                None => None,
                Some(path) => {
                    let mut f = StateFile::open(path, cfg)?;
                    f.apply(&live)?;
                    Some(f)
                }
            };
            let mut svc = Service::new(
                "admin API".to_string(),
                AdminApp {
                    control: Arc::new(Control::new(live.clone(), state)),
                    token: admin.token.clone(),
                },
            );
            available(admin.listen, "admin.listen")?;
            svc.add_tcp(&admin.listen.to_string());
            server.add_service(svc);
        }
        if let Some(addr) = cfg.proxy.metrics {
            let mut svc = Service::new(
                "metrics".to_string(),
                MetricsApp {
                    metrics: self.metrics.clone(),
                    services: live.current(),
                },
            );
            available(addr, "metrics")?;
            svc.add_tcp(&addr.to_string());
            server.add_service(svc);
        }
        Ok(server)
    }
}

/// Fails now if `addr` cannot be bound, rather than let pingora retry it in the background
/// (it binds the metrics and admin listeners itself, when it starts them).
fn available(addr: std::net::SocketAddr, what: &str) -> Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{what}: cannot listen on {addr}: {e}"))
}

/// `[proxy] max_connections`, or what the descriptor limit allows (raised to its hard limit
/// first). A configured value above that is kept, with a warning: beyond it, accepts fail
/// with EMFILE and wait (see [`crate::io::listener`]).
fn process_max_connections(cfg: &Config) -> usize {
    let nofile = limits::raise_descriptor_limit();
    let derived = limits::derived_max_connections(nofile);
    match cfg.proxy.max_connections {
        None => {
            tracing::info!(
                max_connections = derived,
                descriptors = nofile,
                "connection limit derived from the descriptor limit"
            );
            derived
        }
        Some(n) => {
            if n > derived {
                tracing::warn!(
                    "[proxy] max_connections = {n}, but {nofile} descriptors allow about {derived}; \
                     beyond that, new connections wait for descriptors"
                );
            }
            n
        }
    }
}

/// Each http listen address with the services on it, in file order.
fn http_addresses(balancers: &[Arc<Balancer>]) -> Vec<(std::net::SocketAddr, Vec<Arc<Balancer>>)> {
    let mut out: Vec<(std::net::SocketAddr, Vec<Arc<Balancer>>)> = Vec::new();
    for b in balancers.iter().filter(|b| b.config().mode == Mode::Http) {
        for a in &b.config().listen {
            match out.iter_mut().find(|(x, _)| x == a) {
                Some((_, v)) => v.push(b.clone()),
                None => out.push((*a, vec![b.clone()])),
            }
        }
    }
    out
}

/// The certificates of a TLS address: the default service's first (its first is the
/// default certificate), then the other services'.
fn cert_store(
    cfg: &Config,
    lead: &crate::config::ServiceConfig,
    on: &[Arc<Balancer>],
) -> Result<CertStore, String> {
    let mut sources = Vec::new();
    let services = std::iter::once(lead).chain(
        on.iter()
            .map(|b| b.config())
            .filter(|s| s.name != lead.name),
    );
    for s in services {
        for c in s.tls.iter().flat_map(|t| &t.certificates) {
            let origin = format!("{}:{} (service {})", cfg.path.display(), c.line, s.name);
            sources.push((c.source.clone(), origin));
        }
    }
    CertStore::load(&sources)
}

/// Holds something (a file watcher) for as long as the server runs.
struct KeepUntilShutdown<T>(T);

#[async_trait::async_trait]
impl<T: Send + Sync> pingora::services::background::BackgroundService for KeepUntilShutdown<T> {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
    }
}
