//! One `[[service]]` table: listen addresses, mode, timeouts, limits and plugin settings; the
//! balancing, health and backend sub-tables are validated by their own modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;

use super::raw;
use super::report::Reporter;
use super::types::*;
use super::units::parse_addr;

/// A plugin reference found while validating a service: name, hook and its span.
pub(super) type RawRef = (String, Hook, Range<usize>);

/// What validation of one service needs from the rest of the file.
pub(super) struct Context<'a> {
    /// `[proxy] secret_file` was given.
    pub has_secret: bool,
    /// `[proxy] redis` is set (shared persistence is possible).
    pub has_redis: bool,
    /// The configuration file's directory: relative paths start there.
    pub base: &'a std::path::Path,
}

pub(super) fn validate(
    r: &mut Reporter,
    s: &raw::Service,
    span: Range<usize>,
    ctx: &Context,
    refs: &mut Vec<RawRef>,
    certs: &mut Vec<crate::tls::certs::Loaded>,
) -> Option<ServiceConfig> {
    let before = r.errors.len();
    let name = s.name.get_ref().clone();
    if name.is_empty() {
        r.err(s.name.span(), "service name must not be empty");
    }
    let listen = listen(r, &s.listen);
    let mode = match s.mode.as_ref() {
        None => Mode::Http,
        Some(m) => match m.get_ref().as_str() {
            "http" => Mode::Http,
            "tcp" => Mode::Tcp,
            "udp" => Mode::Udp,
            other => {
                r.err(
                    m.span(),
                    format!("mode: unknown mode {other:?}; expected \"http\", \"tcp\" or \"udp\""),
                );
                Mode::Http
            }
        },
    };
    let scheduler = super::balance::scheduler(r, s, refs);
    let fallback_scheduler = super::balance::fallback(r, s);
    let persistence = super::balance::persistence(r, s, mode, ctx, refs);
    let backend_tls = super::tls::backend(r, s, ctx.base);
    let (accept_proxy, send_proxy) = proxy_protocol(r, s);
    let health_check = s.health_check.as_ref().and_then(|h| {
        super::health::validate(r, h, backend_tls.is_some(), send_proxy.is_some(), refs)
    });
    let redirect_https = super::tls::redirect(r, s, mode);
    let backends = super::backend::validate(r, s, span, &name, mode, redirect_https);
    if let (
        Some(HealthConfig {
            kind: HealthKind::Icmp,
            ..
        }),
        Some(h),
    ) = (&health_check, &s.health_check)
    {
        // Told now (at `check` and start-up), not as every backend going down.
        for v6 in [false, true] {
            if backends.iter().any(|b| b.address.is_ipv6() == v6) {
                if let Err(e) = crate::health::icmp::probe(v6) {
                    r.err(
                        h.get_ref().kind.span(),
                        format!("health_check.kind = \"icmp\": {e}"),
                    );
                }
            }
        }
    }
    let (tls, loaded) = super::tls::termination(r, s, mode, ctx.base);
    certs.extend(loaded);
    let route = super::tls::route(r, s);

    let slow_start = r
        .duration(&s.slow_start, "slow_start")
        .filter(|d| !d.is_zero());
    let connect_timeout = r
        .positive_duration(&s.connect_timeout, "connect_timeout")
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let idle_timeout = r
        .positive_duration(&s.idle_timeout, "idle_timeout")
        .unwrap_or(match mode {
            Mode::Udp => DEFAULT_UDP_IDLE_TIMEOUT,
            _ => DEFAULT_IDLE_TIMEOUT,
        });
    let header_timeout = r
        .positive_duration(&s.header_timeout, "header_timeout")
        .unwrap_or(DEFAULT_HEADER_TIMEOUT);
    if let (Some(v), Mode::Tcp | Mode::Udp) = (&s.header_timeout, mode) {
        r.err(v.span(), "header_timeout only applies to mode = \"http\"");
    }
    if mode == Mode::Udp {
        udp_refusals(r, s);
    }
    let source = s
        .source
        .as_ref()
        .and_then(|v| super::source::validate(r, v, mode, &backends));
    let follow = s.follow.as_ref().map(|f| f.get_ref().clone());
    if let (Some(f), false) = (&s.follow, mode == Mode::Udp) {
        r.err(f.span(), "follow only applies to mode = \"udp\"");
    }
    let inspect_timeout = r
        .duration(&s.inspect_timeout, "inspect_timeout")
        .unwrap_or(DEFAULT_INSPECT_TIMEOUT);
    let max_connections = r
        .int_in(
            &s.max_connections,
            "max_connections",
            1,
            MAX_CONNECTIONS as i64,
        )
        .map(|n| n as usize);
    let retries = r.int_in(&s.retries, "retries", 0, 10).unwrap_or(1) as u32;
    let queue_timeout = r
        .duration(&s.queue_timeout, "queue_timeout")
        .unwrap_or(DEFAULT_QUEUE_TIMEOUT);
    let queue_max = r
        .int_in(&s.queue_max, "queue_max", 1, MAX_QUEUE as i64)
        .map_or(DEFAULT_QUEUE_MAX, |n| n as usize);
    let on_plugin_error = match s.on_plugin_error.as_ref() {
        None => PluginErrorPolicy::Fallback,
        Some(v) => match v.get_ref().as_str() {
            "fallback" => PluginErrorPolicy::Fallback,
            "reject" => PluginErrorPolicy::Reject,
            other => {
                r.err(v.span(), format!("on_plugin_error: unknown policy {other:?}; expected \"fallback\" or \"reject\""));
                PluginErrorPolicy::Fallback
            }
        },
    };
    let plugin_settings = plugin_settings(r, s, refs);

    if r.errors.len() > before {
        return None;
    }
    Some(ServiceConfig {
        name,
        listen,
        mode,
        scheduler,
        persistence,
        health_check,
        slow_start,
        connect_timeout,
        idle_timeout,
        header_timeout,
        inspect_timeout,
        max_connections,
        retries,
        queue_timeout,
        queue_max,
        on_plugin_error,
        fallback_scheduler,
        plugin_settings,
        backends,
        tls,
        route,
        redirect_https,
        backend_tls,
        access_log: s.access_log.as_ref().is_none_or(|v| *v.get_ref()),
        accept_proxy,
        send_proxy,
        follow,
        source,
    })
}

/// Keys of tcp or http mode that mean nothing for datagrams, refused at their lines.
fn udp_refusals(r: &mut Reporter, s: &raw::Service) {
    let mut refuse = |span: Option<Range<usize>>, what: &str, why: &str| {
        if let Some(span) = span {
            r.err(
                span,
                format!("{what} does not apply to mode = \"udp\"{why}"),
            );
        }
    };
    refuse(
        s.connect_timeout.as_ref().map(|v| v.span()),
        "connect_timeout",
        " (nothing is connected: a flow's first datagram is sent at once)",
    );
    refuse(
        s.inspect_timeout.as_ref().map(|v| v.span()),
        "inspect_timeout",
        " (a persistence plugin reads the flow's first datagram)",
    );
    refuse(
        s.retries.as_ref().map(|v| v.span()),
        "retries",
        " (a datagram cannot tell that its backend failed)",
    );
    refuse(
        s.accept_proxy.as_ref().map(|v| v.span()),
        "accept_proxy",
        "",
    );
    refuse(
        s.trusted_proxies.as_ref().map(|v| v.span()),
        "trusted_proxies",
        "",
    );
    refuse(s.send_proxy.as_ref().map(|v| v.span()), "send_proxy", "");
    refuse(s.backend_tls.as_ref().map(|v| v.span()), "backend_tls", "");
    refuse(s.tls.as_ref().map(|v| v.span()), "tls", "");
    refuse(
        s.certificate.first().map(|v| v.span()),
        "[[service.certificate]]",
        " (no TLS over datagrams)",
    );
    refuse(s.route.as_ref().map(|v| v.span()), "match", "");
    let no_queue = " (a datagram does not wait for a backend)";
    refuse(
        s.queue_timeout.as_ref().map(|v| v.span()),
        "queue_timeout",
        no_queue,
    );
    refuse(
        s.queue_max.as_ref().map(|v| v.span()),
        "queue_max",
        no_queue,
    );
}

/// `accept_proxy`, `trusted_proxies` (addresses or CIDR blocks) and `send_proxy`.
fn proxy_protocol(
    r: &mut Reporter,
    s: &raw::Service,
) -> (Option<AcceptProxy>, Option<ProxyVersion>) {
    let accept = s.accept_proxy.as_ref().is_some_and(|v| *v.get_ref());
    let mut trusted = Vec::new();
    if let Some(list) = &s.trusted_proxies {
        if !accept {
            r.err(list.span(), "trusted_proxies needs accept_proxy = true");
        } else if list.get_ref().is_empty() {
            r.err(
                list.span(),
                "trusted_proxies: empty list; leave it out to accept a PROXY header from any peer",
            );
        }
        for v in list.get_ref() {
            let text = v.get_ref().trim();
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => trusted.push(n.trunc()),
                Err(_) => r.err(
                    v.span(),
                    format!("trusted_proxies: {text:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\", \"127.0.0.1\")"),
                ),
            }
        }
    }
    let send = s
        .send_proxy
        .as_ref()
        .and_then(|v| match v.get_ref().as_str() {
            "v1" => Some(ProxyVersion::V1),
            "v2" => Some(ProxyVersion::V2),
            other => {
                r.err(
                    v.span(),
                    format!("send_proxy: unknown version {other:?}; expected \"v1\" or \"v2\""),
                );
                None
            }
        });
    (accept.then_some(AcceptProxy { trusted }), send)
}

fn listen(r: &mut Reporter, v: &toml::Spanned<toml::Value>) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    let mut push = |r: &mut Reporter, item: &toml::Value| match item {
        toml::Value::String(a) => match parse_addr(a) {
            Ok(addr) if listen.contains(&addr) => {
                r.err(v.span(), format!("listen: address {addr} listed twice"))
            }
            Ok(addr) => listen.push(addr),
            Err(e) => r.err(v.span(), format!("listen: {e}")),
        },
        other => r.err(
            v.span(),
            format!(
                "listen: expected an address string, found {}",
                other.type_str()
            ),
        ),
    };
    match v.get_ref() {
        toml::Value::Array(items) => {
            if items.is_empty() {
                r.err(v.span(), "listen: empty list");
            }
            for item in items {
                push(r, item);
            }
        }
        item => push(r, item),
    }
    listen
}

/// `[service.plugin.<name>]` tables as JSON; a table for a plugin the service does not use is
/// an error (a typo would otherwise be silently ignored).
fn plugin_settings(
    r: &mut Reporter,
    s: &raw::Service,
    refs: &[RawRef],
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for (name, table) in &s.plugin {
        if !refs.iter().any(|(n, _, _)| n == name) {
            // Point at the table's header line.
            let start = table.span().start;
            let header = if r.src[start..].starts_with('[') {
                start
            } else {
                r.src[..start].rfind("[service.plugin").unwrap_or(start)
            };
            r.err(
                header..header,
                format!("[service.plugin.{name}]: this service uses no plugin {name:?}"),
            );
        }
        let json = serde_json::to_value(table.get_ref()).unwrap_or(serde_json::Value::Null);
        out.insert(name.clone(), json);
    }
    out
}
