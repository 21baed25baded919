//! Listening sockets and the accept loop, shared by http and tcp services.
//!
//! Sockets are bound when the server is built, so a busy or forbidden address is refused at
//! start-up with the service's name. Each accepted connection is handed with its peer address
//! (from `accept`, so nobody asks the kernel again) and its connection slots ([`Limits`]) to
//! the service's handler.
//!
//! A listener stops when the server stops, or alone when a reload drops its address (its
//! `stop` signal); connections already accepted are not touched either way. The limits are read
//! at each accept, so a reload's new `max_connections` applies to the next connection.
//!
//! Accept errors are not fatal (as tokio's `TcpListener` documents): when the process is out
//! of descriptors (EMFILE/ENFILE) or memory, the pending connection stays in the backlog and
//! the loop sleeps [`BACKOFF`] before trying again, logging at most once a second, so it never
//! spins; it serves again as soon as descriptors are free.

use std::io;
use std::net::SocketAddr;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use tokio::net::{TcpListener, TcpStream};

use super::limits::{Limits, Slots, Tally};
use crate::observe::logging::RateLimit;

/// Pending connections the kernel queues per listener (pingora's listener uses the same).
const BACKLOG: i32 = 65535;

/// Pause after a failed accept.
pub const BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Tells one listener to stop accepting (a reload dropped its address).
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// Binds an address of a service; the error names the service and the address.
pub fn bind(service: &str, addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    listen(addr).map_err(|e| format!("service {service}: cannot listen on {addr}: {e}"))
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

/// Accepts on `socket` until the server stops or `stop` says so, within `limits`, calling
/// `handle` for each connection (it should spawn the connection's task, which keeps the
/// slots, and with them its place in `tally`, while the connection lives). The socket is
/// closed when this returns.
pub async fn serve(
    service: &str,
    socket: std::net::TcpListener,
    limits: Arc<ArcSwap<Limits>>,
    tally: Tally,
    mut shutdown: ShutdownWatch,
    mut stop: Stop,
    handle: impl Fn(TcpStream, SocketAddr, Slots) + Send + 'static,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(service, "cannot register listener: {e}");
            return;
        }
    };
    tokio::select! {
        () = accept_loop(listener, limits, tally, handle) => {}
        () = stopping(&mut shutdown) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: Arc<ArcSwap<Limits>>,
    tally: Tally,
    handle: impl Fn(TcpStream, SocketAddr, Slots),
) {
    let errors = RateLimit::default();
    loop {
        // Above a limit, new connections wait in the backlog.
        let limits = limits.load_full();
        let mut slots = match limits.try_acquire() {
            Some(s) => s,
            None => {
                tally.waiting();
                limits.acquire().await
            }
        };
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    slots._present = Some(tally.enter());
                    tally.accepted();
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
