//! A fake RDP server for benchmarks: reads a Connection Request, answers a Connection
//! Confirm (RDP_NEG_FAILURE), then waits for the client to close.
//!
//! `fake_rdp LISTEN`

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIRM: [u8; 19] = [
    3, 0, 0, 19, 14, 0xd0, 0, 0, 0x12, 0x34, 0, 3, 0, 8, 0, 5, 0, 0, 0,
];

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).expect("usage: fake_rdp LISTEN");
    let l = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut n = 0;
            while n < 4 || n < u16::from_be_bytes([buf[2], buf[3]]) as usize {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
                if n == buf.len() {
                    break;
                }
            }
            let _ = s.write_all(&CONFIRM).await;
            let _ = s.read(&mut buf).await;
        });
    }
}
