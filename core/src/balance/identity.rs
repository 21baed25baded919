//! Stable backend identity: what persistence pins and cookies name a backend by.
//!
//! A backend is known by its service and its `name` (default: its address), never by its
//! position in the list, so that a configuration that adds, removes or reorders backends keeps
//! every pin and every cookie valid, and two instances with the same configuration agree.
//!
//! - [`BackendId`] is the internal key of the persistence table: a hash of the two names.
//! - [`CookieKey::cookie_id`] is what a client sees in a cookie: a keyed MAC (BLAKE3 in keyed
//!   mode) of the two names under `[proxy] secret_file`. It reveals neither name nor address,
//!   and without the secret it cannot be computed. A client can always replay a cookie it was
//!   given to choose among the pool's backends, as with any cookie persistence, but no value
//!   reaches anything outside the pool: a value that is no backend's id is ignored.

/// Length of a cookie id in hex digits (64 bits of the MAC).
pub const COOKIE_ID_LEN: usize = 16;

/// A backend's identity within its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u64);

impl BackendId {
    pub fn new(service: &str, name: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("plugboard backend id v1");
        h.update(&(service.len() as u64).to_le_bytes());
        h.update(service.as_bytes());
        h.update(name.as_bytes());
        let b = h.finalize();
        BackendId(u64::from_le_bytes(
            b.as_bytes()[..8].try_into().expect("8 bytes"),
        ))
    }
}

/// The key cookie ids are made with, derived once from the configured secret.
#[derive(Clone)]
pub struct CookieKey([u8; 32]);

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

impl CookieKey {
    pub fn new(secret: &[u8]) -> Self {
        CookieKey(blake3::derive_key("plugboard cookie id v1", secret))
    }

    /// 16 lowercase hex digits naming backend `name` of service `service`.
    pub fn cookie_id(&self, service: &str, name: &str) -> [u8; COOKIE_ID_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&(service.len() as u64).to_le_bytes());
        h.update(service.as_bytes());
        h.update(name.as_bytes());
        let mac = h.finalize();
        let mut out = [0u8; COOKIE_ID_LEN];
        for (i, b) in mac.as_bytes()[..COOKIE_ID_LEN / 2].iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 15) as usize];
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_names_and_secret_only() {
        let k = CookieKey::new(b"secret one");
        let id = k.cookie_id("web", "fe01");
        assert_eq!(id, CookieKey::new(b"secret one").cookie_id("web", "fe01"));
        assert_ne!(id, k.cookie_id("web", "fe02"));
        assert_ne!(id, k.cookie_id("api", "fe01"));
        assert_ne!(id, CookieKey::new(b"secret two").cookie_id("web", "fe01"));
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(k.cookie_id("ab", "c"), k.cookie_id("a", "bc"));
        assert!(id
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(BackendId::new("web", "fe01"), BackendId::new("web", "fe01"));
        assert_ne!(BackendId::new("web", "fe01"), BackendId::new("web", "fe02"));
    }
}
