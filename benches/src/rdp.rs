//! RDP bytes the load generators send first.

/// An X.224 Connection Request with `Cookie: mstshash=USER` and an rdpNegReq.
pub fn connection_request(user: &str) -> Vec<u8> {
    let mut p = vec![3, 0, 0, 0, 0, 0xe0, 0, 0, 0, 0, 0];
    p.extend_from_slice(format!("Cookie: mstshash={user}\r\n").as_bytes());
    p.extend_from_slice(&[1, 0, 8, 0, 3, 0, 0, 0]);
    let len = p.len();
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4] = (len - 5) as u8;
    p
}
