//! The input a plugin is tried on outside the proxy: a request (or a tcp payload), a client
//! address and a pool of backends, each written the way `plugin check` options and CASES.toml
//! fields write them.

use std::fmt::Write;
use std::net::SocketAddr;

use pingora::http::RequestHeader;

use crate::balance::hooks::Request;
use crate::balance::identity::CookieKey;
use crate::balance::pool::Pool;
use crate::config::{BackendConfig, Mode, DEFAULT_SECRET};

/// Most backends a sample pool may have.
pub const MAX_BACKENDS: usize = 64;
/// Largest sample payload, bytes (what tcp inspection reads at most is of this order).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The name the sample service has in what the plugin sees (`req.service`).
const SERVICE: &str = "sample";

/// One input: what the plugin's hooks are called with.
pub struct Sample {
    /// `GET /path?query` and its headers (http), or `None` with a payload (tcp).
    pub http: Option<RequestHeader>,
    pub payload: Vec<u8>,
    pub client: SocketAddr,
    pub backends: Vec<SocketAddr>,
    /// Backends (0-based) whose health check is down: not available to the plugin.
    pub down: Vec<usize>,
}

impl Sample {
    /// `GET /` with `Host: example.test`, `X-User: alice` and `Cookie: session=s1`, from
    /// 127.0.0.1:40000, three backends 127.0.0.1:9001-9003, all up.
    pub fn new() -> Sample {
        let mut s = Sample {
            http: None,
            payload: Vec::new(),
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            backends: numbered(3),
            down: Vec::new(),
        };
        s.set_request("GET /").expect("a valid request line");
        s.set_headers(&["X-User: alice", "Cookie: session=s1"])
            .expect("valid headers");
        s
    }

    /// Replaces every header but `Host` with `list` (`Name: value` each).
    pub fn set_headers<S: AsRef<str>>(&mut self, list: &[S]) -> Result<(), String> {
        if let Some(h) = self.http.as_mut() {
            let names: Vec<_> = h.headers.keys().cloned().collect();
            for n in names.iter().filter(|n| *n != http::header::HOST) {
                h.remove_header(n);
            }
        }
        list.iter().try_for_each(|t| self.add_header(t.as_ref()))
    }

    /// Replaces the request with `METHOD TARGET` (`GET /admin/x?y=1`); headers are kept.
    pub fn set_request(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.split_ascii_whitespace();
        let (Some(method), Some(target), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "request {line:?}: expected METHOD and TARGET, as in \"GET /admin/x\""
            ));
        };
        if !target.starts_with('/') {
            return Err(format!("request {line:?}: the target must start with /"));
        }
        let mut h = RequestHeader::build(method, target.as_bytes(), None)
            .map_err(|e| format!("request {line:?}: {e}"))?;
        let old = self.http.take();
        match old {
            Some(old) => {
                for (n, v) in old.headers.iter() {
                    let _ = h.append_header(n.clone(), v.clone());
                }
            }
            None => {
                let _ = h.insert_header("host", "example.test");
            }
        }
        self.http = Some(h);
        self.payload.clear();
        Ok(())
    }

    /// Adds a header written `Name: value`; a `Host` header replaces the default one.
    pub fn add_header(&mut self, text: &str) -> Result<(), String> {
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| format!("header {text:?}: expected \"Name: value\""))?;
        let Some(h) = self.http.as_mut() else {
            return Err("a header needs an http request, not a tcp payload".into());
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        let r = match name.eq_ignore_ascii_case("host") {
            true => h.insert_header(name, value),
            false => h.append_header(name, value).map(|_| ()),
        };
        r.map_err(|e| format!("header {text:?}: {e}"))
    }

    /// Makes the sample a tcp connection whose first bytes are `hex`.
    pub fn set_payload_hex(&mut self, hex: &str) -> Result<(), String> {
        let hex: String = hex.split_ascii_whitespace().collect();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("payload {hex:?}: not hexadecimal"));
        }
        if !hex.len().is_multiple_of(2) || hex.len() / 2 > MAX_PAYLOAD {
            return Err(format!(
                "payload: an even number of hex digits is needed, at most {MAX_PAYLOAD} bytes"
            ));
        }
        self.payload = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("payload: {e}"))?;
        self.http = None;
        Ok(())
    }

    pub fn set_client(&mut self, text: &str) -> Result<(), String> {
        self.client = text
            .parse()
            .map_err(|_| format!("client {text:?}: expected IP:PORT"))?;
        Ok(())
    }

    /// `N` backends 127.0.0.1:9001.. or a comma-separated list of `IP:PORT`.
    pub fn set_backends(&mut self, text: &str) -> Result<(), String> {
        let list = match text.trim().parse::<usize>() {
            Ok(n) => numbered(n),
            Err(_) => text
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse()
                        .map_err(|_| format!("backend {a:?}: expected IP:PORT"))
                })
                .collect::<Result<_, _>>()?,
        };
        self.set_backend_list(list)
    }

    pub fn set_backend_list(&mut self, list: Vec<SocketAddr>) -> Result<(), String> {
        if list.is_empty() || list.len() > MAX_BACKENDS {
            return Err(format!("backends: 1 to {MAX_BACKENDS} are needed"));
        }
        self.backends = list;
        Ok(())
    }

    /// A fresh pool of the sample's backends, with the `down` ones failed.
    pub fn pool(&self) -> Pool {
        let configs: Vec<BackendConfig> = self
            .backends
            .iter()
            .map(|&address| BackendConfig {
                hostname: None,
                name: address.to_string(),
                address,
                weight: 1,
                enabled: true,
                max_connections: None,
            })
            .collect();
        let pool = Pool::new(SERVICE, &configs, None, &CookieKey::new(DEFAULT_SECRET));
        for &i in &self.down {
            pool.observe(i, false, 1, 1);
        }
        pool
    }

    /// The view a hook gets.
    pub fn request(&self) -> Request<'_> {
        Request {
            service: SERVICE,
            mode: match self.http {
                Some(_) => Mode::Http,
                None => Mode::Tcp,
            },
            client: Some(self.client),
            http: self.http.as_ref(),
            payload: &self.payload,
            key: None,
        }
    }

    /// What the plugin is called with, in a few lines; backends numbered from `first`.
    pub fn describe(&self, first: usize) -> String {
        let mut out = String::new();
        match &self.http {
            Some(h) => {
                let _ = writeln!(out, "sample request: {} {}", h.method, h.uri);
                for (n, v) in h.headers.iter() {
                    let _ = writeln!(out, "  {n}: {}", String::from_utf8_lossy(v.as_bytes()));
                }
            }
            None => {
                let hex: String = self.payload.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(
                    out,
                    "sample tcp payload: {} bytes: {hex}",
                    self.payload.len()
                );
            }
        }
        let _ = writeln!(out, "sample client: {}", self.client);
        let listed: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let down = if self.down.contains(&i) {
                    " (down)"
                } else {
                    ""
                };
                format!("{} {a}{down}", i + first)
            })
            .collect();
        let _ = writeln!(
            out,
            "sample backends: {} (numbered from {first})",
            listed.join(", ")
        );
        out
    }
}

impl Default for Sample {
    fn default() -> Self {
        Sample::new()
    }
}

/// `n` backends on 127.0.0.1 from port 9001.
fn numbered(n: usize) -> Vec<SocketAddr> {
    (1..=n.min(MAX_BACKENDS + 1))
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
        .collect()
}
