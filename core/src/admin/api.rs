//! The admin API over HTTP: JSON under `/api/v1`, a bearer token, `/healthz` without one.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the status page (no token; it asks for one and calls the API) |
//! | `GET /healthz` | 200 `ok` while the proxy serves (no token) |
//! | `GET /api/v1/events` | the last health transitions, newest first |
//! | `GET /metrics` | the Prometheus exposition (as `[proxy] metrics` serves it) |
//! | `GET /api/v1/services` | every service with its backends |
//! | `GET /api/v1/services/{service}` | one service |
//! | `PUT /api/v1/services/{service}/backends/{backend}` `{"state": "drain", "weight": 5}` | the service after the change |
//! | `POST /api/v1/services/{service}/backends` `{"address": "10.0.0.5:80", "name": "fe05", "weight": 2}` | 201, the service with it |
//! | `DELETE /api/v1/services/{service}/backends/{backend}` | 202, the service with it `removing` |
//! | `POST /api/v1/reload` | 200 `{"ok": true, "services": [..], "listening": [..], "stopped": [..], "warnings": [..], "errors": [..]}`; 400 `{"error": "...", "errors": ["file:line:col: ..."]}` |
//!
//! Errors are `{"error": "..."}` with 400, 401, 403 (a browser request from another site),
//! 404, 405, 409, 413 or 415 (a body not declared JSON). Every request that changes
//! something, or is refused for its token, is logged with the client's address.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use super::control::{BackendChange, Control, NewBackend, Refused};

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;

pub struct AdminApp {
    pub control: Arc<Control>,
    pub token: Option<Arc<str>>,
    /// `GET /metrics` here too (with the token, as the API).
    pub metrics: crate::observe::metrics::MetricsApp,
}

fn json(status: u16, body: &impl Serialize) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(bytes)
        .expect("static response")
}

fn error(status: u16, message: impl Into<String>) -> Response<Vec<u8>> {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    json(
        status,
        &E {
            error: message.into(),
        },
    )
}

impl From<Refused> for Response<Vec<u8>> {
    fn from(r: Refused) -> Self {
        error(r.status, r.message)
    }
}

/// Compares without stopping at the first difference, so that timing does not reveal how
/// much of a guessed token is right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApp {
    fn authorised(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| same(t.trim_ascii(), token.as_bytes()))
    }

    async fn body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        session.set_keepalive(None);
                        return Err(error(413, "request body over 64 KiB"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    session.set_keepalive(None);
                    return Err(error(400, format!("request body: {e}")));
                }
            }
        }
    }

    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if path == "/healthz" {
            return match method {
                Method::GET | Method::HEAD => Response::builder()
                    .status(200)
                    .header("content-length", 3)
                    .body(b"ok\n".to_vec())
                    .expect("static response"),
                _ => error(405, "GET /healthz"),
            };
        }
        if path == "/" {
            return match method {
                Method::GET | Method::HEAD => status_page(),
                _ => error(405, "GET /"),
            };
        }
        if parts.first() != Some(&"api") && path != "/metrics" {
            return error(404, format!("no such path: {path}"));
        }
        if method != Method::GET && method != Method::HEAD {
            if let Some(why) = cross_site(session) {
                tracing::warn!(client = %peer(session), %method, %path, "admin API: refused, {why}");
                session.set_keepalive(None);
                return error(403, format!("cross-site request refused: {why}"));
            }
        }
        if !self.authorised(session) {
            tracing::warn!(client = %peer(session), %method, %path, "admin API: refused, bad or missing token");
            session.set_keepalive(None);
            return error(401, "a valid `Authorization: Bearer <token>` is required");
        }
        if path == "/metrics" {
            return match method {
                Method::GET => self.metrics.answer(),
                _ => error(405, "GET /metrics"),
            };
        }
        match (&method, &parts[1..]) {
            (&Method::GET, ["v1", "events"]) => json(
                200,
                &Events {
                    events: self.control.events(),
                },
            ),
            (&Method::GET, ["v1", "services"]) => json(
                200,
                &Services {
                    services: self.control.services(),
                },
            ),
            (&Method::GET, ["v1", "services", s]) => match self.control.service(&decode(s)) {
                Ok(v) => json(200, &v),
                Err(e) => e.into(),
            },
            (&Method::PUT, ["v1", "services", s, "backends", b]) => {
                let body = match Self::body(session).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                if let Some(r) = needs_json(session) {
                    return r;
                }
                let change: BackendChange = match serde_json::from_slice(&body) {
                    Ok(c) => c,
                    Err(e) => return error(400, format!("body: {e}")),
                };
                let (s, b) = (decode(s), decode(b));
                let r = self.control.change_backend(&s, &b, &change);
                tracing::info!(client = %peer(session), service = %s, backend = %b, state = ?change.state, weight = ?change.weight, ok = r.is_ok(), "admin API: backend change");
                match r {
                    Ok(v) => json(200, &v),
                    Err(e) => e.into(),
                }
            }
            (&Method::POST, ["v1", "services", s, "backends"]) => {
                let body = match Self::body(session).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                if let Some(r) = needs_json(session) {
                    return r;
                }
                let new: NewBackend = match serde_json::from_slice(&body) {
                    Ok(c) => c,
                    Err(e) => return error(400, format!("body: {e}")),
                };
                let s = decode(s);
                let r = self.control.add_backend(&s, &new).await;
                tracing::info!(client = %peer(session), service = %s, address = %new.address, name = ?new.name, weight = ?new.weight, ok = r.is_ok(), "admin API: backend added");
                match r {
                    Ok(v) => json(201, &v),
                    Err(e) => e.into(),
                }
            }
            (&Method::DELETE, ["v1", "services", s, "backends", b]) => {
                let (s, b) = (decode(s), decode(b));
                let r = self.control.remove_backend(&s, &b);
                tracing::info!(client = %peer(session), service = %s, backend = %b, ok = r.is_ok(), "admin API: backend removed");
                match r {
                    Ok(v) => json(202, &v),
                    Err(e) => e.into(),
                }
            }
            (&Method::POST, ["v1", "reload"]) => {
                let r = self.control.reload().await;
                tracing::info!(client = %peer(session), ok = r.is_ok(), "admin API: reload");
                match r {
                    Ok(done) => json(200, &Done { ok: true, done }),
                    Err(errors) => json(
                        400,
                        &Failed {
                            error: "configuration refused; the running one stays",
                            errors,
                        },
                    ),
                }
            }
            (_, ["v1", "reload"]) => error(405, "POST /api/v1/reload"),
            (_, ["v1", "services", ..]) => error(405, format!("{method} is not allowed on {path}")),
            _ => error(404, format!("no such path: {path}")),
        }
    }
}

/// Why a request that changes something looks like a browser sending it from another site
/// (a page the operator visited, posting to the admin address), if it does. Browsers say
/// where a request comes from in `Sec-Fetch-Site` and `Origin`; curl and `ctl` send neither.
fn cross_site(session: &ServerSession) -> Option<String> {
    let h = &session.req_header().headers;
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let origin = h.get(http::header::ORIGIN)?.to_str().unwrap_or("");
    let host = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let same = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host);
    (!same).then(|| format!("Origin {origin} is not this admin address"))
}

/// A body must be declared JSON: an HTML form cannot send that without the browser asking
/// first (CORS), which this API never allows.
fn needs_json(session: &ServerSession) -> Option<Response<Vec<u8>>> {
    let ct = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| error(415, "send the body as Content-Type: application/json"))
}

/// The status page: one HTML file, no external asset.
fn status_page() -> Response<Vec<u8>> {
    const PAGE: &str = include_str!("status.html");
    Response::builder()
        .status(200)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", PAGE.len())
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        )
        .header("x-frame-options", "DENY")
        .header("cache-control", "no-store")
        .body(PAGE.as_bytes().to_vec())
        .expect("static response")
}

/// The client's address, for the log.
fn peer(session: &ServerSession) -> String {
    session
        .client_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string())
}

#[derive(Serialize)]
struct Done {
    ok: bool,
    #[serde(flatten)]
    done: crate::server::reload::Reloaded,
}

#[derive(Serialize)]
struct Failed {
    error: &'static str,
    errors: Vec<String>,
}

#[derive(Serialize)]
struct Events {
    events: Vec<crate::observe::events::Event>,
}

#[derive(Serialize)]
struct Services {
    services: Vec<super::view::ServiceView>,
}

/// A path segment with its %XX escapes decoded (names may hold `:` and `[ ]`).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.route(session).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
    }

    #[test]
    fn path_segments_are_decoded() {
        assert_eq!(decode("127.0.0.1%3A9001"), "127.0.0.1:9001");
        assert_eq!(decode("%5B%3A%3A1%5D%3A80"), "[::1]:80");
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("bad%zz%4"), "bad%zz%4");
    }
}
