//! Tells systemd (`Type=notify`) that the proxy is ready, once every listener accepts: the
//! proxy's own are bound before the server starts; the admin and metrics listeners are bound
//! by pingora as it starts them, so they are connected to until they answer.

use std::net::SocketAddr;
use std::time::Duration;

/// Longest wait for pingora's listeners before readiness is sent anyway (and logged).
const WAIT: Duration = Duration::from_secs(10);

/// Sends `READY=1` once every address of `wait_for` (the listeners pingora binds itself:
/// admin API, metrics) accepts. Called once SIGHUP is caught, so that systemd never reloads a
/// process that would die of the signal.
pub async fn notify_when_accepting(wait_for: &[SocketAddr]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    for addr in wait_for {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(%addr, "not accepting yet; telling systemd we are ready anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    match sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        Ok(()) => tracing::info!("systemd told: ready"),
        Err(e) => tracing::warn!("cannot tell systemd we are ready: {e}"),
    }
}
