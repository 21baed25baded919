//! The `tcp` check: up when a TCP connection can be opened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;

use crate::balance::hooks::{HealthCheck, HealthReport};
use crate::balance::pool::Pool;

/// Up when a TCP connection can be opened.
pub struct TcpCheck;

#[async_trait]
impl HealthCheck for TcpCheck {
    async fn check(
        &self,
        _: &Arc<Pool>,
        _: usize,
        target: SocketAddr,
        timeout: Duration,
    ) -> Option<HealthReport> {
        Some(
            match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
                Ok(Ok(_)) => HealthReport::UP,
                _ => HealthReport::DOWN,
            },
        )
    }
}
