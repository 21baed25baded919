//! mcx-affinity: cookie affinity for Lync Server 2010 web services and mobility (`/Mcx`,
//! `/Autodiscover`), following Microsoft's load-balancer requirements (http mode):
//!
//! 1. the balancer inserts a cookie named `MS-WSMAN`;
//! 2. not `HttpOnly`;
//! 3. no `Expires`/`Max-Age` (a session cookie);
//! 4. set in every response whose request did not carry it, also the second, third...
//!    response on one kept-alive connection.
//!
//! A request carrying the cookie goes to the backend it names while that backend is available;
//! otherwise it is balanced by the service's scheduler and gets a fresh cookie. The value is
//! the backend's cookie id, which the proxy makes: a keyed MAC of the service and backend
//! names under `[proxy] secret_file`. It reveals no address, stays valid when backends are
//! added, removed or reordered, is the same on every instance with the same secret, and a
//! value naming no backend of the pool is treated as absent, so a client can at most choose
//! among the pool's backends (as with any cookie persistence), never reach another server.

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzz;

use plugboard_sdk::{
    export_plugin, Backends, Config, Key, PersistenceKey, Plugin, Request, Response,
};

pub const COOKIE: &str = "MS-WSMAN";

pub struct McxAffinity;

impl Plugin for McxAffinity {
    fn new(config: &Config) -> Result<Self, String> {
        match config.value().as_object().into_iter().flatten().next() {
            Some((k, _)) if k == "secret" => Err(
                "the `secret` setting is gone: cookie ids are made by the proxy, with the secret \
                 in [proxy] secret_file"
                    .into(),
            ),
            Some((k, _)) => Err(format!("unknown setting {k:?} (mcx-affinity has none)")),
            None => Ok(McxAffinity),
        }
    }
}

impl PersistenceKey for McxAffinity {
    const RESPONSE_STEP: bool = true;

    fn key(&mut self, req: &Request, backends: &Backends) -> Key {
        let Some(value) = req.cookie(COOKIE) else {
            return Key::None;
        };
        match backends.iter().find(|b| b.cookie_id() == value) {
            Some(b) => Key::Backend(b.index),
            None => Key::None,
        }
    }

    fn on_response(
        &mut self,
        _req: &Request,
        backends: &Backends,
        named: Option<usize>,
        served: usize,
        resp: &mut Response,
    ) {
        if named == Some(served) {
            return;
        }
        if let Some(b) = backends.get(served) {
            resp.add_header("Set-Cookie", &format!("{COOKIE}={}; Path=/", b.cookie_id()));
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
                MockBackend::new("10.0.0.1:443").named("fe01"),
                MockBackend::new("10.0.0.2:443").named("fe02"),
            ],
            cookies: cookie
                .map(|c| vec![(COOKIE.to_string(), c.to_string())])
                .unwrap_or_default(),
            ..Mock::default()
        }
    }

    #[test]
    fn cookie_names_its_backend_and_forgeries_are_ignored() {
        let mut p = McxAffinity::new(&Config::from_json("{}")).unwrap();
        assert!(matches!(
            mock(Some("id-fe02")).run(|r, b| p.key(r, b)),
            Key::Backend(1)
        ));
        assert!(matches!(
            mock(Some("0123456789abcdef")).run(|r, b| p.key(r, b)),
            Key::None
        ));
        assert!(matches!(mock(None).run(|r, b| p.key(r, b)), Key::None));
        assert!(McxAffinity::new(&Config::from_json(r#"{"secret": "s"}"#)).is_err());
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
        assert_eq!(*v, "MS-WSMAN=id-fe02; Path=/");
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
