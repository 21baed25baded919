//! What a TLS client negotiated, carried to the proxy phases with pingora's view of its
//! connection: the TLS version and cipher as pingora's `SslDigest` (in the request's digest,
//! HTTP/1 and HTTP/2 alike), and the SNI on the stream itself (HTTP/1 requests reach their
//! stream; pingora's HTTP/2 streams do not, so an HTTP/2 request's SNI is not known here).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest, ALPN};
use pingora::proxy::Session;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::session::TlsSession;

/// One TLS connection's negotiated parameters, made once per connection.
#[derive(Debug)]
pub struct TlsInfo {
    digest: Arc<SslDigest>,
    sni: Option<Box<str>>,
    /// The protocol ALPN chose: with a TLS digest present, pingora takes HTTP/2 only from
    /// this (it no longer looks for the HTTP/2 preface).
    alpn: Option<ALPN>,
}

impl TlsInfo {
    pub fn of(s: &TlsSession) -> Arc<TlsInfo> {
        Arc::new(TlsInfo {
            digest: Arc::new(SslDigest::new(
                s.cipher(),
                s.version(),
                None,
                None,
                Vec::new(),
            )),
            sni: s.sni().map(Box::from),
            alpn: match s.alpn_protocol() {
                Some(b"h2") => Some(ALPN::H2),
                Some(b"http/1.1") => Some(ALPN::H1),
                _ => None,
            },
        })
    }
}

/// pingora's stream of a TLS client: the plain stream (TLS is handled below it), with the
/// connection's [`TlsInfo`].
#[derive(Debug)]
pub struct WithTls {
    inner: L4Stream,
    info: Arc<TlsInfo>,
}

impl WithTls {
    pub fn new(inner: L4Stream, info: Arc<TlsInfo>) -> Self {
        WithTls { inner, info }
    }
}

/// The request's TLS version and SNI (see the module's note on HTTP/2), or `None` over plain
/// HTTP.
pub fn of_request(session: &Session) -> Option<(&str, Option<&str>)> {
    let own = session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<WithTls>());
    if let Some(t) = own {
        return Some((&t.info.digest.version, t.info.sni.as_deref()));
    }
    let d = session.digest()?.ssl_digest.as_ref()?;
    Some((&d.version, None))
}

impl AsyncRead for WithTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WithTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for WithTls {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut self.inner).await
    }
}

impl UniqueID for WithTls {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for WithTls {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.info.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.info.alpn.clone()
    }
}

impl GetTimingDigest for WithTls {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for WithTls {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for WithTls {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for WithTls {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
