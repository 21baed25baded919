//! Writing a PROXY header at the start of a backend connection (`send_proxy`), built by `ppp`.
//!
//! tcp mode writes it with the client's first bytes; health checks with `send_proxy = true`
//! write one with their own connection's addresses. In http mode the header is written by
//! `proxy::connect::BackendConnector`, the per-client connector of pingora's upstream pool.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Version;

/// The header of a connection from `source` to `destination`. Addresses of different
/// families are brought to one (an IPv4-mapped IPv6 address to IPv4, else IPv4 to mapped
/// IPv6), as the protocol carries one family.
pub fn header(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let pair = same_family(source, destination);
    match version {
        Version::V1 => v1::Addresses::from(pair).to_string().into_bytes(),
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            pair,
        )
        .build()
        // Only a payload over 64 KiB fails, and two addresses are at most 36 bytes.
        .expect("a v2 header with two addresses"),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), s.port()),
        IpAddr::V6(_) => s,
    };
    match a.is_ipv4() == b.is_ipv4() {
        true => (a, b),
        false => (v6(a), v6(b)),
    }
}

/// Writes the header for the socket's own addresses: a health check's connection, like
/// HAProxy's `check-send-proxy`.
pub async fn write_own(tcp: &mut TcpStream, version: Version) -> std::io::Result<()> {
    let h = header(version, tcp.local_addr()?, tcp.peer_addr()?);
    tcp.write_all(&h).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_as_haproxy_writes_them() {
        let (s, d) = (addr("192.0.2.1:50000"), addr("198.51.100.2:443"));
        assert_eq!(
            header(Version::V1, s, d),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 50000 443\r\n"
        );
        let v2 = header(Version::V2, s, d);
        assert_eq!(&v2[..12], v2::PROTOCOL_PREFIX);
        assert_eq!(&v2[12..16], [0x21, 0x11, 0, 12]);
        assert_eq!(
            &v2[16..],
            [192, 0, 2, 1, 198, 51, 100, 2, 0xc3, 0x50, 1, 187]
        );
    }

    #[test]
    fn families_are_brought_together() {
        let mapped = addr("[::ffff:10.0.0.1]:80");
        assert_eq!(
            header(Version::V1, addr("10.0.0.9:1000"), mapped),
            b"PROXY TCP4 10.0.0.9 10.0.0.1 1000 80\r\n"
        );
        assert_eq!(
            header(Version::V1, addr("10.0.0.9:1000"), addr("[2001:db8::1]:80")),
            b"PROXY TCP6 ::ffff:10.0.0.9 2001:db8::1 1000 80\r\n"
        );
    }
}
