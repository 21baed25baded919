//! L7 mode: pingora's HTTP proxy with Plugboard's hooks in its phases.
//!
//! | pingora phase            | what Plugboard does                                         |
//! |--------------------------|-------------------------------------------------------------|
//! | `request_filter`         | persistence-key hook, then choose a backend (503 if none)   |
//! | `upstream_peer`          | hand pingora the chosen backend; re-choose after a failure  |
//! | `fail_to_connect`        | passive health mark, retry once elsewhere (GET/HEAD)        |
//! | `upstream_request_filter`| add `X-Forwarded-For`                                       |
//! | `response_filter`        | persistence hook's response step (e.g. insert a cookie)     |
//!
//! Keep-alive on both sides and upstream connection reuse are pingora's; each request on a
//! kept-alive client connection goes through `request_filter` and is balanced on its own.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::balance::balancer::Balancer;
use crate::balance::hooks::{KeyOutcome, Request};
use crate::balance::pool::ActiveGuard;

pub struct HttpService {
    balancer: Arc<Balancer>,
    /// One prepared peer per backend: a request clones it instead of building it.
    peers: Vec<HttpPeer>,
    keepalive_secs: u64,
}

impl HttpService {
    pub fn new(balancer: Arc<Balancer>) -> Self {
        let cfg = balancer.config();
        let peers = balancer
            .pool
            .backends()
            .iter()
            .map(|b| {
                let mut p = HttpPeer::new(b.address, false, String::new());
                p.options.connection_timeout = Some(cfg.connect_timeout);
                p.options.read_timeout = Some(cfg.idle_timeout);
                p.options.write_timeout = Some(cfg.idle_timeout);
                p.options.idle_timeout = Some(cfg.idle_timeout);
                p
            })
            .collect();
        HttpService {
            keepalive_secs: cfg.idle_timeout.as_secs().max(1),
            balancer,
            peers,
        }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    /// The backend chosen for the current attempt.
    backend: Option<usize>,
    /// The backend the request named itself (e.g. by cookie), for the response step.
    named: Option<usize>,
    /// Backends whose connect failed for this request.
    failed: Vec<usize>,
    /// Holds the backend's active count while the request is in flight.
    active: Option<ActiveGuard>,
}

impl HttpService {
    fn request<'a>(&'a self, session: &'a Session) -> Request<'a> {
        Request {
            service: &self.balancer.config().name,
            mode: crate::config::Mode::Http,
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            http: Some(session.req_header()),
            payload: &[],
            key: None,
        }
    }

    fn choose(&self, session: &Session, ctx: &mut Ctx) -> Option<usize> {
        let req = self.request(session);
        let outcome = self.balancer.key(&req);
        if let KeyOutcome::Backend(i) = outcome {
            ctx.named = Some(i);
        }
        self.balancer.choose(&req, &outcome, &ctx.failed)
    }
}

fn no_backend() -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(503), "no backend available")
}

#[async_trait]
impl ProxyHttp for HttpService {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        session.set_keepalive(Some(self.keepalive_secs));
        ctx.backend = self.choose(session, ctx);
        if ctx.backend.is_none() {
            // Answer here rather than fail later, so that a kept-alive client stays connected.
            let mut resp = ResponseHeader::build(503, Some(2))?;
            resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
            resp.insert_header(http::header::RETRY_AFTER, "1")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let i = match ctx.backend {
            Some(i) => i,
            None => {
                let i = self.choose(session, ctx).ok_or_else(no_backend)?;
                ctx.backend = Some(i);
                i
            }
        };
        ctx.active = Some(self.balancer.pool.acquire(i));
        Ok(Box::new(self.peers[i].clone()))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.active = None;
        if let Some(i) = ctx.backend.take() {
            self.balancer.connect_failed(i);
            ctx.failed.push(i);
        }
        let method = &session.req_header().method;
        let replayable = method == http::Method::GET || method == http::Method::HEAD;
        e.set_retry(replayable && ctx.failed.len() <= self.balancer.config().retries as usize);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let value = match upstream.headers.get("x-forwarded-for") {
                Some(prev) => {
                    let mut v = prev.as_bytes().to_vec();
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(ip.as_bytes());
                    http::HeaderValue::from_bytes(&v).map_err(|_| {
                        Error::explain(ErrorType::InvalidHTTPHeader, "bad X-Forwarded-For")
                    })?
                }
                None => http::HeaderValue::from_str(&ip).expect("an IP is a valid header value"),
            };
            upstream.insert_header("x-forwarded-for", value)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(served) = ctx.backend {
            let req = self.request(session);
            self.balancer
                .on_response(&req, ctx.named, served, upstream_response);
        }
        Ok(())
    }
}
