//! Turns a validated [`Config`] into a running pingora server, in two steps: [`Built::new`]
//! makes everything the configuration describes once (metrics, plugins compiled and bound,
//! balancers), which `check` stops after; [`Built::serve`] binds the listeners and wires the
//! pingora services for `run`.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::server::configuration::ServerConf;
use pingora::server::{
    RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch,
};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::api::AdminApp;
use crate::admin::control::Control;
use crate::admin::state_file::StateFile;
use crate::balance::balancer::{Balancer, HookSource, NoPlugins};
use crate::config::Config;
use crate::health::HealthService;
use crate::io::limits::{self, Limit};
use crate::observe::access_log::{AccessLog, ReopenOnUsr1};
use crate::observe::metrics::{Metrics, MetricsApp};
use crate::plugin::registry::Registry;
use crate::share::{Link, LinkService};
use crate::tls;

pub mod frontends;
pub mod fronts;
pub mod live;
pub mod ready;
pub mod reload;

use frontends::Frontends;
use fronts::{Fronts, ServiceLimits};
use live::{Context, Live, State};
use reload::ReloadOnHangup;

/// What a configuration builds before anything listens.
pub struct Built {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub plugins: Option<Arc<Registry>>,
    pub balancers: Vec<Arc<Balancer>>,
    /// The connection to `[proxy] redis`, when persistence is shared.
    pub share: Option<Arc<Link>>,
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
        let share = cfg
            .proxy
            .redis
            .as_ref()
            .map(|r| Link::new(r, metrics.shared()));
        let balancers = (0..cfg.services.len())
            .map(|i| {
                Balancer::new(&cfg, i, &metrics, hooks, None, share.as_ref())
                    .map(Arc::new)
                    .map_err(|e| format!("{}: {e}", cfg.path.display()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Built {
            cfg,
            metrics,
            plugins,
            balancers,
            share,
        })
    }

    /// Builds the pingora server: one listener per address (sockets bound now, so a busy
    /// address is an error here), the health checker, the reload signal, and the metrics and
    /// admin endpoints when configured. Plugin instances are made before anything listens,
    /// and the plugins directory is watched from now on.
    pub fn serve(self) -> Result<Server, String> {
        let cfg = &self.cfg;
        let conf = ServerConf {
            threads: cfg.proxy.threads,
            // pingora would sleep the whole grace period after SIGTERM; [`run`] waits only
            // while connections are in flight instead.
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(0),
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
        let access_log = match &cfg.proxy.access_log {
            None => None,
            Some(a) => {
                let log = AccessLog::start(a, self.metrics.access_log_dropped())?;
                server.add_service(background_service(
                    "access log reopen on SIGUSR1",
                    ReopenOnUsr1(log.clone()),
                ));
                Some(log)
            }
        };
        if let Some(link) = &self.share {
            server.add_service(background_service(
                "shared persistence",
                LinkService(link.clone()),
            ));
        }
        let mut limits = ServiceLimits::default();
        let plan = fronts::plan(
            cfg,
            &self.balancers,
            &process,
            &mut limits,
            access_log.as_ref(),
        )?;
        let (mut frontends, handle) = Frontends::new(cfg.proxy.threads, self.metrics.clone());
        let mut running = Fronts::default();
        for p in plan.http {
            let f = p.into_front();
            frontends.add(f.addr, f.bind(&conf)?);
            running.http.push(f);
        }
        for p in plan.tcp {
            let f = p.into_front();
            for a in &f.addrs {
                frontends.add(*a, f.bind(*a)?);
            }
            running.tcp.push(f);
        }
        for p in plan.udp {
            let f = p.into_front();
            for a in &f.addrs {
                frontends.add(*a, f.bind(*a)?);
            }
            running.udp.push(f);
        }
        server.add_service(frontends);
        let cert_watcher = match plan.certs.is_empty() {
            true => None,
            false => Some(tls::watch::watch(plan.certs)?),
        };
        let live = Arc::new(Live::new(
            self.balancers.clone(),
            State {
                cfg: cfg.clone(),
                fronts: running,
                limits,
                plugins: self.plugins.clone(),
                cert_watcher,
            },
            Context {
                metrics: self.metrics.clone(),
                conf,
                process,
                frontends: handle,
                access_log,
                share: self.share.clone(),
            },
        ));
        server.add_service(background_service(
            "health checks",
            HealthService {
                services: live.current(),
                changed: live.subscribe(),
            },
        ));
        // Saved runtime changes apply before the first client is served; without a state
        // file they are kept in memory, for reloads.
        let state = match cfg.admin.as_ref().and_then(|a| a.state_file.as_ref()) {
            None => StateFile::memory(cfg),
            Some(path) => {
                let mut f = StateFile::open(path, cfg)?;
                f.apply(&live)?;
                f
            }
        };
        let control = Arc::new(Control::new(live.clone(), state));
        server.add_service(background_service(
            "reload on SIGHUP, readiness",
            ReloadOnHangup {
                control: control.clone(),
                wait_for: cfg
                    .admin
                    .iter()
                    .map(|a| a.listen)
                    .chain(cfg.proxy.metrics)
                    .collect(),
            },
        ));
        if let Some(admin) = &cfg.admin {
            let mut svc = Service::new(
                "admin API".to_string(),
                AdminApp {
                    control,
                    token: admin.token.clone(),
                    metrics: MetricsApp {
                        metrics: self.metrics.clone(),
                        services: live.current(),
                    },
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

/// Logs what a configuration runs, at start and after a reload: one line per service (its
/// listen addresses, mode, TLS or not, backends, scheduler) and one per plugin (its kind, file
/// and the hooks it implements).
pub fn log_what_runs(cfg: &Config, plugins: Option<&Registry>) {
    for s in &cfg.services {
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        tracing::info!(
            service = %s.name,
            mode = %s.mode.as_str(),
            tls = s.tls.is_some(),
            listen = %listen.join(", "),
            backends = s.backends.len(),
            scheduler = %s.scheduler,
            "service"
        );
    }
    if let Some(reg) = plugins {
        for (name, kind, file, hooks) in reg.summary() {
            tracing::info!(plugin = %name, kind = %kind, %file, %hooks, "plugin loaded");
        }
    }
}

/// Set when the server stops for `SIGTERM` (rather than `SIGINT`).
static TERMINATING: AtomicBool = AtomicBool::new(false);

/// pingora's signal watch, noting whether the signal was `SIGTERM`.
struct Signals;

#[async_trait::async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let s = UnixShutdownSignalWatch.recv().await;
        if matches!(s, ShutdownSignal::GracefulTerminate) {
            TERMINATING.store(true, Relaxed);
        }
        s
    }
}

/// Runs `server` until a signal, then exits. On `SIGTERM` pingora tells every listener to
/// stop (sockets close, idle and parked clients are closed at once) and stops its own
/// services; the process then exits as soon as no client connection is open, or when `grace`
/// has passed, whichever comes first. `SIGINT` exits at once.
pub fn run(server: Server, grace: Duration) -> ! {
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    if TERMINATING.load(Relaxed) {
        drain(grace);
    }
    std::process::exit(0)
}

/// Waits until no client connection is open, for at most `grace`.
fn drain(grace: Duration) {
    let started = Instant::now();
    let deadline = started + grace;
    loop {
        let open = limits::open_connections();
        if open == 0 {
            tracing::info!(
                "SIGTERM: no connection in flight after {} ms, exiting",
                started.elapsed().as_millis()
            );
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                open,
                "SIGTERM: grace period of {grace:?} over, closing the connections still open"
            );
            return;
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// How often the shutdown looks whether the last connection has ended.
const DRAIN_POLL: Duration = Duration::from_millis(10);

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
