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
        "tcp" => Some(HealthKind::Tcp {
            send: h.send.as_ref().map(|v| v.get_ref().clone()),
            expect: tcp_expect(r, h),
        }),
        "icmp" => Some(HealthKind::Icmp),
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
            let expect_status = match &h.expect_status {
                None => StatusMatch::single(200),
                Some(v) => statuses(r, v).unwrap_or(StatusMatch::single(200)),
            };
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
                    format!("health_check.kind: unknown kind {other:?}; expected \"tcp\", \"http\", \"icmp\" or \"plugin:<name>\""),
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
    if !matches!(kind, Some(HealthKind::Tcp { .. })) {
        for (v, n) in [
            (&h.send, "send"),
            (&h.expect, "expect"),
            (&h.expect_regex, "expect_regex"),
        ] {
            if let Some(v) = v {
                r.err(
                    v.span(),
                    format!("health_check.{n} only applies to kind = \"tcp\""),
                );
            }
        }
    }
    if let (Some(v), Some(HealthKind::Icmp)) = (&h.port, &kind) {
        r.err(
            v.span(),
            "health_check.port does not apply to kind = \"icmp\" (an echo request goes to the host)",
        );
    }
    if let Some(v) = h.send_proxy.as_ref().filter(|v| *v.get_ref()) {
        if !send_proxy {
            r.err(
                v.span(),
                "health_check.send_proxy = true needs send_proxy on the service (its version is sent)",
            );
        } else if matches!(kind, Some(HealthKind::Plugin(_) | HealthKind::Icmp)) {
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

/// Longest `send` and `expect` strings, and the compiled size allowed to an `expect_regex`.
const MAX_SEND: usize = 4096;
const MAX_EXPECT: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `expect` (a prefix of the first line) or `expect_regex` (a regular expression on it).
fn tcp_expect(r: &mut Reporter, h: &raw::Health) -> Option<TcpExpect> {
    if let Some(v) = &h.send {
        if v.get_ref().is_empty() || v.get_ref().len() > MAX_SEND {
            r.err(
                v.span(),
                format!("health_check.send: must be 1 to {MAX_SEND} bytes"),
            );
        }
    }
    match (&h.expect, &h.expect_regex) {
        (Some(_), Some(re)) => {
            r.err(
                re.span(),
                "health_check: give expect (a prefix) or expect_regex, not both",
            );
            None
        }
        (Some(p), None) => {
            if p.get_ref().is_empty() || p.get_ref().len() > MAX_EXPECT {
                r.err(
                    p.span(),
                    format!("health_check.expect: must be 1 to {MAX_EXPECT} bytes"),
                );
                return None;
            }
            Some(TcpExpect::Prefix(p.get_ref().clone()))
        }
        (None, Some(re)) => {
            match regex::bytes::RegexBuilder::new(re.get_ref())
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(x) => Some(TcpExpect::Regex(x)),
                Err(e) => {
                    // The crate's message spans several lines (pattern, caret, reason): the
                    // reason is the last.
                    let text = e.to_string();
                    let last = text.lines().last().unwrap_or_default();
                    let msg = last.strip_prefix("error: ").unwrap_or(last).to_string();
                    r.err(
                        re.span(),
                        format!("health_check.expect_regex: not a valid regular expression: {msg}"),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

/// `expect_status`: `200`, `"200-399"`, or a list of both (`[200, "300-399", 401]`).
fn statuses(r: &mut Reporter, v: &Spanned<toml::Value>) -> Option<StatusMatch> {
    let mut m = StatusMatch::none();
    let items: &[toml::Value] = match v.get_ref() {
        toml::Value::Array(a) if a.is_empty() => {
            r.err(
                v.span(),
                "health_check.expect_status: the list is empty; give at least one status",
            );
            return None;
        }
        toml::Value::Array(a) => a,
        one => std::slice::from_ref(one),
    };
    let mut ok = true;
    for item in items {
        match status_item(item) {
            Ok((l, h)) => m.add(l, h),
            Err(e) => {
                r.err(v.span(), format!("health_check.expect_status: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(m)
}

/// One status or `"LOW-HIGH"` range.
fn status_item(v: &toml::Value) -> Result<(u16, u16), String> {
    let status = |n: i64| -> Result<u16, String> {
        if (StatusMatch::LOWEST as i64..=StatusMatch::HIGHEST as i64).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("{n} is not an HTTP status (100-599)"))
        }
    };
    match v {
        toml::Value::Integer(n) => status(*n).map(|s| (s, s)),
        toml::Value::String(s) => {
            let number = |t: &str| -> Result<u16, String> {
                let t = t.trim();
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || t.len() > 3 {
                    return Err(format!("{s:?} is not a status or a range like \"200-399\""));
                }
                status(t.parse().expect("digits"))
            };
            match s.split_once('-') {
                None => number(s).map(|n| (n, n)),
                Some((l, h)) => {
                    let (l, h) = (number(l)?, number(h)?);
                    if l > h {
                        return Err(format!("range {s:?} runs backwards ({l} > {h})"));
                    }
                    Ok((l, h))
                }
            }
        }
        other => Err(format!(
            "{other} is neither a status (an integer) nor a range like \"200-399\""
        )),
    }
}
