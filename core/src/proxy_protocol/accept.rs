//! Reading the PROXY header at the start of an accepted connection.
//!
//! The header is consumed exactly: whatever follows it is the client's (a TLS ClientHello, an
//! HTTP request) and must stay in the socket for whoever reads next. So the bytes are first
//! peeked (which waits for at least one without spinning), [`frame`] decides how many of them
//! certainly belong to the header, exactly those are read, and this repeats until the header
//! is whole; then `ppp` parses it. A header may arrive in any number of pieces; it is bounded
//! in size here and in time by the caller's deadline.

use std::net::SocketAddr;
use std::time::Instant;

use ppp::v1;
use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::AcceptProxy;

/// Longest v1 header, CRLF included (the protocol's own limit).
pub const V1_MAX: usize = 107;
/// Longest v2 header: the 16-byte fixed part and at most this much after it (addresses and
/// TLVs; HAProxy's own headers stay far below).
pub const V2_MAX_PAYLOAD: usize = 512;
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
pub(crate) const MAX_HEADER: usize = V2_FIXED + V2_MAX_PAYLOAD;
const V1_PREFIX: &[u8] = b"PROXY ";

/// The addresses a header carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// The client.
    pub source: SocketAddr,
    /// The address the client connected to (on the balancer in front).
    pub destination: SocketAddr,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("peer is not in trusted_proxies")]
    Untrusted,
    #[error("no complete PROXY header in time")]
    Timeout,
    #[error("closed before a complete PROXY header")]
    Closed,
    #[error("does not begin with a PROXY protocol header")]
    NotProxy,
    #[error("PROXY header longer than allowed (v1: {V1_MAX} bytes, v2: {MAX_HEADER})")]
    TooLong,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl AcceptProxy {
    /// A new connection's client as its header says: its address and the address it
    /// connected to (`None` when the header carried none, and the peer stands), or `None`
    /// when the connection is refused (logged at debug level: scanners are common; the
    /// caller closes it).
    pub async fn client(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Option<(SocketAddr, Option<SocketAddr>)> {
        match self.read(tcp, peer, deadline).await {
            Ok(Some(c)) => Some((c.source, Some(c.destination))),
            Ok(None) => Some((peer, None)),
            Err(e) => {
                tracing::debug!(%peer, "connection refused: {e}");
                None
            }
        }
    }

    /// Reads the header of a connection from `peer`, by `deadline`. `Ok(None)`: a v2 `LOCAL`
    /// or v1 `UNKNOWN` header (the balancer's own health check), or one without IP addresses:
    /// the peer's own address stands. A peer not trusted is refused before anything is read.
    pub async fn read(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<Option<Carried>, Refused> {
        if !self.trusts(peer.ip()) {
            return Err(Refused::Untrusted);
        }
        tokio::time::timeout_at(deadline.into(), read_header(tcp))
            .await
            .unwrap_or(Err(Refused::Timeout))
    }
}

/// Reads exactly one header from `tcp`, however it arrives.
async fn read_header(tcp: &mut TcpStream) -> Result<Option<Carried>, Refused> {
    let mut buf = [0u8; MAX_HEADER];
    let mut len = 0;
    loop {
        // Waits for at least one byte not yet consumed.
        let n = tcp.peek(&mut buf[len..]).await?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let seen = len + n;
        let framed = frame(&buf[..seen])?;
        let take = match framed {
            Frame::Complete(total) => total,
            Frame::More => seen,
        };
        // Those bytes are in the socket already: this does not wait.
        tcp.read_exact(&mut buf[len..take]).await?;
        len = take;
        match framed {
            Frame::Complete(_) => return parse(&buf[..len]),
            Frame::More if len == buf.len() => return Err(Refused::TooLong),
            Frame::More => {}
        }
    }
}

/// How much of the bytes seen so far is header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// All of them, and the header goes on.
    More,
    /// The header is the first this many.
    Complete(usize),
}

/// Frames the start of a connection (`seen`, at least one byte): v1 begins with `PROXY `
/// and ends at the first CRLF; v2 begins with its 12-byte signature and its length field
/// (bytes 14-15) says how much follows the fixed 16.
pub(crate) fn frame(seen: &[u8]) -> Result<Frame, Refused> {
    let matches = |prefix: &[u8]| {
        let k = seen.len().min(prefix.len());
        seen[..k] == prefix[..k]
    };
    if matches(V1_PREFIX) {
        return match memchr::memchr(b'\n', seen) {
            Some(i) if i >= V1_MAX => Err(Refused::TooLong),
            Some(i) if seen[i - 1] == b'\r' => Ok(Frame::Complete(i + 1)),
            Some(_) => Err(Refused::Invalid("v1 line not ended by CRLF".into())),
            None if seen.len() >= V1_MAX => Err(Refused::TooLong),
            None => Ok(Frame::More),
        };
    }
    if !matches(v2::PROTOCOL_PREFIX) {
        return Err(Refused::NotProxy);
    }
    if seen.len() < V2_FIXED {
        return Ok(Frame::More);
    }
    let payload = u16::from_be_bytes([seen[14], seen[15]]) as usize;
    if payload > V2_MAX_PAYLOAD {
        return Err(Refused::TooLong);
    }
    let total = V2_FIXED + payload;
    Ok(match seen.len() >= total {
        true => Frame::Complete(total),
        false => Frame::More,
    })
}

/// Parses a whole header (as framed) with `ppp`.
pub(crate) fn parse(header: &[u8]) -> Result<Option<Carried>, Refused> {
    let invalid = |e: &dyn std::fmt::Display| Refused::Invalid(e.to_string());
    if header.starts_with(V1_PREFIX) {
        let h = v1::Header::try_from(header).map_err(|e| invalid(&e))?;
        return Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(Carried {
                source: (a.source_address, a.source_port).into(),
                destination: (a.destination_address, a.destination_port).into(),
            }),
            v1::Addresses::Tcp6(a) => Some(Carried {
                source: (a.source_address, a.source_port).into(),
                destination: (a.destination_address, a.destination_port).into(),
            }),
            v1::Addresses::Unknown => None,
        });
    }
    let h = v2::Header::try_from(header).map_err(|e| invalid(&e))?;
    if h.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        v2::Addresses::IPv4(a) => Some(Carried {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }),
        v2::Addresses::IPv6(a) => Some(Carried {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }),
        // No IP addresses to take (UNSPEC, a Unix socket): the peer's stand, as for LOCAL.
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
#[path = "accept_tests.rs"]
mod tests;
