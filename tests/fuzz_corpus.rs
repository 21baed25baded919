//! Replays the committed fuzz corpora (`fuzz/corpus/<target>`, minimized after each campaign,
//! crash inputs included) through the same entry functions the fuzz targets call, so a plain
//! stable `cargo test` guards everything the campaigns found. The targets themselves need
//! nightly and cargo-fuzz: `scripts/fuzz`.

use plugboard::fuzz_entry;
use plugboard_sdk::testing::replay_corpus;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    replay_corpus(&dir, entry);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", fuzz_entry::proxy_header);
}

#[test]
fn config_corpus() {
    replay("config", fuzz_entry::config);
}

#[test]
fn cookies_corpus() {
    replay("cookies", fuzz_entry::cookie);
}

#[test]
fn wasm_abi_corpus() {
    replay("wasm_abi", fuzz_entry::wasm_abi);
}

#[test]
fn lua_api_corpus() {
    replay("lua_api", fuzz_entry::lua_api);
}
