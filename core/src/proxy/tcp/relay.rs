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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::io::socket;
use crate::observe::access_log::TcpEnd;

/// Buffer per moving direction: large enough that a bulk transfer needs few system calls per
/// megabyte (benches/run row 3a).
pub const RELAY_BUFFER: usize = 32 * 1024;

/// What a relay moved, and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Bytes from the client to the backend.
    pub bytes_in: u64,
    /// Bytes from the backend to the client.
    pub bytes_out: u64,
    pub end: TcpEnd,
}

/// Copies both ways until both directions are closed, one fails, or nothing was read for `idle`.
pub async fn relay(client: &TcpStream, server: &TcpStream, idle: Duration) -> Relayed {
    let shared = Shared::new();
    let copy = async {
        // The first error ends both directions; the caller closes both sockets.
        let _ = tokio::try_join!(
            shared.ended(0, pipe(client, server, &shared, 0)),
            shared.ended(1, pipe(server, client, &shared, 1))
        );
    };
    shared.until_idle(copy, idle).await
}

/// The same for streams that are not bare sockets (TLS on either side): each direction
/// copies through a buffer of [`STREAM_BUFFER`] bytes, flushing after each write so that a
/// TLS record leaves at once.
pub async fn relay_streams<A, B>(a: A, b: B, idle: Duration) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Shared::new();
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let copy = async {
        let _ = tokio::try_join!(
            shared.ended(0, copy(ar, bw, &shared, 0)),
            shared.ended(1, copy(br, aw, &shared, 1))
        );
    };
    shared.until_idle(copy, idle).await
}

/// Buffer of each direction of [`relay_streams`].
pub const STREAM_BUFFER: usize = 16 * 1024;

async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    dir: usize,
) -> io::Result<()> {
    let mut buf = vec![0u8; STREAM_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        shared.moved(dir, n);
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// No direction has ended yet.
const RUNNING: u8 = 2;

impl Shared {
    fn new() -> Shared {
        Shared {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            closed: [AtomicBool::new(false), AtomicBool::new(false)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            first_end: AtomicU8::new(RUNNING),
        }
    }

    /// `n` bytes read in direction `dir` (and so, activity).
    fn moved(&self, dir: usize, n: usize) {
        self.bytes[dir].fetch_add(n as u64, Relaxed);
        self.last_read_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// Runs direction `dir` and notes it if it is the first to end (closed or failed): its
    /// source's side is the one that ended the connection.
    async fn ended(
        &self,
        dir: usize,
        f: impl std::future::Future<Output = io::Result<()>>,
    ) -> io::Result<()> {
        let r = f.await;
        let _ = self
            .first_end
            .compare_exchange(RUNNING, dir as u8, Relaxed, Relaxed);
        r
    }

    /// Runs `copy` until it ends or nothing was read for `idle`.
    async fn until_idle(
        &self,
        copy: impl std::future::Future<Output = ()>,
        idle: Duration,
    ) -> Relayed {
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
        let end = tokio::select! {
            () = copy => match self.first_end.load(Relaxed) {
                1 => TcpEnd::BackendClose,
                _ => TcpEnd::ClientClose,
            },
            () = watchdog => {
                tracing::debug!("tcp connection idle for {idle:?}, closing");
                TcpEnd::IdleTimeout
            }
        };
        Relayed {
            bytes_in: self.bytes[0].load(Relaxed),
            bytes_out: self.bytes[1].load(Relaxed),
            end,
        }
    }
}

struct Shared {
    start: Instant,
    last_read_ms: AtomicU64,
    /// Per direction: its source sent FIN and everything read was written on.
    closed: [AtomicBool; 2],
    /// Bytes read per direction (0: from the client, 1: from the backend).
    bytes: [AtomicU64; 2],
    /// The direction that ended first, or [`RUNNING`].
    first_end: AtomicU8,
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
        shared.moved(dir, n);
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
