//! Opens N idle client connections to TARGET and holds them for SECONDS; prints `open=N` when
//! all are established (the harness then reads the proxy's memory).
//!
//! `idle_conns TARGET N SECONDS [after-request]`
//!
//! With `after-request`, each connection first sends one keep-alive HTTP request and reads its
//! response, so the proxy holds kept-alive connections rather than never-used ones.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        a.len() == 3 || (a.len() == 4 && a[3] == "after-request"),
        "usage: idle_conns TARGET N SECONDS [after-request]"
    );
    let (target, n, secs): (String, usize, u64) =
        (a[0].clone(), a[1].parse().unwrap(), a[2].parse().unwrap());
    let after_request = a.len() == 4;
    let mut held = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let mut s = match tokio::net::TcpStream::connect(&target).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect failed after {}: {e}", held.len());
                break;
            }
        };
        if after_request {
            let req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
            let ok = s.write_all(req).await.is_ok() && read_response(&mut s, &mut buf).await;
            if !ok {
                eprintln!("request failed after {}", held.len());
                break;
            }
        }
        held.push(s);
    }
    println!("open={}", held.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

/// Reads one response with a `Content-Length` body; false on error, close or a timeout.
async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut [u8]) -> bool {
    let mut have = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&buf[..have]).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if have >= end + 4 + len {
                return true;
            }
        }
        if have == buf.len() {
            return false;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf[have..])).await {
            Ok(Ok(n)) if n > 0 => have += n,
            _ => return false,
        }
    }
}
