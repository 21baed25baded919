//! Reading a tokio `TcpStream` so that tokio's idea of its readiness stays exact.
//!
//! tokio forgets a socket's readiness only when a read reports "would block". A read that
//! returns fewer bytes than asked has drained the socket, but tokio would still think it
//! readable, and the next wait would cost a `recv` that finds nothing. [`try_recv`] reports
//! such a read to tokio as "would block" (keeping its bytes), as tokio's own `poll_read` does.
//! Used by the HTTP client socket (`http_listener`) and the TCP relay.

use std::io;
use std::mem::MaybeUninit;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what is there into `dst` without waiting: `Ok(0)` at end of stream, `WouldBlock` when
/// nothing was there (wait for readiness and call again).
pub fn try_recv(tcp: &TcpStream, dst: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    let want = dst.len();
    let mut got = 0;
    let r = tcp.try_io(Interest::READABLE, || {
        got = SockRef::from(tcp).recv(dst)?;
        if got > 0 && got < want {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match r {
        Err(e) if !(e.kind() == io::ErrorKind::WouldBlock && got > 0) => Err(e),
        _ => Ok(got),
    }
}
