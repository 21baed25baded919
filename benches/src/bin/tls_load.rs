//! New TLS connections per second: each of CONCURRENCY workers loops over connect, a full
//! TLS 1.3 handshake (X25519, no resumption), one `GET /` with `Connection: close`, and reading
//! the response to the close. Prints `connections=N seconds=S errors=E`.
//!
//! `tls_load TARGET CONCURRENCY SECONDS`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(a.len() == 3, "usage: tls_load TARGET CONCURRENCY SECONDS");
    let (target, conc, secs): (String, usize, f64) =
        (a[0].clone(), a[1].parse().unwrap(), a[2].parse().unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(plugboard_benches::tls_client::config()));
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (target, connector) = (target.clone(), connector.clone());
        let (done, errors) = (done.clone(), errors.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 4096];
            while Instant::now() < end {
                let one = tokio::time::timeout(
                    Duration::from_secs(5),
                    one_connection(&target, &connector, &mut buf),
                );
                match one.await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "connections={} seconds={:.3} errors={}",
        done.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
}

async fn one_connection(
    target: &str,
    connector: &tokio_rustls::TlsConnector,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(plugboard_benches::tls_client::server_name(), tcp)
        .await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: bench.example.com\r\nConnection: close\r\n\r\n")
        .await?;
    // The status line arrives in the first read; then read to the close.
    let mut got = 0;
    let mut ok = false;
    loop {
        match tls.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                ok |= got == 0 && buf[..n].starts_with(b"HTTP/1.1 200");
                got += n;
            }
            // Some servers close without close_notify after `Connection: close`.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && got > 0 => break,
            Err(e) => return Err(e),
        }
    }
    if ok {
        Ok(())
    } else {
        Err(std::io::ErrorKind::InvalidData.into())
    }
}
