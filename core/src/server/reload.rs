//! A reload: the configuration file read again and installed while the proxy runs, on
//! SIGHUP, `POST /api/v1/reload` or `plugboard ctl reload`.
//!
//! Everything is built before anything changes: the configuration, the plugins (compiled
//! again, so a reload also picks up new plugin files), every service's next version, the
//! front ends with their certificates, and the listening sockets of new addresses. Any error
//! leaves the running configuration as it was. Then, at once: services that keep their name
//! keep their backends' live state (health, operator state, connection counts) and, while
//! persistence is unchanged, their pins; addresses that stay keep their socket and their
//! connections, and take the new route tables, timeouts, TLS and limits; new addresses start
//! accepting. Last, dropped addresses stop accepting (their connections finish), and an
//! address that changed hands (http to tcp, or to another tcp service) is bound again by
//! its new owner: only there can a client be refused, for the moment between the two.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::balance::balancer::{Balancer, HookSource, NoPlugins};
use crate::config::Config;
use crate::plugin::registry::Registry;
use crate::tls;

use super::frontends::{Endpoint, Unit};
use super::fronts::{self, Fronts, HttpFront, HttpPlan, TcpFront, UdpFront};
use super::live::Live;

/// What a reload did, as the admin API answers it.
#[derive(Debug, Default, Serialize)]
pub struct Reloaded {
    pub services: Vec<String>,
    /// Addresses that started listening.
    pub listening: Vec<String>,
    /// Addresses that stopped listening.
    pub stopped: Vec<String>,
    /// Changes the file makes that need a restart.
    pub warnings: Vec<String>,
    /// Addresses that changed hands and could not be bound again (the rest applied).
    pub errors: Vec<String>,
}

/// The part of a reload left after it installed everything: addresses to release, and those
/// to bind again once released.
pub struct Pending {
    stop: Vec<Endpoint>,
    moved: Vec<Moved>,
    report: Reloaded,
}

enum Moved {
    Http(HttpFront),
    Tcp(TcpFront, SocketAddr),
    Udp(UdpFront, SocketAddr),
}

impl Live {
    /// Builds everything `cfg` describes and installs it; an error changes nothing. The
    /// caller holds `reloading` and then calls [`Live::finish_reload`].
    pub fn install(&self, cfg: Config) -> Result<Pending, Vec<String>> {
        let one = |e: String| vec![e];
        let mut st = self.state();
        let warnings = restart_needed(&st.cfg, &cfg);
        let registry = match cfg.plugin_refs.is_empty() {
            true => None,
            false => Some(Arc::new(
                Registry::load(&cfg, self.ctx.metrics.plugins())
                    .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?,
            )),
        };
        let hooks: &dyn HookSource = match &registry {
            Some(r) => r.as_ref(),
            None => &NoPlugins,
        };
        let now = self.balancers();
        let balancers = (0..cfg.services.len())
            .map(|i| {
                let prev = now.iter().find(|b| b.config().name == cfg.services[i].name);
                Balancer::new(
                    &cfg,
                    i,
                    &self.ctx.metrics,
                    hooks,
                    prev.map(|p| &**p),
                    self.ctx.share.as_ref(),
                )
                .map(Arc::new)
                .map_err(|e| format!("{}: {e}", cfg.path.display()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(one)?;
        let mut limits = st.limits.clone();
        let plan = fronts::plan(
            &cfg,
            &balancers,
            &self.ctx.process,
            &mut limits,
            self.ctx.access_log.as_ref(),
        )
        .map_err(one)?;

        let old_http: HashMap<SocketAddr, &HttpFront> =
            st.fronts.http.iter().map(|f| (f.addr, f)).collect();
        let old_tcp: HashMap<SocketAddr, &str> = st
            .fronts
            .tcp
            .iter()
            .flat_map(|f| f.addrs.iter().map(|a| (*a, f.service.as_str())))
            .collect();
        let mut next = Fronts::default();
        let old_udp: HashMap<SocketAddr, &str> = st
            .fronts
            .udp
            .iter()
            .flat_map(|f| f.addrs.iter().map(|a| (*a, f.service.as_str())))
            .collect();
        let mut start: Vec<(SocketAddr, Unit)> = Vec::new();
        let mut swap_udp = Vec::new();
        let mut moved = Vec::new();
        let mut swap_http = Vec::new();
        let mut swap_tcp = Vec::new();
        for p in plan.http {
            let HttpPlan {
                addr,
                services,
                routes,
                settings,
                limits,
            } = p;
            match old_http.get(&addr) {
                Some(f) => {
                    let mut f = (*f).clone();
                    f.services = services;
                    swap_http.push((f.clone(), routes, settings, limits));
                    next.http.push(f);
                }
                None => {
                    let f = HttpPlan {
                        addr,
                        services,
                        routes,
                        settings,
                        limits,
                    }
                    .into_front();
                    if old_tcp.contains_key(&addr) {
                        moved.push(Moved::Http(f.clone()));
                    } else {
                        start.push((addr, f.bind(&self.ctx.conf).map_err(one)?));
                    }
                    next.http.push(f);
                }
            }
        }
        for p in plan.tcp {
            let f = match st.fronts.tcp.iter().find(|f| f.service == p.service) {
                Some(old) => {
                    let f = TcpFront {
                        service: p.service,
                        addrs: p.addrs,
                        conns: old.conns.clone(),
                        limits: old.limits.clone(),
                    };
                    swap_tcp.push((f.clone(), p.target, p.limits));
                    f
                }
                None => p.into_front(),
            };
            for &a in &f.addrs {
                if old_tcp.get(&a) == Some(&f.service.as_str()) {
                    continue;
                }
                if old_tcp.contains_key(&a) || old_http.contains_key(&a) {
                    moved.push(Moved::Tcp(f.clone(), a));
                } else {
                    start.push((a, f.bind(a).map_err(one)?));
                }
            }
            next.tcp.push(f);
        }
        for p in plan.udp {
            let f = match st.fronts.udp.iter().find(|f| f.service == p.service) {
                Some(old) => {
                    let f = UdpFront {
                        service: p.service,
                        addrs: p.addrs,
                        target: old.target.clone(),
                        limits: old.limits.clone(),
                    };
                    swap_udp.push((f.clone(), p.balancer, p.limits));
                    f
                }
                None => p.into_front(),
            };
            for &a in &f.addrs {
                if old_udp.get(&a) == Some(&f.service.as_str()) {
                    continue;
                }
                if old_udp.contains_key(&a) {
                    moved.push(Moved::Udp(f.clone(), a));
                } else {
                    start.push((a, f.bind(a).map_err(one)?));
                }
            }
            next.udp.push(f);
        }
        let kept = |a: &SocketAddr, service: Option<&str>| match service {
            None => next.http.iter().any(|f| f.addr == *a),
            Some(s) => next
                .tcp
                .iter()
                .any(|f| f.service == s && f.addrs.contains(a)),
        };
        let stop: Vec<Endpoint> = old_http
            .keys()
            .filter(|a| !kept(a, None))
            .chain(
                old_tcp
                    .iter()
                    .filter(|(a, s)| !kept(a, Some(s)))
                    .map(|(a, _)| a),
            )
            .copied()
            .map(Endpoint::tcp)
            .chain(
                old_udp
                    .iter()
                    .filter(|(a, s)| {
                        !next
                            .udp
                            .iter()
                            .any(|f| f.service == **s && f.addrs.contains(a))
                    })
                    .map(|(a, _)| Endpoint::udp(*a)),
            )
            .collect();
        if let Some(r) = &registry {
            r.warm();
            if let Some(dir) = &cfg.proxy.plugins_dir {
                r.watch(dir).map_err(one)?;
            }
        }
        let cert_watcher = match plan.certs.is_empty() {
            true => None,
            false => Some(tls::watch::watch(plan.certs).map_err(one)?),
        };

        // Nothing can fail from here on.
        for (f, routes, settings, limits) in swap_http {
            f.routes.store(Arc::new(routes));
            f.handle.settings.store(Arc::new(settings));
            f.handle.limits.store(Arc::new(limits));
        }
        for (f, target, limits) in swap_tcp {
            f.conns.set_target(target);
            f.limits.store(Arc::new(limits));
        }
        for (f, balancer, limits) in swap_udp {
            f.target.set(balancer);
            f.limits.store(Arc::new(limits));
        }
        let services = cfg.services.iter().map(|s| s.name.clone()).collect();
        let listening = start
            .iter()
            .map(|(a, u)| match u {
                Unit::Udp(_) => Endpoint::udp(*a).to_string(),
                _ => a.to_string(),
            })
            .collect();
        self.set_services(balancers);
        for (addr, unit) in start {
            self.ctx.frontends.start(addr, unit);
        }
        super::log_what_runs(&cfg, registry.as_deref());
        st.fronts = next;
        st.limits = limits;
        st.plugins = registry;
        st.cert_watcher = cert_watcher;
        st.cfg = cfg;
        Ok(Pending {
            report: Reloaded {
                services,
                listening,
                stopped: stop.iter().map(|a| a.to_string()).collect(),
                warnings,
                errors: Vec::new(),
            },
            stop,
            moved,
        })
    }

    /// Releases the addresses the reload dropped, then binds those that changed hands.
    pub async fn finish_reload(&self, p: Pending) -> Reloaded {
        let mut report = p.report;
        for a in &p.stop {
            self.ctx.frontends.stop(*a).await;
        }
        for m in p.moved {
            let (addr, unit) = match &m {
                Moved::Http(f) => (Endpoint::tcp(f.addr), f.bind(&self.ctx.conf)),
                Moved::Tcp(f, a) => (Endpoint::tcp(*a), f.bind(*a)),
                Moved::Udp(f, a) => (Endpoint::udp(*a), f.bind(*a)),
            };
            match unit {
                Ok(u) => {
                    self.ctx.frontends.start(addr.addr, u);
                    report.listening.push(addr.to_string());
                }
                Err(e) => {
                    tracing::error!(%addr, "reload: {e}");
                    report.errors.push(e);
                }
            }
        }
        report
    }
}

/// What differs between `old` and `new` that only a restart applies.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (&old.proxy, &new.proxy);
    let mut differs = |what: &str, changed: bool| {
        if changed {
            out.push(format!(
                "{what} changed: it takes effect at the next restart"
            ));
        }
    };
    differs("[proxy] threads", a.threads != b.threads);
    differs(
        "[proxy] max_connections",
        a.max_connections != b.max_connections,
    );
    differs("[proxy] grace_period", a.grace_period != b.grace_period);
    differs("[proxy] metrics", a.metrics != b.metrics);
    differs("[proxy] log_format", a.log_format != b.log_format);
    differs("[proxy] access_log", a.access_log != b.access_log);
    differs("[admin]", old.admin != new.admin);
    differs("[proxy] redis", a.redis != b.redis);
    for w in &out {
        tracing::warn!("reload: {w}");
    }
    out
}

/// Reloads on SIGHUP (as `systemctl reload` sends it); the outcome is logged. Once the
/// signal is caught, tells systemd the proxy is ready (see `ready.rs`).
pub struct ReloadOnHangup {
    pub control: Arc<crate::admin::control::Control>,
    /// Listeners pingora binds itself, awaited before readiness.
    pub wait_for: Vec<SocketAddr>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot catch SIGHUP, reload by signal is off: {e}");
                return;
            }
        };
        super::ready::notify_when_accepting(&self.wait_for).await;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by `Control::reload`.
                    let _ = self.control.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
