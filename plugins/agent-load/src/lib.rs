//! agent-load: schedules new connections by the load an agent on each server reports.
//!
//! Used as a scheduler (`scheduler = "plugin:agent-load"`), its health-check hook runs as an
//! agent feed every `interval` and reports through the proxy's agent state; its select-server
//! hook spreads new connections by effective weight:
//! `static weight x (100 - load) / 100`, never below `floor` percent of the static weight so a
//! loaded server is not starved forever; while every server reports a load below
//! `min_control` percent (KEMP's minimum control variable), static weights are used. The
//! agent's weight percentage and slow start apply on top (they are in the effective weight the
//! proxy reports).
//!
//! Protocols (`protocol` setting):
//! - `kemp`: `GET path` on `port` (defaults `/load`, 80); the first line of the body is `0-100`
//!   (load), `101` (down) or `102` (administratively disabled: drain).
//! - `haproxy`: TCP to `port`, optionally sending `send` first, then one line of words
//!   separated by spaces, tabs or commas, case-insensitive, last one of a kind wins: `75%`,
//!   `weight:N`, `weight:N%`, `maxconn:N`, `ready`, `drain`, `maint`, `up`, `down`, `fail`,
//!   `stopped`, the last four optionally followed by `#description`.
//!
//! An unreachable or garbled agent is logged; its last good report stays in force for
//! `stale_after` polls, then the backend returns to its static weight. The agent never takes a
//! backend down by being unreachable: only an explicit `down`/`fail`/`stopped`/`101` does.

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzz;

use plugboard_sdk::{
    agent, export_plugin, log, net, Backend, Backends, Config, Health, HealthCheck, Plugin,
    Request, SelectServer,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Kemp,
    Haproxy,
}

/// One agent report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub load: Option<u8>,
    pub weight_percent: Option<u32>,
    /// Absolute weight (`weight:N`), converted with the backend's static weight.
    pub weight_abs: Option<u32>,
    pub maxconn: Option<u32>,
    pub admin: Option<agent::Admin>,
    pub up: Option<bool>,
    pub description: Option<String>,
}

/// KEMP: the first line of the body.
pub fn parse_kemp(body: &[u8]) -> Option<Report> {
    let text = std::str::from_utf8(body).ok()?;
    let n: u32 = text.lines().next()?.trim().parse().ok()?;
    Some(match n {
        0..=100 => Report {
            load: Some(n as u8),
            admin: Some(agent::Admin::Ready),
            up: Some(true),
            ..Report::default()
        },
        101 => Report {
            up: Some(false),
            ..Report::default()
        },
        102 => Report {
            admin: Some(agent::Admin::Drain),
            ..Report::default()
        },
        _ => return None,
    })
}

/// HAProxy agent-check: one line of words. `None` when nothing in it is understood.
pub fn parse_haproxy(line: &[u8]) -> Option<Report> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.split(['\r', '\n']).next()?;
    let (words, description) = match text.split_once('#') {
        Some((w, d)) => (w, Some(d.trim().to_string())),
        None => (text, None),
    };
    let mut r = Report {
        description,
        ..Report::default()
    };
    let mut understood = false;
    for w in words.split([' ', '\t', ',']).filter(|w| !w.is_empty()) {
        let w = w.to_ascii_lowercase();
        understood |= match w.as_str() {
            "ready" => set(&mut r.admin, agent::Admin::Ready),
            "drain" => set(&mut r.admin, agent::Admin::Drain),
            "maint" => set(&mut r.admin, agent::Admin::Maint),
            "up" => set(&mut r.up, true),
            "down" | "fail" | "stopped" => set(&mut r.up, false),
            _ => {
                if let Some(p) = w.strip_suffix('%').filter(|p| !p.contains(':')) {
                    percent(p).map(|p| r.weight_percent = Some(p)).is_some()
                } else if let Some(v) = w.strip_prefix("weight:") {
                    match v.strip_suffix('%') {
                        Some(p) => percent(p).map(|p| r.weight_percent = Some(p)).is_some(),
                        None => v
                            .parse()
                            .ok()
                            .filter(|n| *n <= 256)
                            .map(|n| r.weight_abs = Some(n))
                            .is_some(),
                    }
                } else if let Some(v) = w.strip_prefix("maxconn:") {
                    v.parse().ok().map(|n| r.maxconn = Some(n)).is_some()
                } else {
                    false
                }
            }
        };
    }
    understood.then_some(r)
}

/// A weight percentage, capped at what the host accepts: HAProxy caps the weight it derives
/// the same way, and an uncapped `300000%` would be refused by the host and the report lost.
fn percent(p: &str) -> Option<u32> {
    p.parse::<u32>()
        .ok()
        .map(|p| p.min(agent::MAX_WEIGHT_PERCENT))
}

fn set<T>(slot: &mut Option<T>, v: T) -> bool {
    *slot = Some(v);
    true
}

pub struct AgentLoad {
    protocol: Protocol,
    port: Option<u16>,
    path: String,
    send: Vec<u8>,
    timeout_ms: u32,
    min_control: u32,
    floor: u32,
    stale_after: u32,
    /// Consecutive failed polls, per backend.
    failures: Vec<u32>,
    /// Smooth weighted round robin state, per backend.
    current: Vec<i64>,
}

const SETTINGS: [&str; 9] = [
    "protocol",
    "port",
    "path",
    "send",
    "interval",
    "timeout_ms",
    "min_control",
    "floor",
    "stale_after",
];

impl Plugin for AgentLoad {
    fn new(config: &Config) -> Result<Self, String> {
        for (k, _) in config.value().as_object().into_iter().flatten() {
            if !SETTINGS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown setting {k:?} (known: {})",
                    SETTINGS.join(", ")
                ));
            }
        }
        let protocol = match config.str("protocol").unwrap_or("kemp") {
            "kemp" => Protocol::Kemp,
            "haproxy" => Protocol::Haproxy,
            other => {
                return Err(format!(
                    "protocol must be \"kemp\" or \"haproxy\", not {other:?}"
                ))
            }
        };
        let port = match config.int("port") {
            None => None,
            Some(p) if (1..=65535).contains(&p) => Some(p as u16),
            Some(p) => return Err(format!("port {p} is out of range")),
        };
        let path = config.str("path").unwrap_or("/load").to_string();
        if !path.starts_with('/') {
            return Err(format!("path must start with '/', not {path:?}"));
        }
        let pct = |k: &str, d: i64, max: i64| -> Result<u32, String> {
            let v = config.int(k).unwrap_or(d);
            if (0..=max).contains(&v) {
                Ok(v as u32)
            } else {
                Err(format!("{k} must be 0-{max}, not {v}"))
            }
        };
        Ok(AgentLoad {
            protocol,
            port,
            path,
            send: config.str("send").unwrap_or_default().as_bytes().to_vec(),
            timeout_ms: config.int("timeout_ms").unwrap_or(1000).clamp(1, 60_000) as u32,
            min_control: pct("min_control", 5, 50)?,
            floor: pct("floor", 5, 100)?,
            stale_after: pct("stale_after", 3, 1000)?.max(1),
            failures: Vec::new(),
            current: Vec::new(),
        })
    }
}

impl AgentLoad {
    /// The agent's address: the backend's IP with the `port` setting (KEMP default 80).
    fn agent_address(&self, target: &str) -> String {
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
        let port = self.port.unwrap_or(match self.protocol {
            Protocol::Kemp => 80,
            Protocol::Haproxy => target
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(80),
        });
        format!("{host}:{port}")
    }

    fn poll(&self, address: &str) -> Option<Report> {
        match self.protocol {
            Protocol::Kemp => match net::http_get(address, &self.path, self.timeout_ms)? {
                (200, body) => parse_kemp(&body),
                _ => None,
            },
            Protocol::Haproxy => {
                parse_haproxy(&net::tcp_exchange(address, &self.send, 0, self.timeout_ms)?)
            }
        }
    }

    /// Effective weights for this pick (0 = not eligible).
    pub fn weights(&self, backends: &Backends) -> Vec<u64> {
        let eligible: Vec<(Backend, u64)> = backends
            .iter()
            .map(|b| {
                (
                    b,
                    if b.available() {
                        b.effective_weight() as u64
                    } else {
                        0
                    },
                )
            })
            .collect();
        let all_low = eligible
            .iter()
            .filter(|(_, w)| *w > 0)
            .all(|(b, _)| b.load().is_none_or(|l| (l as u32) < self.min_control));
        eligible
            .iter()
            .map(|(b, w)| {
                if all_low || *w == 0 {
                    *w
                } else {
                    let share =
                        (100 - b.load().unwrap_or(0).min(100) as u64).max(self.floor as u64);
                    (*w * share / 100).max(1)
                }
            })
            .collect()
    }
}

impl SelectServer for AgentLoad {
    fn select(&mut self, _req: &Request, backends: &Backends) -> Option<usize> {
        let weights = self.weights(backends);
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        if total == 0 {
            return None;
        }
        self.current.resize(weights.len(), 0);
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            self.current[i] += w as i64;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

impl HealthCheck for AgentLoad {
    fn check(&mut self, backend: Backend, target: &str) -> Health {
        let i = backend.index;
        if self.failures.len() <= i {
            self.failures.resize(i + 1, 0);
        }
        let address = self.agent_address(target);
        let Some(r) = self.poll(&address) else {
            self.failures[i] += 1;
            if self.failures[i] == self.stale_after {
                log::warn(&format!(
                    "agent {address} unreachable or garbled {} times: back to the static weight",
                    self.stale_after
                ));
                agent::set_load(None);
                agent::set_weight_percent(100);
                agent::set_maxconn(0);
                agent::set_admin(agent::Admin::Ready);
                agent::set_up(true);
            } else if self.failures[i] == 1 {
                log::warn(&format!(
                    "agent {address} unreachable or garbled: keeping its last report"
                ));
            }
            return Health::Up { load: None };
        };
        self.failures[i] = 0;
        if let Some(l) = r.load {
            agent::set_load(Some(l));
        }
        let pct = r
            .weight_percent
            .or_else(|| r.weight_abs.map(|n| n * 100 / backend.weight().max(1)));
        if let Some(p) = pct {
            agent::set_weight_percent(p);
        }
        if let Some(m) = r.maxconn {
            agent::set_maxconn(m);
        }
        if let Some(a) = r.admin {
            agent::set_admin(a);
        }
        if let Some(up) = r.up {
            agent::set_up(up);
            if !up {
                log::info(&format!(
                    "agent {address} reports down{}",
                    r.description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ));
            }
        }
        match r.up {
            Some(false) => Health::Down,
            _ => Health::Up { load: r.load },
        }
    }
}

export_plugin!(AgentLoad => select_server, health_check);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::{Mock, MockBackend};

    #[test]
    fn kemp_lines() {
        assert_eq!(parse_kemp(b"42\n").unwrap().load, Some(42));
        assert_eq!(parse_kemp(b"101").unwrap().up, Some(false));
        assert_eq!(
            parse_kemp(b"102\r\n").unwrap().admin,
            Some(agent::Admin::Drain)
        );
        assert_eq!(parse_kemp(b"103"), None);
        assert_eq!(parse_kemp(b"busy"), None);
        assert_eq!(parse_kemp(b""), None);
    }

    /// Found by the `agent_reply` fuzz target (fuzz/corpus/agent_reply/crash-7fa2e067...):
    /// `75151%` was passed on as is, and the host refused it, losing the report.
    #[test]
    fn weight_percent_is_capped_at_what_the_host_accepts() {
        for line in ["75151%", "weight:4000000000%"] {
            assert_eq!(
                parse_haproxy(line.as_bytes()).unwrap().weight_percent,
                Some(agent::MAX_WEIGHT_PERCENT),
                "{line}"
            );
        }
    }

    #[test]
    fn haproxy_grammar() {
        let r = parse_haproxy(b"up 75%\n").unwrap();
        assert_eq!((r.up, r.weight_percent), (Some(true), Some(75)));
        assert_eq!(
            parse_haproxy(b"drain").unwrap().admin,
            Some(agent::Admin::Drain)
        );
        let r = parse_haproxy(b"down#disk full\r\n").unwrap();
        assert_eq!(
            (r.up, r.description.as_deref()),
            (Some(false), Some("disk full"))
        );
        let r = parse_haproxy(b"maxconn:30,weight:50%").unwrap();
        assert_eq!((r.maxconn, r.weight_percent), (Some(30), Some(50)));
        let r = parse_haproxy(b"WEIGHT:20\tMAINT").unwrap();
        assert_eq!(
            (r.weight_abs, r.admin),
            (Some(20), Some(agent::Admin::Maint))
        );
        assert_eq!(
            parse_haproxy(b"ready up 10% 20%").unwrap().weight_percent,
            Some(20),
            "last wins"
        );
        assert_eq!(parse_haproxy(b"fail").unwrap().up, Some(false));
        assert_eq!(parse_haproxy(b"stopped #bye").unwrap().up, Some(false));
        assert_eq!(parse_haproxy(b"hello there"), None);
        assert_eq!(parse_haproxy(b"\xff\xfe"), None);
    }

    fn pool(loads: &[Option<u8>]) -> Mock {
        Mock {
            backends: loads
                .iter()
                .enumerate()
                .map(|(i, l)| MockBackend {
                    load: *l,
                    ..MockBackend::new(&format!("10.0.0.{}:80", i + 1))
                })
                .collect(),
            ..Mock::default()
        }
    }

    #[test]
    fn spreads_by_inverse_load_with_a_floor_and_min_control() {
        let mut p = AgentLoad::new(&Config::from_json("{}")).unwrap();
        let mut m = pool(&[Some(10), Some(50), Some(90)]);
        let mut n = [0; 3];
        for _ in 0..150 {
            n[m.run(|r, b| p.select(r, b)).unwrap()] += 1;
        }
        assert_eq!(n, [90, 50, 10]);
        let mut m = pool(&[Some(100), Some(0)]);
        assert_eq!(
            m.run(|_, b| p.weights(b)),
            vec![50, 1000],
            "the floor keeps 5 %"
        );
        let mut m = pool(&[Some(1), Some(4)]);
        assert_eq!(
            m.run(|_, b| p.weights(b)),
            vec![1000, 1000],
            "all below min_control: static"
        );
    }

    #[test]
    fn unreachable_agent_keeps_then_resets_and_never_downs() {
        let mut p = AgentLoad::new(&Config::from_json(r#"{"stale_after": 2}"#)).unwrap();
        let mut m = pool(&[None]);
        m.net_answers = vec![Some((200, b"40".to_vec())), None, None];
        let b = Backend { index: 0 };
        assert!(matches!(
            m.run(|_, _| p.check(b, "10.0.0.1:443")),
            Health::Up { load: Some(40) }
        ));
        assert_eq!(m.load_out, Some(40));
        assert!(matches!(
            m.run(|_, _| p.check(b, "10.0.0.1:443")),
            Health::Up { .. }
        ));
        assert!(
            m.agent_out.iter().all(|(prop, _)| *prop != 0),
            "first failure keeps the last report"
        );
        m.agent_out.clear();
        assert!(matches!(
            m.run(|_, _| p.check(b, "10.0.0.1:443")),
            Health::Up { .. }
        ));
        assert_eq!(m.load_out, Some(-1), "load forgotten");
        assert!(
            m.agent_out.contains(&(0, 100)) && m.agent_out.contains(&(3, 1)),
            "static weight, up"
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(AgentLoad::new(&Config::from_json(r#"{"protocol": "snmp"}"#)).is_err());
        assert!(AgentLoad::new(&Config::from_json(r#"{"prot": "kemp"}"#)).is_err());
        assert!(AgentLoad::new(&Config::from_json(r#"{"port": 70000}"#)).is_err());
        assert!(AgentLoad::new(&Config::from_json(
            r#"{"protocol": "haproxy", "port": 5555, "interval": "2s"}"#
        ))
        .is_ok());
    }
}
