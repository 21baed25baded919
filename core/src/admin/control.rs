//! The changes an operator makes at run time, applied to the live services and saved to the
//! state file when there is one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::balance::balancer::Balancer;
use crate::balance::pool::AdminState;

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

/// Largest weight (as in the configuration).
const MAX_WEIGHT: u32 = 256;

/// The live services, and the file runtime changes are saved in.
pub struct Control {
    live: Arc<Live>,
    /// Serialises changes, so that the state file is written in the order they were made.
    state: Mutex<Option<StateFile>>,
}

impl Control {
    pub fn new(live: Arc<Live>, state: Option<StateFile>) -> Control {
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
        if let Some(f) = file.as_mut() {
            f.record(&b, i);
        }
        Ok(ServiceView::of(&b))
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
