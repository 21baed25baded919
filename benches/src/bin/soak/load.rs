//! The load: in-process clients, each a loop bounded by the run's end and by a request count.
//! Every answer names the backend that gave it, which the accounting checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::account::{Books, Pin};

/// At most this many requests per client (a bound besides the run's end).
const MAX_PER_CLIENT: u64 = 2_000_000;
/// Pause between a client's requests: the soak is about chaos, not throughput.
const PAUSE: Duration = Duration::from_millis(20);
/// The longest wait for any answer.
const ANSWER: Duration = Duration::from_secs(5);

/// Reads one response: its status and body (Content-Length framing, as the backends send).
async fn response<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<(u16, String), String> {
    let mut line = String::new();
    if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
        return Err("closed before the status line".into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed in the header".into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
            }
        }
    }
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One GET on an open connection; the backend's name, or what went wrong.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    headers: &str,
    books: &Books,
) -> Result<String, String> {
    let req = format!("GET / HTTP/1.1\r\nHost: soak\r\n{headers}\r\n");
    let io = async {
        s.get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        response(s).await
    };
    let (status, body) = timeout(ANSWER, io)
        .await
        .map_err(|_| "no answer within 5 s".to_string())??;
    if status != 200 || books.marks(&body).is_none() {
        return Err(format!("{status} {body:?}"));
    }
    Ok(body)
}

/// Keep-alive clients of the sticky service: user `uN` sends `X-User: uN`, always lands on
/// the same backend unless that backend was killed or drained.
pub async fn http_keepalive(to: SocketAddr, user: usize, books: Arc<Books>, end: Instant) {
    let who = format!("http keep-alive u{user}");
    let headers = format!("X-User: u{user}\r\n");
    let mut pin = Pin::default();
    let mut conn = None;
    for _ in 0..MAX_PER_CLIENT {
        if Instant::now() >= end {
            return;
        }
        if conn.is_none() {
            match TcpStream::connect(to).await {
                Ok(s) => conn = Some(BufReader::new(s)),
                Err(e) => {
                    books.fail(
                        &books.tally.failed_idempotent,
                        format!("{who}: connect: {e}"),
                    );
                    tokio::time::sleep(PAUSE).await;
                    continue;
                }
            }
        }
        let s = conn.as_mut().unwrap();
        pin.arm(&books);
        books.tally.http_keepalive.add();
        match get(s, &headers, &books).await {
            Ok(name) => pin.check(&books, &name, &who),
            Err(e) => {
                books.fail(&books.tally.failed_idempotent, format!("{who}: {e}"));
                conn = None;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A new connection per request (`Connection: close`).
pub async fn http_new(to: SocketAddr, books: Arc<Books>, end: Instant) {
    for _ in 0..MAX_PER_CLIENT {
        if Instant::now() >= end {
            return;
        }
        books.tally.http_new.add();
        let r = match TcpStream::connect(to).await {
            Ok(s) => get(&mut BufReader::new(s), "Connection: close\r\n", &books).await,
            Err(e) => Err(format!("connect: {e}")),
        };
        if let Err(e) = r {
            books.fail(
                &books.tally.failed_idempotent,
                format!("http new-connection: {e}"),
            );
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// HTTPS: a handshake, then 20 requests kept alive, again.
pub async fn https(to: SocketAddr, books: Arc<Books>, end: Instant) {
    let tls = tokio_rustls::TlsConnector::from(Arc::new(plugboard_benches::tls_client::config()));
    let mut done = 0;
    while done < MAX_PER_CLIENT && Instant::now() < end {
        let conn = async {
            let s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
            tls.connect(plugboard_benches::tls_client::server_name(), s)
                .await
                .map_err(|e| e.to_string())
        };
        let mut s = match timeout(ANSWER, conn).await {
            Ok(Ok(s)) => BufReader::new(s),
            Ok(Err(e)) => {
                books.fail(
                    &books.tally.failed_idempotent,
                    format!("https: connect: {e}"),
                );
                tokio::time::sleep(PAUSE).await;
                continue;
            }
            Err(_) => {
                books.fail(
                    &books.tally.failed_idempotent,
                    "https: no handshake within 5 s".into(),
                );
                continue;
            }
        };
        for _ in 0..20 {
            if Instant::now() >= end {
                return;
            }
            done += 1;
            books.tally.https.add();
            if let Err(e) = get(&mut s, "", &books).await {
                books.fail(&books.tally.failed_idempotent, format!("https: {e}"));
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
}

/// Long-lived TCP connections: a line every 250 ms, echoed by the backend with its name, for
/// `life` each; a connection that ends early while its backend was not killed is dropped.
pub async fn long_lived(to: SocketAddr, n: usize, life: Duration, books: Arc<Books>, end: Instant) {
    let who = format!("long-lived tcp #{n}");
    let mut opened = 0;
    while opened < MAX_PER_CLIENT && Instant::now() < end {
        opened += 1;
        books.tally.long_opened.add();
        let Ok(s) = TcpStream::connect(to).await else {
            books.fail(&books.tally.dropped_long, format!("{who}: connect refused"));
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let until = (Instant::now() + life).min(end);
        // The backend and its kill count when the connection learned it.
        let mut on: Option<(String, u64)> = None;
        let mut seq = 0u64;
        while Instant::now() < until {
            seq += 1;
            let kills = books.kills();
            let mut line = String::new();
            let io = async {
                w.write_all(format!("{seq}\n").as_bytes()).await?;
                r.read_line(&mut line).await
            };
            let outcome = match timeout(ANSWER, io).await {
                Ok(Ok(0)) => Err("closed".to_string()),
                Ok(Ok(_)) => match line.trim_end().split_once(' ') {
                    Some((name, s)) if s == seq.to_string() && books.marks(name).is_some() => {
                        Ok(name.to_string())
                    }
                    _ => Err(format!("bad echo {line:?}")),
                },
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no echo within 5 s".to_string()),
            };
            match (outcome, &on) {
                (Ok(name), None) => {
                    let k = kills.get(&name).copied().unwrap_or(0);
                    on = Some((name, k));
                }
                (Ok(name), Some((b, _))) if &name == b => books.tally.long_lines.add(),
                (Ok(name), Some((b, _))) => {
                    books.fail(
                        &books.tally.dropped_long,
                        format!("{who}: moved from {b} to {name}"),
                    );
                    break;
                }
                (Err(e), Some((b, kills))) if books.seen(b).0 != *kills => {
                    let _ = e;
                    books.tally.long_on_killed.add();
                    break;
                }
                (Err(e), on) => {
                    let at = on.as_ref().map_or("?", |(b, _)| b.as_str());
                    books.fail(&books.tally.dropped_long, format!("{who} on {at}: {e}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// RDP users connecting again and again: each must land on its backend (rdp-cookie
/// persistence, shared through Redis) unless that backend was killed or drained.
pub async fn rdp(to: SocketAddr, user: usize, books: Arc<Books>, end: Instant) {
    let who = format!("rdp user{user}");
    let cr = plugboard_benches::rdp::connection_request(&format!("user{user}"));
    let mut pin = Pin::default();
    for _ in 0..MAX_PER_CLIENT {
        if Instant::now() >= end {
            return;
        }
        pin.arm(&books);
        books.tally.rdp.add();
        let io = async {
            let mut s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
            s.write_all(&cr).await.map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(&mut s)
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(line.trim_end().to_string())
        };
        match timeout(ANSWER, io).await {
            Ok(Ok(name)) if books.marks(&name).is_some() => pin.check(&books, &name, &who),
            Ok(Ok(other)) => books.fail(&books.tally.failed_rdp, format!("{who}: got {other:?}")),
            Ok(Err(e)) => books.fail(&books.tally.failed_rdp, format!("{who}: {e}")),
            Err(_) => books.fail(
                &books.tally.failed_rdp,
                format!("{who}: no answer within 5 s"),
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A UDP flow: a datagram every 100 ms, answered by the backend with its name. A datagram
/// without an answer is lost; excused only when the flow's backend was killed meanwhile.
pub async fn udp(to: SocketAddr, n: usize, books: Arc<Books>, end: Instant) {
    let who = format!("udp flow #{n}");
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(to).await.unwrap();
    let mut on: Option<(String, u64)> = None;
    let mut buf = [0u8; 512];
    for seq in 0..MAX_PER_CLIENT {
        if Instant::now() >= end {
            return;
        }
        books.tally.udp.add();
        let kills = books.kills();
        let msg = seq.to_string();
        let _ = s.send(msg.as_bytes()).await;
        // Answers to earlier datagrams that came late are skipped.
        let wait = Instant::now() + Duration::from_secs(1);
        let mut got = None;
        while let Ok(Ok(len)) = tokio::time::timeout_at(wait.into(), s.recv(&mut buf)).await {
            let text = String::from_utf8_lossy(&buf[..len]);
            if let Some((name, m)) = text.split_once(' ') {
                if m == msg && books.marks(name).is_some() {
                    got = Some(name.to_string());
                    break;
                }
            }
        }
        match (got, &on) {
            (Some(name), _) => {
                let k = kills.get(&name).copied().unwrap_or(0);
                on = Some((name, k));
            }
            (None, Some((b, kills))) if books.seen(b).0 != *kills => {
                books.tally.udp_on_killed.add();
            }
            (None, on) => {
                let at = on.as_ref().map_or("?", |(b, _)| b.as_str());
                books.fail(
                    &books.tally.lost_udp,
                    format!("{who} on {at}: datagram {seq} lost"),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
