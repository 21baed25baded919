//! The `tcp` check: up when a TCP connection can be opened (and, with `send_proxy`, a PROXY
//! header written on it, for a backend that expects one on every connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;

use crate::balance::hooks::{HealthCheck, HealthReport};
use crate::balance::pool::Pool;
use crate::proxy_protocol::{send, Version};

/// Up when a TCP connection can be opened.
pub struct TcpCheck {
    /// Write a PROXY header of this version with the check connection's addresses.
    pub proxy: Option<Version>,
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
            Ok::<_, std::io::Error>(())
        };
        Some(match tokio::time::timeout(timeout, check).await {
            Ok(Ok(())) => HealthReport::UP,
            _ => HealthReport::DOWN,
        })
    }
}
