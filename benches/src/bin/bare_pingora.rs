//! The framework's floor: a minimal pingora HTTP proxy doing only round robin over fixed
//! backends, with pingora's defaults. The gap between it and plugboard is Plugboard's own cost.
//!
//! `bare_pingora LISTEN THREADS BACKEND...`

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Rr {
    peers: Vec<HttpPeer>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for Rr {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Relaxed) % self.peers.len();
        Ok(Box::new(self.peers[i].clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 3,
        "usage: bare_pingora LISTEN THREADS BACKEND..."
    );
    let conf = ServerConf {
        threads: args[1].parse().expect("threads"),
        pid_file: format!("/tmp/bare-pingora-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/bare-pingora-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let peers = args[2..]
        .iter()
        .map(|a| HttpPeer::new(a.as_str(), false, String::new()))
        .collect();
    let mut svc = pingora::proxy::http_proxy_service(
        &server.configuration,
        Rr {
            peers,
            next: AtomicUsize::new(0),
        },
    );
    svc.add_tcp(&args[0]);
    server.add_service(svc);
    server.run_forever();
}
