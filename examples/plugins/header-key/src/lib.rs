//! persistence-key plugin: the key is the value of the `header` setting's request header
//! (default `X-Session`), lower-cased so that `Alice` and `alice` stick together. Its response
//! step adds `X-Plugboard-Backend: <name>` (the serving backend's name) when the `echo`
//! setting is true, which makes stickiness visible to clients and tests.
//!
//! ```toml
//! persistence = { key = "plugin:header-key", timeout = "30m" }
//! [service.plugin.header-key]
//! header = "X-User"
//! echo = true
//! ```

use plugboard_sdk::{
    export_plugin, Backends, Config, Key, PersistenceKey, Plugin, Request, Response,
};

pub struct HeaderKey {
    header: String,
    echo: bool,
}

impl Plugin for HeaderKey {
    fn new(config: &Config) -> Result<Self, String> {
        Ok(HeaderKey {
            header: config.str("header").unwrap_or("X-Session").to_string(),
            echo: config.bool("echo").unwrap_or(false),
        })
    }
}

impl PersistenceKey for HeaderKey {
    const RESPONSE_STEP: bool = true;

    fn key(&mut self, req: &Request, _backends: &Backends) -> Key {
        match req.header(&self.header) {
            Some(v) if !v.is_empty() => Key::Key(v.to_ascii_lowercase().into_bytes()),
            _ => Key::None,
        }
    }

    fn on_response(
        &mut self,
        _req: &Request,
        backends: &Backends,
        _named: Option<usize>,
        served: usize,
        resp: &mut Response,
    ) {
        if let (true, Some(b)) = (self.echo, backends.get(served)) {
            resp.add_header("X-Plugboard-Backend", &b.name());
        }
    }
}

export_plugin!(HeaderKey => persistence_key);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::Mock;

    #[test]
    fn key_is_the_lowercased_header() {
        let mut p = HeaderKey::new(&Config::from_json(r#"{"header": "X-User"}"#)).unwrap();
        let mut mock = Mock::default();
        mock.headers.push(("x-user".into(), "Alice".into()));
        match mock.run(|r, b| p.key(r, b)) {
            Key::Key(k) => assert_eq!(k, b"alice"),
            _ => panic!("expected a key"),
        }
        mock.headers.clear();
        assert!(matches!(mock.run(|r, b| p.key(r, b)), Key::None));
    }
}
