//! The PROXY protocol (HAProxy's; v1 text and v2 binary) on both sides of the proxy.
//!
//! [`accept`]: a service behind another load balancer (`accept_proxy = true`) reads the header
//! that balancer puts before each client's bytes, and takes the client address it carries
//! for persistence, `X-Forwarded-For`, logs and plugins. [`send`]: a service with
//! `send_proxy` starts each backend connection with a header carrying its client's address.
//!
//! Parsing and building are the `ppp` crate's (v1 and v2, parses without allocating); this
//! module only frames the header on the socket, so that exactly its bytes are consumed and
//! the client's own bytes (a TLS ClientHello, an HTTP request, RDP) stay unread, and decides
//! who may send one ([`AcceptProxy`]).

pub mod accept;
pub mod send;

use std::net::IpAddr;

use ipnet::IpNet;

/// Which PROXY protocol version a service sends to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text form (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary form.
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// `accept_proxy = true` on a listen address: every connection must begin with a PROXY
/// header (v1 or v2, told apart by their first byte), and only peers in `trusted` may send
/// one (empty: any peer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptProxy {
    pub trusted: Vec<IpNet>,
}

impl AcceptProxy {
    /// Whether a connection from `ip` may carry a header. An IPv4 client of a dual-stack
    /// socket (`::ffff:a.b.c.d`) is compared as the IPv4 address it is.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.is_empty() || self.trusted.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_by_network_and_address() {
        let p = AcceptProxy {
            trusted: vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ],
        };
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("127.0.0.1".parse().unwrap()));
        assert!(p.trusts("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!p.trusts("127.0.0.2".parse().unwrap()));
        assert!(!p.trusts("::1".parse().unwrap()));
        assert!(AcceptProxy::default().trusts("192.0.2.1".parse().unwrap()));
    }
}
