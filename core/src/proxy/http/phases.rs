//! L7 mode: pingora's HTTP proxy with Plugboard's hooks in its phases.
//!
//! | pingora phase            | what Plugboard does                                         |
//! |--------------------------|-------------------------------------------------------------|
//! | `request_filter`         | route to a service (by host and path), redirect if asked;   |
//! |                          | persistence-key hook, then choose a backend and take its    |
//! |                          | slot, waiting in the queue while all are full (503 if none) |
//! | `upstream_peer`          | hand pingora the chosen backend; re-choose after a failure; |
//! |                          | with `send_proxy` or `source = "client"`, a peer whose      |
//! |                          | connections carry this client's PROXY header or address and |
//! |                          | are pooled for this client only                             |
//! | `fail_to_connect`        | passive health mark, retry once elsewhere (GET/HEAD)        |
//! | `error_while_proxy`      | the same for a new connection reset before any response     |
//! | `upstream_request_filter`| add `X-Forwarded-For`, set `X-Forwarded-Proto`              |
//! | `response_filter`        | persistence hook's response step (e.g. insert a cookie)     |
//! | `logging`                | metrics, and the access log line                            |
//!
//! Keep-alive on both sides and upstream connection reuse are pingora's; each request on a
//! kept-alive client connection goes through `request_filter` and is balanced on its own.
//!
//! The services of an address (their balancers and prepared peers) are a [`Routes`] table
//! that is replaced whole when a service changes; a request takes the table current at
//! `request_filter` and keeps it to the end, so it finishes under the settings it began with.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result, RetryType};

use super::route::{host_of, Router};
use crate::balance::admission::Queued;
use crate::balance::balancer::{Balancer, Persisted};
use crate::balance::hooks::{KeyOutcome, Request};
use crate::balance::pool::ActiveGuard;
use crate::config::ServiceConfig;
use crate::observe::access_log::{AccessLog, HttpLine, TlsFields};
use crate::observe::metrics::seconds;
use crate::proxy::connect;

/// One service of a listen address.
pub struct Route {
    balancer: Arc<Balancer>,
    /// One prepared peer per backend: a request clones it instead of building it.
    peers: Vec<HttpPeer>,
    keepalive_secs: u64,
    /// The service's `idle_timeout`: also the longest a client may stall while sending a body
    /// or reading a response (pingora's defaults: 60 s, and no limit on writes).
    idle: Duration,
    /// The access log, unless the service opted out.
    log: Option<Arc<AccessLog>>,
}

impl Route {
    /// `log` is the process's access log (if any); the service's `access_log` decides.
    pub fn new(balancer: Arc<Balancer>, log: Option<&Arc<AccessLog>>) -> Result<Self, String> {
        let cfg = balancer.config();
        let peers = cfg
            .backends
            .iter()
            .map(|b| peer(cfg, b))
            .collect::<Result<_, _>>()?;
        Ok(Route {
            keepalive_secs: cfg.idle_timeout.as_secs().max(1),
            idle: cfg.idle_timeout,
            log: log.filter(|_| cfg.access_log).cloned(),
            balancer,
            peers,
        })
    }
}

/// The prepared upstream peer of backend `b` of service `cfg` (TLS when `backend_tls` says).
fn peer(cfg: &ServiceConfig, b: &crate::config::BackendConfig) -> Result<HttpPeer, String> {
    let mut p = match &cfg.backend_tls {
        None => HttpPeer::new(b.address, false, String::new()),
        Some(t) => {
            let name = crate::tls::client::server_name(t, b).to_str().into_owned();
            let mut p = HttpPeer::new(b.address, true, name);
            p.options.verify_cert = t.verify;
            p.options.verify_hostname = t.verify;
            if let Some(ca) = &t.ca {
                p.options.ca = Some(crate::tls::client::pingora_ca(ca)?);
            }
            p
        }
    };
    p.options.connection_timeout = Some(cfg.connect_timeout);
    p.options.read_timeout = Some(cfg.idle_timeout);
    p.options.write_timeout = Some(cfg.idle_timeout);
    p.options.idle_timeout = Some(cfg.idle_timeout);
    connect::shared(&mut p, cfg);
    Ok(p)
}

/// The services of one listen address, and how a request picks one.
pub struct Routes {
    routes: Vec<Route>,
    router: Router,
    /// Clients speak TLS to this address (`X-Forwarded-Proto: https`).
    tls: bool,
    /// The access log, for requests no service takes (404).
    log: Option<Arc<AccessLog>>,
}

impl Routes {
    pub fn new(routes: Vec<Route>, tls: bool, log: Option<&Arc<AccessLog>>) -> Routes {
        let router = Router::new(routes.iter().map(|r| r.balancer.config().route.clone()));
        Routes {
            routes,
            router,
            tls,
            log: log.cloned(),
        }
    }

    pub fn tls(&self) -> bool {
        self.tls
    }
}

/// The proxy of one listen address.
pub struct HttpService {
    /// Replaced whole (by whoever else holds it) when a service of the address changes:
    /// requests from then on use the new table, those in flight finish on theirs.
    current: Arc<ArcSwap<Routes>>,
}

impl HttpService {
    pub fn new(current: Arc<ArcSwap<Routes>>) -> Self {
        HttpService { current }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    /// The address's services as the request found them.
    table: Option<Arc<Routes>>,
    /// The service (route) of this request.
    route: usize,
    /// The backend chosen for the current attempt.
    backend: Option<usize>,
    /// The backend the request named itself (e.g. by cookie), for the response step.
    named: Option<usize>,
    /// Backends whose connect failed for this request.
    failed: Vec<usize>,
    /// Holds the backend's active count while the request is in flight.
    active: Option<ActiveGuard>,
    /// A service took the request (else 404).
    routed: bool,
    /// When `request_filter` began, and when the backend's response header arrived.
    started: Option<Instant>,
    ttfb: Option<Duration>,
    persisted: Option<Persisted>,
    /// It waited in the service's queue.
    queue: Option<Queued>,
}

impl Ctx {
    /// The request's service. `request_filter`, the first phase, set the table.
    fn route(&self) -> &Route {
        &self
            .table
            .as_ref()
            .expect("routes set in request_filter")
            .routes[self.route]
    }
}

impl HttpService {
    fn request<'a>(&self, session: &'a Session, ctx: &'a Ctx) -> Request<'a> {
        Request {
            service: &ctx.route().balancer.config().name,
            mode: crate::config::Mode::Http,
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            http: Some(session.req_header()),
            payload: &[],
            key: None,
        }
    }

    /// Chooses the backend and takes its slot (in `ctx`), waiting in the queue while every
    /// backend the request may use is full. `None`: no backend (a 503).
    async fn choose(&self, session: &Session, ctx: &mut Ctx) -> Option<usize> {
        let (a, named) = {
            let req = self.request(session, ctx);
            let b = &ctx.route().balancer;
            let keyed = b.key(&req);
            let named = match keyed.outcome {
                KeyOutcome::Backend(i) => Some(i),
                _ => None,
            };
            (b.admit(&req, &keyed, &ctx.failed).await, named)
        };
        if named.is_some() {
            ctx.named = named;
        }
        ctx.persisted = Some(a.persisted);
        ctx.queue = a.queued.or(ctx.queue);
        let (i, active) = a.chosen?;
        ctx.active = Some(active);
        Some(i)
    }
}

/// Writes a bodyless response and ends the request (the connection stays usable).
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(http::HeaderName, &[u8])],
) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    for (n, v) in headers {
        resp.insert_header(n.clone(), *v)?;
    }
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// `https://HOST/PATH?QUERY` for a redirect, or `None` without a usable host.
fn https_location(req: &RequestHeader) -> Option<Vec<u8>> {
    let host = host_of(req);
    if host.is_empty() || host.iter().any(|&b| b <= b' ' || b == b'/' || b == b'@') {
        return None;
    }
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut v = Vec::with_capacity(8 + host.len() + target.len());
    v.extend_from_slice(b"https://");
    v.extend_from_slice(host);
    v.extend_from_slice(target.as_bytes());
    Some(v)
}

/// The request's backend failed before answering: it is marked (passive health) and avoided;
/// returns whether the request may be retried (GET or HEAD, within `retries`).
fn backend_failed(session: &Session, ctx: &mut Ctx) -> bool {
    ctx.active = None;
    if let Some(i) = ctx.backend.take() {
        ctx.route().balancer.connect_failed(i);
        ctx.failed.push(i);
    }
    let method = &session.req_header().method;
    let replayable = method == http::Method::GET || method == http::Method::HEAD;
    replayable && ctx.failed.len() <= ctx.route().balancer.config().retries as usize
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

    /// None: pingora's default is a response-compression module at level 0 (disabled), which
    /// still runs its filters on every request and response.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        let table = ctx.table.insert(self.current.load_full());
        let Some(route) = table.router.route(session.req_header()) else {
            return respond(session, 404, &[]).await;
        };
        ctx.route = route;
        ctx.routed = true;
        let r = &table.routes[route];
        session.set_keepalive(Some(r.keepalive_secs));
        session.set_read_timeout(Some(r.idle));
        session.set_write_timeout(Some(r.idle));
        session.set_total_drain_timeout(Some(r.idle));
        if r.balancer.config().redirect_https {
            return match https_location(session.req_header()) {
                Some(l) => respond(session, 301, &[(http::header::LOCATION, &l)]).await,
                None => respond(session, 400, &[]).await,
            };
        }
        ctx.backend = self.choose(session, ctx).await;
        if ctx.backend.is_none() {
            // Answer here rather than fail later, so that a kept-alive client stays connected.
            return respond(session, 503, &[(http::header::RETRY_AFTER, b"1")]).await;
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let i = match ctx.backend {
            Some(i) => i,
            None => {
                let i = self.choose(session, ctx).await.ok_or_else(no_backend)?;
                ctx.backend = Some(i);
                i
            }
        };
        let r = ctx.route();
        let mut peer = Box::new(r.peers[i].clone());
        let cfg = r.balancer.config();
        if connect::per_client(cfg) {
            // Its own connector and pool key: a connection carries this client's header or
            // address. The address the client reached is known for `send_proxy` services.
            let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
                a.and_then(|a| a.as_inet()).copied()
            };
            let (client, local) = (inet(session.client_addr()), inet(session.server_addr()));
            let Some(client) = client.filter(|_| local.is_some() || cfg.send_proxy.is_none())
            else {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "send_proxy or source: the client connection's addresses are unknown",
                ));
            };
            connect::for_client(&mut peer, cfg, client, local);
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(backend_failed(session, ctx));
        e
    }

    /// pingora's own policy, plus one case: a new upstream connection reset or closed before
    /// any response header (a backend dying with the connection in its accept queue) failed as
    /// a refused connect does, so a GET or HEAD is treated as in `fail_to_connect` (passive
    /// mark, avoided, retried elsewhere while `retries` allows). pingora retries that error only
    /// on a reused connection (`RetryType::ReusedOnly`).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else if !client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            e.set_retry(backend_failed(session, ctx));
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
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
        // Set, not appended: a client must not be able to claim a scheme it did not use.
        let tls = ctx.table.as_ref().is_some_and(|t| t.tls);
        upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.ttfb = ctx.started.map(|t| t.elapsed());
        if let Some(served) = ctx.backend {
            let req = self.request(session, ctx);
            ctx.route()
                .balancer
                .on_response(&req, ctx.named, served, upstream_response);
        }
        Ok(())
    }

    /// Metrics and the access log line, once the request is over (whatever happened to it).
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(table) = &ctx.table else {
            return;
        };
        let route = ctx.routed.then(|| ctx.route());
        let status = match (session.response_written(), e) {
            (Some(r), _) => r.status.as_u16(),
            (None, Some(e)) => match e.etype() {
                ErrorType::HTTPStatus(s) => *s,
                _ => 502,
            },
            (None, None) => 0,
        };
        let backend = ctx.backend.or(ctx.failed.last().copied());
        let retries = (ctx.failed.len() as u32 + ctx.backend.is_some() as u32).saturating_sub(1);
        let total = ctx.started.map(|t| t.elapsed());
        let (read, sent) = (
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        if let Some(r) = route {
            let sc = r.balancer.service_counters();
            match ctx.backend {
                Some(i) => {
                    let bc = r.balancer.backend_counters(i);
                    bc.request(status);
                    bc.bytes_in.inc_by(read);
                    bc.bytes_out.inc_by(sent);
                }
                None => sc.unserved(status),
            }
            if let Some(t) = total {
                sc.duration.observe(seconds(t));
            }
            if let Some(t) = ctx.ttfb {
                sc.ttfb.observe(seconds(t));
            }
            if retries > 0 {
                sc.retries.inc_by(retries as u64);
            }
        }
        let log = match route {
            Some(r) => &r.log,
            None => &table.log,
        };
        let Some(log) = log else {
            return;
        };
        let req = session.req_header();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        log.http(&HttpLine {
            time: SystemTime::now(),
            service: route.map_or("-", |r| r.balancer.config().name.as_str()),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: req.method.as_str(),
            // As the client sent it (port included); HTTP/2 carries it in the URI.
            host: req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .unwrap_or("-"),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            status,
            backend: route
                .zip(backend)
                .map(|(r, i)| r.balancer.pool.get(i).name.as_str()),
            request_bytes: read,
            response_bytes: sent,
            ttfb_ms: ctx.ttfb.map(ms),
            total_ms: total.map_or(0.0, ms),
            persistence: ctx.persisted.unwrap_or(Persisted::None),
            retries,
            tls: super::tls_info::of_request(session)
                .map(|(version, sni)| TlsFields { version, sni }),
            queue: ctx.queue,
        });
    }
}
