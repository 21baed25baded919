//! Driving a rustls server connection over a tokio `TcpStream` by readiness, the way the
//! plaintext path reads (a draining read clears tokio's readiness, so the next wait costs no
//! system call). The connection state is separate from the socket, so an idle TLS client can
//! be parked like a plaintext one: its socket in the parking lot's epoll set, its TLS state
//! beside it.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use rustls::ServerConnection;
use tokio::net::TcpStream;

use crate::io::socket;

/// Reads from the socket without waiting (see [`socket::try_recv`]).
struct SockRead<'a>(&'a TcpStream);

impl Read for SockRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: an initialised slice may be viewed as maybe-uninitialised; recv only writes.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        socket::try_recv(self.0, uninit)
    }
}

/// Writes to the socket without waiting.
struct SockWrite<'a>(&'a TcpStream);

impl Write for SockWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Sends everything rustls has queued (handshake messages, records, alerts).
pub fn poll_send(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while conn.wants_write() {
        ready!(tcp.poll_write_ready(cx))?;
        match conn.write_tls(&mut SockWrite(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Reads what records the socket has into `conn` and processes them. `Ok(false)` at the end
/// of the TCP stream.
fn receive(tcp: &TcpStream, conn: &mut ServerConnection) -> io::Result<bool> {
    let n = conn.read_tls(&mut SockRead(tcp))?;
    match conn.process_new_packets() {
        Ok(_) => Ok(n > 0),
        Err(e) => {
            // Tell the peer why (the alert rustls queued), best effort.
            let _ = conn.write_tls(&mut SockWrite(tcp));
            Err(tls_error(e))
        }
    }
}

/// Completes the handshake by `deadline`.
pub async fn handshake(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    deadline: Instant,
) -> io::Result<()> {
    let drive = std::future::poll_fn(|cx| loop {
        if conn.wants_write() {
            ready!(poll_send(tcp, conn, cx))?;
        }
        if !conn.is_handshaking() {
            return Poll::Ready(Ok(()));
        }
        ready!(tcp.poll_read_ready(cx))?;
        match receive(tcp, conn) {
            Ok(true) => {}
            Ok(false) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    });
    match tokio::time::timeout_at(deadline.into(), drive).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// True when decrypted bytes are waiting to be read (a request that came with the last
/// record), so there is nothing to wait for.
pub fn has_plaintext(conn: &mut ServerConnection) -> bool {
    conn.process_new_packets()
        .is_ok_and(|s| s.plaintext_bytes_to_read() > 0 || s.peer_has_closed())
}

/// Reads decrypted bytes into `buf`; `Ok(0)` at the end of the stream (with or without the
/// peer's close_notify).
pub fn poll_read(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
            Err(e) => return Poll::Ready(Err(e)),
        }
        if conn.wants_write() {
            if let Poll::Ready(Err(e)) = poll_send(tcp, conn, cx) {
                return Poll::Ready(Err(e));
            }
        }
        ready!(tcp.poll_read_ready(cx))?;
        match receive(tcp, conn) {
            Ok(true) => {}
            Ok(false) => return Poll::Ready(Ok(0)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Encrypts `data` and sends it.
pub fn poll_write_all(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    cx: &mut Context<'_>,
    data: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < data.len() {
        let n = conn.writer().write(&data[*written..])?;
        *written += n;
        if n == 0 || conn.wants_write() {
            ready!(poll_send(tcp, conn, cx))?;
        }
    }
    poll_send(tcp, conn, cx)
}

/// Encrypts and sends `data` without waiting (for a last answer before closing).
pub fn try_write_all(tcp: &TcpStream, conn: &mut ServerConnection, data: &[u8]) {
    let _ = conn.writer().write_all(data);
    conn.send_close_notify();
    while conn.wants_write() {
        if conn.write_tls(&mut SockWrite(tcp)).is_err() {
            return;
        }
    }
}
