//! Listening sockets and the accept loop, shared by http and tcp services.
//!
//! Sockets are bound when the server is built, so a busy or forbidden address is refused at
//! start-up with the service's name. Each accepted connection is handed with its peer address
//! (from `accept`, so nobody asks the kernel again) to the service's handler.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use pingora::server::ShutdownWatch;
use tokio::net::{TcpListener, TcpStream};

use crate::observe::logging::RateLimit;

/// Pending connections the kernel queues per listener (pingora's listener uses the same).
const BACKLOG: i32 = 65535;

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

/// Accepts on every socket until the server stops, calling `handle` for each connection (it
/// should spawn the connection's task). Connections already accepted are not touched.
pub async fn serve(
    service: &str,
    sockets: Vec<std::net::TcpListener>,
    mut shutdown: ShutdownWatch,
    handle: impl Fn(TcpStream, SocketAddr) + Clone + Send + 'static,
) {
    let mut loops = Vec::new();
    for s in sockets {
        match TcpListener::from_std(s) {
            Ok(l) => loops.push(tokio::spawn(accept_loop(l, handle.clone()))),
            Err(e) => tracing::error!(service, "cannot register listener: {e}"),
        }
    }
    stopping(&mut shutdown).await;
    for l in &loops {
        l.abort();
    }
}

async fn accept_loop(listener: TcpListener, handle: impl Fn(TcpStream, SocketAddr)) {
    let errors = RateLimit::default();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                handle(tcp, peer);
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on the error.
                if errors.allow() {
                    tracing::warn!("accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
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
