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
                "    persistence {} timeout {}",
                p.key,
                humantime::format_duration(p.timeout)
            );
        }
        if let Some(h) = &s.health_check {
            let _ = writeln!(
                out,
                "    health {:?} every {} timeout {} rise {} fall {}",
                h.kind,
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                h.rise,
                h.fall
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
                "    backend {named}{} weight {}{}",
                b.address,
                b.weight,
                if b.enabled { "" } else { " (disabled)" }
            );
        }
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}
