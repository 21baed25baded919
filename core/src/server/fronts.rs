//! The front ends a configuration asks for, made from its services: for each http listen
//! address its route table, settings (timeouts, TLS) and limits; for each tcp service its
//! connection target and limits. Start-up binds them all; a reload swaps these values into
//! the listeners whose address stays, and binds only what is new (see `reload.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;

use crate::balance::balancer::Balancer;
use crate::config::{Config, Mode, ServiceConfig};
use crate::io::limits::{Limit, Limits};
use crate::observe::access_log::AccessLog;
use crate::proxy::http::listener::{HttpHandle, HttpListener, Settings, Timeouts};
use crate::proxy::http::phases::{HttpService, Route, Routes};
use crate::proxy::tcp::{Conns, Target, TcpListenerUnit};
use crate::proxy::udp::{self, UdpListenerUnit, UdpTarget};
use crate::tls;
use crate::tls::server::CertStore;

use super::frontends::Unit;

/// A running http listen address: its services in file order, and what its connections read.
#[derive(Clone)]
pub struct HttpFront {
    pub addr: SocketAddr,
    pub services: Vec<String>,
    pub routes: Arc<ArcSwap<Routes>>,
    pub handle: HttpHandle,
}

/// A running tcp service, shared by its listen addresses.
#[derive(Clone)]
pub struct TcpFront {
    pub service: String,
    pub addrs: Vec<SocketAddr>,
    pub conns: Arc<Conns>,
    pub limits: Arc<ArcSwap<Limits>>,
}

/// A running udp service, shared by its listen addresses.
#[derive(Clone)]
pub struct UdpFront {
    pub service: String,
    pub addrs: Vec<SocketAddr>,
    pub target: Arc<UdpTarget>,
    pub limits: Arc<ArcSwap<Limits>>,
}

/// Every front end of the process.
#[derive(Default)]
pub struct Fronts {
    pub http: Vec<HttpFront>,
    pub tcp: Vec<TcpFront>,
    pub udp: Vec<UdpFront>,
}

/// What one udp service should serve.
pub struct UdpPlan {
    pub service: String,
    pub addrs: Vec<SocketAddr>,
    pub balancer: Arc<Balancer>,
    pub limits: Limits,
}

/// What one http address should serve.
pub struct HttpPlan {
    pub addr: SocketAddr,
    pub services: Vec<String>,
    pub routes: Routes,
    pub settings: Settings,
    pub limits: Limits,
}

/// What one tcp service should serve.
pub struct TcpPlan {
    pub service: String,
    pub addrs: Vec<SocketAddr>,
    pub target: Target,
    pub limits: Limits,
}

/// The front ends of a configuration, and the certificate stores its TLS addresses use.
pub struct Plan {
    pub http: Vec<HttpPlan>,
    pub tcp: Vec<TcpPlan>,
    pub udp: Vec<UdpPlan>,
    pub certs: Vec<Arc<CertStore>>,
}

/// Each service's connection limit, kept across reloads while its value stays: connections
/// open before a reload keep counting against the limit after it.
#[derive(Default, Clone)]
pub struct ServiceLimits(HashMap<String, (usize, Limit)>);

impl ServiceLimits {
    fn get(&mut self, s: &ServiceConfig, next: &mut ServiceLimits) -> Option<Limit> {
        let max = s.max_connections?;
        let l = match self.0.get(&s.name) {
            Some((m, l)) if *m == max => l.clone(),
            _ => Limit::new(max),
        };
        next.0.insert(s.name.clone(), (max, l.clone()));
        Some(l)
    }
}

/// Plans the front ends of `balancers` (the services of `cfg`, in file order). Certificates
/// are read now; an error names the service and file.
pub fn plan(
    cfg: &Config,
    balancers: &[Arc<Balancer>],
    process: &Limit,
    limits: &mut ServiceLimits,
    log: Option<&Arc<AccessLog>>,
) -> Result<Plan, String> {
    let mut next = ServiceLimits::default();
    let mut certs = Vec::new();
    let mut tcp = Vec::new();
    for b in balancers.iter().filter(|b| b.config().mode == Mode::Tcp) {
        let s = b.config();
        let front = match &s.tls {
            None => None,
            Some(t) => {
                let store = Arc::new(cert_store(cfg, s, std::slice::from_ref(b))?);
                certs.push(store.clone());
                Some(tls::server::server_config(t, store)?)
            }
        };
        tcp.push(TcpPlan {
            service: s.name.clone(),
            addrs: s.listen.clone(),
            target: Target::new(b.clone(), front, log)?,
            limits: Limits {
                service: limits.get(s, &mut next),
                process: process.clone(),
            },
        });
    }
    let mut udp = Vec::new();
    for b in balancers.iter().filter(|b| b.config().mode == Mode::Udp) {
        let s = b.config();
        // A udp service always has a flow limit (each flow holds a socket).
        let mut bounded = s.clone();
        bounded.max_connections = Some(udp::max_flows(s.max_connections));
        udp.push(UdpPlan {
            service: s.name.clone(),
            addrs: s.listen.clone(),
            balancer: b.clone(),
            limits: Limits {
                service: limits.get(&bounded, &mut next),
                process: process.clone(),
            },
        });
    }
    let mut http = Vec::new();
    // One listener per http address, serving every service that listens there.
    for (addr, on) in http_addresses(balancers) {
        let lead = on
            .iter()
            .find(|b| b.config().route.is_none())
            .unwrap_or(&on[0])
            .config();
        let routes = on
            .iter()
            .map(|b| Route::new(b.clone(), log))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &lead.tls {
            None => None,
            Some(t) => {
                let store = Arc::new(cert_store(cfg, lead, &on)?);
                certs.push(store.clone());
                Some(tls::server::server_config(t, store)?)
            }
        };
        http.push(HttpPlan {
            addr,
            services: on.iter().map(|b| b.config().name.clone()).collect(),
            routes: Routes::new(routes, lead.tls.is_some(), log),
            settings: Settings {
                timeouts: Timeouts {
                    idle: lead.idle_timeout,
                    header: lead.header_timeout,
                },
                tls,
                // The same on every service of the address (checked with the config).
                accept_proxy: lead.accept_proxy.clone(),
                send_proxy: on.iter().any(|b| b.config().send_proxy.is_some()),
            },
            limits: Limits {
                service: limits.get(lead, &mut next),
                process: process.clone(),
            },
        });
    }
    *limits = next;
    Ok(Plan {
        http,
        tcp,
        udp,
        certs,
    })
}

impl HttpPlan {
    /// The running form of this plan, for an address not served yet.
    pub fn into_front(self) -> HttpFront {
        HttpFront {
            addr: self.addr,
            services: self.services,
            routes: Arc::new(ArcSwap::from_pointee(self.routes)),
            handle: HttpHandle::new(self.settings, self.limits),
        }
    }
}

impl TcpPlan {
    pub fn into_front(self) -> TcpFront {
        TcpFront {
            service: self.service,
            addrs: self.addrs,
            conns: Conns::new(self.target),
            limits: Arc::new(ArcSwap::from_pointee(self.limits)),
        }
    }
}

impl UdpPlan {
    pub fn into_front(self) -> UdpFront {
        UdpFront {
            service: self.service,
            addrs: self.addrs,
            target: UdpTarget::new(self.balancer),
            limits: Arc::new(ArcSwap::from_pointee(self.limits)),
        }
    }
}

impl UdpFront {
    pub fn bind(&self, addr: SocketAddr) -> Result<Unit, String> {
        let name = format!("{} (udp {addr})", self.service);
        UdpListenerUnit::bind(name, addr, self.target.clone(), self.limits.clone()).map(Unit::Udp)
    }
}

impl HttpFront {
    /// Binds the address (now: a busy address is an error) with a new pingora proxy.
    pub fn bind(&self, conf: &Arc<ServerConf>) -> Result<Unit, String> {
        let proxy = pingora::proxy::http_proxy(conf, HttpService::new(self.routes.clone()));
        let name = format!("{} (http {})", self.services.join(", "), self.addr);
        HttpListener::bind(name, self.addr, proxy, self.handle.clone()).map(Unit::Http)
    }
}

impl TcpFront {
    pub fn bind(&self, addr: SocketAddr) -> Result<Unit, String> {
        let name = format!("{} (tcp {addr})", self.service);
        TcpListenerUnit::bind(name, addr, self.conns.clone(), self.limits.clone()).map(Unit::Tcp)
    }
}

/// Each http listen address with the services on it, in file order.
fn http_addresses(balancers: &[Arc<Balancer>]) -> Vec<(SocketAddr, Vec<Arc<Balancer>>)> {
    let mut out: Vec<(SocketAddr, Vec<Arc<Balancer>>)> = Vec::new();
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
    lead: &ServiceConfig,
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
