//! Listening sockets and the accept loop, shared by http and tcp services.
//!
//! Sockets are bound when the server is built, so a busy or forbidden address is refused at
//! start-up with the service's name. Each accepted connection is handed with its peer address
//! (from `accept`, so nobody asks the kernel again) and its connection slots ([`Limits`]) to
//! the service's handler.
//!
//! Accept errors are not fatal (as tokio's `TcpListener` documents): when the process is out
//! of descriptors (EMFILE/ENFILE) or memory, the pending connection stays in the backlog and
//! the loop sleeps [`BACKOFF`] before trying again, logging at most once a second, so it never
//! spins; it serves again as soon as descriptors are free.

use std::io;
use std::net::SocketAddr;

use pingora::server::ShutdownWatch;
use tokio::net::{TcpListener, TcpStream};

use super::limits::{Limits, Slots};
use crate::observe::logging::RateLimit;

/// Pending connections the kernel queues per listener (pingora's listener uses the same).
const BACKLOG: i32 = 65535;

/// Pause after a failed accept.
pub const BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Binds every address of a service; the error names the service and the address.
pub fn bind(service: &str, addrs: &[SocketAddr]) -> Result<Vec<std::net::TcpListener>, String> {
    addrs
        .iter()
        .map(|a| listen(*a).map_err(|e| format!("service {service}: cannot listen on {a}: {e}")))
        .collect()
}

fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Accepts on every socket until the server stops, within `limits`, calling `handle` for each
/// connection (it should spawn the connection's task, which keeps the slots while the
/// connection lives). Connections already accepted are not touched.
pub async fn serve(
    service: &str,
    sockets: Vec<std::net::TcpListener>,
    limits: Limits,
    mut shutdown: ShutdownWatch,
    handle: impl Fn(TcpStream, SocketAddr, Slots) + Clone + Send + 'static,
) {
    let mut loops = Vec::new();
    for s in sockets {
        match TcpListener::from_std(s) {
            Ok(l) => loops.push(tokio::spawn(accept_loop(l, limits.clone(), handle.clone()))),
            Err(e) => tracing::error!(service, "cannot register listener: {e}"),
        }
    }
    stopping(&mut shutdown).await;
    for l in &loops {
        l.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    handle: impl Fn(TcpStream, SocketAddr, Slots),
) {
    let errors = RateLimit::default();
    loop {
        // Above a limit, new connections wait in the backlog.
        let slots = limits.acquire().await;
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    handle(tcp, peer, slots);
                    break;
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning on the error.
                    if errors.allow() {
                        tracing::warn!(
                            "accept failed: {e}; retrying every {} ms",
                            BACKOFF.as_millis()
                        );
                    }
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }
}

/// Resolves once the server is shutting down (or gone).
pub async fn stopping(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
