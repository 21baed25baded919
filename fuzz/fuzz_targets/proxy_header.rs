#![no_main]
//! A PROXY protocol v1/v2 header arriving in pieces: framing, then ppp's parse.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugboard::fuzz_entry::proxy_header(data);
});
