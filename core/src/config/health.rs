//! A service's `health_check` table.

use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::report::Reporter;
use super::service::RawRef;
use super::types::*;
use super::units::{plugin_name, valid_plugin_name};

/// Shortest check interval: shorter ones would turn checks into load.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

pub(super) fn validate(
    r: &mut Reporter,
    h: &Spanned<raw::Health>,
    backend_tls: bool,
    send_proxy: bool,
    refs: &mut Vec<RawRef>,
) -> Option<HealthConfig> {
    let hs = h.span();
    let h = h.get_ref();
    let k = h.kind.get_ref().as_str();
    let kind = match k {
        "tcp" => Some(HealthKind::Tcp),
        "http" => {
            let path = h
                .path
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                r.err(
                    h.path.as_ref().map(|p| p.span()).unwrap_or(hs.clone()),
                    format!("health_check.path: {path:?} must start with '/' and contain no spaces or control characters"),
                );
            }
            if let Some(host) = &h.host {
                if host.get_ref().is_empty()
                    || host.get_ref().bytes().any(|b| b <= b' ' || b == 0x7f)
                {
                    r.err(
                        host.span(),
                        "health_check.host: must be a non-empty host name without spaces",
                    );
                }
            }
            let expect_status = r
                .int_in(&h.expect_status, "health_check.expect_status", 100, 599)
                .unwrap_or(200) as u16;
            let host = h.host.as_ref().map(|v| v.get_ref().clone());
            let tls = match &h.tls {
                Some(t) if *t.get_ref() && !backend_tls => {
                    r.err(
                        t.span(),
                        "health_check.tls = true needs backend_tls (its verification settings apply to the check)",
                    );
                    false
                }
                Some(t) => *t.get_ref(),
                None => backend_tls,
            };
            Some(HealthKind::Http {
                path,
                expect_status,
                host,
                tls,
            })
        }
        other => match plugin_name(other).filter(|n| valid_plugin_name(n)) {
            Some(n) => {
                refs.push((n.to_string(), Hook::HealthCheck, h.kind.span()));
                Some(HealthKind::Plugin(n.to_string()))
            }
            None => {
                r.err(
                    h.kind.span(),
                    format!("health_check.kind: unknown kind {other:?}; expected \"tcp\", \"http\" or \"plugin:<name>\""),
                );
                None
            }
        },
    };
    if !matches!(kind, Some(HealthKind::Http { .. })) {
        for (v, n) in [(&h.path, "path"), (&h.host, "host")] {
            if let Some(v) = v {
                r.err(
                    v.span(),
                    format!("health_check.{n} only applies to kind = \"http\""),
                );
            }
        }
        if let Some(v) = &h.expect_status {
            r.err(
                v.span(),
                "health_check.expect_status only applies to kind = \"http\"",
            );
        }
        if let Some(v) = &h.tls {
            r.err(v.span(), "health_check.tls only applies to kind = \"http\"");
        }
    }
    if let Some(v) = h.send_proxy.as_ref().filter(|v| *v.get_ref()) {
        if !send_proxy {
            r.err(
                v.span(),
                "health_check.send_proxy = true needs send_proxy on the service (its version is sent)",
            );
        } else if matches!(kind, Some(HealthKind::Plugin(_))) {
            r.err(
                v.span(),
                "health_check.send_proxy only applies to kind = \"tcp\" or \"http\"",
            );
        }
    }
    let interval = r
        .positive_duration(&h.interval, "health_check.interval")
        .unwrap_or(Duration::from_secs(2));
    if let (Some(v), true) = (&h.interval, interval < MIN_INTERVAL) {
        r.err(v.span(), "health_check.interval must be at least 10ms");
    }
    let timeout = r
        .positive_duration(&h.timeout, "health_check.timeout")
        .unwrap_or(Duration::from_secs(1));
    let rise = r.int_in(&h.rise, "health_check.rise", 1, 1000).unwrap_or(2) as u32;
    let fall = r.int_in(&h.fall, "health_check.fall", 1, 1000).unwrap_or(3) as u32;
    let port = r
        .int_in(&h.port, "health_check.port", 1, 65535)
        .map(|p| p as u16);
    kind.map(|kind| HealthConfig {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
        send_proxy: h.send_proxy.as_ref().is_some_and(|v| *v.get_ref()),
    })
}
