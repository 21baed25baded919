//! Entry for the `agent_reply` fuzz target (`fuzz/`) and its corpus replay test: an agent's
//! answer, as a compromised or broken server may send it, through both parsers and the whole
//! health-check hook on a mock host. Not an API.

use plugboard_sdk::testing::{Mock, MockBackend};
use plugboard_sdk::{agent, Config, HealthCheck, Plugin};

use crate::{parse_haproxy, parse_kemp, AgentLoad};

/// Panics when an invariant breaks.
pub fn agent_reply(data: &[u8]) {
    if let Some(r) = parse_kemp(data) {
        assert!(r.load.is_none_or(|l| l <= 100));
    }
    if let Some(r) = parse_haproxy(data) {
        assert!(r.weight_abs.is_none_or(|w| w <= 256));
    }
    for (protocol, answer) in [
        ("kemp", (200, data.to_vec())),
        ("haproxy", (0, data.to_vec())),
    ] {
        let settings = format!(r#"{{"protocol": "{protocol}"}}"#);
        let mut plugin = AgentLoad::new(&Config::from_json(&settings)).unwrap();
        let mut mock = Mock {
            backends: vec![MockBackend::new("10.0.0.1:80")],
            net_answers: vec![Some(answer)],
            ..Mock::default()
        };
        mock.run(|_, b| plugin.check(b.get(0).unwrap(), "10.0.0.1:80"));
        for &(prop, value) in &mock.agent_out {
            match prop {
                0 => assert!(
                    (0..=agent::MAX_WEIGHT_PERCENT as i64).contains(&value),
                    "weight percent {value} is outside what the host accepts"
                ),
                1 => assert!((0..=u32::MAX as i64).contains(&value)),
                2 => assert!((0..=2).contains(&value)),
                3 => assert!((0..=1).contains(&value)),
                _ => panic!("unknown agent property {prop}"),
            }
        }
        if let Some(l) = mock.load_out {
            assert!((-1..=100).contains(&l));
        }
    }
}

/// Replays the committed corpus, so `cargo test` keeps guarding what the campaigns found
/// without the nightly toolchain.
#[test]
fn fuzz_corpus_replays() {
    plugboard_sdk::testing::replay_corpus(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/agent_reply"),
        agent_reply,
    );
}
