//! A UDP echo server for the udp benchmark row: every datagram goes back to its sender.
//!
//! `udp_echo ADDR`

fn main() {
    let addr = std::env::args().nth(1).expect("usage: udp_echo ADDR");
    let s = std::net::UdpSocket::bind(&addr).expect("bind");
    let mut buf = vec![0u8; 65_536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = s.send_to(&buf[..n], from);
            }
            Err(e) => eprintln!("udp_echo: {e}"),
        }
    }
}
