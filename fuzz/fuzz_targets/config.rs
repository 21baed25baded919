#![no_main]
//! A TOML configuration: no panic, every error at FILE:LINE:COL.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugboard::fuzz_entry::config(data);
});
