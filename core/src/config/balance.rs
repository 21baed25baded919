//! A service's balancing settings: `scheduler`, `fallback_scheduler` and `persistence`.

use super::raw;
use super::report::Reporter;
use super::service::{Context, RawRef};
use super::types::*;
use super::units::{plugin_name, valid_plugin_name, valid_token};

pub(super) fn scheduler(
    r: &mut Reporter,
    s: &raw::Service,
    refs: &mut Vec<RawRef>,
) -> SchedulerKind {
    let Some(v) = s.scheduler.as_ref() else {
        return SchedulerKind::RoundRobin;
    };
    if let Some(k) = SchedulerKind::builtin(v.get_ref()) {
        return k;
    }
    match plugin_name(v.get_ref()) {
        Some(p) if valid_plugin_name(p) => {
            refs.push((p.to_string(), Hook::SelectServer, v.span()));
            SchedulerKind::Plugin(p.to_string())
        }
        _ => {
            r.err(
                v.span(),
                format!(
                    "scheduler: unknown scheduler {:?}; expected round_robin, \
                     least_connections, random_two, source_hash or \"plugin:<name>\"",
                    v.get_ref()
                ),
            );
            SchedulerKind::RoundRobin
        }
    }
}

pub(super) fn fallback(r: &mut Reporter, s: &raw::Service) -> SchedulerKind {
    let Some(v) = s.fallback_scheduler.as_ref() else {
        return SchedulerKind::RoundRobin;
    };
    SchedulerKind::builtin(v.get_ref()).unwrap_or_else(|| {
        r.err(
            v.span(),
            format!(
                "fallback_scheduler: {:?} is not a built-in scheduler",
                v.get_ref()
            ),
        );
        SchedulerKind::RoundRobin
    })
}

pub(super) fn persistence(
    r: &mut Reporter,
    s: &raw::Service,
    mode: Mode,
    ctx: &Context,
    refs: &mut Vec<RawRef>,
) -> Option<PersistenceConfig> {
    let p = s.persistence.as_ref()?.get_ref();
    let k = p.key.get_ref().as_str();
    let key = if k == "source_ip" {
        Some(PersistenceKeyKind::SourceIp)
    } else if let Some(n) = k.strip_prefix("cookie:") {
        if !valid_token(n) {
            r.err(
                p.key.span(),
                format!("persistence.key: invalid cookie name {n:?}"),
            );
            None
        } else if mode == Mode::Tcp {
            r.err(
                p.key.span(),
                "persistence.key: cookie persistence needs mode = \"http\"",
            );
            None
        } else {
            Some(PersistenceKeyKind::Cookie(n.to_string()))
        }
    } else if let Some(n) = k.strip_prefix("header:") {
        if !valid_token(n) {
            r.err(
                p.key.span(),
                format!("persistence.key: invalid header name {n:?}"),
            );
            None
        } else if mode == Mode::Tcp {
            r.err(
                p.key.span(),
                "persistence.key: header persistence needs mode = \"http\"",
            );
            None
        } else {
            Some(PersistenceKeyKind::Header(n.to_ascii_lowercase()))
        }
    } else if let Some(n) = plugin_name(k).filter(|n| valid_plugin_name(n)) {
        refs.push((n.to_string(), Hook::PersistenceKey, p.key.span()));
        Some(PersistenceKeyKind::Plugin(n.to_string()))
    } else {
        r.err(
            p.key.span(),
            format!(
                "persistence.key: unknown key {k:?}; expected \"source_ip\", \"cookie:<NAME>\", \
                 \"header:<NAME>\" or \"plugin:<name>\""
            ),
        );
        None
    };
    // Cookie ids (ours, and those of http key plugins such as mcx-affinity, which ask the host
    // for them) are a MAC under the secret: with the public default anyone can compute them.
    let names_backends_in_cookies = matches!(key, Some(PersistenceKeyKind::Cookie(_)))
        || (matches!(key, Some(PersistenceKeyKind::Plugin(_))) && mode == Mode::Http);
    if names_backends_in_cookies && !ctx.has_secret {
        r.warn(
            p.key.span(),
            "persistence.key: cookie ids are made with the public default secret, so anyone who \
             knows a backend's name can compute its cookie; set [proxy] secret_file",
        );
    }
    let timeout = r
        .positive_duration(&p.timeout, "persistence.timeout")
        .unwrap_or(DEFAULT_PERSISTENCE_TIMEOUT);
    let max_entries = r
        .int_in(&p.max_entries, "persistence.max_entries", 1, 1 << 40)
        .map(|n| n as u64)
        .unwrap_or(DEFAULT_PERSISTENCE_MAX_ENTRIES);
    let shared = p.shared.as_ref().is_some_and(|v| *v.get_ref());
    if let (Some(v), true) = (&p.shared, shared) {
        if !ctx.has_redis {
            r.err(
                v.span(),
                "persistence.shared: needs [proxy] redis (where the pins are shared)",
            );
        } else if matches!(key, Some(PersistenceKeyKind::Cookie(_))) {
            r.err(
                v.span(),
                "persistence.shared: cookie persistence keeps no table to share: the cookie \
                 names the backend on every instance already",
            );
        }
    }
    key.map(|key| PersistenceConfig {
        key,
        timeout,
        max_entries,
        shared,
    })
}
