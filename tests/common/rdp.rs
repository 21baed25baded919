//! RDP bytes for tests: X.224 Connection Requests as clients send them first.

use std::net::{IpAddr, SocketAddr};

/// A Connection Request carrying `var` (a cookie or token line) and an rdpNegReq.
pub fn connection_request(var: &[u8]) -> Vec<u8> {
    let mut p = vec![0x03, 0x00, 0x00, 0x00, 0x00, 0xe0, 0, 0, 0, 0, 0];
    p.extend_from_slice(var);
    p.extend_from_slice(&[0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00]);
    let len = p.len();
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4] = (len - 5) as u8;
    p
}

/// The routing token a Session Broker would issue for `addr`.
pub fn routing_token(addr: SocketAddr) -> String {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("v4 only")
    };
    format!(
        "Cookie: msts={}.{}.0000",
        u32::from_le_bytes(ip.octets()),
        addr.port().swap_bytes()
    )
}
