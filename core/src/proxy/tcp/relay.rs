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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::io::socket;

/// Buffer per moving direction: large enough that a bulk transfer needs few system calls per
/// megabyte (benches/run row 3a).
pub const RELAY_BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions are closed, one fails, or nothing was read for `idle`.
pub async fn relay(client: &TcpStream, server: &TcpStream, idle: Duration) {
    let shared = Shared::new();
    let copy = async {
        // The first error ends both directions; the caller closes both sockets.
        let _ = tokio::try_join!(
            pipe(client, server, &shared, 0),
            pipe(server, client, &shared, 1)
        );
    };
    shared.until_idle(copy, idle).await;
}

/// The same for streams that are not bare sockets (TLS on either side): each direction
/// copies through a buffer of [`STREAM_BUFFER`] bytes, flushing after each write so that a
/// TLS record leaves at once.
pub async fn relay_streams<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Shared::new();
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let copy = async {
        let _ = tokio::try_join!(copy(ar, bw, &shared), copy(br, aw, &shared));
    };
    shared.until_idle(copy, idle).await;
}

/// Buffer of each direction of [`relay_streams`].
pub const STREAM_BUFFER: usize = 16 * 1024;

async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = vec![0u8; STREAM_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        shared.touch();
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

impl Shared {
    fn new() -> Shared {
        Shared {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            closed: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    fn touch(&self) {
        self.last_read_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// Runs `copy` until it ends or nothing was read for `idle`.
    async fn until_idle(&self, copy: impl std::future::Future<Output = ()>, idle: Duration) {
        let watchdog = async {
            loop {
                let since = Duration::from_millis(self.last_read_ms.load(Relaxed));
                let deadline = self.start + since + idle;
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
        shared.touch();
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
