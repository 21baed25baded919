//! Opening backend connections: from which local address (`source`), and pingora's connector
//! for http services whose upstream connections belong to one client.
//!
//! `source = "client"` binds the backend socket to the client's own IP with `IP_TRANSPARENT`
//! (port 0: the kernel picks a free one at connect, so one client may hold several backend
//! connections and a pooled connection outlives the client connection that opened it);
//! `source = "ADDRESS"` binds to a fixed address of this host. In http mode pingora connects
//! and pools upstream connections across clients, so a request of a service whose upstream
//! connections carry something of its client (a PROXY header, the client's address) gets a
//! peer with a [`BackendConnector`] (pingora's `custom_l4`) and a `group_key` for that client:
//! a pooled connection is reused only by the client it was made for.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType};
use socket2::{Domain, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{ServiceConfig, SourceAddress};
use crate::proxy_protocol::{send, Version};

/// The local address a backend connection is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The kernel chooses (the route's address).
    Any,
    /// An address of this host.
    Local(IpAddr),
    /// The client's address, not this host's (`IP_TRANSPARENT`).
    Transparent(IpAddr),
}

impl Bind {
    /// Where a connection of a service with `source` for a client at `client` comes from.
    pub fn new(source: Option<SourceAddress>, client: IpAddr) -> Bind {
        match source {
            None => Bind::Any,
            Some(SourceAddress::Fixed(ip)) => Bind::Local(ip),
            Some(SourceAddress::Client) => Bind::Transparent(client.to_canonical()),
        }
    }
}

/// Connects `addr` from `bind`, without the `getsockopt(SO_ERROR)` that tokio's connect makes:
/// on Linux a failed non-blocking connect reports an error or hang-up event with its
/// writability, so the readiness alone tells (as HAProxy does).
pub async fn connect(addr: SocketAddr, bind: Bind) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    s.set_tcp_nodelay(true)?;
    let ip = match bind {
        Bind::Any => None,
        Bind::Local(ip) => Some(ip),
        Bind::Transparent(ip) => {
            set_transparent(&s, addr.is_ipv6())?;
            Some(ip)
        }
    };
    if let Some(ip) = ip {
        if ip.is_ipv6() != addr.is_ipv6() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("source {ip} and backend {addr} are of different address families"),
            ));
        }
        // The port is chosen at connect, for the whole 4-tuple: many connections can share
        // one source address without exhausting its ports.
        no_port_until_connect(&s)?;
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let tcp = TcpStream::from_std(s.into())?;
    let ready = tcp.ready(tokio::io::Interest::WRITABLE).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(tcp
            .take_error()?
            .unwrap_or_else(|| std::io::ErrorKind::ConnectionRefused.into()));
    }
    Ok(tcp)
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2; socket2 does not wrap it).
fn no_port_until_connect(s: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a c_int option value of its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn set_transparent(s: &Socket, v6: bool) -> std::io::Result<()> {
    match v6 {
        false => s.set_ip_transparent_v4(true),
        true => s.set_ip_transparent_v6(true),
    }
}

/// Whether this process may bind backend sockets of this family to clients' addresses; the
/// error says what to change.
pub fn probe_transparent(v6: bool) -> Result<(), String> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    Socket::new(domain, Type::STREAM, None)
        .and_then(|s| set_transparent(&s, v6))
        .map_err(|e| {
            format!(
                "this process cannot set IP_TRANSPARENT on an IPv{} socket ({e}): run it as \
                 root or with CAP_NET_ADMIN or CAP_NET_RAW (systemd: \
                 AmbientCapabilities=CAP_NET_ADMIN)",
                if v6 { 6 } else { 4 }
            )
        })
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
pub fn probe_local(ip: IpAddr) -> Result<(), String> {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .map(|_| ())
        .map_err(|e| format!("{ip} is not an address of this host ({e})"))
}

/// Whether a request of this service needs a connector of its own client.
pub fn per_client(cfg: &ServiceConfig) -> bool {
    cfg.send_proxy.is_some() || cfg.source == Some(SourceAddress::Client)
}

/// For a service with a fixed `source` and nothing per client: the connector every request
/// shares, set once on the prepared peer.
pub fn shared(peer: &mut HttpPeer, cfg: &ServiceConfig) {
    if let (Some(SourceAddress::Fixed(ip)), false) = (cfg.source, per_client(cfg)) {
        peer.options.custom_l4 = Some(Arc::new(BackendConnector {
            header: None,
            bind: Bind::Local(ip),
            connect_timeout: cfg.connect_timeout,
        }));
    }
}

/// Makes `peer` (a clone of a backend's prepared peer) connect through a [`BackendConnector`]
/// for the client at `client` (connected to `local`, which a `send_proxy` header needs), and
/// reuse only connections made for it.
pub fn for_client(
    peer: &mut HttpPeer,
    cfg: &ServiceConfig,
    client: SocketAddr,
    local: Option<SocketAddr>,
) {
    let header = cfg
        .send_proxy
        .zip(local)
        .map(|(v, local)| (v, client, local));
    let mut h = std::hash::DefaultHasher::new();
    match header {
        // The header names the client's port and the address it reached.
        Some((_, client, local)) => (client, local).hash(&mut h),
        None => client.ip().to_canonical().hash(&mut h),
    }
    // 0 is what peers without a client have.
    peer.group_key = h.finish() | 1;
    peer.options.custom_l4 = Some(Arc::new(BackendConnector {
        header,
        bind: Bind::new(cfg.source, client.ip()),
        connect_timeout: cfg.connect_timeout,
    }));
}

/// pingora's L4 connector for a service's backend connections: binds the source address,
/// connects within the service's `connect_timeout` (pingora does not time a custom connector)
/// and writes the client's PROXY header, if any, before anything else (TLS included).
#[derive(Debug)]
pub struct BackendConnector {
    /// The header's version, client and destination addresses.
    header: Option<(Version, SocketAddr, SocketAddr)>,
    bind: Bind,
    connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for BackendConnector {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let Some(&addr) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "the backend is not an IP address");
        };
        let connect = async {
            let mut tcp = connect(addr, self.bind).await?;
            if let Some((version, source, destination)) = self.header {
                tcp.write_all(&send::header(version, source, destination))
                    .await?;
            }
            Ok::<_, std::io::Error>(tcp)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(tcp)) => Ok(Stream::from(tcp)),
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                    _ => ErrorType::ConnectError,
                };
                Err(Error::because(kind, format!("connecting to {addr}"), e))
            }
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!("timeout {:?} connecting to {addr}", self.connect_timeout),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn service(send_proxy: Option<Version>, source: Option<SourceAddress>) -> ServiceConfig {
        let text = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n";
        let mut cfg = crate::config::Config::parse(std::path::Path::new("t.toml"), text)
            .unwrap()
            .services
            .remove(0);
        cfg.send_proxy = send_proxy;
        cfg.source = source;
        cfg
    }

    #[test]
    fn group_keys_differ_by_client() {
        let mut a = HttpPeer::new("127.0.0.1:80", false, String::new());
        let mut b = a.clone();
        let d = Some(addr("127.0.0.1:8080"));
        let cfg = service(Some(Version::V2), None);
        for_client(&mut a, &cfg, addr("10.0.0.1:1000"), d);
        for_client(&mut b, &cfg, addr("10.0.0.1:1001"), d);
        assert_ne!(a.group_key, b.group_key);
        assert_ne!(a.group_key, 0);
        assert!(a.options.custom_l4.is_some());
    }

    #[test]
    fn transparent_pools_by_client_address() {
        let d = Some(addr("127.0.0.1:8080"));
        let cfg = service(None, Some(SourceAddress::Client));
        let key = |c: &str| {
            let mut p = HttpPeer::new("127.0.0.1:80", false, String::new());
            for_client(&mut p, &cfg, addr(c), d);
            p.group_key
        };
        assert_eq!(key("10.0.0.1:1000"), key("10.0.0.1:1001"));
        assert_eq!(key("10.0.0.1:1000"), key("[::ffff:10.0.0.1]:1000"));
        assert_ne!(key("10.0.0.1:1000"), key("10.0.0.2:1000"));
    }

    #[test]
    fn bind_follows_source() {
        let c: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert_eq!(Bind::new(None, c), Bind::Any);
        assert_eq!(
            Bind::new(Some(SourceAddress::Client), c),
            Bind::Transparent("10.0.0.9".parse().unwrap())
        );
        let f: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(Bind::new(Some(SourceAddress::Fixed(f)), c), Bind::Local(f));
    }

    #[tokio::test]
    async fn a_fixed_source_is_the_address_the_backend_sees() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let from: IpAddr = "127.0.0.7".parse().unwrap();
        let _c = connect(to, Bind::Local(from)).await.unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), from);
    }
}
