//! Entry for the `cookies` fuzz target (`fuzz/`) and its corpus replay test: an `MS-WSMAN`
//! cookie value, as any client may send it, through the plugin's key and response steps on a
//! mock host. The host's parsing of the `Cookie` header that yields the value is fuzzed by the
//! same target through `plugboard::fuzz_entry::cookie`. Not an API.

use plugboard_sdk::testing::{response, Mock, MockBackend};
use plugboard_sdk::{Config, Key, PersistenceKey, Plugin};

use crate::{McxAffinity, COOKIE};

/// Panics when an invariant breaks.
pub fn cookie(value: &[u8]) {
    let value = String::from_utf8_lossy(value).into_owned();
    let mut plugin = McxAffinity::new(&Config::from_json("{}")).unwrap();
    let mut mock = Mock {
        backends: vec![
            MockBackend::new("10.0.0.1:443").named("fe01"),
            MockBackend::new("10.0.0.2:443").named("fe02"),
        ],
        cookies: vec![(COOKIE.to_string(), value.clone())],
        ..Mock::default()
    };
    let named = match mock.run(|r, b| plugin.key(r, b)) {
        Key::Backend(i) => {
            assert_eq!(
                mock.backends[i].cookie_id, value,
                "a forged cookie chose a backend"
            );
            Some(i)
        }
        Key::None => None,
        _ => panic!("mcx-affinity answers a backend or no key"),
    };
    mock.run(|r, b| plugin.on_response(r, b, named, 1, &mut response()));
    for (name, v) in &mock.response_headers {
        assert_eq!(name, "Set-Cookie");
        assert_eq!(
            *v,
            format!("{COOKIE}={}; Path=/", mock.backends[1].cookie_id)
        );
    }
}

/// Replays the committed corpus, so `cargo test` keeps guarding what the campaigns found
/// without the nightly toolchain.
#[test]
fn fuzz_corpus_replays() {
    plugboard_sdk::testing::replay_corpus(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/cookies"),
        cookie,
    );
}
