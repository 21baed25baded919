#![no_main]
//! A Cookie header through the proxy's cookie parsing and inserted-cookie key, and an MS-WSMAN value through mcx-affinity.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugboard::fuzz_entry::cookie(data);
    mcx_affinity::fuzz::cookie(data);
});
