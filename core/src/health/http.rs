//! The `http` check: up when `GET path` answers with the expected status. For a service
//! with `backend_tls`, the check speaks TLS with the same verification as the traffic; with
//! `send_proxy`, its connection begins with a PROXY header (before TLS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::balance::hooks::{HealthCheck, HealthReport};
use crate::balance::pool::Pool;
use crate::proxy_protocol::{send, Version};

/// Up when `GET path` answers with the expected status.
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expect_status: crate::config::StatusMatch,
    /// TLS towards the backends: the client configuration and each backend's server name.
    pub tls: Option<(Arc<ClientConfig>, Vec<ServerName<'static>>)>,
    /// Begin with a PROXY header of this version carrying the check connection's addresses.
    pub proxy: Option<Version>,
}

#[async_trait]
impl HealthCheck for HttpCheck {
    async fn check(
        &self,
        _: &Arc<Pool>,
        backend: usize,
        target: SocketAddr,
        timeout: Duration,
    ) -> Option<HealthReport> {
        let status = async {
            let mut tcp = TcpStream::connect(target).await.ok()?;
            if let Some(v) = self.proxy {
                send::write_own(&mut tcp, v).await.ok()?;
            }
            let host = self.host.as_deref();
            match &self.tls {
                None => http_status(tcp, target, &self.path, host).await,
                Some((config, names)) => {
                    let name = names.get(backend)?.clone();
                    let connector = tokio_rustls::TlsConnector::from(config.clone());
                    let s = connector.connect(name, tcp).await.ok()?;
                    http_status(s, target, &self.path, host).await
                }
            }
        };
        Some(match tokio::time::timeout(timeout, status).await {
            Ok(Some(s)) if self.expect_status.matches(s) => HealthReport::UP,
            _ => HealthReport::DOWN,
        })
    }
}

/// Sends `GET path` on `s` (connected to `target`) and returns the status of the answer.
pub async fn http_status<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    target: SocketAddr,
    path: &str,
    host: Option<&str>,
) -> Option<u16> {
    let host = host
        .map(str::to_string)
        .unwrap_or_else(|| target.to_string());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: plugboard-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 512];
    let mut n = 0;
    // The status line is all we need: "HTTP/1.1 200 ...".
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.ok()?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    parse_status_line(&buf[..n])
}

fn parse_status_line(b: &[u8]) -> Option<u16> {
    let line = b.split(|&c| c == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
