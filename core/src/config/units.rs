//! Values written as strings or numbers: durations, sizes, addresses, names; each bounded
//! here, so that nothing downstream can overflow (an `Instant` plus a duration of 2000 years
//! panics) or be surprised.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use toml::Spanned;

use super::report::Reporter;

/// Longest duration any setting accepts: a year. Longer timeouts mean "never" in practice,
/// and timer arithmetic stays far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Reporter<'_> {
    /// A duration in `0..=MAX_DURATION`, or `None` (and an error) when invalid.
    pub fn duration(&mut self, v: &Option<Spanned<String>>, what: &str) -> Option<Duration> {
        let v = v.as_ref()?;
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if d <= MAX_DURATION => Some(d),
            Ok(_) => {
                self.err(
                    v.span(),
                    format!("{what}: {:?} is longer than the 365d limit", v.get_ref()),
                );
                None
            }
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

    /// A duration that must be positive when given.
    pub fn positive_duration(
        &mut self,
        v: &Option<Spanned<String>>,
        what: &str,
    ) -> Option<Duration> {
        let d = self.duration(v, what)?;
        if d.is_zero() {
            self.err(
                v.as_ref().expect("parsed").span(),
                format!("{what} must be > 0"),
            );
            return None;
        }
        Some(d)
    }

    /// An integer in `min..=max`.
    pub fn int_in(
        &mut self,
        v: &Option<Spanned<i64>>,
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

    /// A `HOST:PORT` address (a host name is resolved once, now).
    pub fn address(&mut self, v: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match parse_addr(v.get_ref()) {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(v.span(), format!("{what}: {e}"));
                None
            }
        }
    }
}

pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
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
pub fn raw_listen_addrs(v: &toml::Value) -> Vec<SocketAddr> {
    let one = |v: &toml::Value| v.as_str().and_then(|a| parse_addr(a).ok());
    match v {
        toml::Value::Array(items) => items.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

/// `"512KiB"`, `"16MiB"`, `"1GiB"` or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<usize> {
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

pub fn plugin_name(s: &str) -> Option<&str> {
    s.strip_prefix("plugin:")
}

/// A plugin name is a file stem: letters, digits, `-` and `_`.
pub fn valid_plugin_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// RFC 7230 token characters, for header and cookie names.
pub fn valid_token(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Longest backend name.
pub const MAX_NAME: usize = 128;

/// A backend name appears in logs, metric labels and (later) admin URLs: letters, digits and
/// `- _ . : [ ]` (so that an address, IPv6 included, is a valid name).
pub fn valid_backend_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b))
}
