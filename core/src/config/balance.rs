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
    let span = p.key.span();
    let written: Vec<&str> = match p.key.get_ref() {
        toml::Value::String(k) => vec![k.as_str()],
        toml::Value::Array(a) if a.is_empty() => {
            r.err(
                span,
                "persistence.key: the list is empty; give one or more key kinds",
            );
            return None;
        }
        toml::Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for v in a {
                match v.as_str() {
                    Some(k) => out.push(k),
                    None => {
                        r.err(
                            span.clone(),
                            format!("persistence.key: {v} is not a key kind (a string)"),
                        );
                        return None;
                    }
                }
            }
            out
        }
        other => {
            r.err(
                span,
                format!("persistence.key: expected a key kind or a list of them, not {other}"),
            );
            return None;
        }
    };
    let mut keys = Vec::with_capacity(written.len());
    let mut bad = false;
    for k in written.iter().copied() {
        match key_kind(r, k, span.clone(), mode, refs) {
            Some(kind) if keys.contains(&kind) => {
                r.err(
                    span.clone(),
                    format!("persistence.key: {kind} is in the list twice"),
                );
                bad = true;
            }
            Some(kind) => keys.push(kind),
            None => bad = true,
        }
    }
    if !bad {
        chain_rules(r, &keys, span.clone());
    }
    let key = (!bad).then_some(keys);
    // Cookie ids (ours, and those of http key plugins such as mcx-affinity, which ask the host
    // for them) are a MAC under the secret: with the public default anyone can compute them.
    let names_backends_in_cookies = key.iter().flatten().any(|k| match k {
        PersistenceKeyKind::Cookie(_) => true,
        PersistenceKeyKind::Plugin(_) => mode == Mode::Http,
        _ => false,
    });
    if names_backends_in_cookies && !ctx.has_secret {
        r.warn(
            span,
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
        } else if key
            .as_ref()
            .is_some_and(|k| k.iter().all(|k| matches!(k, PersistenceKeyKind::Cookie(_))))
        {
            r.err(
                v.span(),
                "persistence.shared: cookie persistence keeps no table to share: the cookie \
                 names the backend on every instance already",
            );
        }
    }
    key.map(|keys| PersistenceConfig {
        keys,
        timeout,
        max_entries,
        shared,
    })
}

/// One key kind as written (`source_ip`, `cookie:NAME`, `header:NAME`, `plugin:name`).
fn key_kind(
    r: &mut Reporter,
    k: &str,
    span: std::ops::Range<usize>,
    mode: Mode,
    refs: &mut Vec<RawRef>,
) -> Option<PersistenceKeyKind> {
    if k == "source_ip" {
        Some(PersistenceKeyKind::SourceIp)
    } else if let Some(n) = k.strip_prefix("cookie:") {
        if !valid_token(n) {
            r.err(span, format!("persistence.key: invalid cookie name {n:?}"));
            None
        } else if mode != Mode::Http {
            r.err(
                span,
                "persistence.key: cookie persistence needs mode = \"http\"",
            );
            None
        } else {
            Some(PersistenceKeyKind::Cookie(n.to_string()))
        }
    } else if let Some(n) = k.strip_prefix("header:") {
        if !valid_token(n) {
            r.err(span, format!("persistence.key: invalid header name {n:?}"));
            None
        } else if mode != Mode::Http {
            r.err(
                span,
                "persistence.key: header persistence needs mode = \"http\"",
            );
            None
        } else {
            Some(PersistenceKeyKind::Header(n.to_ascii_lowercase()))
        }
    } else if let Some(n) = plugin_name(k).filter(|n| valid_plugin_name(n)) {
        refs.push((n.to_string(), Hook::PersistenceKey, span));
        Some(PersistenceKeyKind::Plugin(n.to_string()))
    } else {
        r.err(
            span,
            format!(
                "persistence.key: unknown key {k:?}; expected \"source_ip\", \"cookie:<NAME>\", \
                 \"header:<NAME>\" or \"plugin:<name>\""
            ),
        );
        None
    }
}

/// What a chain of several key kinds may not be: a kind after `source_ip` is never reached
/// (every client has an address); a cookie names its backend for every request after the
/// first response, so it must come first (after another kind, the cookie would be set anew on
/// every response that kind decided), and only one cookie can be set.
fn chain_rules(r: &mut Reporter, keys: &[PersistenceKeyKind], span: std::ops::Range<usize>) {
    if keys.len() < 2 {
        return;
    }
    if let Some(i) = keys.iter().position(|k| *k == PersistenceKeyKind::SourceIp) {
        if i + 1 < keys.len() {
            r.err(
                span.clone(),
                format!(
                    "persistence.key: {} would never be used: source_ip always yields a key, so \
                     it can only be the last kind",
                    keys[i + 1]
                ),
            );
        }
    }
    for (i, k) in keys.iter().enumerate() {
        if matches!(k, PersistenceKeyKind::Cookie(_)) && i > 0 {
            r.err(
                span.clone(),
                format!(
                    "persistence.key: {k} must be the first kind of the list (a cookie names \
                     its backend for every later request; after {} it would be set anew on \
                     each response that kind decided)",
                    keys[0]
                ),
            );
        }
    }
}
