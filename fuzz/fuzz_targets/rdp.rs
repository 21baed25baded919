#![no_main]
//! The first bytes of an RDP connection: X.224 Connection Request, mstshash cookie, routing token (plugins/rdp-cookie).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rdp_cookie::fuzz::connection_request(data);
});
