//! Writing a PROXY header at the start of a backend connection (`send_proxy`), built by `ppp`.
//!
//! tcp mode writes it with the client's first bytes; health checks with `send_proxy = true`
//! write one with their own connection's addresses. In http mode pingora connects and pools
//! upstream connections across clients, so a request of a `send_proxy` service gets a peer
//! with [`ClientConnector`] (pingora's `custom_l4`: connect, write the header, then pingora
//! layers TLS if the backend wants it) and a `group_key` from its client's addresses, so a
//! pooled connection is reused only by the client its header names.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType};
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

/// Makes `peer` (a clone of a backend's prepared peer) connect through a
/// [`ClientConnector`] for this client, and reuse only connections made for it.
pub fn for_client(
    peer: &mut HttpPeer,
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    connect_timeout: Duration,
) {
    let mut h = std::hash::DefaultHasher::new();
    (source, destination).hash(&mut h);
    // 0 is what peers without a client have.
    peer.group_key = h.finish() | 1;
    peer.options.custom_l4 = Some(std::sync::Arc::new(ClientConnector {
        version,
        source,
        destination,
        connect_timeout,
    }));
}

/// pingora's L4 connector for one client of a `send_proxy` http service: connects within
/// the service's `connect_timeout` (pingora does not time a custom connector) and writes the
/// client's header before anything else, TLS included.
#[derive(Debug)]
pub struct ClientConnector {
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for ClientConnector {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let Some(&addr) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "send_proxy needs an IP backend");
        };
        let connect = async {
            let mut tcp = crate::proxy::tcp::connect(addr).await?;
            tcp.write_all(&header(self.version, self.source, self.destination))
                .await?;
            Ok::<_, std::io::Error>(tcp)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(tcp)) => Ok(Stream::from(tcp)),
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                    _ => ErrorType::ConnectError,
                };
                Err(Error::because(kind, format!("connecting to {addr}"), e))
            }
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!("timeout {:?} connecting to {addr}", self.connect_timeout),
            ),
        }
    }
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

    #[test]
    fn group_keys_differ_by_client() {
        let mut a = HttpPeer::new("127.0.0.1:80", false, String::new());
        let mut b = a.clone();
        let d = addr("127.0.0.1:8080");
        let t = Duration::from_secs(1);
        for_client(&mut a, Version::V2, addr("10.0.0.1:1000"), d, t);
        for_client(&mut b, Version::V2, addr("10.0.0.1:1001"), d, t);
        assert_ne!(a.group_key, b.group_key);
        assert_ne!(a.group_key, 0);
        assert!(a.options.custom_l4.is_some());
    }
}
