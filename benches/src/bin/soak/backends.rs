//! The soak's backends: in-process tokio servers that answer with their own name, so every
//! client knows which backend served it. A kill aborts the listener and every connection at
//! once (as a crash would); a restart binds the same port again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::AbortHandle;

/// What a backend speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// HTTP/1.1 with keep-alive: every request gets `200` and the name as body.
    Http,
    /// Line echo for long-lived connections: `LINE\n` gets `NAME LINE\n`.
    Stream,
    /// RDP: the Connection Request gets `NAME\n`, then the server waits for the close.
    Rdp,
    /// UDP echo: a datagram gets `NAME PAYLOAD`; a TCP listener on the same port for the
    /// health check.
    Udp,
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub kind: Kind,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

impl Backend {
    /// Starts on a port the kernel picks.
    pub async fn start(kind: Kind, name: String) -> Backend {
        let addr = match kind {
            // The UDP port must also be free for TCP (the health check's listener).
            Kind::Udp => loop {
                let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let a = u.local_addr().unwrap();
                drop(u);
                if listener(a).is_ok() {
                    break a;
                }
            },
            _ => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                l.local_addr().unwrap()
            }
        };
        let b = Backend {
            name,
            addr,
            kind,
            tasks: Arc::default(),
        };
        b.restart().await;
        b
    }

    /// Binds the port again (retrying while the kernel still holds it) and serves.
    pub async fn restart(&self) {
        let mut tries = 0;
        let l = loop {
            match listener(self.addr) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("backend {} cannot bind {} again: {e}", self.name, self.addr),
            }
        };
        let name: Arc<str> = self.name.clone().into();
        let tasks = self.tasks.clone();
        let kind = self.kind;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let name = name.clone();
                let h = tokio::spawn(async move {
                    let _ = match kind {
                        Kind::Http => serve_http(s, &name).await,
                        Kind::Stream => serve_stream(s, &name).await,
                        Kind::Rdp => serve_rdp(s, &name).await,
                        Kind::Udp => Ok(()),
                    };
                });
                let mut t = tasks.lock().unwrap();
                t.retain(|h| !h.is_finished());
                t.push(h.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
        if self.kind == Kind::Udp {
            let u = UdpSocket::bind(self.addr).await.unwrap();
            let name = self.name.clone();
            let echo = tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((n, from)) = u.recv_from(&mut buf).await else {
                        continue;
                    };
                    let mut out = Vec::with_capacity(name.len() + 1 + n);
                    out.extend_from_slice(name.as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(&buf[..n]);
                    let _ = u.send_to(&out, from).await;
                }
            });
            self.tasks.lock().unwrap().push(echo.abort_handle());
        }
    }

    /// Stops at once: the listener and every connection go (their sockets close).
    pub fn kill(&self) {
        for h in self.tasks.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

async fn serve_http(s: TcpStream, name: &str) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
        name.len()
    );
    let mut line = String::new();
    loop {
        // A request: lines up to the empty one (the soak's requests have no body).
        let mut first = true;
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
        }
        w.write_all(answer.as_bytes()).await?;
    }
}

async fn serve_stream(s: TcpStream, name: &str) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        w.write_all(format!("{name} {line}").as_bytes()).await?;
    }
}

async fn serve_rdp(mut s: TcpStream, name: &str) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    if s.read(&mut buf).await? == 0 {
        return Ok(());
    }
    s.write_all(format!("{name}\n").as_bytes()).await?;
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}
