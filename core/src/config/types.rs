//! The validated configuration: every value parsed (addresses, durations, schedulers), so
//! nothing downstream parses a string again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::report::ConfigError;
pub use crate::proxy_protocol::{AcceptProxy, Version as ProxyVersion};
pub use crate::tls::certs::CertSource;

/// Default for `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default for `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// udp: a flow with no datagram either way for this long ends.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// udp: flows of one service at once when `max_connections` is not set.
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
/// Default for `header_timeout` (HAProxy's `timeout http-request` is usually 10 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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
/// Largest `plugin_memory` (a wasm32 memory cannot be larger).
pub const MAX_PLUGIN_MEMORY: usize = 4 << 30;
/// Largest accepted backend weight (as HAProxy).
pub const MAX_WEIGHT: u32 = 256;
/// Largest `max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000_000;
/// Default for `queue_timeout` (HAProxy's usual `timeout queue`).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `queue_max`: a flood of waiters costs at most this many entries per service.
pub const DEFAULT_QUEUE_MAX: usize = 10_000;
/// Largest `queue_max`.
pub const MAX_QUEUE: usize = 1_000_000;
/// The cookie secret used when `[proxy] secret_file` is not set. Public, so cookie ids made
/// with it can be computed by anyone who knows the backend names; `check` warns.
pub const DEFAULT_SECRET: &[u8] = b"plugboard default cookie secret: set [proxy] secret_file";

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V12,
    V13,
}

/// One `[[service.certificate]]`, with the line it starts on (for messages on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub source: CertSource,
    pub line: usize,
}

/// TLS termination of a service's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// The first is the default; the others are chosen by SNI.
    pub certificates: Vec<CertificateConfig>,
}

/// Which requests of a shared listen address a service takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Lower-case host names, or `*.domain` for one more label; empty: any host.
    pub hosts: Vec<String>,
    /// Path prefixes; empty: any path.
    pub path_prefixes: Vec<String>,
    /// Compare paths without regard to ASCII case (IIS does: `/ews` is `/EWS`).
    pub ignore_case: bool,
}

/// TLS towards the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// Verify the backend's certificate (against `ca`, or the system roots).
    pub verify: bool,
    pub ca: Option<PathBuf>,
    /// Server name sent; default: none for IP backends, the host name for named ones.
    pub sni: Option<String>,
}

/// L7 or L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
    /// Datagrams, balanced per flow (client address and port).
    Udp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
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

impl SchedulerKind {
    /// The built-in scheduler of this name.
    pub fn builtin(name: &str) -> Option<SchedulerKind> {
        Some(match name {
            "round_robin" => SchedulerKind::RoundRobin,
            "least_connections" => SchedulerKind::LeastConnections,
            "random_two" => SchedulerKind::RandomTwo,
            "source_hash" => SchedulerKind::SourceHash,
            _ => return None,
        })
    }
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
    /// The key kinds in order: per request or connection, the first that yields a key (or
    /// names a backend) is used. One entry for `key = "..."`; never empty, no duplicates.
    pub keys: Vec<PersistenceKeyKind>,
    /// Idle timeout of a table entry.
    pub timeout: Duration,
    pub max_entries: u64,
    /// Pins are kept in `[proxy] redis` too, so that every instance finds them.
    pub shared: bool,
}

impl PersistenceConfig {
    /// The key kinds as written: `source_ip`, or `[plugin:rdp-cookie, source_ip]`.
    pub fn keys_shown(&self) -> String {
        match self.keys.as_slice() {
            [one] => one.to_string(),
            many => {
                let all: Vec<String> = many.iter().map(|k| k.to_string()).collect();
                format!("[{}]", all.join(", "))
            }
        }
    }
}

/// The HTTP statuses a `health_check.expect_status` accepts: a bit per status 100-599, so a
/// check's test is a shift and a mask, and the matcher is `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusMatch([u64; 8]);

impl StatusMatch {
    pub const LOWEST: u16 = 100;
    pub const HIGHEST: u16 = 599;

    pub const fn none() -> Self {
        StatusMatch([0; 8])
    }

    /// Accepts `low..=high` too (both within 100-599, `low <= high`).
    pub fn add(&mut self, low: u16, high: u16) {
        for s in low..=high {
            let i = (s - Self::LOWEST) as usize;
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn single(status: u16) -> Self {
        let mut m = Self::none();
        m.add(status, status);
        m
    }

    #[inline]
    pub fn matches(&self, status: u16) -> bool {
        if !(Self::LOWEST..=Self::HIGHEST).contains(&status) {
            return false;
        }
        let i = (status - Self::LOWEST) as usize;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// The accepted statuses as ascending runs `(low, high)`.
    pub fn runs(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for s in Self::LOWEST..=Self::HIGHEST {
            if self.matches(s) {
                match out.last_mut() {
                    Some((_, h)) if *h + 1 == s => *h = s,
                    _ => out.push((s, s)),
                }
            }
        }
        out
    }
}

impl fmt::Display for StatusMatch {
    /// `200`, `200-399`, `200,401`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (l, h)) in self.runs().into_iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            match l == h {
                true => write!(f, "{l}")?,
                false => write!(f, "{l}-{h}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatusMatch({self})")
    }
}

/// What the first line a `tcp` check reads must be.
#[derive(Debug, Clone)]
pub enum TcpExpect {
    /// The line starts with these bytes (`expect`).
    Prefix(String),
    /// The line (without its line end) matches (`expect_regex`), compiled once at load.
    Regex(regex::bytes::Regex),
}

impl TcpExpect {
    pub fn matches(&self, line: &[u8]) -> bool {
        match self {
            TcpExpect::Prefix(p) => line.starts_with(p.as_bytes()),
            TcpExpect::Regex(r) => r.is_match(line),
        }
    }
}

impl PartialEq for TcpExpect {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TcpExpect::Prefix(a), TcpExpect::Prefix(b)) => a == b,
            (TcpExpect::Regex(a), TcpExpect::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for TcpExpect {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// Up when a connection opens; with `send`, once that is written; with `expect`, when the
    /// first line read matches.
    Tcp {
        send: Option<String>,
        expect: Option<TcpExpect>,
    },
    /// Up when the backend's host answers an ICMP echo request.
    Icmp,
    Http {
        path: String,
        expect_status: StatusMatch,
        host: Option<String>,
        /// Speak TLS (with the service's `backend_tls` verification): the default when the
        /// service has `backend_tls`; `tls = false` checks a plain HTTP port instead.
        tls: bool,
    },
    Plugin(String),
}

impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthKind::Tcp { send, expect } => {
                f.write_str("tcp")?;
                if let Some(s) = send {
                    write!(f, " send {s:?}")?;
                }
                match expect {
                    Some(TcpExpect::Prefix(p)) => write!(f, " expect {p:?}"),
                    Some(TcpExpect::Regex(r)) => write!(f, " expect_regex {:?}", r.as_str()),
                    None => Ok(()),
                }
            }
            HealthKind::Icmp => f.write_str("icmp echo"),
            HealthKind::Http {
                path,
                expect_status,
                host,
                tls,
            } => {
                write!(f, "{} GET {path}", if *tls { "https" } else { "http" })?;
                if let Some(h) = host {
                    write!(f, " Host {h}")?;
                }
                write!(f, " expect {expect_status}")
            }
            HealthKind::Plugin(p) => write!(f, "plugin:{p}"),
        }
    }
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
    /// Begin each check's connection with a PROXY header of the service's `send_proxy`
    /// version, carrying the check connection's own addresses.
    pub send_proxy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The host name when the address was written with one (the default TLS server name).
    pub hostname: Option<String>,
    /// Stable identity within the service: persistence pins, cookies, logs and metrics name
    /// the backend by it, never by its position in the list. Default: the address as written.
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub enabled: bool,
    /// Requests (http) or connections (tcp) in flight at once; `None`: no limit.
    pub max_connections: Option<u32>,
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
    /// http: longest time from a request's first byte to the end of its header.
    pub header_timeout: Duration,
    pub inspect_timeout: Duration,
    /// Client connections open at once; further ones wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// How many times a request whose connect failed is sent to another backend.
    pub retries: u32,
    /// Longest a request or connection waits for a backend with room (0: none waits).
    pub queue_timeout: Duration,
    /// Requests or connections waiting at once; more are refused at once.
    pub queue_max: usize,
    pub on_plugin_error: PluginErrorPolicy,
    /// Built-in scheduler used when a plugin scheduler has no opinion or fails.
    pub fallback_scheduler: SchedulerKind,
    /// `[service.plugin.<name>]` tables, as JSON, handed to the plugin when it is loaded.
    pub plugin_settings: BTreeMap<String, serde_json::Value>,
    pub backends: Vec<BackendConfig>,
    /// Clients speak TLS to this service.
    pub tls: Option<TlsConfig>,
    /// On a listen address shared with other services: which requests are this service's.
    pub route: Option<RouteMatch>,
    /// `redirect = "https"`: every request gets a 301 to the same host and path over https.
    pub redirect_https: bool,
    pub backend_tls: Option<BackendTls>,
    /// Requests or connections of this service go to the access log (when there is one).
    pub access_log: bool,
    /// Clients arrive behind a load balancer that sends the PROXY protocol.
    pub accept_proxy: Option<AcceptProxy>,
    /// Backend connections begin with a PROXY header carrying the client's address.
    pub send_proxy: Option<ProxyVersion>,
    /// udp: the service whose balancing decisions (client IP to backend host) lead this one's.
    pub follow: Option<String>,
    /// tcp and http: the local address backend connections are made from.
    pub source: Option<SourceAddress>,
}

/// `source`: where backend connections come from (any port, the kernel's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAddress {
    /// The client's own address (`IP_TRANSPARENT`).
    Client,
    /// A fixed address of this host.
    Fixed(std::net::IpAddr),
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
    /// Client connections open at once over all services; `None`: derived at start from the
    /// process's descriptor limit.
    pub max_connections: Option<usize>,
    /// Key material for cookie ids (`secret_file`, or [`DEFAULT_SECRET`]).
    pub secret: Arc<[u8]>,
    pub access_log: Option<AccessLogConfig>,
    pub redis: Option<RedisConfig>,
}

/// `[proxy] redis`: where shared persistence pins are kept.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// As written (it may hold a password: print [`RedisConfig::shown`] instead).
    pub url: String,
    /// From `password_file`, when the URL holds none.
    pub password: Option<String>,
    /// PEM roots for `rediss://` (`ca_file`); the system's roots otherwise.
    pub ca: Option<Vec<u8>>,
    /// Start of every Redis key and channel name Plugboard uses.
    pub prefix: String,
}

impl RedisConfig {
    /// The URL without its password, for logs and the admin API.
    pub fn shown(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***{}", &self.url[..s], &self.url[at..]),
            _ => self.url.clone(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `[proxy] access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub path: AccessLogPath,
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogPath {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Text,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub admin: Option<AdminConfig>,
    pub services: Vec<ServiceConfig>,
    pub plugin_refs: Vec<PluginRef>,
    /// Things that work but are probably not what the administrator wants.
    pub warnings: Vec<ConfigError>,
}

/// The `[admin]` table: the admin API's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token every `/api/` request must carry (`None`: none needed; only allowed on a
    /// loopback address).
    pub token: Option<Arc<str>>,
    /// Where runtime changes are saved, to be applied again at start.
    pub state_file: Option<PathBuf>,
}
