//! Copies a TCP connection's bytes both ways, for tcp-mode services.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds a buffer only while bytes move:
//! it is allocated (not zeroed) when the socket turns readable and freed once a read drains
//! the socket, so a quiet RDP session holds no buffer and a new connection zeroes no 64 KiB.
//! Half-closes are passed on; the side that finishes last is closed without a separate
//! `shutdown` (closing sends the FIN), one system call fewer per connection, as in HAProxy.
//!
//! ```no_run
//! # async fn demo(mut client: tokio::net::TcpStream, mut server: tokio::net::TcpStream) {
//! use std::time::Duration;
//! // Returns when both directions are done, one fails, or nothing moved for 5 minutes.
//! plugboard::proxy::tcp::relay::relay(&client, &server, Duration::from_secs(300)).await;
//! # }
//! ```

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::io::socket;

/// Buffer per moving direction: large enough that a bulk transfer needs few system calls per
/// megabyte (benches/run row 3a).
pub const RELAY_BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions are closed, one fails, or nothing was read for `idle`.
pub async fn relay(client: &TcpStream, server: &TcpStream, idle: Duration) {
    let start = Instant::now();
    let shared = Shared {
        start,
        last_read_ms: AtomicU64::new(0),
        closed: [AtomicBool::new(false), AtomicBool::new(false)],
    };
    let copy = async {
        // The first error ends both directions; the caller closes both sockets.
        let _ = tokio::try_join!(
            pipe(client, server, &shared, 0),
            pipe(server, client, &shared, 1)
        );
    };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(shared.last_read_ms.load(Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        () = copy => {}
        () = watchdog => tracing::debug!("tcp connection idle for {idle:?}, closing"),
    }
}

struct Shared {
    start: Instant,
    last_read_ms: AtomicU64,
    /// Per direction: its source sent FIN and everything read was written on.
    closed: [AtomicBool; 2],
}

/// One direction: `from`'s bytes to `to`, then `to`'s write side closed.
async fn pipe(from: &TcpStream, to: &TcpStream, shared: &Shared, dir: usize) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.capacity() == 0 {
            buf.reserve_exact(RELAY_BUFFER);
        }
        let n = match read(from, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        shared
            .last_read_ms
            .store(shared.start.elapsed().as_millis() as u64, Relaxed);
        write_all(to, &buf).await?;
        if n < buf.capacity() {
            // Drained: free the buffer while the socket is quiet.
            buf = Vec::new();
        } else {
            buf.clear();
        }
    }
    shared.closed[dir].store(true, Relaxed);
    if !shared.closed[1 - dir].load(Relaxed) {
        // The other direction still runs: pass the half-close on. Otherwise both sockets are
        // about to be closed, which sends the FIN anyway.
        SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
    }
    Ok(())
}

/// Reads into `buf`'s free capacity (see [`socket::try_recv`]).
fn read(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let got = socket::try_recv(from, buf.spare_capacity_mut())?;
    // SAFETY: recv initialised `got` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + got) };
    Ok(got)
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
