//! The conformance plugin: exactly what `tests/plugins/conformance.lua` does, in Rust. The
//! conformance tests run both through the proxy and expect the same traffic.
//!
//! - select-server: the first available backend.
//! - persistence-key: `X-Backend: <name>` names a backend; `X-User: <u>` is the key `user:<u>`.
//! - response step: `X-Served`, `X-Named` (backend names, `-` for none) and `X-Path`.
//! - health-check (run as the scheduler's agent feed): reads one line from the agent at the
//!   backend's host on `agent_port`: `drain`, `maint`, `ready` (ready and up), `down`.

use plugboard_sdk::{
    agent, export_plugin, net, Backend, Backends, Config, Health, HealthCheck, Key, PersistenceKey,
    Plugin, Request, Response, SelectServer,
};

pub struct Conformance {
    agent_port: i64,
}

impl Plugin for Conformance {
    fn new(config: &Config) -> Result<Self, String> {
        Ok(Conformance {
            agent_port: config.int("agent_port").unwrap_or(0),
        })
    }
}

impl SelectServer for Conformance {
    fn select(&mut self, _req: &Request, backends: &Backends) -> Option<usize> {
        backends.available().next().map(|b| b.index)
    }
}

impl PersistenceKey for Conformance {
    const RESPONSE_STEP: bool = true;

    fn key(&mut self, req: &Request, backends: &Backends) -> Key {
        if let Some(name) = req.header("x-backend") {
            return backends
                .find_name(&name)
                .map_or(Key::None, |b| Key::Backend(b.index));
        }
        match req.header("x-user") {
            Some(u) => Key::Key(format!("user:{u}").into_bytes()),
            None => Key::None,
        }
    }

    fn on_response(
        &mut self,
        req: &Request,
        backends: &Backends,
        named: Option<usize>,
        served: usize,
        resp: &mut Response,
    ) {
        let name = |i: Option<usize>| {
            i.and_then(|i| backends.get(i))
                .map_or("-".to_string(), |b| b.name())
        };
        resp.add_header("x-served", &name(Some(served)));
        resp.add_header("x-named", &name(named));
        resp.add_header("x-path", &req.path().unwrap_or_default());
    }
}

impl HealthCheck for Conformance {
    fn check(&mut self, _backend: Backend, target: &str) -> Health {
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
        let addr = format!("{host}:{}", self.agent_port);
        if let Some(line) = net::tcp_exchange(&addr, b"", 0, 500) {
            let word = String::from_utf8_lossy(&line);
            match word.split_whitespace().next() {
                Some("drain") => {
                    agent::set_admin(agent::Admin::Drain);
                }
                Some("maint") => {
                    agent::set_admin(agent::Admin::Maint);
                }
                Some("ready") => {
                    agent::set_admin(agent::Admin::Ready);
                    agent::set_up(true);
                }
                Some("down") => {
                    agent::set_up(false);
                }
                _ => {}
            }
        }
        Health::Up { load: None }
    }
}

export_plugin!(Conformance => select_server, persistence_key, health_check);
