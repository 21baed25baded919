//! mcx-affinity: cookie affinity for Lync Server 2010 web services and mobility (`/Mcx`,
//! `/Autodiscover`), following Microsoft's load-balancer requirements (http mode):
//!
//! 1. the balancer inserts a cookie named `MS-WSMAN`;
//! 2. not `HttpOnly`;
//! 3. no `Expires`/`Max-Age` (a session cookie);
//! 4. set in every response whose request did not carry it, also the second, third...
//!    response on one kept-alive connection.
//!
//! A request carrying the cookie goes to the backend it names while that backend is up;
//! otherwise it is balanced by the service's scheduler and gets a fresh cookie. The value is an
//! opaque 16-hex-digit id derived from the backend address, the service name and the `secret`
//! setting: it does not reveal the address, and a value naming no backend of the pool is
//! treated as absent, so a client cannot steer itself to an arbitrary server. Set `secret` to
//! the same string on every instance sharing a pool, so that ids agree and cannot be computed
//! from known addresses.

use plugboard_sdk::{
    export_plugin, Backends, Config, Key, PersistenceKey, Plugin, Request, Response,
};

pub const COOKIE: &str = "MS-WSMAN";

pub struct McxAffinity {
    secret: String,
    /// Backend ids, computed on the first request (the service name comes with it).
    ids: Vec<String>,
}

impl Plugin for McxAffinity {
    fn new(config: &Config) -> Result<Self, String> {
        for (k, _) in config.value().as_object().into_iter().flatten() {
            if k != "secret" {
                return Err(format!("unknown setting {k:?} (known: secret)"));
            }
        }
        Ok(McxAffinity {
            secret: config.str("secret").unwrap_or_default().to_string(),
            ids: Vec::new(),
        })
    }
}

/// 64-bit FNV-1a, then a splitmix finaliser: stable across builds and instances.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The cookie value for a backend.
pub fn backend_id(secret: &str, service: &str, address: &str) -> String {
    format!(
        "{:016x}",
        hash(&[secret.as_bytes(), service.as_bytes(), address.as_bytes()])
    )
}

impl McxAffinity {
    fn ids(&mut self, req: &Request, backends: &Backends) -> &[String] {
        if self.ids.len() != backends.len() {
            let service = req.service();
            self.ids = backends
                .iter()
                .map(|b| backend_id(&self.secret, &service, &b.address()))
                .collect();
        }
        &self.ids
    }
}

impl PersistenceKey for McxAffinity {
    const RESPONSE_STEP: bool = true;

    fn key(&mut self, req: &Request, backends: &Backends) -> Key {
        let ids = self.ids(req, backends);
        let Some(value) = req.cookie(COOKIE) else {
            return Key::None;
        };
        match ids.iter().position(|id| *id == value) {
            Some(i) => Key::Backend(i),
            None => Key::None,
        }
    }

    fn on_response(
        &mut self,
        req: &Request,
        backends: &Backends,
        named: Option<usize>,
        served: usize,
        resp: &mut Response,
    ) {
        if named == Some(served) {
            return;
        }
        if let Some(id) = self.ids(req, backends).get(served) {
            resp.add_header("Set-Cookie", &format!("{COOKIE}={id}; Path=/"));
        }
    }
}

export_plugin!(McxAffinity => persistence_key);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::{Mock, MockBackend};

    fn mock(cookie: Option<&str>) -> Mock {
        Mock {
            service: "lync".into(),
            backends: vec![
                MockBackend::new("10.0.0.1:443"),
                MockBackend::new("10.0.0.2:443"),
            ],
            cookies: cookie
                .map(|c| vec![(COOKIE.to_string(), c.to_string())])
                .unwrap_or_default(),
            ..Mock::default()
        }
    }

    #[test]
    fn cookie_names_its_backend_and_forgeries_are_ignored() {
        let mut p = McxAffinity::new(&Config::from_json(r#"{"secret": "s"}"#)).unwrap();
        let id1 = backend_id("s", "lync", "10.0.0.2:443");
        assert!(!id1.contains("10.0.0.2"));
        assert!(matches!(
            mock(Some(&id1)).run(|r, b| p.key(r, b)),
            Key::Backend(1)
        ));
        assert!(matches!(
            mock(Some("0123456789abcdef")).run(|r, b| p.key(r, b)),
            Key::None
        ));
        assert!(matches!(mock(None).run(|r, b| p.key(r, b)), Key::None));
        assert_ne!(
            backend_id("t", "lync", "10.0.0.2:443"),
            id1,
            "the secret changes ids"
        );
    }

    #[test]
    fn response_cookie_follows_the_rules() {
        let mut p = McxAffinity::new(&Config::from_json("{}")).unwrap();
        let mut m = mock(None);
        m.run(|r, b| p.on_response(r, b, None, 1, &mut plugboard_sdk::testing::response()));
        let set = &m.response_headers;
        assert_eq!(set.len(), 1);
        let (n, v) = &set[0];
        assert_eq!(n, "Set-Cookie");
        assert_eq!(
            *v,
            format!(
                "MS-WSMAN={}; Path=/",
                backend_id("", "lync", "10.0.0.2:443")
            )
        );
        let lower = v.to_ascii_lowercase();
        assert!(
            !lower.contains("httponly") && !lower.contains("expires") && !lower.contains("max-age")
        );
        // A request that named the backend that served it gets no new cookie.
        let mut m = mock(None);
        m.run(|r, b| p.on_response(r, b, Some(1), 1, &mut plugboard_sdk::testing::response()));
        assert!(m.response_headers.is_empty());
    }
}
