//! Keys read from the request: the client's IP address, a header's value.

use crate::balance::hooks::{Key, KeyOutcome, PersistenceKey, Request};
use crate::balance::pool::Pool;

/// The client's IP address.
pub struct SourceIp;

impl PersistenceKey for SourceIp {
    fn key<'r>(&self, req: &Request<'r>, _pool: &Pool) -> KeyOutcome<'r> {
        match req.client {
            Some(c) => KeyOutcome::Key(Key::Ip(c.ip())),
            None => KeyOutcome::None,
        }
    }
}

/// The value of one request header; requests without it get no key.
pub struct HeaderKey(String);

impl HeaderKey {
    pub fn new(name: &str) -> Self {
        HeaderKey(name.to_string())
    }
}

impl PersistenceKey for HeaderKey {
    fn key<'r>(&self, req: &Request<'r>, _pool: &Pool) -> KeyOutcome<'r> {
        match req.header(&self.0) {
            Some(v) if !v.is_empty() => KeyOutcome::Key(Key::Borrowed(v)),
            _ => KeyOutcome::None,
        }
    }
}
