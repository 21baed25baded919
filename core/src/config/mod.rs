//! The TOML configuration: parsing, validation and the typed result.
//!
//! Parsing happens in two steps. `serde` + `toml` read the file into [`raw`] structs that keep
//! the byte span of every value, so that both syntax errors and the semantic checks done
//! afterwards are reported as `FILE:LINE:COL: message`, all of them at once. Validation then
//! turns the raw form into [`Config`] ([`types`]), one module per table: [`proxy`], [`service`]
//! (with [`balance`], [`health`] and [`backend`] for its sub-tables). [`units`] bounds every
//! duration, size and number so that nothing downstream can overflow.

mod admin;
mod backend;
mod balance;
mod health;
mod listen;
mod proxy;
mod raw;
mod report;
mod service;
mod source;
mod tls;
mod types;
mod units;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

pub use report::{line_col, ConfigError, ConfigErrors};
pub use types::*;
pub use units::{valid_backend_name, MAX_DURATION, MAX_NAME};

use report::Reporter;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::whole_file(
                path,
                format!("cannot read: {e}"),
            )])
        })?;
        Self::parse(path, &src)
    }

    /// Validates `src` as if read from `path` (relative paths in it resolve against `path`).
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let mut r = Reporter::new(path, src);
        let file: raw::File = match toml::from_str(src) {
            Ok(f) => f,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                r.err(span, e.message().to_string());
                return Err(ConfigErrors(r.errors));
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let raw_proxy = file.proxy.as_ref().map(|p| p.get_ref());
        let proxy = proxy::validate(&mut r, raw_proxy, base);
        let admin = admin::validate(&mut r, file.admin.as_ref(), base);
        let ctx = service::Context {
            has_secret: raw_proxy.is_some_and(|p| p.secret_file.is_some()),
            has_redis: proxy.redis.is_some(),
            base,
        };

        let mut services = Vec::new();
        let mut plugin_refs = Vec::new();
        let mut names: HashMap<String, Range<usize>> = HashMap::new();
        let mut seen: Vec<listen::Seen> = Vec::new();
        if file.service.is_empty() {
            r.err(0..0, "no [[service]] defined");
        }
        for s in &file.service {
            let name = s.get_ref().name.get_ref();
            if let Some(prev) = names.get(name) {
                let line = r.line(prev.start);
                r.err(
                    s.get_ref().name.span(),
                    format!("duplicate service name {name:?} (first defined on line {line})"),
                );
            } else {
                names.insert(name.clone(), s.get_ref().name.span());
            }
            // Listen addresses are compared even when the service has other errors.
            let mut seen_now = listen::Seen {
                name: name.clone(),
                addrs: units::raw_listen_addrs(s.get_ref().listen.get_ref()),
                listen_span: s.get_ref().listen.span(),
                match_span: s.get_ref().route.as_ref().map(|m| m.span()),
                typed: None,
                certs: Vec::new(),
                udp: s
                    .get_ref()
                    .mode
                    .as_ref()
                    .is_some_and(|m| m.get_ref() == "udp"),
            };
            let mut refs = Vec::new();
            let validated = service::validate(
                &mut r,
                s.get_ref(),
                s.span(),
                &ctx,
                &mut refs,
                &mut seen_now.certs,
            );
            if let Some(svc) = validated {
                seen_now.typed = Some(services.len());
                for (name, hook, span) in refs {
                    let (line, col) = line_col(src, span.start);
                    plugin_refs.push(PluginRef {
                        service: services.len(),
                        name,
                        hook,
                        line,
                        col,
                    });
                }
                services.push(svc);
            }
            seen.push(seen_now);
        }
        listen::check_sharing(&mut r, &seen, &services);
        follow_rules(&mut r, &file.service);
        if let (Some(m), Some(addr)) = (raw_proxy.and_then(|p| p.metrics.as_ref()), proxy.metrics) {
            if let Some(other) = seen.iter().find(|s| s.addrs.contains(&addr)) {
                let line = r.line(other.listen_span.start);
                r.err(
                    m.span(),
                    format!(
                        "metrics: {addr} is also the listen address of service {:?} (line {line})",
                        other.name
                    ),
                );
            }
        }
        if let (Some(a), Some(listen)) = (
            &admin,
            file.admin
                .as_ref()
                .and_then(|a| a.get_ref().listen.as_ref()),
        ) {
            let taken = seen
                .iter()
                .find(|s| s.addrs.contains(&a.listen))
                .map(|s| format!("the listen address of service {:?}", s.name))
                .or_else(|| {
                    (proxy.metrics == Some(a.listen)).then(|| "the metrics address".into())
                });
            if let Some(what) = taken {
                r.err(
                    listen.span(),
                    format!("admin.listen: {} is also {what}", a.listen),
                );
            }
        }
        // In file order, whichever table found them.
        r.errors.sort_by_key(|e| (e.line, e.col));
        if r.errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                proxy,
                admin,
                services,
                plugin_refs,
                warnings: r.warnings,
            })
        } else {
            Err(ConfigErrors(r.errors))
        }
    }
}

/// `follow = "<service>"`: the service exists, is not the one that follows, and balances
/// tcp or http connections (their decisions are the ones a flow follows).
fn follow_rules(r: &mut report::Reporter, services: &[toml::Spanned<raw::Service>]) {
    for s in services {
        let Some(f) = &s.get_ref().follow else {
            continue;
        };
        let target = f.get_ref();
        let me = s.get_ref().name.get_ref();
        if target == me {
            r.err(
                f.span(),
                format!("follow: service {me:?} cannot follow itself"),
            );
            continue;
        }
        let Some(other) = services
            .iter()
            .find(|o| o.get_ref().name.get_ref() == target)
        else {
            r.err(
                f.span(),
                format!("follow: no service named {target:?} in this file"),
            );
            continue;
        };
        let mode = other.get_ref().mode.as_ref().map(|m| m.get_ref().as_str());
        if mode == Some("udp") {
            let line = r.line(other.span().start);
            r.err(
                f.span(),
                format!(
                    "follow: service {target:?} (line {line}) is a udp service; follow a tcp or \
                     http service, whose connections lead"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn errs(src: &str) -> Vec<String> {
        match Config::parse(Path::new("t.toml"), src) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const OK: &str = r#"
[proxy]
threads = 2

[[service]]
name = "web"
listen = ["127.0.0.1:8080", "127.0.0.2:8080"]
mode = "http"
scheduler = "least_connections"
persistence = { key = "cookie:SRV", timeout = "20m" }
health_check = { kind = "http", path = "/health", expect_status = 204, interval = "500ms", timeout = "1s", rise = 2, fall = 3 }
slow_start = "30s"

[[service.backend]]
address = "127.0.0.1:9001"
weight = 3

[[service.backend]]
address = "127.0.0.1:9002"
enabled = false
"#;

    #[test]
    fn parses_a_full_service() {
        let c = Config::parse(Path::new("/etc/x.toml"), OK).unwrap();
        let s = &c.services[0];
        assert_eq!(c.proxy.threads, 2);
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.scheduler, SchedulerKind::LeastConnections);
        let p = s.persistence.as_ref().unwrap();
        assert_eq!(p.keys, [PersistenceKeyKind::Cookie("SRV".into())]);
        assert_eq!(p.timeout, Duration::from_secs(1200));
        let h = s.health_check.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_millis(500));
        assert!(matches!(
            h.kind,
            HealthKind::Http { expect_status, .. } if expect_status == StatusMatch::single(204)
        ));
        assert_eq!(s.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(s.backends[0].weight, 3);
        assert!(!s.backends[1].enabled);
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn unknown_key_has_position() {
        let e = errs("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbogus = 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:4:1: unknown field `bogus`"),
            "{e:?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let src = "[[service]]\nname = \"a\"\nlisten = \"nope\"\nscheduler = \"fastest\"\nslow_start = \"soon\"\n[[service.backend]]\naddress = \"127.0.0.1:1\"\nweight = 999\n";
        let e = errs(src);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:3:10: listen: invalid address"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.toml:4:13: scheduler: unknown scheduler \"fastest\""),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("t.toml:5:14: slow_start: invalid duration"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("t.toml:8:10: weight: 999 is out of range"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_listen_across_services() {
        let src = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n[[service]]\nname = \"b\"\nlisten = [\"127.0.0.1:1\"]\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n";
        let e = errs(src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:8:10: duplicate listen address 127.0.0.1:1 (already used by service \"a\" on line 3)"), "{e:?}");
    }

    #[test]
    fn plugin_references_keep_their_position_and_settings() {
        let c = Config::parse(
            Path::new("t.toml"),
            "[proxy]\nplugins_dir = \"p\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nscheduler = \"plugin:mine\"\non_plugin_error = \"reject\"\n[service.plugin.mine]\nport = 80\nmode = \"x\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        assert_eq!(c.plugin_refs.len(), 1);
        let r = &c.plugin_refs[0];
        assert_eq!(
            (r.name.as_str(), r.hook, r.line, r.col),
            ("mine", Hook::SelectServer, 6, 13)
        );
        let s = &c.services[0];
        assert_eq!(s.on_plugin_error, PluginErrorPolicy::Reject);
        assert_eq!(
            s.plugin_settings["mine"],
            serde_json::json!({"port": 80, "mode": "x"})
        );
    }

    #[test]
    fn settings_for_an_unused_plugin_are_an_error() {
        let e = errs("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[service.plugin.nope]\nx = 1\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "t.toml:4:1: [service.plugin.nope]: this service uses no plugin \"nope\""
            ),
            "{e:?}"
        );
    }

    fn svc(extra: &str, backends: &str) -> String {
        format!("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n{extra}\n{backends}")
    }

    const ONE: &str = "[[service.backend]]\naddress = \"127.0.0.1:2\"\n";

    #[test]
    fn values_that_would_overflow_are_refused_at_their_line() {
        let e = errs(&svc(
            "persistence = { key = \"source_ip\", timeout = \"2000years\" }\nidle_timeout = \"584942417355years\"",
            ONE,
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("t.toml:4:"), "{e:?}");
        assert!(e[0].contains("longer than the 365d limit"), "{e:?}");
        assert!(e[1].starts_with("t.toml:5:16: idle_timeout"), "{e:?}");
        let e = errs(&format!(
            "[proxy]\nplugin_memory = \"9999999999GiB\"\nmax_connections = 99999999999\n{}",
            svc("", ONE)
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("t.toml:2:17: plugin_memory"), "{e:?}");
        assert!(e[1].starts_with("t.toml:3:19: max_connections"), "{e:?}");
    }

    #[test]
    fn metrics_address_may_not_be_a_listen_address() {
        let e = errs(&format!(
            "[proxy]\nmetrics = \"127.0.0.1:1\"\n{}",
            svc("", ONE)
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "t.toml:2:11: metrics: 127.0.0.1:1 is also the listen address of service \"a\""
            ),
            "{e:?}"
        );
    }

    #[test]
    fn backend_names_default_to_the_address_and_must_be_unique() {
        let c = Config::parse(
            Path::new("t.toml"),
            &svc("", "[[service.backend]]\nname = \"fe01\"\naddress = \"127.0.0.1:2\"\n[[service.backend]]\naddress = \"127.0.0.1:3\"\n"),
        )
        .unwrap();
        let names: Vec<_> = c.services[0]
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(names, ["fe01", "127.0.0.1:3"]);
        let e = errs(&svc(
            "",
            "[[service.backend]]\nname = \"x\"\naddress = \"127.0.0.1:2\"\n[[service.backend]]\nname = \"x\"\naddress = \"127.0.0.1:3\"\n[[service.backend]]\nname = \"a b\"\naddress = \"127.0.0.1:4\"\n",
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:9:8: backend name \"x\" used twice"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.toml:12:8: backend name \"a b\""),
            "{e:?}"
        );
    }

    #[test]
    fn header_timeout_is_http_only() {
        let e = errs(&svc("mode = \"tcp\"\nheader_timeout = \"5s\"", ONE));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:5:18: header_timeout only applies"),
            "{e:?}"
        );
        let c = Config::parse(Path::new("t.toml"), &svc("", ONE)).unwrap();
        assert_eq!(c.services[0].header_timeout, DEFAULT_HEADER_TIMEOUT);
    }

    #[test]
    fn cookie_persistence_without_a_secret_is_a_warning() {
        let c = Config::parse(
            Path::new("t.toml"),
            &svc("persistence = { key = \"cookie:SRV\" }", ONE),
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0]
            .to_string()
            .starts_with("t.toml:4:23: warning: persistence.key: cookie ids"));
        assert_eq!(&*c.proxy.secret, DEFAULT_SECRET);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "0123456789abcdef0123\n").unwrap();
        let text = format!(
            "[proxy]\nsecret_file = \"s\"\n{}",
            svc("persistence = { key = \"cookie:SRV\" }", ONE)
        );
        let c = Config::parse(&dir.path().join("p.toml"), &text).unwrap();
        assert!(c.warnings.is_empty());
        assert_eq!(&*c.proxy.secret, b"0123456789abcdef0123");
        std::fs::write(dir.path().join("s"), "short").unwrap();
        let e = Config::parse(&dir.path().join("p.toml"), &text).unwrap_err();
        assert!(e.0[0].message.starts_with("secret_file: "), "{e}");
        assert_eq!(e.0[0].line, 2);
    }
}
