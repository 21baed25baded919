//! Network I/O that health-check plugins may do through host functions. Blocking, with
//! timeouts: health checks run on a plugin health thread, never on a worker thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest answer kept.
const MAX_RESPONSE: usize = 64 * 1024;

/// Connects, sends `send` (if any), then reads until the peer closes, a line-oriented answer
/// is complete (a newline after some data), the buffer is full, or `timeout` passes.
/// `None` when the connection cannot be made.
pub fn tcp_exchange(addr: SocketAddr, send: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    if !send.is_empty() {
        s.set_write_timeout(Some(remaining(deadline)?)).ok()?;
        s.write_all(send).ok()?;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < MAX_RESPONSE {
        let Some(left) = remaining(deadline) else {
            break;
        };
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.contains(&b'\n') && send.is_empty() {
                    break;
                }
            }
        }
    }
    Some(out)
}

/// `GET path` over HTTP/1.1 with `Connection: close`; returns the status and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: plugboard-health\r\nConnection: close\r\n\r\n"
    );
    let raw = tcp_exchange(addr, req.as_bytes(), timeout)?;
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw[head_end + 4..].to_vec();
    if let Some(len) = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    }) {
        body.truncate(len);
    }
    Some((status, body))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}
