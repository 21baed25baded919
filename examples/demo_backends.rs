//! Small HTTP backends for the quickstart: each address given on the command line answers
//! every request with `hello from <address>` and `/health` with 200.
//!
//! ```sh
//! cargo run --release --example demo_backends -- 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! ```

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        eprintln!("usage: demo_backends ADDR [ADDR...]");
        std::process::exit(2);
    }
    let mut tasks = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(&addr).await?;
        println!("demo backend listening on {addr}");
        tasks.push(tokio::spawn(serve(listener, addr)));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn serve(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            // One request per loop: keep-alive until the client closes.
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut forwarded = String::new();
                let mut h = String::new();
                loop {
                    h.clear();
                    if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if h == "\r\n" || h == "\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("x-forwarded-for:") {
                        forwarded = v.trim().to_string();
                    }
                }
                let body = format!("hello from {name} (client {forwarded})\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if w.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
