//! New RDP connections per second: each worker loops connect, send a Connection Request with
//! `Cookie: mstshash=userN`, read the Connection Confirm, close; bounded by a duration.
//!
//! `rdp_load TARGET WORKERS SECONDS` prints `connections=N seconds=S errors=E`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(a.len() == 3, "usage: rdp_load TARGET WORKERS SECONDS");
    let (target, workers, secs): (String, usize, f64) =
        (a[0].clone(), a[1].parse().unwrap(), a[2].parse().unwrap());
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (target, done, errors) = (target.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < end {
                i += 1;
                let req = plugboard_benches::rdp::connection_request(&format!(
                    "user{}",
                    (w * 7919 + i) % 1000
                ));
                let ok = async {
                    let mut s = tokio::net::TcpStream::connect(&target).await.ok()?;
                    s.write_all(&req).await.ok()?;
                    let mut cc = [0u8; 19];
                    s.read_exact(&mut cc).await.ok()?;
                    (cc[5] == 0xd0).then_some(())
                };
                match tokio::time::timeout(Duration::from_secs(5), ok).await {
                    Ok(Some(())) => done.fetch_add(1, Relaxed),
                    _ => errors.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "connections={} seconds={secs} errors={}",
        done.load(Relaxed),
        errors.load(Relaxed)
    );
}
