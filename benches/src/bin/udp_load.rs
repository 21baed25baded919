//! UDP load for the udp benchmark row: FLOWS client sockets (one source port, so one flow,
//! each), each keeping WINDOW datagrams of SIZE bytes in flight to TARGET (an echo behind the
//! proxy): each reply sends the next. Runs SECONDS or until MAX replies, whichever is first;
//! prints `replies=N seconds=S stalls=K` (a stall: a flow with no reply for 200 ms, the
//! datagrams lost on the way, which then sends a new window).
//!
//! `udp_load TARGET FLOWS WINDOW SIZE SECONDS MAX`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

const STALL: Duration = Duration::from_millis(200);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(
        a.len(),
        6,
        "usage: udp_load TARGET FLOWS WINDOW SIZE SECONDS MAX"
    );
    let target = a[0].clone();
    let n = |i: usize| a[i].parse::<u64>().expect("a number");
    let (flows, window, size, secs, max) = (n(1), n(2), n(3) as usize, n(4), n(5));
    let replies = Arc::new(AtomicU64::new(0));
    let stalls = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..flows {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.connect(&target).await.expect("connect");
        let (replies, stalls) = (replies.clone(), stalls.clone());
        tasks.push(tokio::spawn(async move {
            let payload = vec![b'x'; size];
            let mut buf = vec![0u8; size.max(1) + 64];
            let fill = async |sock: &UdpSocket| {
                for _ in 0..window {
                    let _ = sock.send(&payload).await;
                }
            };
            fill(&sock).await;
            while Instant::now() < deadline && replies.load(Ordering::Relaxed) < max {
                match timeout(STALL, sock.recv(&mut buf)).await {
                    Ok(Ok(_)) => {
                        replies.fetch_add(1, Ordering::Relaxed);
                        let _ = sock.send(&payload).await;
                    }
                    Ok(Err(_)) => {
                        // Refused (nothing listens yet): no busy loop.
                        stalls.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(STALL).await;
                        fill(&sock).await;
                    }
                    Err(_) => {
                        stalls.fetch_add(1, Ordering::Relaxed);
                        fill(&sock).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "replies={} seconds={:.3} stalls={}",
        replies.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        stalls.load(Ordering::Relaxed)
    );
}
