//! A cookie the proxy inserts, naming the backend that served the client (HAProxy's
//! `cookie NAME insert`).

use http::HeaderValue;
use pingora::http::ResponseHeader;

use crate::balance::hooks::{KeyOutcome, PersistenceKey, Request};
use crate::balance::pool::Pool;

/// The cookie's value is the backend's cookie id, a keyed MAC of the service and backend
/// names ([`crate::balance::identity`]): it reveals no address, is the same on every instance
/// with the same secret and after any reordering, and a value that names no backend of the
/// pool is treated as absent.
pub struct InsertedCookie {
    name: String,
}

impl InsertedCookie {
    pub fn new(name: &str) -> Self {
        InsertedCookie {
            name: name.to_string(),
        }
    }

    /// `NAME=ID; Path=/`.
    fn set_cookie(&self, id: &[u8]) -> Option<HeaderValue> {
        let mut v = Vec::with_capacity(self.name.len() + id.len() + 8);
        v.extend_from_slice(self.name.as_bytes());
        v.push(b'=');
        v.extend_from_slice(id);
        v.extend_from_slice(b"; Path=/");
        HeaderValue::from_bytes(&v).ok()
    }
}

impl PersistenceKey for InsertedCookie {
    fn key<'r>(&self, req: &Request<'r>, pool: &Pool) -> KeyOutcome<'r> {
        match req.cookie(&self.name).and_then(|v| pool.find_cookie_id(v)) {
            Some(i) => KeyOutcome::Backend(i),
            None => KeyOutcome::None,
        }
    }

    fn on_response(
        &self,
        _req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        pool: &Pool,
        resp: &mut ResponseHeader,
    ) {
        if named != Some(served) {
            if let Some(v) = self.set_cookie(&pool.get(served).cookie_id) {
                let _ = resp.append_header(http::header::SET_COOKIE, v);
            }
        }
    }
}
