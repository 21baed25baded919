//! The `icmp` check: up when the backend's host answers an ICMP echo request (ICMPv6 for an
//! IPv6 backend).
//!
//! The socket is an unprivileged ping socket (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`),
//! which Linux allows to the groups in `net.ipv4.ping_group_range` (it covers IPv6 too); the
//! kernel picks the echo identifier and delivers only the replies to it. A process that may
//! not open one (the range excludes its group) falls back to a raw socket, which needs root or
//! `CAP_NET_RAW`; [`probe`] tells at configuration load when neither is possible. Each check
//! opens its own socket, connected to the backend (so only that host's packets arrive), sends
//! one request and waits for the reply with the same identifier, sequence number and a random
//! payload, up to the check's timeout.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::balance::hooks::{HealthCheck, HealthReport};
use crate::balance::pool::Pool;

/// Echo request and reply types.
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Bytes of payload after the 8-byte header: a random token.
const PAYLOAD: usize = 16;

/// Up when the host answers an echo request.
pub struct IcmpCheck {
    seq: AtomicU16,
}

impl IcmpCheck {
    pub fn new() -> Self {
        IcmpCheck {
            seq: AtomicU16::new(fastrand::u16(..)),
        }
    }
}

impl Default for IcmpCheck {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl HealthCheck for IcmpCheck {
    async fn check(
        &self,
        _: &Arc<Pool>,
        _: usize,
        target: SocketAddr,
        timeout: Duration,
    ) -> Option<HealthReport> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let up = matches!(
            tokio::time::timeout(timeout, ping(target.ip(), seq)).await,
            Ok(Ok(()))
        );
        Some(if up {
            HealthReport::UP
        } else {
            HealthReport::DOWN
        })
    }
}

/// A socket for echo requests to `v6` or v4 hosts: a ping socket, else a raw one. `true`
/// with a raw socket (replies then carry the IPv4 header, and every ICMP packet arrives).
fn open(v6: bool) -> io::Result<(Socket, bool)> {
    let (domain, proto) = match v6 {
        false => (Domain::IPV4, Protocol::ICMPV4),
        true => (Domain::IPV6, Protocol::ICMPV6),
    };
    match Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(proto)) {
        Ok(s) => Ok((s, false)),
        Err(e) => match Socket::new(domain, Type::RAW.nonblocking().cloexec(), Some(proto)) {
            Ok(s) => Ok((s, true)),
            Err(_) => Err(e),
        },
    }
}

/// Whether this process can send echo requests to hosts of this family; the error says what
/// to change.
pub fn probe(v6: bool) -> Result<(), String> {
    open(v6).map(|_| ()).map_err(|e| {
        format!(
            "this process cannot open an ICMP{} socket ({e}): allow ping sockets to its group \
             with `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"` (persist it in \
             /etc/sysctl.d/), or run it with CAP_NET_RAW",
            if v6 { "v6" } else { "" }
        )
    })
}

/// The Internet checksum (RFC 1071) of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let word = match c {
            [h, l] => u16::from_be_bytes([*h, *l]),
            [h] => u16::from_be_bytes([*h, 0]),
            _ => 0,
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one echo request to `ip` and waits for its reply (the caller bounds the time).
async fn ping(ip: IpAddr, seq: u16) -> io::Result<()> {
    let v6 = ip.is_ipv6();
    let (sock, raw) = open(v6)?;
    sock.connect(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    // A ping socket's identifier is its port, set by the kernel; a raw one carries ours.
    let ident = fastrand::u16(..);
    let token: [u8; PAYLOAD] = std::array::from_fn(|_| fastrand::u8(..));
    let mut req = [0u8; 8 + PAYLOAD];
    req[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    req[4..6].copy_from_slice(&ident.to_be_bytes());
    req[6..8].copy_from_slice(&seq.to_be_bytes());
    req[8..].copy_from_slice(&token);
    if !v6 {
        // ICMPv6 checksums cover a pseudo-header; the kernel fills them in.
        let c = checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // SAFETY: the socket owns its descriptor for its whole life and always reports that
    // same descriptor.
    let fd = unsafe { AsyncFd::register(sock) }?;
    loop {
        let mut g = fd.writable().await?;
        match g.try_io(|s| s.get_ref().send(&req)) {
            Ok(r) => {
                r?;
                break;
            }
            Err(_would_block) => continue,
        }
    }
    let mut buf = [0u8; 1500];
    loop {
        let mut g = fd.readable().await?;
        let n = match g.try_io(|s| {
            let mut sock: &Socket = s.get_ref();
            io::Read::read(&mut sock, &mut buf)
        }) {
            Ok(r) => r?,
            Err(_would_block) => continue,
        };
        let mut pkt = &buf[..n];
        if raw && !v6 {
            // A raw IPv4 socket delivers the IP header too.
            let ihl = match pkt.first() {
                Some(b) if b >> 4 == 4 => ((b & 0x0f) as usize) * 4,
                _ => continue,
            };
            match pkt.get(ihl..) {
                Some(p) => pkt = p,
                None => continue,
            }
        }
        if is_reply(pkt, v6, raw.then_some(ident), seq, &token) {
            return Ok(());
        }
    }
}

/// `pkt` (an ICMP message) is the reply to our request: echo reply type, our sequence
/// number and token, and our identifier when we chose it.
fn is_reply(pkt: &[u8], v6: bool, ident: Option<u16>, seq: u16, token: &[u8]) -> bool {
    if pkt.len() < 8 + token.len() {
        return false;
    }
    let want = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    pkt[0] == want
        && pkt[1] == 0
        && ident.is_none_or(|i| pkt[4..6] == i.to_be_bytes())
        && pkt[6..8] == seq.to_be_bytes()
        && &pkt[8..8 + token.len()] == token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request() {
        // type 8, code 0, id 1, seq 1: the sum's complement is 0xf7fd.
        let mut p = [8, 0, 0, 0, 0, 1, 0, 1];
        let c = checksum(&p);
        assert_eq!(c, 0xf7fd);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn replies_are_matched() {
        let token = [7u8; PAYLOAD];
        let mut r = vec![0, 0, 0, 0, 0x12, 0x34, 0, 5];
        r.extend_from_slice(&token);
        assert!(is_reply(&r, false, None, 5, &token));
        assert!(is_reply(&r, false, Some(0x1234), 5, &token));
        assert!(!is_reply(&r, false, Some(0x1235), 5, &token));
        assert!(!is_reply(&r, false, None, 6, &token));
        assert!(!is_reply(&r, true, None, 5, &token));
        assert!(!is_reply(&r, false, None, 5, &[8u8; PAYLOAD]));
        assert!(!is_reply(&r[..10], false, None, 5, &token));
    }

    #[tokio::test]
    async fn loopback_answers() {
        probe(false).expect("ICMP sockets");
        tokio::time::timeout(
            Duration::from_secs(2),
            ping("127.0.0.1".parse().unwrap(), 1),
        )
        .await
        .expect("a reply within 2 s")
        .expect("ping");
    }

    #[tokio::test]
    async fn ipv6_loopback_answers() {
        probe(true).expect("ICMPv6 sockets");
        tokio::time::timeout(Duration::from_secs(2), ping("::1".parse().unwrap(), 1))
            .await
            .expect("a reply within 2 s")
            .expect("ping");
    }
}
