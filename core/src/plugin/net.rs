//! Network I/O that health-check plugins may do through host functions. Blocking, with
//! timeouts: health checks run on the plugin health threads, never on a worker thread. Where a
//! call may connect and how long it may take is decided by the caller
//! ([`super::contract::NetScope`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest answer kept.
const MAX_RESPONSE: usize = 64 * 1024;

/// Connects, sends `send` (if any), then reads until `want` bytes arrived (when `want` > 0),
/// a line-oriented answer is complete (a newline after some data, when nothing was sent and
/// `want` is 0), the peer closes, the buffer is full, or `timeout` passes. `None` when the
/// connection cannot be made.
pub fn tcp_exchange(
    addr: SocketAddr,
    send: &[u8],
    want: usize,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let done = |out: &[u8]| {
        if want > 0 {
            out.len() >= want
        } else {
            send.is_empty() && out.contains(&b'\n')
        }
    };
    exchange(addr, send, timeout, done)
}

fn exchange(
    addr: SocketAddr,
    send: &[u8],
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    if !send.is_empty() {
        s.set_write_timeout(Some(remaining(deadline)?)).ok()?;
        s.write_all(send).ok()?;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < MAX_RESPONSE && !done(&out) {
        let Some(left) = remaining(deadline) else {
            break;
        };
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    Some(out)
}

/// Splits a raw HTTP/1.x response into status, headers text and body start.
fn parse_head(raw: &[u8]) -> Option<(u16, &str, usize)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head, head_end + 4))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// A path `http_get` accepts: starts with `/`, no spaces or control characters (which would
/// let a plugin write other request lines).
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/') && !path.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// `GET path` over HTTP/1.1; returns the status and body. Stops reading at the end of the
/// response (by `Content-Length`), so a server that keeps the connection open costs nothing.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: plugboard-health\r\nConnection: close\r\n\r\n"
    );
    let complete = |raw: &[u8]| match parse_head(raw) {
        Some((_, head, start)) => content_length(head).is_some_and(|n| raw.len() >= start + n),
        None => false,
    };
    let raw = exchange(addr, req.as_bytes(), timeout, complete)?;
    let (status, head, start) = parse_head(&raw)?;
    let mut body = raw[start..].to_vec();
    if let Some(n) = content_length(head) {
        body.truncate(n);
    }
    Some((status, body))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}
