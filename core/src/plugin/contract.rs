//! What a plugin sees and may do, the same in every runtime: the request fields, the backend
//! properties and what they mean, the agent state it may set, and where its network helpers
//! may connect. The WASM ABI exposes these by number (`sdk/ABI.md`), the Lua API by name; both
//! read them through this module, so "available" means the same thing to a WASM plugin, a Lua
//! plugin and the core's own schedulers.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::balance::hooks::{Key, Request};
use crate::balance::pool::{AdminState, AgentUpdate, Pool};

/// Request fields, by ABI number and Lua name.
pub mod field {
    pub const SERVICE: i32 = 0;
    pub const MODE: i32 = 1;
    pub const CLIENT_IP: i32 = 2;
    pub const CLIENT_PORT: i32 = 3;
    pub const KEY: i32 = 4;
    pub const METHOD: i32 = 5;
    pub const PATH: i32 = 6;
    pub const HOST: i32 = 7;
    pub const PAYLOAD: i32 = 8;
    /// The request target's query string, without `?` (absent when there is none).
    pub const QUERY: i32 = 9;

    /// Lua names of the fields.
    pub const NAMES: [(&str, i32); 10] = [
        ("service", SERVICE),
        ("mode", MODE),
        ("client_ip", CLIENT_IP),
        ("client_port", CLIENT_PORT),
        ("key", KEY),
        ("method", METHOD),
        ("path", PATH),
        ("host", HOST),
        ("payload", PAYLOAD),
        ("query", QUERY),
    ];
}

/// Backend properties, by ABI number and Lua name.
pub mod prop {
    pub const WEIGHT: i32 = 0;
    pub const ACTIVE: i32 = 1;
    pub const LOAD: i32 = 2;
    /// Can take this request: health up, enabled, agent ready and up with a non-zero weight,
    /// under its connection limit, and not already failed for this request. Exactly what the
    /// core's own schedulers require.
    pub const AVAILABLE: i32 = 3;
    pub const ENABLED: i32 = 4;
    pub const EFFECTIVE_WEIGHT: i32 = 5;
    pub const AGENT_WEIGHT_PERCENT: i32 = 6;
    pub const AGENT_MAXCONN: i32 = 7;
    pub const AGENT_ADMIN: i32 = 8;
    pub const AGENT_UP: i32 = 9;
    /// The health check's verdict alone.
    pub const UP: i32 = 10;

    /// Lua names of the numeric properties (`available` is a boolean there, and so are the
    /// flags).
    pub const NAMES: [(&str, i32); 11] = [
        ("weight", WEIGHT),
        ("active", ACTIVE),
        ("load", LOAD),
        ("available", AVAILABLE),
        ("enabled", ENABLED),
        ("effective_weight", EFFECTIVE_WEIGHT),
        ("agent_weight_percent", AGENT_WEIGHT_PERCENT),
        ("agent_maxconn", AGENT_MAXCONN),
        ("agent_admin", AGENT_ADMIN),
        ("agent_up", AGENT_UP),
        ("up", UP),
    ];

    /// Properties that are true/false (0/1 in the ABI).
    pub fn is_flag(p: i32) -> bool {
        matches!(p, AVAILABLE | ENABLED | AGENT_UP | UP)
    }
}

/// Agent properties a health-check call may set, by ABI number.
pub mod agent_prop {
    pub const WEIGHT_PERCENT: i32 = 0;
    pub const MAXCONN: i32 = 1;
    pub const ADMIN: i32 = 2;
    pub const UP: i32 = 3;
}

/// The update property `prop` = `value` makes; `None` for an unknown property or a value
/// out of its range.
pub fn agent_update(prop: i32, value: i64) -> Option<AgentUpdate> {
    let small = |v: i64| u32::try_from(v).ok();
    Some(match prop {
        agent_prop::WEIGHT_PERCENT => AgentUpdate::WeightPercent(small(value)?),
        agent_prop::MAXCONN => AgentUpdate::MaxConn(small(value)?),
        agent_prop::ADMIN => AgentUpdate::Admin(match value {
            0 => AdminState::Ready,
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => return None,
        }),
        agent_prop::UP => AgentUpdate::Up(match value {
            0 => false,
            1 => true,
            _ => return None,
        }),
        _ => return None,
    })
}

/// Formats request field `field` into `out`; false when the request has no such field.
pub fn request_field(req: &Request<'_>, field: i32, out: &mut Vec<u8>) -> bool {
    out.clear();
    match field {
        field::SERVICE => out.extend_from_slice(req.service.as_bytes()),
        field::MODE => out.extend_from_slice(req.mode.as_str().as_bytes()),
        field::CLIENT_IP => match req.client {
            Some(c) => {
                let _ = write!(out, "{}", c.ip());
            }
            None => return false,
        },
        field::CLIENT_PORT => match req.client {
            Some(c) => {
                let _ = write!(out, "{}", c.port());
            }
            None => return false,
        },
        field::KEY => match req.key {
            Some(Key::Ip(ip)) => {
                let _ = write!(out, "{ip}");
            }
            Some(Key::Borrowed(b)) => out.extend_from_slice(b),
            Some(Key::Owned(b)) => out.extend_from_slice(b),
            None => return false,
        },
        field::METHOD => match req.http {
            Some(h) => out.extend_from_slice(h.method.as_str().as_bytes()),
            None => return false,
        },
        field::PATH => match req.http {
            Some(h) => out.extend_from_slice(h.uri.path().as_bytes()),
            None => return false,
        },
        field::QUERY => match req.http.and_then(|h| h.uri.query()) {
            Some(q) => out.extend_from_slice(q.as_bytes()),
            None => return false,
        },
        field::HOST => match req
            .header("host")
            .or_else(|| req.http.and_then(|h| h.uri.host()).map(str::as_bytes))
        {
            Some(h) => out.extend_from_slice(h),
            None => return false,
        },
        field::PAYLOAD => {
            if req.http.is_some() {
                return false;
            }
            out.extend_from_slice(req.payload)
        }
        _ => return false,
    }
    true
}

/// Property `prop` of backend `i`, as the ABI returns it (`-1`: bad index or property, or an
/// unknown load).
pub fn backend_prop(pool: &Pool, avoid: &[usize], i: i64, prop: i32) -> i64 {
    let Some(b) = usize::try_from(i).ok().and_then(|i| pool.backends().get(i)) else {
        return -1;
    };
    let i = i as usize;
    match prop {
        prop::WEIGHT => b.weight() as i64,
        prop::ACTIVE => b.active() as i64,
        prop::LOAD => b.load().map_or(-1, |l| l as i64),
        prop::AVAILABLE => (b.available() && !avoid.contains(&i)) as i64,
        prop::ENABLED => b.enabled() as i64,
        prop::EFFECTIVE_WEIGHT => b.effective_weight() as i64,
        prop::AGENT_WEIGHT_PERCENT => b.agent().weight_percent() as i64,
        prop::AGENT_MAXCONN => b.agent().maxconn() as i64,
        prop::AGENT_ADMIN => b.agent().admin() as i64,
        prop::AGENT_UP => b.agent().up() as i64,
        prop::UP => b.healthy() as i64,
        _ => -1,
    }
}

/// What a health-check call's network helpers may do: connect to the checked backend's host
/// only (any port: agents listen beside the service), and finish by the call's deadline.
#[derive(Debug, Clone, Copy)]
pub struct NetScope {
    pub target: SocketAddr,
    pub deadline: Instant,
}

impl NetScope {
    /// The timeout for one helper call to `addr` asking for `wanted`, or why it is refused.
    pub fn admit(&self, addr: SocketAddr, wanted: Duration) -> Result<Duration, String> {
        if addr.ip() != self.target.ip() {
            return Err(format!(
                "{addr} is not the checked backend's host ({}): a health check may only connect there",
                self.target.ip()
            ));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the check's timeout has passed".into());
        }
        Ok(wanted.min(left))
    }
}

/// The backend a plugin named by text: its name, or its address.
pub fn backend_by_text(pool: &Pool, text: &str) -> Option<usize> {
    pool.find_name(text).or_else(|| {
        pool.backends()
            .iter()
            .position(|b| text.parse::<SocketAddr>().is_ok_and(|a| a == b.address))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_is_the_cores_availability() {
        let p = Pool::for_tests(&[1, 1, 1], None);
        assert_eq!(backend_prop(&p, &[], 0, prop::AVAILABLE), 1);
        p.set_agent(0, agent_update(agent_prop::ADMIN, 1).unwrap());
        assert!(!p.get(0).available());
        assert_eq!(backend_prop(&p, &[], 0, prop::AVAILABLE), 0);
        assert_eq!(backend_prop(&p, &[], 0, prop::UP), 1, "health is still up");
        assert_eq!(
            backend_prop(&p, &[1], 1, prop::AVAILABLE),
            0,
            "failed for this request"
        );
        assert_eq!(backend_prop(&p, &[], 7, prop::WEIGHT), -1);
        assert_eq!(backend_prop(&p, &[], -1, prop::WEIGHT), -1);
    }

    #[test]
    fn agent_numbers_and_ranges() {
        assert_eq!(
            agent_update(agent_prop::UP, 0),
            Some(AgentUpdate::Up(false))
        );
        assert_eq!(
            agent_update(agent_prop::ADMIN, 2),
            Some(AgentUpdate::Admin(AdminState::Maint))
        );
        assert_eq!(agent_update(agent_prop::ADMIN, 3), None);
        assert_eq!(agent_update(agent_prop::MAXCONN, -1), None);
        assert_eq!(agent_update(9, 1), None);
    }

    #[test]
    fn net_scope_is_the_backend_host_until_the_deadline() {
        let s = NetScope {
            target: "127.0.0.5:80".parse().unwrap(),
            deadline: Instant::now() + Duration::from_secs(1),
        };
        assert!(
            s.admit("127.0.0.5:9999".parse().unwrap(), Duration::from_secs(5))
                .unwrap()
                <= Duration::from_secs(1)
        );
        assert!(s
            .admit("127.0.0.6:80".parse().unwrap(), Duration::from_secs(1))
            .is_err());
        let late = NetScope {
            deadline: Instant::now(),
            ..s
        };
        assert!(late
            .admit("127.0.0.5:80".parse().unwrap(), Duration::from_secs(1))
            .is_err());
    }
}
