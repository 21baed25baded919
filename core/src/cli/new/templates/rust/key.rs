//! {{name}}: a persistence-key plugin. Clients are sticky by the value of a request header
//! (setting `header`, default X-User), lower-cased; without it, no key.

use plugboard_sdk::{export_plugin, Backends, Config, Key, PersistenceKey, Plugin, Request};

pub struct HeaderKey {
    header: String,
}

impl Plugin for HeaderKey {
    fn new(config: &Config) -> Result<Self, String> {
        let header = config.str("header").unwrap_or("X-User").to_string();
        Ok(HeaderKey { header })
    }
}

impl PersistenceKey for HeaderKey {
    fn key(&mut self, req: &Request, _backends: &Backends) -> Key {
        match req.header(&self.header) {
            Some(v) if !v.is_empty() => Key::Key(v.to_lowercase().into_bytes()),
            _ => Key::None,
        }
    }
}

export_plugin!(HeaderKey => persistence_key);

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sdk::testing::Mock;

    #[test]
    fn the_header_is_the_key() {
        let mut p = HeaderKey::new(&Config::from_json("{}")).unwrap();
        let mut m = Mock::default();
        m.headers.push(("x-user".into(), "Alice".into()));
        let key = m.run(|r, b| p.key(r, b));
        assert!(matches!(key, Key::Key(k) if k == b"alice"));
        assert!(matches!(Mock::default().run(|r, b| p.key(r, b)), Key::None));
    }
}
