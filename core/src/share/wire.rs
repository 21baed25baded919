//! Names in Redis and the messages instances publish to each other.
//!
//! - A pin is the string key `PREFIX:pin:SERVICE:TABLE:HASH` holding the backend's name, with
//!   the persistence timeout as its expiry (`SET .. PX`). `TABLE` tells tables of different
//!   secrets or key kinds apart; `HASH` is the keyed hash of the persistence key.
//! - New and refreshed pins are also published on `PREFIX:pins` as one JSON message per batch
//!   and service, which every instance subscribes to.

use serde::{Deserialize, Serialize};

/// A batch of pins one instance made or refreshed.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// The sending instance (random per process): it skips its own messages.
    pub from: u64,
    pub service: String,
    pub table: String,
    /// `(hash as 16 hex digits, backend name)`.
    pub pins: Vec<(String, String)>,
}

/// Most pins in one published message.
pub const BATCH: usize = 500;

pub fn channel(prefix: &str) -> String {
    format!("{prefix}:pins")
}

pub fn pin_key(prefix: &str, service: &str, table: &str, hash: u64) -> String {
    format!("{prefix}:pin:{service}:{table}:{hash:016x}")
}

/// The `SCAN MATCH` pattern of one table's pins (glob characters in the names escaped).
pub fn pattern(prefix: &str, service: &str, table: &str) -> String {
    let mut out = String::new();
    for part in [prefix, ":pin:", service, ":", table, ":"] {
        for c in part.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('*');
    out
}

/// The hash at the end of a pin's key.
pub fn hash_of(key: &str) -> Option<u64> {
    parse_hash(key.rsplit(':').next()?)
}

pub fn parse_hash(hex: &str) -> Option<u64> {
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_patterns() {
        let k = pin_key("pb", "web", "0a1b2c3d", 0xfeed);
        assert_eq!(k, "pb:pin:web:0a1b2c3d:000000000000feed");
        assert_eq!(hash_of(&k), Some(0xfeed));
        assert_eq!(hash_of("pb:pin:web:x:feed"), None);
        assert_eq!(pattern("pb", "a*b", "t"), "pb:pin:a\\*b:t:*");
    }

    #[test]
    fn messages_round_trip() {
        let m = Message {
            from: 7,
            service: "rds".into(),
            table: "0a1b2c3d".into(),
            pins: vec![(format!("{:016x}", 1u64), "rdsh-1".into())],
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    }
}
