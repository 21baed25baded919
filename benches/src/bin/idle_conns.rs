//! Opens N idle client connections to TARGET and holds them for SECONDS; prints `open=N` when
//! all are established (the harness then reads the proxy's memory).
//!
//! `idle_conns TARGET N SECONDS [after-request] [tls]`
//!
//! With `after-request`, each connection first sends one keep-alive HTTP request and reads its
//! response, so the proxy holds kept-alive connections rather than never-used ones. With `tls`,
//! each connection first completes a TLS 1.3 handshake (the proxy then holds a TLS session).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let flags = &a[3.min(a.len())..];
    assert!(
        a.len() >= 3 && flags.iter().all(|f| f == "after-request" || f == "tls"),
        "usage: idle_conns TARGET N SECONDS [after-request] [tls]"
    );
    let (target, n, secs): (String, usize, u64) =
        (a[0].clone(), a[1].parse().unwrap(), a[2].parse().unwrap());
    let after_request = flags.iter().any(|f| f == "after-request");
    let tls = flags.iter().any(|f| f == "tls").then(|| {
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            plugboard_benches::tls_client::config(),
        ))
    });
    let mut held: Vec<Box<dyn Conn>> = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let tcp = match tokio::net::TcpStream::connect(&target).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect failed after {}: {e}", held.len());
                break;
            }
        };
        let mut s: Box<dyn Conn> = match &tls {
            None => Box::new(tcp),
            Some(c) => match c
                .connect(plugboard_benches::tls_client::server_name(), tcp)
                .await
            {
                Ok(t) => Box::new(t),
                Err(e) => {
                    eprintln!("TLS handshake failed after {}: {e}", held.len());
                    break;
                }
            },
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
async fn read_response(s: &mut Box<dyn Conn>, buf: &mut [u8]) -> bool {
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
