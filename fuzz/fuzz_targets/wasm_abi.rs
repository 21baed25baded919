#![no_main]
//! A hostile WASM guest calling every ABI host function with input-chosen offsets, lengths and indices.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugboard::fuzz_entry::wasm_abi(data);
});
