//! State a backend's agent reports (HAProxy agent-check, KEMP adaptive agent, a plugin's
//! health hook): weight percentage, connection limit, administrative state, up/down. It gates
//! [`crate::balance::pool::Backend::available`] and scales the effective weight for every
//! scheduler.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering::Relaxed};

/// Administrative state an agent can request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAdmin {
    Ready = 0,
    /// No new traffic; what is in flight finishes.
    Drain = 1,
    /// Maintenance: no new traffic.
    Maint = 2,
}

/// Agent-reported properties of a backend; defaults change nothing.
#[derive(Debug)]
pub struct AgentState {
    /// Share of the configured weight, percent (HAProxy `75%`, `weight:N`). 0 drains.
    weight_percent: AtomicU32,
    /// Connection limit, 0 = none (HAProxy `maxconn:N`).
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
            admin: AtomicU8::new(AgentAdmin::Ready as u8),
            up: AtomicBool::new(true),
        }
    }
}

/// Agent properties settable through [`crate::balance::pool::Pool::set_agent`] (also the
/// numbers plugins use).
pub mod agent_prop {
    pub const WEIGHT_PERCENT: i32 = 0;
    pub const MAXCONN: i32 = 1;
    pub const ADMIN: i32 = 2;
    pub const UP: i32 = 3;
}

impl AgentState {
    #[inline]
    pub(super) fn admits(&self, active: u32) -> bool {
        let maxconn = self.maxconn.load(Relaxed);
        self.admin.load(Relaxed) == AgentAdmin::Ready as u8
            && self.up.load(Relaxed)
            && self.weight_percent.load(Relaxed) > 0
            && (maxconn == 0 || active < maxconn)
    }

    pub fn weight_percent(&self) -> u32 {
        self.weight_percent.load(Relaxed)
    }
    pub fn maxconn(&self) -> u32 {
        self.maxconn.load(Relaxed)
    }
    pub fn admin(&self) -> AgentAdmin {
        match self.admin.load(Relaxed) {
            1 => AgentAdmin::Drain,
            2 => AgentAdmin::Maint,
            _ => AgentAdmin::Ready,
        }
    }
    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Applies one property (see [`agent_prop`]); `None` for an unknown property or an
    /// out-of-range value, else whether the weight percentage changed.
    pub(super) fn set(&self, prop: i32, value: i64) -> Option<bool> {
        match prop {
            agent_prop::WEIGHT_PERCENT if (0..=25_600).contains(&value) => {
                Some(self.weight_percent.swap(value as u32, Relaxed) != value as u32)
            }
            agent_prop::MAXCONN if (0..=u32::MAX as i64).contains(&value) => {
                self.maxconn.store(value as u32, Relaxed);
                Some(false)
            }
            agent_prop::ADMIN if (0..=2).contains(&value) => {
                self.admin.store(value as u8, Relaxed);
                Some(false)
            }
            agent_prop::UP if (0..=1).contains(&value) => {
                self.up.store(value == 1, Relaxed);
                Some(false)
            }
            _ => None,
        }
    }
}
