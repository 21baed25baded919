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

/// Every target in `fuzz/fuzz_targets/` calls one entry function whose corpus a stable test
/// replays (here, or in the plugin's own `fuzz_corpus_replays`): a new target without a replay,
/// or a target calling another function than the one replayed, fails here.
#[test]
fn every_fuzz_target_calls_a_replayed_entry() {
    let replayed = [
        ("proxy_header", "plugboard::fuzz_entry::proxy_header(data)"),
        ("config", "plugboard::fuzz_entry::config(data)"),
        ("cookies", "plugboard::fuzz_entry::cookie(data)"),
        ("cookies", "mcx_affinity::fuzz::cookie(data)"),
        ("wasm_abi", "plugboard::fuzz_entry::wasm_abi(data)"),
        ("lua_api", "plugboard::fuzz_entry::lua_api(data)"),
        ("rdp", "rdp_cookie::fuzz::connection_request(data)"),
        ("agent_reply", "agent_load::fuzz::agent_reply(data)"),
    ];
    let dir = format!("{}/../fuzz/fuzz_targets", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let target = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let calls: Vec<_> = replayed
            .iter()
            .filter(|(t, call)| *t == target && text.contains(call))
            .collect();
        assert!(
            !calls.is_empty(),
            "{}: calls no entry function whose corpus is replayed",
            path.display()
        );
        seen += 1;
    }
    assert_eq!(seen, 7, "fuzz targets in {dir}");
}
