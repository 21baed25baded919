//! The one-screen summary `check` prints, and its warnings.

use std::fmt::Write as _;

use crate::config::Config;

/// Prints the summary (written at once, so a closed pipe is no panic); warnings go to stderr.
pub fn summary(cfg: &Config) {
    for w in &cfg.warnings {
        eprintln!("{w}");
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: OK, {} service(s), {} worker thread(s){}",
        cfg.path.display(),
        cfg.services.len(),
        cfg.proxy.threads,
        match cfg.warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        }
    );
    if let Some(r) = &cfg.proxy.redis {
        let _ = writeln!(out, "  shared persistence through {}", r.shown());
    }
    for s in &cfg.services {
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            out,
            "  {} [{}] listen {} scheduler {}",
            s.name,
            s.mode.as_str(),
            listen.join(", "),
            s.scheduler
        );
        if let Some(p) = &s.persistence {
            let _ = writeln!(
                out,
                "    persistence {} timeout {}{}",
                p.keys_shown(),
                humantime::format_duration(p.timeout),
                if p.shared { " shared" } else { "" }
            );
        }
        if s.mode == crate::config::Mode::Udp {
            let _ = writeln!(
                out,
                "    flows end after {} idle, at most {} at once{}",
                humantime::format_duration(s.idle_timeout),
                crate::proxy::udp::max_flows(s.max_connections),
                match &s.follow {
                    Some(f) => format!(", following service {f}"),
                    None => String::new(),
                }
            );
        }
        if let Some(t) = &s.tls {
            let _ = writeln!(
                out,
                "    tls {} certificate(s), TLS {}+, alpn {}",
                t.certificates.len(),
                match t.min_version {
                    crate::config::TlsVersion::V12 => "1.2",
                    crate::config::TlsVersion::V13 => "1.3",
                },
                t.alpn.join(",")
            );
        }
        if let Some(m) = &s.route {
            let mut line = String::from("    match");
            if !m.hosts.is_empty() {
                let _ = write!(line, " hosts {}", m.hosts.join(","));
            }
            if !m.path_prefixes.is_empty() {
                let _ = write!(line, " paths {}", m.path_prefixes.join(","));
            }
            if m.ignore_case {
                line.push_str(" (any case)");
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(a) = &s.accept_proxy {
            let from: Vec<String> = a.trusted.iter().map(|n| n.to_string()).collect();
            let from = if from.is_empty() {
                "any peer".into()
            } else {
                from.join(",")
            };
            let _ = writeln!(out, "    accept proxy protocol from {from}");
        }
        if let Some(v) = s.send_proxy {
            let _ = writeln!(out, "    send proxy protocol {}", v.as_str());
        }
        match s.source {
            Some(crate::config::SourceAddress::Client) => {
                let _ = writeln!(out, "    backend connections from the client's address");
            }
            Some(crate::config::SourceAddress::Fixed(ip)) => {
                let _ = writeln!(out, "    backend connections from {ip}");
            }
            None => {}
        }
        if s.redirect_https {
            let _ = writeln!(out, "    redirect to https");
        }
        if let Some(b) = &s.backend_tls {
            let _ = writeln!(
                out,
                "    backend tls verify {}{}{}",
                if b.verify { "on" } else { "OFF" },
                b.ca.as_ref()
                    .map_or(" (system roots)".to_string(), |c| format!(
                        " ca {}",
                        c.display()
                    )),
                b.sni
                    .as_ref()
                    .map_or(String::new(), |n| format!(" sni {n}"))
            );
        }
        if let Some(h) = &s.health_check {
            let port = h.port.map_or(String::new(), |p| format!(" port {p}"));
            let _ = writeln!(
                out,
                "    health {}{port} every {} timeout {} rise {} fall {}{}",
                h.kind,
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                h.rise,
                h.fall,
                if h.send_proxy { " send-proxy" } else { "" }
            );
        }
        for b in &s.backends {
            let named = if b.name == b.address.to_string() {
                String::new()
            } else {
                format!("{} = ", b.name)
            };
            let _ = writeln!(
                out,
                "    backend {named}{} weight {}{}{}",
                b.address,
                b.weight,
                b.max_connections
                    .map_or(String::new(), |n| format!(" max_connections {n}")),
                if b.enabled { "" } else { " (disabled)" }
            );
        }
        if s.backends.iter().any(|b| b.max_connections.is_some()) {
            let _ = writeln!(
                out,
                "    queue up to {} for {}",
                s.queue_max,
                humantime::format_duration(s.queue_timeout)
            );
        }
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}
