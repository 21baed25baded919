//! The `tcp` check: up when a TCP connection can be opened (and, with `send_proxy`, a PROXY
//! header written on it, for a backend that expects one on every connection). With `send`,
//! those bytes are written next; with `expect` / `expect_regex`, the first line the backend
//! sends (an SMTP `220` banner, say) must match.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::balance::hooks::{HealthCheck, HealthReport};
use crate::balance::pool::Pool;
use crate::config::TcpExpect;
use crate::proxy_protocol::{send, Version};

/// Most bytes read for the first line: a longer line is matched on its first 1 KiB.
pub const MAX_LINE: usize = 1024;

/// Up when a TCP connection can be opened (and what `send`/`expect` ask holds).
pub struct TcpCheck {
    /// Write a PROXY header of this version with the check connection's addresses.
    pub proxy: Option<Version>,
    /// Written once connected (after the PROXY header).
    pub send: Option<String>,
    /// The first line read must match.
    pub expect: Option<TcpExpect>,
}

#[async_trait]
impl HealthCheck for TcpCheck {
    async fn check(
        &self,
        _: &Arc<Pool>,
        _: usize,
        target: SocketAddr,
        timeout: Duration,
    ) -> Option<HealthReport> {
        let check = async {
            let mut tcp = TcpStream::connect(target).await?;
            if let Some(v) = self.proxy {
                send::write_own(&mut tcp, v).await?;
            }
            if let Some(s) = &self.send {
                tcp.write_all(s.as_bytes()).await?;
            }
            Ok::<_, std::io::Error>(match &self.expect {
                None => true,
                Some(e) => {
                    let mut buf = [0u8; MAX_LINE];
                    let line = first_line(&mut tcp, &mut buf).await?;
                    e.matches(line)
                }
            })
        };
        Some(match tokio::time::timeout(timeout, check).await {
            Ok(Ok(true)) => HealthReport::UP,
            _ => HealthReport::DOWN,
        })
    }
}

/// Reads until the first line end (`\n`), `buf` is full or the peer closes, and returns the
/// line without its `\r\n` / `\n` (what was read, when no line end came).
async fn first_line<'b, S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &'b mut [u8],
) -> std::io::Result<&'b [u8]> {
    let mut n = 0;
    let end = loop {
        if n == buf.len() {
            break n;
        }
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break n;
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[n..n + r]) {
            break n + i;
        }
        n += r;
    };
    let line = &buf[..end];
    Ok(line.strip_suffix(b"\r").unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_lines() {
        let mut buf = [0u8; 8];
        let mut s: &[u8] = b"220 ok\r\nmore";
        assert_eq!(first_line(&mut s, &mut buf).await.unwrap(), b"220 ok");
        let mut s: &[u8] = b"no end";
        assert_eq!(first_line(&mut s, &mut buf).await.unwrap(), b"no end");
        let mut s: &[u8] = b"0123456789\n";
        assert_eq!(first_line(&mut s, &mut buf).await.unwrap(), b"01234567");
        let mut s: &[u8] = b"\n";
        assert_eq!(first_line(&mut s, &mut buf).await.unwrap(), b"");
    }
}
