//! Opens N idle client connections to TARGET and holds them for SECONDS; prints `open=N` when
//! all are established (the harness then reads the proxy's memory).
//!
//! `idle_conns TARGET N SECONDS`

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(a.len() == 3, "usage: idle_conns TARGET N SECONDS");
    let (target, n, secs): (String, usize, u64) =
        (a[0].clone(), a[1].parse().unwrap(), a[2].parse().unwrap());
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match tokio::net::TcpStream::connect(&target).await {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("connect failed after {}: {e}", held.len());
                break;
            }
        }
    }
    println!("open={}", held.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}
