//! The client socket as pingora sees it: a virtual socket over our tokio `TcpStream` that
//! reads without extra system calls, gathers a response's writes into one, and notices where
//! each request's header ends (for `header_timeout` and pipelining).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use socket2::SockRef;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::io::socket;
use crate::tls::session::TlsSession;

/// Writes up to this size are gathered until pingora flushes.
const GATHER: usize = 16 * 1024;

/// The most bytes a request line and header may take (pingora alone would take up to 1 MiB):
/// a larger one is answered 431 and the connection closed.
pub const MAX_REQUEST_HEADER: usize = 64 * 1024;

/// A client connection, shared by its task (which waits on the socket between requests and
/// parks it) and pingora's view of it during a request.
#[derive(Debug)]
pub struct Client {
    pub tcp: TcpStream,
    /// The TLS session, for a TLS client. Used by one side at a time by construction: the
    /// request's socket while pingora has it, the connection's task between requests; the
    /// mutex only makes that checkable (it is never contended, see [`Client::tls`]).
    tls: Option<Mutex<Box<TlsSession>>>,
    /// The current request's header has been read to its end (or is not tracked).
    header_done: AtomicBool,
    /// Bytes were read after the end of the current request's header: a body, or the start
    /// of a pipelined request.
    after_header: AtomicBool,
    /// The current request's header went over [`MAX_REQUEST_HEADER`].
    header_too_large: AtomicBool,
    /// What the TLS client negotiated, for the requests' digest and the access log.
    pub tls_info: Option<Arc<super::tls_info::TlsInfo>>,
}

impl Client {
    pub fn new(tcp: TcpStream, tls: Option<Box<TlsSession>>) -> Self {
        Client {
            tls_info: tls.as_deref().map(super::tls_info::TlsInfo::of),
            tcp,
            tls: tls.map(Mutex::new),
            header_done: AtomicBool::new(false),
            after_header: AtomicBool::new(false),
            header_too_large: AtomicBool::new(false),
        }
    }

    /// The TLS session, if the client speaks TLS. Its user is the only one (see the field),
    /// so failing to take it is a bug, reported as an I/O error rather than a wait.
    pub fn tls(&self) -> Option<io::Result<MutexGuard<'_, Box<TlsSession>>>> {
        self.tls.as_ref().map(|m| {
            m.try_lock()
                .map_err(|_| io::Error::other("TLS session used from two places"))
        })
    }

    /// Gives the socket and TLS session back (to park them), the session without its
    /// empty buffers.
    pub fn into_parts(self) -> (TcpStream, Option<Box<TlsSession>>) {
        let tls = self.tls.map(|m| {
            let mut s = m.into_inner().unwrap_or_else(|e| e.into_inner());
            s.shrink();
            s
        });
        (self.tcp, tls)
    }

    /// A new request starts: its header is tracked from its first byte unless `tracked` is
    /// false (pipelined bytes already read by pingora, which we never see).
    pub fn start_request(&self, tracked: bool) {
        self.header_done.store(!tracked, Relaxed);
        self.after_header.store(false, Relaxed);
        self.header_too_large.store(false, Relaxed);
    }

    pub fn header_done(&self) -> bool {
        self.header_done.load(Relaxed)
    }

    /// The last request's header was refused for its size (see [`MAX_REQUEST_HEADER`]).
    pub fn header_too_large(&self) -> bool {
        self.header_too_large.load(Relaxed)
    }

    /// Bytes followed the last request's header (so a pipelined request may be buffered).
    pub fn read_after_header(&self) -> bool {
        self.after_header.load(Relaxed)
    }
}

/// Finds the end of an HTTP/1 header (`\n\n` or `\n\r\n`) in the bytes read so far.
#[derive(Debug, Default)]
struct HeaderScan {
    /// The last two bytes seen, oldest first.
    last: [u8; 2],
}

impl HeaderScan {
    /// Feeds `bytes`; returns the offset just past the header's end if it is in them.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &bytes[from..]).map(|i| from + i) {
            let p1 = if i >= 1 { bytes[i - 1] } else { self.last[1] };
            let p2 = match i {
                0 => self.last[0],
                1 => self.last[1],
                _ => bytes[i - 2],
            };
            if p1 == b'\n' || (p1 == b'\r' && p2 == b'\n') {
                return Some(i + 1);
            }
            from = i + 1;
        }
        match bytes.len() {
            0 => {}
            1 => self.last = [self.last[1], bytes[0]],
            n => self.last = [bytes[n - 2], bytes[n - 1]],
        }
        None
    }
}

/// pingora's view of the client socket for one request.
#[derive(Debug)]
pub struct ClientSocket {
    client: Arc<Client>,
    scan: HeaderScan,
    /// Bytes of the current request's header read so far (while it is tracked).
    header_bytes: usize,
    /// Gathered writes, and how much of them has been sent.
    out: Vec<u8>,
    sent: usize,
    /// A TLS close_notify has been queued (by the first `poll_shutdown`).
    closing: bool,
    /// A write or flush was left waiting for the client to take bytes, and none has
    /// completed since (a flush with nothing to send does not count).
    stalled: bool,
}

impl ClientSocket {
    pub fn new(client: Arc<Client>) -> Self {
        ClientSocket {
            client,
            scan: HeaderScan::default(),
            header_bytes: 0,
            out: Vec::new(),
            sent: 0,
            closing: false,
            stalled: false,
        }
    }

    /// Notes where the header ends; an error once the header is over [`MAX_REQUEST_HEADER`].
    fn saw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let c = &self.client;
        if c.header_done() {
            if !bytes.is_empty() {
                c.after_header.store(true, Relaxed);
            }
            return Ok(());
        }
        let end = self.scan.feed(bytes);
        self.header_bytes += end.unwrap_or(bytes.len());
        if self.header_bytes > MAX_REQUEST_HEADER {
            c.header_too_large.store(true, Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request header over its size limit",
            ));
        }
        if let Some(end) = end {
            c.header_done.store(true, Relaxed);
            if end < bytes.len() {
                c.after_header.store(true, Relaxed);
            }
        }
        Ok(())
    }
}

impl VirtualSocket for ClientSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.client.tcp.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        if let Some(tls) = self.client.tls() {
            let mut session = tls?;
            let unfilled = buf.initialize_unfilled();
            let n = ready!(session.poll_read(&self.client.tcp, cx, unfilled))?;
            drop(session);
            buf.advance(n);
        } else {
            loop {
                let tcp = &self.client.tcp;
                ready!(tcp.poll_read_ready(cx))?;
                // SAFETY: recv only writes into the slice; assume_init below covers exactly
                // the bytes it reported.
                let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
                let got = match socket::try_recv(tcp, unfilled) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                // SAFETY: recv initialised `got` bytes of the unfilled part.
                unsafe { buf.assume_init(got) };
                buf.advance(got);
                break;
            }
        }
        let me = &mut *self;
        Poll::Ready(me.saw(&buf.filled()[start..]))
    }
}

/// A response given up while its client was not taking it (pingora's write timeout or
/// `min_send_rate`): the socket is set to close with a reset. A plain close would leave the
/// kernel trickling out what it holds for the client (up to the send buffer, megabytes) for as
/// long as the client keeps reading, however slowly.
impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.stalled {
            let _ = SockRef::from(&self.client.tcp).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.as_mut().write_now(cx, buf);
        match r {
            Poll::Pending => self.stalled = true,
            Poll::Ready(Ok(n)) if n > 0 => self.stalled = false,
            Poll::Ready(_) => {}
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let had = self.out.len() > self.sent;
        let r = self.as_mut().flush_now(cx);
        match r {
            Poll::Pending => self.stalled = true,
            Poll::Ready(Ok(())) if had => self.stalled = false,
            Poll::Ready(_) => {}
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let me = &mut *self;
        if me.client.header_too_large() {
            // The connection's task answers 431 and closes; pingora, which saw only a failed
            // read, must not end the stream first.
            return Poll::Ready(Ok(()));
        }
        if let Some(tls) = me.client.tls() {
            let mut session = tls?;
            if !me.closing {
                session.close_notify()?;
                me.closing = true;
            }
            ready!(session.poll_flush(&me.client.tcp, cx))?;
        }
        Poll::Ready(
            match SockRef::from(&me.client.tcp).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                r => r,
            },
        )
    }
}

impl ClientSocket {
    fn write_now(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // pingora writes a response's header and body separately and then flushes: gather
        // small writes so that a small response leaves in one segment and one system call
        // (one TLS record, for a TLS client).
        if self.out.len() + buf.len() > GATHER {
            ready!(self.as_mut().poll_flush(cx))?;
        }
        if buf.len() <= GATHER {
            self.out.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        let tcp = &self.client.tcp;
        if let Some(tls) = self.client.tls() {
            let mut session = tls?;
            if session.out_full() {
                ready!(session.poll_flush(tcp, cx))?;
            }
            let n = buf.len().min(GATHER * 4);
            session.encrypt(&buf[..n])?;
            // Sent as far as the socket takes it now; poll_flush sends the rest.
            if let Poll::Ready(Err(e)) = session.poll_flush(tcp, cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(n));
        }
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn flush_now(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let tcp = &me.client.tcp;
        if let Some(tls) = me.client.tls() {
            let mut session = tls?;
            if !me.out.is_empty() {
                session.encrypt(&me.out)?;
                me.out.clear();
            }
            ready!(session.poll_flush(tcp, cx))?;
        } else {
            while me.sent < me.out.len() {
                ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write(&me.out[me.sent..]) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => me.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        // Released, not kept: a kept-alive connection waits for its next request without it.
        me.out = Vec::new();
        me.sent = 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(chunks: &[&[u8]]) -> Option<(usize, usize)> {
        let mut s = HeaderScan::default();
        chunks
            .iter()
            .enumerate()
            .find_map(|(n, c)| s.feed(c).map(|at| (n, at)))
    }

    #[test]
    fn header_end_is_found_across_reads() {
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some((0, 27)));
        assert_eq!(end(&[b"GET / HTTP/1.1\nHost: a\n\nGET"]), Some((0, 24)));
        assert_eq!(
            end(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\n"]),
            Some((1, 2))
        );
        assert_eq!(
            end(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\n"]),
            Some((2, 1))
        );
        assert_eq!(
            end(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r", b"\n"]),
            Some((2, 1))
        );
        assert_eq!(end(&[b"GET / HTTP/1.1\r\n", b"Host: a\r\n"]), None);
        assert_eq!(end(&[b"\r\nGET"]), None);
    }
}
