//! A mock host for unit-testing plugins natively (`cargo test`), without a proxy or WASM.
//!
//! ```
//! use plugboard_sdk::testing::{Mock, MockBackend};
//! use plugboard_sdk::{Backends, Request};
//!
//! let mut mock = Mock::default();
//! mock.headers.push(("x-user".into(), "alice".into()));
//! mock.backends = vec![MockBackend::new("10.0.0.1:80"), MockBackend::new("10.0.0.2:80")];
//! let user = mock.run(|req: &Request, backends: &Backends| {
//!     assert_eq!(backends.len(), 2);
//!     req.header("X-User")
//! });
//! assert_eq!(user.as_deref(), Some("alice"));
//! ```

use std::cell::RefCell;

use crate::{Backends, Request, Response};

/// A response handle for calling `PersistenceKey::on_response` in tests; headers it adds land
/// in `Mock::response_headers` of the mock being run.
pub fn response() -> Response {
    Response { _private: () }
}

/// One backend as the mock host reports it.
#[derive(Debug, Clone)]
pub struct MockBackend {
    /// Default: the address.
    pub name: String,
    /// `IP:PORT`.
    pub address: String,
    /// Default: `"id-"` and the name (the real host serves a MAC of the name).
    pub cookie_id: String,
    /// Configured weight.
    pub weight: u32,
    /// Requests or connections in flight.
    pub active: u32,
    /// Reported load 0-100.
    pub load: Option<u8>,
    /// The health check's verdict.
    pub healthy: bool,
    /// Not disabled in the configuration.
    pub enabled: bool,
    /// What the backend's agent reported (see [`crate::agent`]).
    pub agent_admin: crate::agent::Admin,
}

impl MockBackend {
    /// An available backend of weight 1 at `address`, named by it.
    pub fn new(address: &str) -> Self {
        MockBackend {
            name: address.into(),
            address: address.into(),
            cookie_id: format!("id-{address}"),
            weight: 1,
            active: 0,
            load: None,
            healthy: true,
            enabled: true,
            agent_admin: crate::agent::Admin::Ready,
        }
    }

    /// The same backend with another name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self.cookie_id = format!("id-{name}");
        self
    }

    /// What the host reports as available: up, enabled, and the agent ready.
    pub fn available(&self) -> bool {
        self.healthy && self.enabled && self.agent_admin == crate::agent::Admin::Ready
    }
}

/// What the mock host serves, and what the plugin told it.
#[derive(Debug, Clone, Default)]
pub struct Mock {
    /// The service's name.
    pub service: String,
    /// `http` or `tcp`.
    pub mode: String,
    /// The client's IP.
    pub client_ip: Option<String>,
    /// The client's port.
    pub client_port: Option<u16>,
    /// The persistence key (select-server).
    pub key: Option<Vec<u8>>,
    /// http: the method.
    pub method: Option<String>,
    /// http: the path, without the query string.
    pub path: Option<String>,
    /// http: the host.
    pub host: Option<String>,
    /// tcp: the client's first bytes.
    pub payload: Option<Vec<u8>>,
    /// http: the query string, without `?`.
    pub query: Option<String>,
    /// Header names are matched case-insensitively.
    pub headers: Vec<(String, String)>,
    /// Cookies by name.
    pub cookies: Vec<(String, String)>,
    /// The service's backends, in order.
    pub backends: Vec<MockBackend>,
    /// Health checks: the address to check.
    pub check_target: Option<String>,
    /// Set by the plugin.
    pub key_out: Option<Vec<u8>>,
    /// Set by the plugin: the backend the request names.
    pub backend_out: Option<i32>,
    /// Set by the plugin: the load reported.
    pub load_out: Option<i32>,
    /// `(property, value)` pairs set with the `agent` functions.
    pub agent_out: Vec<(i32, i64)>,
    /// Answers for `net::tcp_exchange` / `net::http_get`, consumed in order; `None` = the
    /// connection fails. The mock host has no network.
    pub net_answers: Vec<Option<(u16, Vec<u8>)>>,
    /// The body of the last answered net call (what `last_response` serves).
    pub last_response: Vec<u8>,
    /// Headers the response step added.
    pub response_headers: Vec<(String, String)>,
    /// Lines logged, with their level (0 error .. 3 debug).
    pub logs: Vec<(i32, String)>,
    /// The shared counters by id (see [`crate::shared`]); absent ones are 0. They persist
    /// from one [`Mock::run`] to the next, as the host's do from call to call.
    pub counters: std::collections::BTreeMap<i32, i64>,
    /// The shared key-value store, with the host's limits.
    pub shared: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

thread_local! {
    static MOCK: RefCell<Mock> = RefCell::new(Mock::default());
}

impl Mock {
    /// Runs `f` with this mock as the host, then copies back what the plugin set.
    pub fn run<R>(&mut self, f: impl FnOnce(&Request, &Backends) -> R) -> R {
        MOCK.with(|m| *m.borrow_mut() = self.clone());
        let r = f(
            &Request { _private: () },
            &Backends {
                len: self.backends.len(),
            },
        );
        MOCK.with(|m| *self = m.borrow().clone());
        r
    }
}

/// The host functions, served from the thread's [`Mock`].
pub(crate) mod host {
    use super::MOCK;

    fn out(buf: *mut u8, cap: i32, src: &[u8]) -> i32 {
        let n = src.len().min(cap.max(0) as usize);
        // SAFETY: the SDK passes a live buffer of `cap` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf, n) };
        src.len() as i32
    }

    fn text<'a>(p: *const u8, len: i32) -> &'a str {
        // SAFETY: the SDK passes a live `&str`.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(p, len.max(0) as usize)) }
    }

    pub fn request_get(field: i32, buf: *mut u8, cap: i32) -> i32 {
        MOCK.with(|m| {
            let m = m.borrow();
            let v: Option<Vec<u8>> = match field {
                0 => Some(m.service.clone().into_bytes()),
                1 => Some(m.mode.clone().into_bytes()),
                2 => m.client_ip.clone().map(String::into_bytes),
                3 => m.client_port.map(|p| p.to_string().into_bytes()),
                4 => m.key.clone(),
                5 => m.method.clone().map(String::into_bytes),
                6 => m.path.clone().map(String::into_bytes),
                7 => m.host.clone().map(String::into_bytes),
                8 => m.payload.clone(),
                9 => m.query.clone().map(String::into_bytes),
                _ => None,
            };
            v.map_or(-1, |v| out(buf, cap, &v))
        })
    }

    pub fn request_header(n: *const u8, nl: i32, buf: *mut u8, cap: i32) -> i32 {
        let name = text(n, nl);
        MOCK.with(|m| {
            let m = m.borrow();
            m.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or(-1, |(_, v)| out(buf, cap, v.as_bytes()))
        })
    }

    pub fn request_cookie(n: *const u8, nl: i32, buf: *mut u8, cap: i32) -> i32 {
        let name = text(n, nl);
        MOCK.with(|m| {
            let m = m.borrow();
            m.cookies
                .iter()
                .find(|(k, _)| k == name)
                .map_or(-1, |(_, v)| out(buf, cap, v.as_bytes()))
        })
    }

    pub fn backend_count() -> i32 {
        MOCK.with(|m| m.borrow().backends.len() as i32)
    }

    pub fn backend_get(i: i32, prop: i32) -> i64 {
        MOCK.with(|m| {
            let m = m.borrow();
            let Some(b) = m.backends.get(i.max(0) as usize) else {
                return -1;
            };
            match prop {
                0 => b.weight as i64,
                1 => b.active as i64,
                2 => b.load.map_or(-1, |l| l as i64),
                3 => b.available() as i64,
                4 => b.enabled as i64,
                5 => b.weight as i64 * 1000,
                8 => b.agent_admin as i64,
                10 => b.healthy as i64,
                _ => -1,
            }
        })
    }

    fn backend_text(
        i: i32,
        buf: *mut u8,
        cap: i32,
        f: impl Fn(&super::MockBackend) -> &str,
    ) -> i32 {
        MOCK.with(|m| {
            let m = m.borrow();
            m.backends
                .get(i.max(0) as usize)
                .map_or(-1, |b| out(buf, cap, f(b).as_bytes()))
        })
    }

    pub fn backend_address(i: i32, buf: *mut u8, cap: i32) -> i32 {
        backend_text(i, buf, cap, |b| &b.address)
    }

    pub fn backend_name(i: i32, buf: *mut u8, cap: i32) -> i32 {
        backend_text(i, buf, cap, |b| &b.name)
    }

    pub fn backend_cookie_id(i: i32, buf: *mut u8, cap: i32) -> i32 {
        backend_text(i, buf, cap, |b| &b.cookie_id)
    }

    pub fn set_key(p: *const u8, len: i32) -> i32 {
        // SAFETY: the SDK passes a live slice.
        let k = unsafe { std::slice::from_raw_parts(p, len.max(0) as usize) }.to_vec();
        MOCK.with(|m| m.borrow_mut().key_out = Some(k));
        0
    }

    pub fn set_backend(i: i32) -> i32 {
        MOCK.with(|m| m.borrow_mut().backend_out = Some(i));
        0
    }

    pub fn set_load(l: i32) -> i32 {
        MOCK.with(|m| m.borrow_mut().load_out = Some(l));
        0
    }

    pub fn set_agent(prop: i32, value: i64) -> i32 {
        MOCK.with(|m| m.borrow_mut().agent_out.push((prop, value)));
        0
    }

    pub fn response_add_header(n: *const u8, nl: i32, v: *const u8, vl: i32) -> i32 {
        let (n, v) = (text(n, nl).to_string(), text(v, vl).to_string());
        MOCK.with(|m| m.borrow_mut().response_headers.push((n, v)));
        0
    }

    pub fn log(level: i32, p: *const u8, len: i32) {
        let s = text(p, len).to_string();
        MOCK.with(|m| m.borrow_mut().logs.push((level, s)));
    }

    pub fn check_target(buf: *mut u8, cap: i32) -> i32 {
        MOCK.with(|m| {
            let m = m.borrow();
            m.check_target
                .as_ref()
                .map_or(-1, |t| out(buf, cap, t.as_bytes()))
        })
    }

    fn next_answer() -> Option<(u16, Vec<u8>)> {
        MOCK.with(|m| {
            let mut m = m.borrow_mut();
            if m.net_answers.is_empty() {
                return None;
            }
            let a = m.net_answers.remove(0);
            if let Some((_, body)) = &a {
                m.last_response = body.clone();
            }
            a
        })
    }

    /// Serves the next of `Mock::net_answers` (the status is ignored).
    pub fn tcp_exchange(_: *const u8, _: i32, _: *const u8, _: i32, _: i32, _: i32) -> i32 {
        next_answer().map_or(-1, |(_, b)| b.len() as i32)
    }

    pub fn http_get(_: *const u8, _: i32, _: *const u8, _: i32, _: i32) -> i32 {
        next_answer().map_or(-1, |(s, _)| s as i32)
    }

    pub fn last_response(buf: *mut u8, cap: i32) -> i32 {
        MOCK.with(|m| out(buf, cap, &m.borrow().last_response))
    }

    pub fn shared_counter_add(n: i32, delta: i64) -> i64 {
        if !(0..crate::shared::COUNTERS as i32).contains(&n) {
            return i64::MIN;
        }
        MOCK.with(|m| {
            let mut m = m.borrow_mut();
            let c = m.counters.entry(n).or_insert(0);
            let prev = *c;
            *c = prev.wrapping_add(delta);
            prev
        })
    }

    fn bytes<'a>(p: *const u8, len: i32) -> Option<&'a [u8]> {
        // SAFETY: the SDK passes a live slice, or a length of -1 for none.
        (len >= 0).then(|| unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    pub fn shared_get(k: *const u8, kl: i32, buf: *mut u8, cap: i32) -> i32 {
        let key = bytes(k, kl).unwrap_or_default();
        MOCK.with(|m| m.borrow().shared.get(key).map_or(-1, |v| out(buf, cap, v)))
    }

    pub fn shared_set(k: *const u8, kl: i32, v: *const u8, vl: i32) -> i32 {
        shared_cas(k, kl, k, -2, v, vl)
    }

    /// `el == -2`: no expectation (a plain set).
    pub fn shared_cas(k: *const u8, kl: i32, e: *const u8, el: i32, v: *const u8, vl: i32) -> i32 {
        use crate::shared::{MAX_ENTRIES, MAX_KEY, MAX_VALUE};
        let key = bytes(k, kl).unwrap_or_default();
        let value = bytes(v, vl);
        if key.len() > MAX_KEY || value.is_some_and(|v| v.len() > MAX_VALUE) {
            return -4;
        }
        MOCK.with(|m| {
            let mut m = m.borrow_mut();
            if el != -2 && m.shared.get(key).map(Vec::as_slice) != bytes(e, el) {
                return 0;
            }
            match value {
                None => {
                    m.shared.remove(key);
                }
                Some(v) => {
                    if !m.shared.contains_key(key) && m.shared.len() >= MAX_ENTRIES {
                        return -4;
                    }
                    m.shared.insert(key.to_vec(), v.to_vec());
                }
            }
            1
        })
    }
}

/// Feeds every file of a fuzz corpus directory (`fuzz/corpus/<target>`) to the target's entry
/// function and returns how many there were, so a plain `cargo test` replays what a fuzzing
/// campaign kept. A missing or empty directory panics: a replay of nothing must not pass.
pub fn replay_corpus(dir: &str, entry: impl Fn(&[u8])) -> usize {
    let files = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fuzz corpus {dir}: {e}"));
    let mut n = 0;
    for f in files {
        let path = f.unwrap().path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        entry(&data);
        n += 1;
    }
    assert!(n > 0, "fuzz corpus {dir} is empty");
    n
}
