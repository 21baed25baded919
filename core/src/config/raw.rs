//! The file as written, with the byte span of every value, before validation.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub proxy: Option<Spanned<Proxy>>,
    #[serde(default)]
    pub service: Vec<Spanned<Service>>,
    #[serde(default)]
    pub admin: Option<Spanned<Admin>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
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
    pub max_connections: Option<Spanned<i64>>,
    pub secret_file: Option<Spanned<String>>,
    pub access_log: Option<Spanned<AccessLog>>,
    pub redis: Option<Spanned<String>>,
    pub redis_password_file: Option<Spanned<String>>,
    pub redis_ca_file: Option<Spanned<String>>,
    pub redis_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
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
    pub header_timeout: Option<Spanned<String>>,
    pub inspect_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub retries: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub queue_max: Option<Spanned<i64>>,
    pub on_plugin_error: Option<Spanned<String>>,
    pub fallback_scheduler: Option<Spanned<String>>,
    #[serde(default)]
    pub plugin: std::collections::BTreeMap<String, Spanned<toml::Table>>,
    #[serde(default)]
    pub backend: Vec<Spanned<Backend>>,
    pub tls: Option<Spanned<Tls>>,
    #[serde(default)]
    pub certificate: Vec<Spanned<Certificate>>,
    #[serde(rename = "match")]
    pub route: Option<Spanned<Match>>,
    pub redirect: Option<Spanned<String>>,
    pub backend_tls: Option<Spanned<BackendTls>>,
    pub access_log: Option<Spanned<bool>>,
    pub accept_proxy: Option<Spanned<bool>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub send_proxy: Option<Spanned<String>>,
    pub follow: Option<Spanned<String>>,
    pub source: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub min_version: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub chain: Option<Spanned<String>>,
    pub pfx: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub hosts: Option<Spanned<Vec<String>>>,
    pub path_prefixes: Option<Spanned<Vec<String>>>,
    pub ignore_case: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    pub verify: Option<Spanned<bool>>,
    pub ca: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    /// A key kind, or a list of them tried in order.
    pub key: Spanned<toml::Value>,
    pub timeout: Option<Spanned<String>>,
    pub max_entries: Option<Spanned<i64>>,
    pub shared: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    /// An integer, a `"LOW-HIGH"` range, or a list of both.
    pub expect_status: Option<Spanned<toml::Value>>,
    /// tcp: sent once connected.
    pub send: Option<Spanned<String>>,
    /// tcp: the first line starts with this.
    pub expect: Option<Spanned<String>>,
    /// tcp: the first line matches this regular expression.
    pub expect_regex: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub port: Option<Spanned<i64>>,
    pub tls: Option<Spanned<bool>>,
    pub send_proxy: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: Option<Spanned<String>>,
    pub address: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    pub enabled: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<i64>>,
}
