//! Entry for the `rdp` fuzz target (`fuzz/`) and its corpus replay test: the first bytes of a
//! connection, as any client may send them, through the parser and the whole persistence
//! decision. Kept beside the parser so the target needs nothing private. Not an API.

use plugboard_sdk::testing::{Mock, MockBackend};
use plugboard_sdk::{Config, Key, Plugin};

use crate::{decode_token, parse, Parsed, RdpCookie};

/// Panics when an invariant breaks.
pub fn connection_request(data: &[u8]) {
    let parsed = parse(data);
    if let Parsed::Request { token, cookie } = &parsed {
        for part in [token, cookie].into_iter().flatten() {
            assert!(!part.windows(2).any(|w| w == b"\r\n"), "a field spans CRLF");
        }
        // The packet is self-delimited: bytes after it change nothing.
        let mut more = data.to_vec();
        more.push(0x03);
        assert_eq!(parse(&more), parsed, "trailing bytes changed the parse");
    }
    for token in [data.to_vec(), [b"Cookie: msts=".as_slice(), data].concat()] {
        if let Some(addr) = decode_token(&token) {
            assert!(
                addr.parse::<std::net::SocketAddrV4>().is_ok(),
                "decoded {addr:?}"
            );
        }
    }
    let plugin = RdpCookie::new(&Config::from_json(r#"{"strip_domain": true}"#)).unwrap();
    let mut mock = Mock {
        mode: "tcp".into(),
        payload: Some(data.to_vec()),
        backends: vec![
            MockBackend::new("10.0.0.1:3389"),
            MockBackend::new("1.0.0.127:15629"),
        ],
        ..Mock::default()
    };
    if let Key::Backend(i) = mock.run(|_, b| plugin.decide(data, b)) {
        assert!(i < 2, "backend {i} of 2");
    }
}

/// Replays the committed corpus, so `cargo test` keeps guarding what the campaigns found
/// without the nightly toolchain.
#[test]
fn fuzz_corpus_replays() {
    plugboard_sdk::testing::replay_corpus(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/rdp"),
        connection_request,
    );
}
