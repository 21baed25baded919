//! State a backend's agent reports (HAProxy agent-check, KEMP adaptive agent, a plugin's
//! health hook): weight percentage, connection limit, administrative state, up/down. It gates
//! [`crate::balance::pool::Backend::available`] and scales the effective weight for every
//! scheduler.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering::Relaxed};

/// Administrative state of a backend, set by an operator (admin API) or by its agent; the
/// stricter of the two applies. What is in flight always finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdminState {
    Ready = 0,
    /// No new clients; clients that persistence pins to it keep coming (HAProxy's drain,
    /// KEMP's disable with persistence).
    Drain = 1,
    /// Maintenance: nothing new at all.
    Maint = 2,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn from_name(name: &str) -> Option<AdminState> {
        match name {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    pub(super) fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

/// Agent-reported properties of a backend; defaults change nothing.
#[derive(Debug)]
pub struct AgentState {
    /// Share of the configured weight, percent (HAProxy `75%`, `weight:N`). 0 drains.
    weight_percent: AtomicU32,
    /// Connection limit, 0 = none reported (HAProxy `maxconn:N`): the backend's configured
    /// `max_connections` applies then.
    maxconn: AtomicU32,
    admin: AtomicU8,
    /// false after the agent said `down`, `fail`, `stopped` (or KEMP `101`).
    up: AtomicBool,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            weight_percent: AtomicU32::new(100),
            maxconn: AtomicU32::new(0),
            admin: AtomicU8::new(AdminState::Ready as u8),
            up: AtomicBool::new(true),
        }
    }
}

/// One property an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentUpdate {
    /// Share of the configured weight, percent, up to [`MAX_WEIGHT_PERCENT`]; 0 drains.
    WeightPercent(u32),
    /// Connection limit; 0 withdraws the agent's, so the configured one applies again.
    MaxConn(u32),
    Admin(AdminState),
    /// The agent's own verdict (HAProxy `up`/`down`, KEMP `101`).
    Up(bool),
}

/// Largest weight percentage (HAProxy: weight 256 is 25,600 % of weight 1).
pub const MAX_WEIGHT_PERCENT: u32 = 25_600;

impl AgentState {
    /// The agent lets new clients in (its `maxconn` is applied by the pool as the
    /// backend's limit).
    #[inline]
    pub(super) fn admits(&self) -> bool {
        self.admin.load(Relaxed) == AdminState::Ready as u8
            && self.weight_percent.load(Relaxed) > 0
            && self.admits_pinned()
    }

    /// The agent lets clients pinned to the backend in (drain and weight 0 do not stop them).
    #[inline]
    pub(super) fn admits_pinned(&self) -> bool {
        self.admin.load(Relaxed) != AdminState::Maint as u8 && self.up.load(Relaxed)
    }

    pub fn weight_percent(&self) -> u32 {
        self.weight_percent.load(Relaxed)
    }
    pub fn maxconn(&self) -> u32 {
        self.maxconn.load(Relaxed)
    }
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }
    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Applies one update; `None` when it is out of range, else whether the weight
    /// percentage changed.
    pub(super) fn apply(&self, u: AgentUpdate) -> Option<bool> {
        match u {
            AgentUpdate::WeightPercent(p) if p <= MAX_WEIGHT_PERCENT => {
                Some(self.weight_percent.swap(p, Relaxed) != p)
            }
            AgentUpdate::WeightPercent(_) => None,
            AgentUpdate::MaxConn(n) => {
                self.maxconn.store(n, Relaxed);
                Some(false)
            }
            AgentUpdate::Admin(a) => {
                self.admin.store(a as u8, Relaxed);
                Some(false)
            }
            AgentUpdate::Up(up) => {
                self.up.store(up, Relaxed);
                Some(false)
            }
        }
    }
}
