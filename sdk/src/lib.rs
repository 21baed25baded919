//! `plugboard-sdk`: write Plugboard plugins in Rust and build them to WebAssembly.
//!
//! A plugin is a type that implements [`Plugin`] (built once per service from its
//! `[service.plugin.<name>]` settings) and any of [`SelectServer`], [`PersistenceKey`] and
//! [`HealthCheck`]; [`export_plugin!`] generates the exports of the ABI (`sdk/ABI.md`).
//!
//! ```
//! use plugboard_sdk::{export_plugin, Backends, Config, Plugin, Request, SelectServer};
//!
//! /// Sends every request to the backend named in the settings while it is available.
//! struct Pin { address: String }
//!
//! impl Plugin for Pin {
//!     fn new(config: &Config) -> Result<Self, String> {
//!         let address = config.str("address").ok_or("setting `address` is required")?;
//!         Ok(Pin { address: address.to_string() })
//!     }
//! }
//!
//! impl SelectServer for Pin {
//!     fn select(&mut self, _req: &Request, backends: &Backends) -> Option<usize> {
//!         backends.find(&self.address).filter(|b| b.available()).map(|b| b.index)
//!     }
//! }
//!
//! export_plugin!(Pin => select_server);
//! # fn main() {}
//! ```
//!
//! A stateless hook can be a plain function: [`export_select!`] and [`export_key!`] make the
//! plugin type. A scheduler that sends `/admin` to the first backend and the rest round robin,
//! globally across worker threads:
//!
//! ```
//! use plugboard_sdk::{export_select, shared::Counter, Backends, Request};
//!
//! fn select(req: &Request, backends: &Backends) -> Option<usize> {
//!     if req.path()?.starts_with("/admin") {
//!         return Some(0);
//!     }
//!     let rest = backends.available().filter(|b| b.index > 0);
//!     Counter(0).pick(rest).map(|b| b.index)
//! }
//!
//! export_select!(select);
//! # fn main() {}
//! ```
//!
//! **State.** Plugboard runs one instance of a plugin per service and worker thread: a
//! plugin's fields are per thread (a round robin in a field is not global). Data every thread
//! sees is in [`shared`]: atomic counters and a small key-value store, held by the host.
//!
//! **Request fields.** [`Request::path`] is the path as the client sent it, without the query
//! string (that is [`Request::query`]) and not percent-decoded.
//!
//! Build with `cargo build --target wasm32-unknown-unknown --release` and copy the `.wasm`
//! into the plugins directory. On other targets the host functions are served by
//! [`testing`], so a plugin's logic can be unit-tested natively. The ABI itself (for other
//! languages) is `sdk/ABI.md`.
#![warn(missing_docs)]

/// A JSON value, as settings are handed over ([`Config::value`]).
pub use serde_json::Value;

pub mod shared;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The ABI version this SDK implements.
pub const ABI_VERSION: i32 = 1;

/// A plugin's settings: the `[service.plugin.<name>]` table of the service using it.
///
/// ```
/// use plugboard_sdk::Config;
/// let c = Config::from_json(r#"{"header": "X-User", "max": 3, "strict": true}"#);
/// assert_eq!(c.str("header"), Some("X-User"));
/// assert_eq!(c.int("max"), Some(3));
/// assert_eq!(c.bool("strict"), Some(true));
/// assert_eq!(c.str("missing"), None);
/// ```
pub struct Config(Value);

impl Config {
    /// Settings from JSON text (for tests; the host hands settings over as JSON).
    pub fn from_json(text: &str) -> Config {
        Config(serde_json::from_str(text).unwrap_or(Value::Null))
    }
    /// The whole table.
    pub fn value(&self) -> &Value {
        &self.0
    }
    /// A setting of any type.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
    /// A string setting (`None` when absent or not a string).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.as_str()
    }
    /// An integer setting.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.0.get(key)?.as_i64()
    }
    /// A boolean setting.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.0.get(key)?.as_bool()
    }
}

/// Reads a host value into a buffer, growing it once if the value is larger.
fn read(mut f: impl FnMut(*mut u8, i32) -> i32) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = f(buf.as_mut_ptr(), buf.len() as i32);
    if n < 0 {
        return None;
    }
    if n as usize > buf.len() {
        buf.resize(n as usize, 0);
        let m = f(buf.as_mut_ptr(), buf.len() as i32);
        if m < 0 {
            return None;
        }
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn read_string(f: impl FnMut(*mut u8, i32) -> i32) -> Option<String> {
    read(f).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The request or connection being balanced. Fields are read from the host on demand (each
/// call asks the host again: keep a value you use twice).
///
/// ```
/// use plugboard_sdk::{testing::Mock, Request};
/// let mut mock = Mock::default();
/// mock.path = Some("/admin/users".into());
/// mock.query = Some("page=2".into());
/// mock.run(|req: &Request, _| {
///     assert_eq!(req.path().as_deref(), Some("/admin/users")); // no query string
///     assert_eq!(req.query().as_deref(), Some("page=2"));
/// });
/// ```
pub struct Request {
    _private: (),
}

impl Request {
    fn field(&self, f: i32) -> Option<Vec<u8>> {
        read(|p, c| sys::request_get(f, p, c))
    }
    fn text(&self, f: i32) -> Option<String> {
        self.field(f)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    /// The service's name.
    pub fn service(&self) -> String {
        self.text(0).unwrap_or_default()
    }
    /// `"http"` or `"tcp"`.
    pub fn mode(&self) -> String {
        self.text(1).unwrap_or_default()
    }
    /// The client's IP address (the PROXY header's source on `accept_proxy` addresses).
    pub fn client_ip(&self) -> Option<String> {
        self.text(2)
    }
    /// The client's source port.
    pub fn client_port(&self) -> Option<u16> {
        self.text(3)?.parse().ok()
    }
    /// The persistence key of this request, when one was computed.
    pub fn key(&self) -> Option<Vec<u8>> {
        self.field(4)
    }
    /// http: the method (`GET`, ...).
    pub fn method(&self) -> Option<String> {
        self.text(5)
    }
    /// http: the request target's path as sent (not percent-decoded), without the query
    /// string (see [`Request::query`]).
    pub fn path(&self) -> Option<String> {
        self.text(6)
    }
    /// The query string, without `?`; `None` when the target has none.
    pub fn query(&self) -> Option<String> {
        self.text(9)
    }
    /// http: the `Host` (or the target's authority).
    pub fn host(&self) -> Option<String> {
        self.text(7)
    }
    /// tcp mode: the client's first bytes seen so far.
    pub fn payload(&self) -> Option<Vec<u8>> {
        self.field(8)
    }
    /// http: the first value of a header, name case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        read_string(|p, c| sys::request_header(name.as_ptr(), name.len() as i32, p, c))
    }
    /// http: a cookie's value from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<String> {
        read_string(|p, c| sys::request_cookie(name.as_ptr(), name.len() as i32, p, c))
    }
}

/// The service's backends, in configuration order (index 0 is the first `[[service.backend]]`).
///
/// ```
/// use plugboard_sdk::testing::{Mock, MockBackend};
/// let mut mock = Mock::default();
/// mock.backends = vec![MockBackend::new("10.0.0.1:80"), MockBackend::new("10.0.0.2:80")];
/// mock.backends[0].healthy = false;
/// mock.run(|_, backends| {
///     let up: Vec<usize> = backends.available().map(|b| b.index).collect();
///     assert_eq!(up, [1]);
///     assert_eq!(backends.find("10.0.0.2:80").map(|b| b.index), Some(1));
/// });
/// ```
pub struct Backends {
    len: usize,
}

impl Backends {
    /// How many backends the service has.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No backends at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The backend at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<Backend> {
        (index < self.len).then_some(Backend { index })
    }
    /// Every backend, in order.
    pub fn iter(&self) -> impl Iterator<Item = Backend> + Clone {
        (0..self.len).map(|index| Backend { index })
    }
    /// The backend with this `IP:PORT` address.
    pub fn find(&self, address: &str) -> Option<Backend> {
        self.iter().find(|b| b.address() == address)
    }
    /// The backend with this name (`[[service.backend]] name`, by default its address).
    pub fn find_name(&self, name: &str) -> Option<Backend> {
        self.iter().find(|b| b.name() == name)
    }
    /// The backends that can take this request ([`Backend::available`]), in order.
    pub fn available(&self) -> impl Iterator<Item = Backend> + Clone {
        self.iter().filter(|b| b.available())
    }
}

/// One backend; its live state is read from the host on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Position in this call's pool (0-based). It can change with a reload: to remember a
    /// backend beyond one call, keep its [`Backend::name`].
    pub index: usize,
}

impl Backend {
    fn prop(&self, p: i32) -> i64 {
        sys::backend_get(self.index as i32, p)
    }
    /// `IP:PORT`.
    pub fn address(&self) -> String {
        read_string(|p, c| sys::backend_address(self.index as i32, p, c)).unwrap_or_default()
    }
    /// The backend's stable name: what persistence and cookies know it by, whatever its
    /// position in the list.
    pub fn name(&self) -> String {
        read_string(|p, c| sys::backend_name(self.index as i32, p, c)).unwrap_or_default()
    }
    /// The value a cookie naming this backend carries: a MAC of the service and backend
    /// names under the proxy's `secret_file`, the same on every instance.
    pub fn cookie_id(&self) -> String {
        read_string(|p, c| sys::backend_cookie_id(self.index as i32, p, c)).unwrap_or_default()
    }
    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.prop(0).max(0) as u32
    }
    /// Requests or connections in flight.
    pub fn active(&self) -> u32 {
        self.prop(1).max(0) as u32
    }
    /// Last load 0-100 reported by the health check, if any.
    pub fn load(&self) -> Option<u8> {
        u8::try_from(self.prop(2)).ok()
    }
    /// Can take this request, exactly as the proxy's own schedulers decide: health check up,
    /// enabled, its agent ready and up with a non-zero weight, under its connection limit, and
    /// not already failed for this request. A pick that is not available is replaced by the
    /// service's fallback scheduler.
    pub fn available(&self) -> bool {
        self.prop(3) == 1
    }
    /// The same as [`Backend::available`] (its name in earlier versions).
    pub fn healthy(&self) -> bool {
        self.available()
    }
    /// The health check's verdict alone.
    pub fn up(&self) -> bool {
        self.prop(10) == 1
    }
    /// Not disabled in the configuration.
    pub fn enabled(&self) -> bool {
        self.prop(4) == 1
    }
    /// Weight in thousandths after slow start and the agent's weight percentage.
    pub fn effective_weight(&self) -> u32 {
        self.prop(5).max(0) as u32
    }
    /// What the backend's agent last reported (see [`agent`]).
    pub fn agent_weight_percent(&self) -> u32 {
        self.prop(6).max(0) as u32
    }
    /// The connection limit the agent reported (0: none).
    pub fn agent_maxconn(&self) -> u32 {
        self.prop(7).max(0) as u32
    }
    /// The admin state the agent reported.
    pub fn agent_admin(&self) -> agent::Admin {
        match self.prop(8) {
            1 => agent::Admin::Drain,
            2 => agent::Admin::Maint,
            _ => agent::Admin::Ready,
        }
    }
    /// The agent's own up/down verdict.
    pub fn agent_up(&self) -> bool {
        self.prop(9) != 0
    }
}

/// What a persistence-key hook decided.
pub enum Key {
    /// No key: the scheduler decides and nothing is pinned.
    None,
    /// Pin the request's backend under this key.
    Key(Vec<u8>),
    /// tcp mode: the payload is incomplete, call again with more bytes.
    NeedMore,
    /// The request names this backend itself.
    Backend(usize),
}

/// The response being sent to the client (response step of the persistence hook).
pub struct Response {
    _private: (),
}

impl Response {
    /// Adds a header; false when the name or value is invalid.
    pub fn add_header(&mut self, name: &str, value: &str) -> bool {
        sys::response_add_header(
            name.as_ptr(),
            name.len() as i32,
            value.as_ptr(),
            value.len() as i32,
        ) == 0
    }
}

/// A health verdict.
pub enum Health {
    /// Up, with an optional load 0-100 (0 idle).
    Up {
        /// Load 0-100 to report, if the check measured one.
        load: Option<u8>,
    },
    /// Down: no new traffic until it is up again (the service's `rise`).
    Down,
}

/// Built once per service from its settings; `Err` refuses the settings (the configuration
/// check and a reload report the message).
pub trait Plugin: Sized + 'static {
    /// Reads the settings; `Err(reason)` refuses them.
    fn new(config: &Config) -> Result<Self, String>;
}

/// Which backend gets this request. `None`: no opinion (the service's fallback scheduler
/// decides).
pub trait SelectServer {
    /// The backend index for this request (see [`Backends`]), or `None` for no opinion. A
    /// backend that is not [`Backend::available`] is replaced by the fallback scheduler.
    fn select(&mut self, req: &Request, backends: &Backends) -> Option<usize>;
}

/// What makes a client sticky.
pub trait PersistenceKey {
    /// Set to true to have [`Self::on_response`] called for every response.
    const RESPONSE_STEP: bool = false;
    /// The key (or backend) of this request.
    fn key(&mut self, req: &Request, backends: &Backends) -> Key;
    /// `named`: the backend the request named ([`Key::Backend`]); `served`: the backend that
    /// served it. This may run in another instance than `key` for the same request (instances
    /// are per worker thread): derive what you need from `req` and `backends`, not from state
    /// left by `key`.
    fn on_response(
        &mut self,
        _req: &Request,
        _backends: &Backends,
        _named: Option<usize>,
        _served: usize,
        _resp: &mut Response,
    ) {
    }
}

/// Is a backend up. `target` is the address to check (`IP:PORT`). May use [`net`].
pub trait HealthCheck {
    /// The verdict for `backend`; runs on a health-check thread, with [`net`] allowed.
    fn check(&mut self, backend: Backend, target: &str) -> Health;
}

/// Agent-reported state of the backend being health-checked: call these from
/// [`HealthCheck::check`]. The proxy applies them at once: a backend that is drained, in
/// maintenance, reported down by its agent, at its connection limit, or at 0 % weight gets no
/// new traffic; the weight percentage scales its effective weight for every scheduler.
pub mod agent {
    use super::sys;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    /// An agent's admin state.
    pub enum Admin {
        /// Takes traffic.
        Ready = 0,
        /// Keeps its sticky clients, takes no new ones.
        Drain = 1,
        /// Takes no traffic.
        Maint = 2,
    }

    /// The largest weight percentage the host accepts (a weight of 1 raised to 256, HAProxy's
    /// largest weight); `set_weight_percent` above it is refused.
    pub const MAX_WEIGHT_PERCENT: u32 = 25_600;

    /// Percentage of the configured weight (HAProxy `75%`, `weight:N`), at most
    /// [`MAX_WEIGHT_PERCENT`]; 0 drains.
    pub fn set_weight_percent(p: u32) -> bool {
        sys::set_agent(0, p as i64) == 0
    }
    /// Connection limit; 0 removes it.
    pub fn set_maxconn(n: u32) -> bool {
        sys::set_agent(1, n as i64) == 0
    }
    /// Ready, drain (keeps sticky clients only) or maint (no traffic).
    pub fn set_admin(a: Admin) -> bool {
        sys::set_agent(2, a as i64) == 0
    }
    /// The agent's own up/down verdict (HAProxy `up`/`down`, KEMP `101`).
    pub fn set_up(up: bool) -> bool {
        sys::set_agent(3, up as i64) == 0
    }
    /// Reported load 0-100, or `None` to forget it.
    pub fn set_load(load: Option<u8>) -> bool {
        sys::set_load(load.map_or(-1, |l| l.min(100) as i32)) == 0
    }
}

/// Network I/O for health checks (the host refuses it elsewhere).
pub mod net {
    use super::{read, sys};

    /// Connects to `address`, sends `send`, returns what the peer answers: once `want` bytes
    /// arrived (`want` > 0), else when it closes, or a line arrived when nothing was sent, or
    /// at the timeout.
    pub fn tcp_exchange(
        address: &str,
        send: &[u8],
        want: usize,
        timeout_ms: u32,
    ) -> Option<Vec<u8>> {
        let n = sys::tcp_exchange(
            address.as_ptr(),
            address.len() as i32,
            send.as_ptr(),
            send.len() as i32,
            want as i32,
            timeout_ms as i32,
        );
        if n < 0 {
            return None;
        }
        read(sys::last_response)
    }

    /// `GET path` on `address`; returns the status and the body.
    pub fn http_get(address: &str, path: &str, timeout_ms: u32) -> Option<(u16, Vec<u8>)> {
        let s = sys::http_get(
            address.as_ptr(),
            address.len() as i32,
            path.as_ptr(),
            path.len() as i32,
            timeout_ms as i32,
        );
        if s < 0 {
            return None;
        }
        Some((s as u16, read(sys::last_response).unwrap_or_default()))
    }
}

/// Logging through the proxy's log.
pub mod log {
    use super::sys;
    /// An error line (also explains a refused `new` to the configuration check).
    pub fn error(m: &str) {
        sys::log(0, m.as_ptr(), m.len() as i32)
    }
    /// A warning.
    pub fn warn(m: &str) {
        sys::log(1, m.as_ptr(), m.len() as i32)
    }
    /// An informational line.
    pub fn info(m: &str) {
        sys::log(2, m.as_ptr(), m.len() as i32)
    }
    /// A debug line (shown with `RUST_LOG=debug`-level logging).
    pub fn debug(m: &str) {
        sys::log(3, m.as_ptr(), m.len() as i32)
    }
}

/// Glue used by [`export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::cell::UnsafeCell;

    /// The plugin value. WASM plugins are single-threaded, so no synchronisation is needed.
    pub struct Slot<T>(UnsafeCell<Option<T>>);
    // SAFETY: a wasm32 instance runs one call at a time on one thread.
    unsafe impl<T> Sync for Slot<T> {}

    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T> Slot<T> {
        pub const fn new() -> Self {
            Slot(UnsafeCell::new(None))
        }
        #[allow(clippy::mut_from_ref)]
        fn get(&self) -> Option<&mut T> {
            // SAFETY: see the `Sync` impl; calls never nest.
            unsafe { (*self.0.get()).as_mut() }
        }
        fn set(&self, v: T) {
            // SAFETY: as above.
            unsafe { *self.0.get() = Some(v) }
        }
    }

    pub fn alloc(len: i32) -> i32 {
        let b = vec![0u8; len.max(0) as usize].into_boxed_slice();
        Box::into_raw(b) as *mut u8 as usize as i32
    }

    pub fn init<T: Plugin>(slot: &Slot<T>, ptr: i32, len: i32) -> i32 {
        // SAFETY: `ptr` came from `alloc(len)` and is handed back exactly once.
        let bytes = unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                ptr as usize as *mut u8,
                len.max(0) as usize,
            ))
        };
        let value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                log::error(&format!("settings are not valid JSON: {e}"));
                return 1;
            }
        };
        match T::new(&Config(value)) {
            Ok(p) => {
                slot.set(p);
                0
            }
            Err(e) => {
                log::error(&e);
                2
            }
        }
    }

    pub fn select<T: SelectServer>(slot: &Slot<T>, n: i32) -> i32 {
        let Some(p) = slot.get() else { return -2 };
        match p.select(
            &Request { _private: () },
            &Backends {
                len: n.max(0) as usize,
            },
        ) {
            Some(i) => i as i32,
            None => -1,
        }
    }

    pub fn key<T: PersistenceKey>(slot: &Slot<T>) -> i32 {
        let Some(p) = slot.get() else { return -2 };
        let n = sys::backend_count();
        match p.key(
            &Request { _private: () },
            &Backends {
                len: n.max(0) as usize,
            },
        ) {
            Key::None => 0,
            Key::Key(k) => {
                sys::set_key(k.as_ptr(), k.len() as i32);
                1
            }
            Key::NeedMore => 2,
            Key::Backend(i) => {
                sys::set_backend(i as i32);
                3
            }
        }
    }

    pub fn on_response<T: PersistenceKey>(slot: &Slot<T>, named: i32, served: i32) -> i32 {
        let Some(p) = slot.get() else { return -2 };
        let named = (named >= 0).then_some(named as usize);
        let backends = Backends {
            len: sys::backend_count().max(0) as usize,
        };
        p.on_response(
            &Request { _private: () },
            &backends,
            named,
            served.max(0) as usize,
            &mut Response { _private: () },
        );
        0
    }

    pub fn health<T: HealthCheck>(slot: &Slot<T>, backend: i32) -> i32 {
        let Some(p) = slot.get() else { return -2 };
        let target = read_string(sys::check_target).unwrap_or_default();
        match p.check(
            Backend {
                index: backend.max(0) as usize,
            },
            &target,
        ) {
            Health::Up { load } => {
                if let Some(l) = load {
                    sys::set_load(l.min(100) as i32);
                }
                1
            }
            Health::Down => 0,
        }
    }

    pub const fn response_bit<T: PersistenceKey>() -> i32 {
        if T::RESPONSE_STEP {
            8
        } else {
            0
        }
    }
}

/// Exports a plugin type and the hooks it implements:
/// `export_plugin!(MyType => select_server, persistence_key, health_check);` (see the crate
/// example).
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty => $($hook:ident),+ $(,)?) => {
        #[doc(hidden)]
        pub mod __plugboard_exports {
            use super::*;
            static PLUGIN: $crate::__private::Slot<$ty> = $crate::__private::Slot::new();

            #[unsafe(no_mangle)]
            pub extern "C" fn plugboard_abi_version() -> i32 {
                $crate::ABI_VERSION
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn plugboard_alloc(len: i32) -> i32 {
                $crate::__private::alloc(len)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn plugboard_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::init::<$ty>(&PLUGIN, ptr, len)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn plugboard_hooks() -> i32 {
                0 $(| $crate::__hook_bits!($ty, $hook))+
            }
            $( $crate::__export_hook!($ty, PLUGIN, $hook); )+
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __hook_bits {
    ($ty:ty, select_server) => {
        1
    };
    ($ty:ty, persistence_key) => {
        2 | $crate::__private::response_bit::<$ty>()
    };
    ($ty:ty, health_check) => {
        4
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    ($ty:ty, $slot:ident, select_server) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn plugboard_select_server(n: i32) -> i32 {
            $crate::__private::select::<$ty>(&$slot, n)
        }
    };
    ($ty:ty, $slot:ident, persistence_key) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn plugboard_persistence_key() -> i32 {
            $crate::__private::key::<$ty>(&$slot)
        }
        #[unsafe(no_mangle)]
        pub extern "C" fn plugboard_on_response(named: i32, served: i32) -> i32 {
            $crate::__private::on_response::<$ty>(&$slot, named, served)
        }
    };
    ($ty:ty, $slot:ident, health_check) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn plugboard_health_check(backend: i32) -> i32 {
            $crate::__private::health::<$ty>(&$slot, backend)
        }
    };
}

/// Exports a function `fn(&Request, &Backends) -> Option<usize>` as a select-server plugin
/// with no state of its own (its settings are accepted and ignored). Keep state that must be
/// global in [`shared`]. For several hooks or settings, implement [`Plugin`] and the hook
/// traits and use [`export_plugin!`].
///
/// ```
/// use plugboard_sdk::{export_select, Backends, Request};
///
/// /// The least busy available backend.
/// fn select(_req: &Request, backends: &Backends) -> Option<usize> {
///     backends.available().min_by_key(|b| b.active()).map(|b| b.index)
/// }
///
/// export_select!(select);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_select {
    ($f:path) => {
        #[doc(hidden)]
        pub struct __PlugboardSelect;
        impl $crate::Plugin for __PlugboardSelect {
            fn new(_: &$crate::Config) -> Result<Self, String> {
                Ok(__PlugboardSelect)
            }
        }
        impl $crate::SelectServer for __PlugboardSelect {
            fn select(
                &mut self,
                req: &$crate::Request,
                backends: &$crate::Backends,
            ) -> Option<usize> {
                $f(req, backends)
            }
        }
        $crate::export_plugin!(__PlugboardSelect => select_server);
    };
}

/// Exports a function `fn(&Request, &Backends) -> Key` as a persistence-key plugin with no
/// state of its own, as [`export_select!`] does for schedulers.
///
/// ```
/// use plugboard_sdk::{export_key, Backends, Key, Request};
///
/// /// Clients are sticky by their `X-User` header.
/// fn key(req: &Request, _backends: &Backends) -> Key {
///     req.header("X-User").map_or(Key::None, |u| Key::Key(u.into_bytes()))
/// }
///
/// export_key!(key);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_key {
    ($f:path) => {
        #[doc(hidden)]
        pub struct __PlugboardKey;
        impl $crate::Plugin for __PlugboardKey {
            fn new(_: &$crate::Config) -> Result<Self, String> {
                Ok(__PlugboardKey)
            }
        }
        impl $crate::PersistenceKey for __PlugboardKey {
            fn key(&mut self, req: &$crate::Request, backends: &$crate::Backends) -> $crate::Key {
                $f(req, backends)
            }
        }
        $crate::export_plugin!(__PlugboardKey => persistence_key);
    };
}
