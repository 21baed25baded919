//! The TOML configuration: parsing, validation and the typed result.
//!
//! Parsing happens in two steps. `serde` + `toml` read the file into [`raw`] structs that keep
//! the byte span of every value, so that both syntax errors and the semantic checks done
//! afterwards can be reported as `FILE:LINE:COL: message`. Validation then turns the raw form
//! into [`Config`], whose values are already parsed (socket addresses, durations, schedulers),
//! so nothing downstream ever parses a string again.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default for `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default for `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// Default for `inspect_timeout` (HAProxy's usual `tcp-request inspect-delay`).
pub const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default persistence idle timeout.
pub const DEFAULT_PERSISTENCE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default bound on the number of persistence entries per service.
pub const DEFAULT_PERSISTENCE_MAX_ENTRIES: u64 = 1_000_000;
/// Default for `plugin_deadline`.
pub const DEFAULT_PLUGIN_DEADLINE: Duration = Duration::from_millis(20);
/// Default for `plugin_memory`.
pub const DEFAULT_PLUGIN_MEMORY: usize = 32 << 20;
/// Largest accepted backend weight (as HAProxy).
pub const MAX_WEIGHT: u32 = 256;

/// One error found in a configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// All errors of one file; `check` prints each on its own line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// L7 or L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// Which built-in scheduler, or which plugin, picks the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerKind {
    RoundRobin,
    LeastConnections,
    RandomTwo,
    SourceHash,
    Plugin(String),
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedulerKind::RoundRobin => f.write_str("round_robin"),
            SchedulerKind::LeastConnections => f.write_str("least_connections"),
            SchedulerKind::RandomTwo => f.write_str("random_two"),
            SchedulerKind::SourceHash => f.write_str("source_hash"),
            SchedulerKind::Plugin(p) => write!(f, "plugin:{p}"),
        }
    }
}

/// What makes a client sticky.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistenceKeyKind {
    SourceIp,
    /// A cookie inserted by the proxy whose value names the backend.
    Cookie(String),
    /// The value of a request header, looked up in the persistence table.
    Header(String),
    Plugin(String),
}

impl fmt::Display for PersistenceKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistenceKeyKind::SourceIp => f.write_str("source_ip"),
            PersistenceKeyKind::Cookie(n) => write!(f, "cookie:{n}"),
            PersistenceKeyKind::Header(n) => write!(f, "header:{n}"),
            PersistenceKeyKind::Plugin(p) => write!(f, "plugin:{p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceConfig {
    pub key: PersistenceKeyKind,
    /// Idle timeout of a table entry.
    pub timeout: Duration,
    pub max_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    Tcp,
    Http {
        path: String,
        expect_status: u16,
        host: Option<String>,
    },
    Plugin(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Check this port instead of the backend's traffic port.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: SocketAddr,
    pub weight: u32,
    pub enabled: bool,
}

/// The three hook points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    SelectServer,
    PersistenceKey,
    HealthCheck,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::SelectServer => "select-server",
            Hook::PersistenceKey => "persistence-key",
            Hook::HealthCheck => "health-check",
        }
    }
}

/// A `plugin:<name>` reference, kept with its position so that the plugin host can report
/// problems with it (not found, hook not implemented) at the right line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub service: usize,
    pub name: String,
    pub hook: Hook,
    pub line: usize,
    pub col: usize,
}

/// What happens when a plugin traps, times out, runs out of memory or answers nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginErrorPolicy {
    /// Built-in fallback scheduler / no key / keep the last health state.
    Fallback,
    /// HTTP 503 / TCP close (health: the backend counts as down).
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub mode: Mode,
    pub scheduler: SchedulerKind,
    pub persistence: Option<PersistenceConfig>,
    pub health_check: Option<HealthConfig>,
    pub slow_start: Option<Duration>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub inspect_timeout: Duration,
    /// How many times a request whose connect failed is sent to another backend.
    pub retries: u32,
    pub on_plugin_error: PluginErrorPolicy,
    /// Built-in scheduler used when a plugin scheduler has no opinion or fails.
    pub fallback_scheduler: SchedulerKind,
    /// `[service.plugin.<name>]` tables, as JSON, handed to the plugin when it is loaded.
    pub plugin_settings: std::collections::BTreeMap<String, serde_json::Value>,
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub threads: usize,
    pub plugins_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Address of the Prometheus `/metrics` endpoint, if any.
    pub metrics: Option<SocketAddr>,
    pub grace_period: Duration,
    /// Longest a plugin call on the request path may run.
    pub plugin_deadline: Duration,
    /// Memory cap of one plugin instance (WASM linear memory, Lua heap), in bytes.
    pub plugin_memory: usize,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub services: Vec<ServiceConfig>,
    pub plugin_refs: Vec<PluginRef>,
}

/// The file as written, with spans, before validation.
mod raw {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub proxy: Option<Spanned<Proxy>>,
        #[serde(default)]
        pub service: Vec<Spanned<Service>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Proxy {
        pub threads: Option<Spanned<i64>>,
        pub plugins_dir: Option<Spanned<String>>,
        pub log_format: Option<Spanned<String>>,
        pub metrics: Option<Spanned<String>>,
        pub grace_period: Option<Spanned<String>>,
        pub plugin_deadline: Option<Spanned<String>>,
        pub plugin_memory: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        pub name: Spanned<String>,
        pub listen: Spanned<toml::Value>,
        pub mode: Option<Spanned<String>>,
        pub scheduler: Option<Spanned<String>>,
        pub persistence: Option<Spanned<Persistence>>,
        pub health_check: Option<Spanned<Health>>,
        pub slow_start: Option<Spanned<String>>,
        pub connect_timeout: Option<Spanned<String>>,
        pub idle_timeout: Option<Spanned<String>>,
        pub inspect_timeout: Option<Spanned<String>>,
        pub retries: Option<Spanned<i64>>,
        pub on_plugin_error: Option<Spanned<String>>,
        pub fallback_scheduler: Option<Spanned<String>>,
        #[serde(default)]
        pub plugin: std::collections::BTreeMap<String, Spanned<toml::Table>>,
        #[serde(default)]
        pub backend: Vec<Spanned<Backend>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Persistence {
        pub key: Spanned<String>,
        pub timeout: Option<Spanned<String>>,
        pub max_entries: Option<Spanned<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub kind: Spanned<String>,
        pub path: Option<Spanned<String>>,
        pub host: Option<Spanned<String>>,
        pub expect_status: Option<Spanned<i64>>,
        pub interval: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub rise: Option<Spanned<i64>>,
        pub fall: Option<Spanned<i64>>,
        pub port: Option<Spanned<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Backend {
        pub address: Spanned<String>,
        pub weight: Option<Spanned<i64>>,
        pub enabled: Option<Spanned<bool>>,
    }
}

/// Collects errors against one source text, turning byte spans into line and column.
struct Reporter<'a> {
    file: &'a Path,
    src: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Reporter<'a> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.src, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    fn duration(&mut self, v: &Option<toml::Spanned<String>>, what: &str) -> Option<Duration> {
        let v = v.as_ref()?;
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    v.span(),
                    format!(
                        "{what}: invalid duration {:?} ({e}); write e.g. \"500ms\", \"2s\", \"20m\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn int_in(
        &mut self,
        v: &Option<toml::Spanned<i64>>,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(
                v.span(),
                format!("{what}: {n} is out of range {min}..={max}"),
            );
            None
        } else {
            Some(n)
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("invalid address {s:?}: expected HOST:PORT"));
    }
    match s.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("address {s:?} resolves to nothing")),
        Err(e) => Err(format!("invalid address {s:?}: {e}")),
    }
}

/// The valid addresses among a raw `listen` value (errors are reported by validation).
fn raw_listen_addrs(v: &toml::Value) -> Vec<SocketAddr> {
    let one = |v: &toml::Value| v.as_str().and_then(|a| parse_addr(a).ok());
    match v {
        toml::Value::Array(items) => items.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

/// `"512KiB"`, `"16MiB"`, `"1GiB"` or a plain number of bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split].parse().ok()?;
    let unit = match s[split..].trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

fn builtin_scheduler(name: &str) -> Option<SchedulerKind> {
    Some(match name {
        "round_robin" => SchedulerKind::RoundRobin,
        "least_connections" => SchedulerKind::LeastConnections,
        "random_two" => SchedulerKind::RandomTwo,
        "source_hash" => SchedulerKind::SourceHash,
        _ => return None,
    })
}

fn plugin_name(s: &str) -> Option<&str> {
    s.strip_prefix("plugin:")
}

/// A plugin name is a file stem: letters, digits, `-` and `_`.
fn valid_plugin_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// RFC 7230 token characters, for header and cookie names.
fn valid_token(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(path, &src)
    }

    /// Validates `src` as if read from `path` (relative paths in it resolve against `path`).
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let mut r = Reporter {
            file: path,
            src,
            errors: Vec::new(),
        };
        let file: raw::File = match toml::from_str(src) {
            Ok(f) => f,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                r.err(span, e.message().to_string());
                return Err(ConfigErrors(r.errors));
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let proxy = validate_proxy(&mut r, file.proxy.as_ref().map(|p| p.get_ref()), base);

        let mut services = Vec::new();
        let mut plugin_refs = Vec::new();
        let mut names: HashMap<String, Range<usize>> = HashMap::new();
        let mut listens: HashMap<SocketAddr, (String, usize)> = HashMap::new();
        if file.service.is_empty() {
            r.err(0..0, "no [[service]] defined");
        }
        for s in &file.service {
            let name = s.get_ref().name.get_ref();
            if let Some(prev) = names.get(name) {
                let (line, _) = line_col(src, prev.start);
                r.err(
                    s.get_ref().name.span(),
                    format!("duplicate service name {name:?} (first defined on line {line})"),
                );
            } else {
                names.insert(name.clone(), s.get_ref().name.span());
            }
            // Listen addresses are compared even when the service has other errors.
            for addr in raw_listen_addrs(s.get_ref().listen.get_ref()) {
                if let Some((other, line)) = listens.get(&addr) {
                    r.err(
                        s.get_ref().listen.span(),
                        format!(
                            "duplicate listen address {addr} (already used by service {other:?} on line {line})"
                        ),
                    );
                } else {
                    let (line, _) = line_col(src, s.get_ref().listen.span().start);
                    listens.insert(addr, (name.clone(), line));
                }
            }
            let mut refs = Vec::new();
            if let Some(svc) = validate_service(&mut r, s.get_ref(), s.span(), &mut refs) {
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
        }
        if r.errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                proxy,
                services,
                plugin_refs,
            })
        } else {
            Err(ConfigErrors(r.errors))
        }
    }
}

fn validate_proxy(r: &mut Reporter, p: Option<&raw::Proxy>, base: &Path) -> ProxyConfig {
    let default_threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Some(p) = p else {
        return ProxyConfig {
            threads: default_threads,
            plugins_dir: None,
            log_format: LogFormat::Human,
            metrics: None,
            grace_period: Duration::from_secs(5),
            plugin_deadline: DEFAULT_PLUGIN_DEADLINE,
            plugin_memory: DEFAULT_PLUGIN_MEMORY,
        };
    };
    let threads = r
        .int_in(&p.threads, "threads", 1, 1024)
        .map(|n| n as usize)
        .unwrap_or(default_threads);
    let plugins_dir = p.plugins_dir.as_ref().map(|d| base.join(d.get_ref()));
    let log_format = match p.log_format.as_ref() {
        None => LogFormat::Human,
        Some(v) => match v.get_ref().as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                r.err(
                    v.span(),
                    format!("log_format: unknown value {other:?}; expected \"human\" or \"json\""),
                );
                LogFormat::Human
            }
        },
    };
    let metrics = p
        .metrics
        .as_ref()
        .and_then(|m| match parse_addr(m.get_ref()) {
            Ok(a) => Some(a),
            Err(e) => {
                r.err(m.span(), format!("metrics: {e}"));
                None
            }
        });
    let grace_period = r
        .duration(&p.grace_period, "grace_period")
        .unwrap_or(Duration::from_secs(5));
    let plugin_deadline = r
        .duration(&p.plugin_deadline, "plugin_deadline")
        .unwrap_or(DEFAULT_PLUGIN_DEADLINE);
    let plugin_memory = p
        .plugin_memory
        .as_ref()
        .and_then(|v| match parse_size(v.get_ref()) {
            Some(n) if n >= 1 << 20 => Some(n),
            _ => {
                r.err(
                    v.span(),
                    format!(
                        "plugin_memory: invalid size {:?}; write e.g. \"16MiB\" (at least 1MiB)",
                        v.get_ref()
                    ),
                );
                None
            }
        })
        .unwrap_or(DEFAULT_PLUGIN_MEMORY);
    ProxyConfig {
        threads,
        plugins_dir,
        log_format,
        metrics,
        grace_period,
        plugin_deadline,
        plugin_memory,
    }
}

fn validate_service(
    r: &mut Reporter,
    s: &raw::Service,
    span: Range<usize>,
    refs: &mut Vec<(String, Hook, Range<usize>)>,
) -> Option<ServiceConfig> {
    let before = r.errors.len();
    let name = s.name.get_ref().clone();
    if name.is_empty() {
        r.err(s.name.span(), "service name must not be empty");
    }

    let mut listen = Vec::new();
    let mut push_listen = |r: &mut Reporter, v: &toml::Value, span: Range<usize>| match v {
        toml::Value::String(a) => match parse_addr(a) {
            Ok(addr) => {
                if listen.contains(&addr) {
                    r.err(span, format!("listen: address {addr} listed twice"));
                } else {
                    listen.push(addr)
                }
            }
            Err(e) => r.err(span, format!("listen: {e}")),
        },
        other => r.err(
            span,
            format!(
                "listen: expected an address string, found {}",
                other.type_str()
            ),
        ),
    };
    match s.listen.get_ref() {
        toml::Value::Array(items) => {
            if items.is_empty() {
                r.err(s.listen.span(), "listen: empty list");
            }
            for v in items {
                push_listen(r, v, s.listen.span());
            }
        }
        v => push_listen(r, v, s.listen.span()),
    }

    let mode = match s.mode.as_ref() {
        None => Mode::Http,
        Some(m) => match m.get_ref().as_str() {
            "http" => Mode::Http,
            "tcp" => Mode::Tcp,
            other => {
                r.err(
                    m.span(),
                    format!("mode: unknown mode {other:?}; expected \"http\" or \"tcp\""),
                );
                Mode::Http
            }
        },
    };

    let scheduler = match s.scheduler.as_ref() {
        None => SchedulerKind::RoundRobin,
        Some(v) => match builtin_scheduler(v.get_ref()) {
            Some(k) => k,
            None => match plugin_name(v.get_ref()) {
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
            },
        },
    };

    let persistence = s.persistence.as_ref().and_then(|p| {
        let p = p.get_ref();
        let k = p.key.get_ref().as_str();
        let key = if k == "source_ip" {
            Some(PersistenceKeyKind::SourceIp)
        } else if let Some(n) = k.strip_prefix("cookie:") {
            if !valid_token(n) {
                r.err(p.key.span(), format!("persistence.key: invalid cookie name {n:?}"));
                None
            } else if mode == Mode::Tcp {
                r.err(p.key.span(), "persistence.key: cookie persistence needs mode = \"http\"");
                None
            } else {
                Some(PersistenceKeyKind::Cookie(n.to_string()))
            }
        } else if let Some(n) = k.strip_prefix("header:") {
            if !valid_token(n) {
                r.err(p.key.span(), format!("persistence.key: invalid header name {n:?}"));
                None
            } else if mode == Mode::Tcp {
                r.err(p.key.span(), "persistence.key: header persistence needs mode = \"http\"");
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
        let timeout = r
            .duration(&p.timeout, "persistence.timeout")
            .unwrap_or(DEFAULT_PERSISTENCE_TIMEOUT);
        let max_entries = r
            .int_in(&p.max_entries, "persistence.max_entries", 1, i64::MAX)
            .map(|n| n as u64)
            .unwrap_or(DEFAULT_PERSISTENCE_MAX_ENTRIES);
        key.map(|key| PersistenceConfig {
            key,
            timeout,
            max_entries,
        })
    });

    let health_check = s.health_check.as_ref().and_then(|h| {
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
                let expect_status = r
                    .int_in(&h.expect_status, "health_check.expect_status", 100, 599)
                    .unwrap_or(200) as u16;
                let host = h.host.as_ref().map(|v| v.get_ref().clone());
                Some(HealthKind::Http {
                    path,
                    expect_status,
                    host,
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
                    r.err(v.span(), format!("health_check.{n} only applies to kind = \"http\""));
                }
            }
            if let Some(v) = &h.expect_status {
                r.err(v.span(), "health_check.expect_status only applies to kind = \"http\"");
            }
        }
        let interval = r
            .duration(&h.interval, "health_check.interval")
            .unwrap_or(Duration::from_secs(2));
        let timeout = r
            .duration(&h.timeout, "health_check.timeout")
            .unwrap_or(Duration::from_secs(1));
        if interval.is_zero() {
            r.err(h.interval.as_ref().unwrap().span(), "health_check.interval must be > 0");
        }
        if timeout.is_zero() {
            r.err(h.timeout.as_ref().unwrap().span(), "health_check.timeout must be > 0");
        }
        let rise = r.int_in(&h.rise, "health_check.rise", 1, 1000).unwrap_or(2) as u32;
        let fall = r.int_in(&h.fall, "health_check.fall", 1, 1000).unwrap_or(3) as u32;
        let port = r.int_in(&h.port, "health_check.port", 1, 65535).map(|p| p as u16);
        kind.map(|kind| HealthConfig {
            kind,
            interval,
            timeout,
            rise,
            fall,
            port,
        })
    });

    let slow_start = r
        .duration(&s.slow_start, "slow_start")
        .filter(|d| !d.is_zero());
    let connect_timeout = r
        .duration(&s.connect_timeout, "connect_timeout")
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let idle_timeout = r
        .duration(&s.idle_timeout, "idle_timeout")
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let inspect_timeout = r
        .duration(&s.inspect_timeout, "inspect_timeout")
        .unwrap_or(DEFAULT_INSPECT_TIMEOUT);
    for (d, v, n) in [
        (connect_timeout, &s.connect_timeout, "connect_timeout"),
        (idle_timeout, &s.idle_timeout, "idle_timeout"),
    ] {
        if d.is_zero() {
            r.err(v.as_ref().unwrap().span(), format!("{n} must be > 0"));
        }
    }
    let retries = r.int_in(&s.retries, "retries", 0, 10).unwrap_or(1) as u32;
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
    let fallback_scheduler = match s.fallback_scheduler.as_ref() {
        None => SchedulerKind::RoundRobin,
        Some(v) => match builtin_scheduler(v.get_ref()) {
            Some(k) => k,
            None => {
                let other = v.get_ref();
                r.err(
                    v.span(),
                    format!("fallback_scheduler: {other:?} is not a built-in scheduler"),
                );
                SchedulerKind::RoundRobin
            }
        },
    };
    let mut plugin_settings = std::collections::BTreeMap::new();
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
        plugin_settings.insert(name.clone(), json);
    }

    let mut backends: Vec<BackendConfig> = Vec::new();
    if s.backend.is_empty() {
        r.err(span, format!("service {name:?} has no [[service.backend]]"));
    }
    for b in &s.backend {
        let b = b.get_ref();
        let address = match parse_addr(b.address.get_ref()) {
            Ok(a) => a,
            Err(e) => {
                r.err(b.address.span(), format!("backend address: {e}"));
                continue;
            }
        };
        if backends.iter().any(|o| o.address == address) {
            r.err(
                b.address.span(),
                format!("backend {address} listed twice in service {name:?}"),
            );
        }
        let weight = r
            .int_in(&b.weight, "weight", 0, MAX_WEIGHT as i64)
            .unwrap_or(1) as u32;
        let enabled = b.enabled.as_ref().map(|e| *e.get_ref()).unwrap_or(true);
        backends.push(BackendConfig {
            address,
            weight,
            enabled,
        });
    }

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
        inspect_timeout,
        retries,
        on_plugin_error,
        fallback_scheduler,
        plugin_settings,
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(p.key, PersistenceKeyKind::Cookie("SRV".into()));
        assert_eq!(p.timeout, Duration::from_secs(1200));
        let h = s.health_check.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_millis(500));
        assert!(matches!(
            h.kind,
            HealthKind::Http {
                expect_status: 204,
                ..
            }
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

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
