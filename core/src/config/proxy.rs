//! The `[proxy]` table: process-wide settings.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw;
use super::report::Reporter;
use super::types::*;
use super::units::parse_size;

/// Shortest secret accepted from `secret_file`.
const MIN_SECRET: usize = 16;

pub(super) fn validate(r: &mut Reporter, p: Option<&raw::Proxy>, base: &Path) -> ProxyConfig {
    let default = raw::Proxy::default();
    let p = p.unwrap_or(&default);
    let threads = r
        .int_in(&p.threads, "threads", 1, 1024)
        .map(|n| n as usize)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
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
    let metrics = p.metrics.as_ref().and_then(|m| r.address(m, "metrics"));
    let grace_period = r
        .duration(&p.grace_period, "grace_period")
        .unwrap_or(Duration::from_secs(5));
    let plugin_deadline = r
        .positive_duration(&p.plugin_deadline, "plugin_deadline")
        .unwrap_or(DEFAULT_PLUGIN_DEADLINE);
    let plugin_memory = p
        .plugin_memory
        .as_ref()
        .and_then(|v| match parse_size(v.get_ref()) {
            Some(n) if (1 << 20..=MAX_PLUGIN_MEMORY).contains(&n) => Some(n),
            _ => {
                r.err(
                    v.span(),
                    format!(
                        "plugin_memory: invalid size {:?}; write e.g. \"16MiB\" (1MiB to 4GiB)",
                        v.get_ref()
                    ),
                );
                None
            }
        })
        .unwrap_or(DEFAULT_PLUGIN_MEMORY);
    let max_connections = r
        .int_in(
            &p.max_connections,
            "max_connections",
            1,
            MAX_CONNECTIONS as i64,
        )
        .map(|n| n as usize);
    let secret = match &p.secret_file {
        None => Arc::from(DEFAULT_SECRET),
        Some(f) => {
            let path = base.join(f.get_ref());
            match std::fs::read(&path) {
                Ok(bytes) if bytes.trim_ascii().len() >= MIN_SECRET => {
                    Arc::from(bytes.trim_ascii())
                }
                Ok(bytes) => {
                    r.err(
                        f.span(),
                        format!(
                            "secret_file: {} holds {} bytes; write at least {MIN_SECRET} random \
                             bytes into it, e.g. `head -c 32 /dev/urandom | base64 > FILE`",
                            path.display(),
                            bytes.trim_ascii().len()
                        ),
                    );
                    Arc::from(DEFAULT_SECRET)
                }
                Err(e) => {
                    r.err(
                        f.span(),
                        format!("secret_file: cannot read {}: {e}", path.display()),
                    );
                    Arc::from(DEFAULT_SECRET)
                }
            }
        }
    };
    let access_log = p
        .access_log
        .as_ref()
        .and_then(|a| access_log(r, a.get_ref(), base));
    let redis = redis(r, p, base);
    ProxyConfig {
        redis,
        access_log,
        threads,
        plugins_dir,
        log_format,
        metrics,
        grace_period,
        plugin_deadline,
        plugin_memory,
        max_connections,
        secret,
    }
}

/// `access_log = { path, format }`: `path` is `"stdout"` or a file (relative to the
/// configuration's folder) in a folder that exists.
fn access_log(r: &mut Reporter, a: &raw::AccessLog, base: &Path) -> Option<AccessLogConfig> {
    let format = match a.format.as_ref() {
        None => AccessLogFormat::Json,
        Some(f) => {
            match f.get_ref().as_str() {
                "json" => AccessLogFormat::Json,
                "text" => AccessLogFormat::Text,
                other => {
                    r.err(
                    f.span(),
                    format!("access_log.format: unknown value {other:?}; expected \"json\" or \"text\""),
                );
                    return None;
                }
            }
        }
    };
    let path = match a.path.get_ref().as_str() {
        "stdout" => AccessLogPath::Stdout,
        "" => {
            r.err(
                a.path.span(),
                "access_log.path: empty; give a file or \"stdout\"",
            );
            return None;
        }
        p => {
            let file = base.join(p);
            match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    r.err(
                        a.path.span(),
                        format!("access_log.path: folder {} does not exist", dir.display()),
                    );
                    return None;
                }
                _ => AccessLogPath::File(file),
            }
        }
    };
    Some(AccessLogConfig { path, format })
}

/// `redis = "URL"`, with `redis_password_file`, `redis_ca_file` and `redis_prefix`.
fn redis(r: &mut Reporter, p: &raw::Proxy, base: &Path) -> Option<RedisConfig> {
    let Some(v) = p.redis.as_ref() else {
        for (f, what) in [
            (&p.redis_password_file, "redis_password_file"),
            (&p.redis_ca_file, "redis_ca_file"),
            (&p.redis_prefix, "redis_prefix"),
        ] {
            if let Some(f) = f {
                r.err(f.span(), format!("{what}: set only with redis = \"URL\""));
            }
        }
        return None;
    };
    let url = v.get_ref().trim().to_string();
    let scheme = url.split("://").next().unwrap_or("");
    if !["redis", "rediss", "unix", "redis+unix"].contains(&scheme) || !url.contains("://") {
        r.err(
            v.span(),
            format!(
                "redis: {url:?} is not a Redis URL; write redis://HOST:PORT/DB, \
                 rediss://HOST:PORT/DB (TLS) or unix:///PATH"
            ),
        );
        return None;
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
        r.err(v.span(), format!("redis: invalid URL: {e}"));
        return None;
    }
    let mut read = |f: &Option<toml::Spanned<String>>, what: &str| -> Option<Vec<u8>> {
        let f = f.as_ref()?;
        let path = base.join(f.get_ref());
        std::fs::read(&path)
            .map_err(|e| {
                r.err(
                    f.span(),
                    format!("{what}: cannot read {}: {e}", path.display()),
                )
            })
            .ok()
    };
    let password = read(&p.redis_password_file, "redis_password_file")
        .map(|b| String::from_utf8_lossy(b.trim_ascii()).into_owned());
    let ca = read(&p.redis_ca_file, "redis_ca_file");
    if let (Some(f), Some(pem)) = (&p.redis_ca_file, &ca) {
        if let Err(e) = crate::tls::client::roots_from_pem(pem, &base.join(f.get_ref())) {
            r.err(f.span(), format!("redis_ca_file: {e}"));
        }
    }
    let prefix = match &p.redis_prefix {
        None => "plugboard".to_string(),
        Some(f) => {
            let s = f.get_ref();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c.is_control()) {
                r.err(
                    f.span(),
                    "redis_prefix: must be a non-empty word without spaces",
                );
            }
            s.clone()
        }
    };
    Some(RedisConfig {
        url,
        password,
        ca,
        prefix,
    })
}
