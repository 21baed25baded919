//! One hook call on a sample, and its answer in a form that can be printed (`plugin check`)
//! and compared with an expectation (`plugin test`).

use std::fmt;
use std::time::{Duration, Instant};

use pingora::http::ResponseHeader;

use super::sample::Sample;
use crate::balance::agent::AdminState;
use crate::balance::hooks::{Key, KeyOutcome};
use crate::balance::pool::Pool;
use crate::plugin::contract::NetScope;
use crate::plugin::runtime::{Fault, HealthCall, Instance, SelectCall};

/// How long a health-check call may take outside the proxy (its `timeout` inside).
pub const HEALTH_BUDGET: Duration = Duration::from_secs(1);

/// What a select-server call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    Backend(usize),
    NoOpinion,
}

/// What a persistence-key call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    None,
    NeedMore,
    Key(Vec<u8>),
    Backend(usize),
}

/// What a health-check call answered, with the agent state it set on the checked backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthAnswer {
    pub up: bool,
    pub load: Option<u8>,
    pub weight_percent: u32,
    pub maxconn: u32,
    pub admin: AdminState,
    pub agent_up: bool,
}

/// Backends as the plugin numbers them: from 1 in Lua, from 0 in WASM.
#[derive(Clone, Copy)]
pub struct Numbering<'a> {
    pub first: usize,
    pub pool: &'a Pool,
}

impl Numbering<'_> {
    /// `backend 2 (127.0.0.1:9002)`.
    pub fn name(&self, i: usize) -> String {
        match self.pool.backends().get(i) {
            Some(b) if b.name == b.address.to_string() => {
                format!("backend {} ({})", i + self.first, b.address)
            }
            Some(b) => format!("backend {} {} ({})", i + self.first, b.name, b.address),
            None => format!("backend {}, which does not exist", i + self.first),
        }
    }

    pub fn select(&self, s: &Select) -> String {
        match s {
            Select::Backend(i) => self.name(*i),
            Select::NoOpinion => "no opinion".into(),
        }
    }

    pub fn key(&self, k: &KeyAnswer) -> String {
        match k {
            KeyAnswer::None => "no key".into(),
            KeyAnswer::NeedMore => "needs more bytes".into(),
            KeyAnswer::Key(k) => format!("key {:?}", String::from_utf8_lossy(k)),
            KeyAnswer::Backend(i) => format!("names {}", self.name(*i)),
        }
    }
}

impl fmt::Display for HealthAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", if self.up { "up" } else { "down" })?;
        if let Some(l) = self.load {
            write!(f, ", load {l}")?;
        }
        // The agent state only where the plugin changed it from the defaults.
        if self.weight_percent != 100 {
            write!(f, ", weight {}%", self.weight_percent)?;
        }
        if self.maxconn != 0 {
            write!(f, ", maxconn {}", self.maxconn)?;
        }
        if self.admin != AdminState::Ready {
            write!(f, ", {}", self.admin.name())?;
        }
        if !self.agent_up {
            write!(f, ", agent down")?;
        }
        Ok(())
    }
}

/// A fault as both commands print it.
pub fn show_fault(f: &Fault) -> String {
    format!("fault ({}): {}", f.kind.as_str(), f.message)
}

pub fn select(inst: &mut dyn Instance, sample: &Sample, pool: &Pool) -> Result<Select, Fault> {
    let req = sample.request();
    let call = SelectCall {
        req: &req,
        pool,
        avoid: &[],
    };
    Ok(match inst.select(&call)? {
        Some(i) => Select::Backend(i),
        None => Select::NoOpinion,
    })
}

pub fn key(inst: &mut dyn Instance, sample: &Sample, pool: &Pool) -> Result<KeyAnswer, Fault> {
    Ok(match inst.key(&sample.request(), pool)? {
        KeyOutcome::Key(Key::Owned(b)) => KeyAnswer::Key(b.into()),
        KeyOutcome::Key(Key::Borrowed(b)) => KeyAnswer::Key(b.to_vec()),
        KeyOutcome::Key(Key::Ip(ip)) => KeyAnswer::Key(ip.to_string().into_bytes()),
        KeyOutcome::Backend(i) => KeyAnswer::Backend(i),
        KeyOutcome::NeedMore => KeyAnswer::NeedMore,
        KeyOutcome::None | KeyOutcome::Reject => KeyAnswer::None,
    })
}

/// The response step after `served` answered a 200: the headers the plugin added.
pub fn response(
    inst: &mut dyn Instance,
    sample: &Sample,
    pool: &Pool,
    served: usize,
) -> Result<Vec<String>, Fault> {
    let mut resp = ResponseHeader::build(200, None)
        .map_err(|e| Fault::new(crate::plugin::runtime::FaultKind::Invalid, e.to_string()))?;
    inst.on_response(&sample.request(), None, served, pool, &mut resp)?;
    Ok(resp
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect())
}

/// A health check of `backend` at its own address.
pub fn health(inst: &mut dyn Instance, pool: &Pool, backend: usize) -> Result<HealthAnswer, Fault> {
    let target = pool.get(backend).address;
    let call = HealthCall {
        pool,
        backend,
        target,
        budget: HEALTH_BUDGET,
        net: NetScope {
            target,
            deadline: Instant::now() + HEALTH_BUDGET,
        },
    };
    let h = inst.health(&call)?;
    let agent = pool.get(backend).agent();
    Ok(HealthAnswer {
        up: h.up,
        load: h.load,
        weight_percent: agent.weight_percent(),
        maxconn: agent.maxconn(),
        admin: agent.admin(),
        agent_up: agent.up(),
    })
}
