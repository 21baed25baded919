//! Turns a validated [`Config`] into a running pingora server.

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::balancer::Balancer;
use crate::config::{Config, ConfigErrors, Mode};
use crate::health::HealthService;
use crate::http_listener::HttpListener;
use crate::http_proxy::HttpService;
use crate::metrics::{Metrics, MetricsApp};
use crate::plugin::Registry;
use crate::tcp_proxy::TcpService;

/// Loads the plugins a configuration refers to (errors at their config lines).
pub fn load_plugins(
    cfg: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<Registry>>, ConfigErrors> {
    if cfg.plugin_refs.is_empty() {
        return Ok(None);
    }
    Registry::load(cfg, metrics.plugin_faults()).map(|r| Some(Arc::new(r)))
}

/// Builds every service's balancer; an error names the service and what is missing.
pub fn build_balancers(
    cfg: &Config,
    metrics: &Metrics,
    plugins: Option<&Registry>,
) -> Result<Vec<Arc<Balancer>>, String> {
    (0..cfg.services.len())
        .map(|i| Balancer::new(cfg, i, metrics, plugins).map(Arc::new))
        .collect()
}

/// Builds the pingora server: one listening service per configured service, the health
/// checker, and the metrics endpoint when configured; starts watching the plugins directory.
pub fn build(cfg: &Config) -> Result<Server, String> {
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
    let metrics = Arc::new(Metrics::new());
    let plugins = load_plugins(cfg, &metrics).map_err(|e| e.to_string())?;
    let balancers = build_balancers(cfg, &metrics, plugins.as_deref())?;
    if let Some(reg) = &plugins {
        // Deadlines need the epoch to advance, whether or not a directory is watched.
        reg.host.start_epoch_ticker();
        if let Some(dir) = &cfg.proxy.plugins_dir {
            reg.watch(dir)?;
        }
    }

    for b in &balancers {
        let s = b.config();
        let name = format!("{} ({})", s.name, s.mode.as_str());
        match s.mode {
            Mode::Http => {
                let proxy = pingora::proxy::http_proxy(&conf, HttpService::new(b.clone()));
                server.add_service(HttpListener::bind(name, &s.listen, proxy, s.idle_timeout)?);
            }
            Mode::Tcp => {
                server.add_service(TcpService::bind(name, &s.listen, b.clone())?);
            }
        }
    }
    server.add_service(background_service(
        "health checks",
        HealthService {
            balancers: balancers.clone(),
            plugins,
        },
    ));
    if let Some(addr) = cfg.proxy.metrics {
        let mut svc = Service::new("metrics".to_string(), MetricsApp { metrics, balancers });
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    Ok(server)
}
