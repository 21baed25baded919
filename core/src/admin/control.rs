//! The changes an operator makes at run time, applied to the live services and saved to the
//! state file when there is one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::balance::balancer::Balancer;
use crate::balance::pool::AdminState;
use crate::config::{BackendConfig, Config};
use crate::server::reload::Reloaded;

use super::state_file::StateFile;
use super::view::ServiceView;
use crate::server::live::Live;

/// Why a change was refused: the HTTP status and a message.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// A change to one backend; absent fields stay as they are.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendChange {
    pub state: Option<String>,
    pub weight: Option<u32>,
}

/// A backend to add.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBackend {
    /// `IP:PORT`, `[IPv6]:PORT` or `host:port` (resolved now).
    pub address: String,
    pub name: Option<String>,
    pub weight: Option<u32>,
}

/// Largest weight (as in the configuration).
const MAX_WEIGHT: u32 = 256;

/// How often a removed backend is looked at until its last request or connection ends.
const REMOVAL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The live services, and the file runtime changes are saved in.
pub struct Control {
    live: Arc<Live>,
    /// Serialises changes, so that the state file is written in the order they were made.
    state: Mutex<StateFile>,
}

impl Control {
    pub fn new(live: Arc<Live>, state: StateFile) -> Control {
        Control {
            live,
            state: Mutex::new(state),
        }
    }

    pub fn services(&self) -> Vec<ServiceView> {
        self.live
            .balancers()
            .iter()
            .map(|b| ServiceView::of(b))
            .collect()
    }

    /// Recent health transitions, newest first.
    pub fn events(&self) -> Vec<crate::observe::events::Event> {
        self.live.metrics().events.recent()
    }

    pub fn service(&self, name: &str) -> Result<ServiceView, Refused> {
        Ok(ServiceView::of(&*self.find(name)?))
    }

    fn find(&self, name: &str) -> Result<Arc<Balancer>, Refused> {
        self.live
            .get(name)
            .ok_or_else(|| refused(404, format!("no service {name:?}")))
    }

    /// Applies `change` to backend `backend` (a name or an address) of `service`; answers
    /// the service's new state.
    pub fn change_backend(
        &self,
        service: &str,
        backend: &str,
        change: &BackendChange,
    ) -> Result<ServiceView, Refused> {
        let b = self.find(service)?;
        let i = find_backend(&b, backend)?;
        if b.pool.get(i).removing() {
            return Err(refused(
                409,
                format!("backend {backend:?} is being removed"),
            ));
        }
        let state = match &change.state {
            None => None,
            Some(s) => Some(AdminState::from_name(s).ok_or_else(|| {
                refused(
                    400,
                    format!("state {s:?}: expected \"ready\", \"drain\" or \"maint\""),
                )
            })?),
        };
        if let Some(w) = change.weight.filter(|&w| w > MAX_WEIGHT) {
            return Err(refused(400, format!("weight {w}: at most {MAX_WEIGHT}")));
        }
        if state.is_none() && change.weight.is_none() {
            return Err(refused(400, "give \"state\", \"weight\" or both"));
        }
        let mut file = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = state {
            b.pool.set_admin(i, s);
        }
        if let Some(w) = change.weight {
            b.pool.set_weight(i, w);
        }
        file.record(&b, i);
        Ok(ServiceView::of(&b))
    }
}

impl Control {
    /// Adds a backend to `service`; it starts as the configuration's backends do (up, ready)
    /// and takes traffic from the next request or connection.
    pub async fn add_backend(
        &self,
        service: &str,
        new: &NewBackend,
    ) -> Result<ServiceView, Refused> {
        let address = resolve(&new.address).await?;
        let name = new.name.clone().unwrap_or_else(|| new.address.clone());
        if !crate::config::valid_backend_name(&name) {
            return Err(refused(
                400,
                format!(
                    "name {name:?}: letters, digits and - _ . : [ ] only, at most {} characters",
                    crate::config::MAX_NAME
                ),
            ));
        }
        let weight = new.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(refused(
                400,
                format!("weight {weight}: at most {MAX_WEIGHT}"),
            ));
        }
        let config = BackendConfig {
            hostname: new
                .address
                .parse::<SocketAddr>()
                .is_err()
                .then(|| new.address.rsplit_once(':').map(|(h, _)| h.to_string()))
                .flatten(),
            name: name.clone(),
            address,
            weight,
            enabled: true,
            max_connections: None,
        };
        let mut file = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let b = self
            .live
            .update(service, |b| {
                let cfg = b.config();
                if let Some(c) = cfg
                    .backends
                    .iter()
                    .find(|c| c.name == name || c.address == address)
                {
                    return Err(format!(
                        "service {service:?} already has backend {:?} at {}",
                        c.name, c.address
                    ));
                }
                let mut list = cfg.backends.clone();
                list.push(config.clone());
                Ok(b.with_backends(list))
            })
            .map_err(|e| {
                refused(
                    if e.starts_with("no service") {
                        404
                    } else {
                        409
                    },
                    e,
                )
            })?;
        file.record_added(service, &config);
        Ok(ServiceView::of(&b))
    }

    /// Removes a backend from `service`: nothing new reaches it at once, and it leaves the
    /// pool when its last request or connection ends (answered before that: the view shows
    /// it `removing`).
    pub fn remove_backend(
        self: &Arc<Self>,
        service: &str,
        backend: &str,
    ) -> Result<ServiceView, Refused> {
        let b = self.find(service)?;
        let i = find_backend(&b, backend)?;
        let name = b.pool.get(i).name.clone();
        {
            let mut file = self.state.lock().unwrap_or_else(|e| e.into_inner());
            b.pool.set_removing(i);
            file.record_removed(&b, i);
        }
        let me = self.clone();
        let service = service.to_string();
        tokio::spawn(async move { me.finish_removal(&service, &name).await });
        Ok(ServiceView::of(&b))
    }

    /// Waits until the removed backend has nothing in flight, then drops it from the pool.
    async fn finish_removal(&self, service: &str, name: &str) {
        loop {
            let Some(b) = self.live.get(service) else {
                return;
            };
            let Some(i) = b.pool.find_name(name) else {
                return;
            };
            if b.pool.get(i).active() == 0 {
                let r = self.live.update(service, |b| {
                    let list = b
                        .config()
                        .backends
                        .iter()
                        .filter(|c| c.name != name)
                        .cloned()
                        .collect();
                    Ok(b.with_backends(list))
                });
                match r {
                    Ok(_) => tracing::info!(%service, backend = %name, "backend removed"),
                    Err(e) => {
                        tracing::error!(%service, backend = %name, "backend not removed: {e}")
                    }
                }
                return;
            }
            tokio::time::sleep(REMOVAL_POLL).await;
        }
    }
}

impl Control {
    /// Reads the configuration file again and installs it (see `server/reload.rs`). The
    /// runtime changes apply to the new file by the state file's rules. Errors (with file
    /// and line) leave the running configuration as it was.
    pub async fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let _one = self.live.reloading.lock().await;
        let path = self.live.config().path;
        let pending = {
            let mut cfg = Config::load(&path)
                .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())
                .inspect_err(|e| log_refused(e))?;
            let mut file = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = file.clone();
            next.rebase(&mut cfg);
            let pending = self.live.install(cfg).inspect_err(|e| log_refused(e))?;
            *file = next;
            file.save();
            pending
        };
        let done = self.live.finish_reload(pending).await;
        tracing::info!(
            services = done.services.len(),
            listening = %done.listening.join(", "),
            stopped = %done.stopped.join(", "),
            errors = done.errors.len(),
            "configuration reloaded"
        );
        Ok(done)
    }
}

fn log_refused(errors: &[String]) {
    for e in errors {
        tracing::error!("reload refused, the running configuration stays: {e}");
    }
}

/// An address as the configuration takes it: `IP:PORT` at once, a host name resolved now.
async fn resolve(address: &str) -> Result<SocketAddr, Refused> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    match tokio::net::lookup_host(address).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| refused(400, format!("address {address:?} resolves to nothing"))),
        Err(e) => Err(refused(400, format!("address {address:?}: {e}"))),
    }
}

/// A backend of `b` by name, else by address.
fn find_backend(b: &Balancer, backend: &str) -> Result<usize, Refused> {
    b.pool
        .find_name(backend)
        .or_else(|| {
            let addr: SocketAddr = backend.parse().ok()?;
            b.pool.backends().iter().position(|x| x.address == addr)
        })
        .ok_or_else(|| {
            refused(
                404,
                format!("service {:?} has no backend {backend:?}", b.config().name),
            )
        })
}
