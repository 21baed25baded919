#![no_main]
//! A hostile Lua plugin calling every Lua API function with input-chosen values of any type.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugboard::fuzz_entry::lua_api(data);
});
