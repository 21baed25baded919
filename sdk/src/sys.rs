//! The host functions of the ABI (`sdk/ABI.md`). On wasm32 they are imports from module
//! `plugboard`; elsewhere they are served by [`crate::testing`].

/// Safe wrappers: each forwards to the import (wasm32) or the mock host (elsewhere).
macro_rules! wrappers {
    ($( fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)?; )*) => {
        $(
            #[cfg(target_arch = "wasm32")]
            pub fn $name($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the host validates every pointer/length pair against the guest's
                // memory; the pointers passed here come from live Rust buffers.
                unsafe { self::wasm::$name($($arg),*) }
            }
            #[cfg(not(target_arch = "wasm32"))]
            pub fn $name($($arg: $ty),*) $(-> $ret)? {
                crate::testing::host::$name($($arg),*)
            }
        )*
    };
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    #[link(wasm_import_module = "plugboard")]
    unsafe extern "C" {
        pub fn request_get(field: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn request_header(name: *const u8, name_len: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn request_cookie(name: *const u8, name_len: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn backend_count() -> i32;
        pub fn backend_get(index: i32, prop: i32) -> i64;
        pub fn backend_address(index: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn backend_name(index: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn backend_cookie_id(index: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn set_key(ptr: *const u8, len: i32) -> i32;
        pub fn set_backend(index: i32) -> i32;
        pub fn set_load(load: i32) -> i32;
        pub fn set_agent(prop: i32, value: i64) -> i32;
        pub fn response_add_header(
            name: *const u8,
            name_len: i32,
            value: *const u8,
            value_len: i32,
        ) -> i32;
        pub fn log(level: i32, ptr: *const u8, len: i32);
        pub fn check_target(buf: *mut u8, cap: i32) -> i32;
        pub fn tcp_exchange(
            addr: *const u8,
            addr_len: i32,
            send: *const u8,
            send_len: i32,
            want: i32,
            timeout_ms: i32,
        ) -> i32;
        pub fn http_get(
            addr: *const u8,
            addr_len: i32,
            path: *const u8,
            path_len: i32,
            timeout_ms: i32,
        ) -> i32;
        pub fn last_response(buf: *mut u8, cap: i32) -> i32;
        pub fn shared_counter_add(n: i32, delta: i64) -> i64;
        pub fn shared_get(key: *const u8, key_len: i32, buf: *mut u8, cap: i32) -> i32;
        pub fn shared_set(key: *const u8, key_len: i32, value: *const u8, value_len: i32) -> i32;
        pub fn shared_cas(
            key: *const u8,
            key_len: i32,
            expected: *const u8,
            expected_len: i32,
            value: *const u8,
            value_len: i32,
        ) -> i32;
    }
}

wrappers! {
    fn request_get(field: i32, buf: *mut u8, cap: i32) -> i32;
    fn request_header(name: *const u8, name_len: i32, buf: *mut u8, cap: i32) -> i32;
    fn request_cookie(name: *const u8, name_len: i32, buf: *mut u8, cap: i32) -> i32;
    fn backend_count() -> i32;
    fn backend_get(index: i32, prop: i32) -> i64;
    fn backend_address(index: i32, buf: *mut u8, cap: i32) -> i32;
    fn backend_name(index: i32, buf: *mut u8, cap: i32) -> i32;
    fn backend_cookie_id(index: i32, buf: *mut u8, cap: i32) -> i32;
    fn set_key(ptr: *const u8, len: i32) -> i32;
    fn set_backend(index: i32) -> i32;
    fn set_load(load: i32) -> i32;
    fn set_agent(prop: i32, value: i64) -> i32;
    fn response_add_header(name: *const u8, name_len: i32, value: *const u8, value_len: i32) -> i32;
    fn log(level: i32, ptr: *const u8, len: i32);
    fn check_target(buf: *mut u8, cap: i32) -> i32;
    fn tcp_exchange(addr: *const u8, addr_len: i32, send: *const u8, send_len: i32, want: i32, timeout_ms: i32) -> i32;
    fn http_get(addr: *const u8, addr_len: i32, path: *const u8, path_len: i32, timeout_ms: i32) -> i32;
    fn last_response(buf: *mut u8, cap: i32) -> i32;
    fn shared_counter_add(n: i32, delta: i64) -> i64;
    fn shared_get(key: *const u8, key_len: i32, buf: *mut u8, cap: i32) -> i32;
    fn shared_set(key: *const u8, key_len: i32, value: *const u8, value_len: i32) -> i32;
    fn shared_cas(key: *const u8, key_len: i32, expected: *const u8, expected_len: i32, value: *const u8, value_len: i32) -> i32;
}
