//! rdp-cookie: persistence for RDP farms (tcp mode, port 3389).
//!
//! **persistence-key**: reads the client's X.224 Connection Request (MS-RDPBCGR 2.2.1.1).
//! - `Cookie: mstshash=<user>` → the key is the user name (lower-cased unless
//!   `case_insensitive = false`; `DOMAIN\` stripped when `strip_domain = true`).
//! - A routing token `Cookie: msts=<ip>.<port>.<reserved>` (set by a Session Broker) → the
//!   connection goes straight to the backend with that address when it is in the pool and up,
//!   whatever the scheduler; otherwise it is balanced normally. Any other token (an opaque
//!   load-balance-info string) is used as the key.
//! - Nothing usable (no cookie, not RDP, truncated or garbled) → no key: the scheduler decides.
//!   An incomplete packet asks for more bytes, up to the service's `inspect_timeout`.
//!
//! **health-check**: sends a Connection Request and expects an X.224 Connection Confirm; an
//! RDP_NEG_FAILURE answer still proves a live RDP stack. A port that accepts but does not
//! answer RDP is down.

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzz;

use plugboard_sdk::{
    export_plugin, net, Backend, Backends, Config, Health, HealthCheck, Key, PersistenceKey,
    Plugin, Request,
};

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A prefix of a plausible Connection Request: wait for more.
    Incomplete,
    /// Not a Connection Request (another protocol, or garbled).
    NotRdp,
    /// A Connection Request with its routing token or cookie, if any.
    Request {
        token: Option<&'a [u8]>,
        cookie: Option<&'a [u8]>,
    },
}

/// Parses a TPKT + X.224 Connection Request.
pub fn parse<'a>(buf: &'a [u8]) -> Parsed<'a> {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf[0] != 3 || buf.get(1).is_some_and(|&b| b != 0) {
        return Parsed::NotRdp;
    }
    if buf.len() < 4 {
        return Parsed::Incomplete;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if len < 11 {
        return Parsed::NotRdp;
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let pkt = &buf[..len];
    if pkt[4] as usize + 5 != len || pkt[5] & 0xf0 != 0xe0 {
        return Parsed::NotRdp;
    }
    let var = &pkt[11..];
    let line = |v: &'a [u8]| -> Option<&'a [u8]> {
        let end = v.windows(2).position(|w| w == b"\r\n")?;
        Some(&v[..end])
    };
    if let Some(rest) = var.strip_prefix(b"Cookie: mstshash=") {
        return match line(rest) {
            Some(user) => Parsed::Request {
                token: None,
                cookie: Some(user),
            },
            None => Parsed::NotRdp,
        };
    }
    // A routing token is text ending in CRLF; rdpNegReq starts with the binary type 0x01.
    if var.first().is_some_and(|&b| (0x20..0x7f).contains(&b)) {
        return match line(var) {
            Some(token) => Parsed::Request {
                token: Some(token),
                cookie: None,
            },
            None => Parsed::NotRdp,
        };
    }
    Parsed::Request {
        token: None,
        cookie: None,
    }
}

/// Decodes `Cookie: msts=<A>.<P>.<R>`: `A` is a u32 whose little-endian bytes are the IPv4
/// octets, `P` the port with its bytes swapped. `None` for any other token.
pub fn decode_token(token: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(token.strip_prefix(b"Cookie: msts=")?).ok()?;
    let mut parts = t.splitn(3, '.');
    let a: u32 = parts.next()?.parse().ok()?;
    let p: u16 = parts.next()?.parse().ok()?;
    let reserved = parts.next()?;
    if !reserved.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let [o1, o2, o3, o4] = a.to_le_bytes();
    Some(format!("{o1}.{o2}.{o3}.{o4}:{}", p.swap_bytes()))
}

/// The Connection Request the health check sends: no cookie, TLS | CredSSP requested.
pub const CHECK_REQUEST: [u8; 19] = [
    0x03, 0x00, 0x00, 0x13, 0x0e, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x08, 0x00, 0x03,
    0x00, 0x00, 0x00,
];

/// An X.224 Connection Confirm (with or without RDP_NEG_RSP / RDP_NEG_FAILURE).
pub fn is_confirm(answer: &[u8]) -> bool {
    answer.len() >= 11 && answer[0] == 3 && answer[1] == 0 && answer[5] & 0xf0 == 0xd0
}

pub struct RdpCookie {
    case_insensitive: bool,
    strip_domain: bool,
    check_timeout_ms: u32,
}

impl Plugin for RdpCookie {
    fn new(config: &Config) -> Result<Self, String> {
        for (k, _) in config.value().as_object().into_iter().flatten() {
            if !["case_insensitive", "strip_domain", "check_timeout_ms"].contains(&k.as_str()) {
                return Err(format!("unknown setting {k:?} (known: case_insensitive, strip_domain, check_timeout_ms)"));
            }
        }
        Ok(RdpCookie {
            case_insensitive: config.bool("case_insensitive").unwrap_or(true),
            strip_domain: config.bool("strip_domain").unwrap_or(false),
            check_timeout_ms: config
                .int("check_timeout_ms")
                .unwrap_or(2000)
                .clamp(1, 60_000) as u32,
        })
    }
}

impl RdpCookie {
    /// The persistence key for a user cookie.
    pub fn user_key(&self, user: &[u8]) -> Vec<u8> {
        let mut u = user;
        if self.strip_domain {
            if let Some(i) = u.iter().rposition(|&b| b == b'\\') {
                u = &u[i + 1..];
            }
        }
        let mut k = b"user:".to_vec();
        if self.case_insensitive {
            k.extend(u.iter().map(u8::to_ascii_lowercase));
        } else {
            k.extend_from_slice(u);
        }
        k
    }

    /// Decides from the first bytes of a connection.
    pub fn decide(&self, payload: &[u8], backends: &Backends) -> Key {
        match parse(payload) {
            Parsed::Incomplete => Key::NeedMore,
            Parsed::NotRdp
            | Parsed::Request {
                token: None,
                cookie: None,
            } => Key::None,
            Parsed::Request { token: Some(t), .. } => match decode_token(t) {
                Some(addr) => backends
                    .find(&addr)
                    .map_or(Key::None, |b| Key::Backend(b.index)),
                None => {
                    let mut k = b"token:".to_vec();
                    k.extend_from_slice(t);
                    Key::Key(k)
                }
            },
            Parsed::Request {
                cookie: Some(c), ..
            } if !c.is_empty() => Key::Key(self.user_key(c)),
            Parsed::Request { .. } => Key::None,
        }
    }
}

impl PersistenceKey for RdpCookie {
    fn key(&mut self, req: &Request, backends: &Backends) -> Key {
        match req.payload() {
            Some(p) => self.decide(&p, backends),
            None => Key::None,
        }
    }
}

impl HealthCheck for RdpCookie {
    fn check(&mut self, _backend: Backend, target: &str) -> Health {
        match net::tcp_exchange(target, &CHECK_REQUEST, 11, self.check_timeout_ms) {
            Some(a) if is_confirm(&a) => Health::Up { load: None },
            _ => Health::Down,
        }
    }
}

export_plugin!(RdpCookie => persistence_key, health_check);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::{Mock, MockBackend};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The captured requests in `tests/vectors/rdp-connection-requests.txt`.
    fn vectors() -> Vec<(String, Vec<u8>)> {
        let text = include_str!("../../../tests/vectors/rdp-connection-requests.txt");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap().to_string(), hex(w.next().unwrap()))
            })
            .collect()
    }

    fn plugin(settings: &str) -> RdpCookie {
        RdpCookie::new(&Config::from_json(settings)).unwrap()
    }

    fn decide(p: &RdpCookie, payload: &[u8], pool: &[&str]) -> Key {
        let mut m = Mock {
            backends: pool.iter().map(|a| MockBackend::new(a)).collect(),
            ..Mock::default()
        };
        m.run(|_, b| p.decide(payload, b))
    }

    fn key_text(k: Key) -> String {
        match k {
            Key::Key(k) => String::from_utf8(k).unwrap(),
            Key::None => "none".into(),
            Key::NeedMore => "more".into(),
            Key::Backend(i) => format!("backend {i}"),
        }
    }

    #[test]
    fn shared_vectors() {
        let p = plugin("{}");
        let v = vectors();
        let get = |n: &str| v.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert_eq!(
            key_text(decide(&p, &get("ms-spec-4.1.1"), &[])),
            "user:eltons"
        );
        assert_eq!(
            key_text(decide(&p, &get("xfreerdp-admin"), &[])),
            "user:administrator"
        );
        assert_eq!(key_text(decide(&p, &get("no-cookie"), &[])), "none");
        let pool = ["10.0.0.1:3389", "172.31.249.216:3389"];
        assert_eq!(
            key_text(decide(&p, &get("routing-token-doc"), &pool)),
            "backend 1"
        );
        // Not in the pool: balanced normally.
        assert_eq!(
            key_text(decide(&p, &get("routing-token-doc"), &pool[..1])),
            "none"
        );
    }

    #[test]
    fn every_prefix_asks_for_more_and_never_panics() {
        let p = plugin("{}");
        for (_, bytes) in vectors() {
            for n in 0..bytes.len() {
                assert_eq!(key_text(decide(&p, &bytes[..n], &[])), "more", "prefix {n}");
            }
        }
    }

    #[test]
    fn garbage_is_not_rdp() {
        let p = plugin("{}");
        for g in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"\x03\x00\x00\x05\x00",
            b"\x03\x00\x00\x0b\x06\xd0\x00\x00\x00\x00\x00",
        ] {
            assert_eq!(key_text(decide(&p, g, &[])), "none", "{g:?}");
        }
        // A cookie without its CRLF inside the packet is garbled.
        let mut v = hex("0300001e19e00000000000436f6f6b69653a206d737473686173683d61620d");
        v.truncate(0x1e);
        assert_eq!(key_text(decide(&p, &v, &[])), "none");
    }

    #[test]
    fn settings_shape_the_user_key() {
        assert_eq!(plugin("{}").user_key(b"CORP\\Alice"), b"user:corp\\alice");
        assert_eq!(
            plugin(r#"{"strip_domain": true}"#).user_key(b"CORP\\Alice"),
            b"user:alice"
        );
        assert_eq!(
            plugin(r#"{"case_insensitive": false}"#).user_key(b"Alice"),
            b"user:Alice"
        );
        assert!(RdpCookie::new(&Config::from_json(r#"{"strip_domian": true}"#)).is_err());
    }

    #[test]
    fn token_decoding() {
        assert_eq!(
            decode_token(b"Cookie: msts=3640205228.15629.0000").as_deref(),
            Some("172.31.249.216:3389")
        );
        assert_eq!(
            decode_token(b"Cookie: msts=16777343.15629.").as_deref(),
            Some("127.0.0.1:3389")
        );
        assert_eq!(decode_token(b"Cookie: msts=abc.1.0"), None);
        assert_eq!(decode_token(b"Cookie: msts=1.2"), None);
        assert_eq!(
            decode_token(b"tsv://MS Terminal Services Plugin.1.Farm"),
            None
        );
    }

    #[test]
    fn opaque_tokens_are_keys() {
        let p = plugin("{}");
        let mut pkt = vec![0x03, 0x00, 0x00, 0x00, 0x00, 0xe0, 0, 0, 0, 0, 0];
        pkt.extend_from_slice(b"tsv://MS Terminal Services Plugin.1.Farm\r\n");
        let len = pkt.len();
        pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        pkt[4] = (len - 5) as u8;
        assert_eq!(
            key_text(decide(&p, &pkt, &[])),
            "token:tsv://MS Terminal Services Plugin.1.Farm"
        );
    }

    #[test]
    fn confirm_detection() {
        assert!(is_confirm(&hex("030000130ed000001234000200080001000000")));
        assert!(
            is_confirm(&hex("030000130ed000001234000308000500000000")),
            "RDP_NEG_FAILURE is alive"
        );
        assert!(!is_confirm(b"SSH-2.0-OpenSSH_9.2\r\n"));
        assert!(!is_confirm(&CHECK_REQUEST));
    }
}
