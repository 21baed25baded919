//! `source`: backend connections from the client's own address (`source = "client"`,
//! IP_TRANSPARENT) or from a fixed address, built for real in network namespaces this test
//! makes: a client namespace with two addresses, the proxy's namespace (the backends' default
//! gateway, with README's policy-routing recipe) and a backend namespace whose HTTP and TCP
//! servers report the peer address they see. Also: where `source` is refused, at its line.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::netns::{exec, ip, within, Namespaces};
use common::{have, missing_dependency, serve_http, write_config, Client, Proxy, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_A: &str = "10.216.1.2";
const CLIENT_B: &str = "10.216.1.3";
const PROXY_FRONT: &str = "10.216.1.1";
const PROXY_BACK: &str = "10.216.2.1";
const BACKEND: &str = "10.216.2.2";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// client (A and B) — proxy — backend, each its own namespace; the proxy is the backend's
/// default gateway and delivers replies to clients' addresses to its own sockets.
fn lab() -> Namespaces {
    let lab = Namespaces::new(&format!("pbtp{}", std::process::id()), &["cl", "px", "be"]);
    let (cl, px, be) = (lab.ns("cl"), lab.ns("px"), lab.ns("be"));
    lab.link(
        (
            "cl",
            "eth0",
            &[&format!("{CLIENT_A}/24"), &format!("{CLIENT_B}/24")],
        ),
        ("px", "front", &[&format!("{PROXY_FRONT}/24")]),
    );
    lab.link(
        ("px", "back", &[&format!("{PROXY_BACK}/24")]),
        ("be", "eth0", &[&format!("{BACKEND}/24")]),
    );
    ip(&["-n", &cl, "route", "add", "default", "via", PROXY_FRONT]);
    ip(&["-n", &be, "route", "add", "default", "via", PROXY_BACK]);
    // README's recipe: a packet for one of the proxy's transparent sockets is marked and
    // routed to the local stack instead of being forwarded to the client.
    exec(
        &px,
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-m",
            "socket",
            "-j",
            "MARK",
            "--set-mark",
            "1",
        ],
    );
    ip(&["-n", &px, "rule", "add", "fwmark", "1", "lookup", "100"]);
    ip(&[
        "-n",
        &px,
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ]);
    lab
}

/// Binds `at` in namespace `ns`.
fn listen_in(ns: &str, at: SocketAddr) -> TcpListener {
    let l = within(ns, || std::net::TcpListener::bind(at)).unwrap();
    l.set_nonblocking(true).unwrap();
    TcpListener::from_std(l).unwrap()
}

/// An HTTP backend whose body is the peer address it sees, per request.
fn http_backend(l: TcpListener) {
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            tokio::spawn(serve_http(
                s,
                peer,
                Default::default(),
                Default::default(),
                Default::default(),
            ));
        }
    });
}

/// A TCP backend that writes the peer address it sees and closes.
fn tcp_backend(l: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = s.write_all(format!("{peer}\n").as_bytes()).await;
        }
    });
}

/// A connection from `from` in namespace `ns` to `to`.
fn connect_in(ns: &str, from: &str, to: SocketAddr) -> TcpStream {
    let s = within(ns, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&addr(from, 0).into())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.connect_timeout(&to.into(), Duration::from_secs(5))?;
        Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
    })
    .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    s.set_nonblocking(true).unwrap();
    TcpStream::from_std(s).unwrap()
}

/// The IP in a reported `ip:port`.
fn ip_of(reported: &str) -> IpAddr {
    reported
        .trim()
        .parse::<SocketAddr>()
        .unwrap_or_else(|_| panic!("not an address: {reported:?}"))
        .ip()
}

async fn seen_over_tcp(ns: &str, from: &str, to: SocketAddr) -> IpAddr {
    let mut s = connect_in(ns, from, to);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut line))
        .await
        .expect("the tcp backend answers within 10 s")
        .unwrap();
    ip_of(&line)
}

#[tokio::test]
async fn backends_see_the_clients_own_addresses() {
    if !is_root() {
        missing_dependency("root", "network namespaces and IP_TRANSPARENT need root");
        return;
    }
    for cmd in ["ip", "iptables"] {
        if !have(cmd) {
            missing_dependency("iptables", &format!("{cmd} is not installed"));
            return;
        }
    }
    let lab = lab();
    let (cl, px, be) = (lab.ns("cl"), lab.ns("px"), lab.ns("be"));
    http_backend(listen_in(&be, addr(BACKEND, 8080)));
    tcp_backend(listen_in(&be, addr(BACKEND, 9090)));
    // One worker: one upstream pool, so a connection opened for A is there when B comes.
    let config = format!(
        r#"[proxy]
threads = 1

[[service]]
name = "web"
listen = "{PROXY_FRONT}:80"
source = "client"
[[service.backend]]
address = "{BACKEND}:8080"

[[service]]
name = "web-fixed"
listen = "{PROXY_FRONT}:81"
source = "{PROXY_BACK}"
[[service.backend]]
address = "{BACKEND}:8080"

[[service]]
name = "l4"
mode = "tcp"
listen = "{PROXY_FRONT}:90"
source = "client"
[[service.backend]]
address = "{BACKEND}:9090"

[[service]]
name = "fixed"
mode = "tcp"
listen = "{PROXY_FRONT}:91"
source = "{PROXY_BACK}"
[[service.backend]]
address = "{BACKEND}:9090"
"#
    );
    let proxy = Proxy::start_in_netns(&config, addr(PROXY_FRONT, 80), &px).await;
    let web = addr(PROXY_FRONT, 80);
    let (a, b): (IpAddr, IpAddr) = (CLIENT_A.parse().unwrap(), CLIENT_B.parse().unwrap());

    // http: each request is seen from its own client, though A's upstream connection is
    // idle in the pool when B's request comes.
    let mut clients = [
        Client::over(connect_in(&cl, CLIENT_A, web)),
        Client::over(connect_in(&cl, CLIENT_B, web)),
    ];
    let mut seen = Vec::new();
    for (i, who) in [(0, a), (1, b), (0, a), (1, b)] {
        let r = clients[i]
            .get("/", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", proxy.log_text()));
        assert_eq!(r.status, 200, "{}", proxy.log_text());
        let from: SocketAddr = r.body.trim().parse().unwrap();
        assert_eq!(from.ip(), who, "{}", proxy.log_text());
        seen.push(from);
    }
    // The pool was used: each client's second request came over its first one's connection.
    assert_eq!((seen[0], seen[1]), (seen[2], seen[3]), "{seen:?}");
    // A new connection of A is seen from A too.
    let mut again = Client::over(connect_in(&cl, CLIENT_A, web));
    assert_eq!(ip_of(&again.get("/", &[]).await.unwrap().body), a);

    // A fixed source, whoever the client.
    let mut fixed = Client::over(connect_in(&cl, CLIENT_B, addr(PROXY_FRONT, 81)));
    let r = fixed.get("/", &[]).await.unwrap();
    assert_eq!(ip_of(&r.body), PROXY_BACK.parse::<IpAddr>().unwrap());

    // tcp: the same, per connection; and a fixed source.
    assert_eq!(seen_over_tcp(&cl, CLIENT_A, addr(PROXY_FRONT, 90)).await, a);
    assert_eq!(seen_over_tcp(&cl, CLIENT_B, addr(PROXY_FRONT, 90)).await, b);
    assert_eq!(
        seen_over_tcp(&cl, CLIENT_A, addr(PROXY_FRONT, 91)).await,
        PROXY_BACK.parse::<IpAddr>().unwrap()
    );
}

/// `plugboard check` on `text`: its exit code and stderr, the file's path replaced by `F`.
fn check(text: &str, without_net_admin: bool) -> (i32, String) {
    let (_dir, path) = write_config(text);
    let mut cmd = match without_net_admin && is_root() {
        // Root keeps every capability its bounding and inheritable sets allow; the kernel
        // lets either of these two set IP_TRANSPARENT.
        true => {
            let mut c = Command::new("setpriv");
            let drop = "-net_admin,-net_raw";
            c.args(["--bounding-set", drop, "--inh-caps", drop, BIN]);
            c
        }
        false => Command::new(BIN),
    };
    let out = cmd.args(["check", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "F");
    (out.status.code().unwrap_or(-1), err)
}

fn service(mode: &str, source: &str, backend: &str) -> String {
    format!(
        "[[service]]\nname = \"s\"\nmode = \"{mode}\"\nlisten = \"127.0.0.1:1\"\nsource = \"{source}\"\n[[service.backend]]\naddress = \"{backend}\"\n"
    )
}

#[test]
fn source_is_refused_at_its_line_where_it_cannot_work() {
    let refused = |text: &str, without_net_admin: bool, what: &str| {
        let (code, err) = check(text, without_net_admin);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("F:5:10: ") && err.contains(what), "{err}");
    };
    refused(
        &service("udp", "client", "127.0.0.1:2"),
        false,
        "source does not apply to mode = \"udp\"",
    );
    refused(
        &service("tcp", "clinet", "127.0.0.1:2"),
        false,
        "neither \"client\" nor an IP address",
    );
    refused(
        &service("tcp", "::1", "127.0.0.1:2"),
        false,
        "IPv6 address and this service has IPv4 backends",
    );
    refused(
        &service("http", "192.0.2.77", "127.0.0.1:2"),
        false,
        "192.0.2.77 is not an address of this host",
    );
    if !have("setpriv") && is_root() {
        missing_dependency("setpriv", "setpriv (util-linux) is not installed");
        return;
    }
    refused(
        &service("tcp", "client", "127.0.0.1:2"),
        true,
        "cannot set IP_TRANSPARENT on an IPv4 socket",
    );
    refused(
        &service("tcp", "client", "127.0.0.1:2"),
        true,
        "CAP_NET_ADMIN",
    );
    // A local address needs no privilege; the client's does, and root has it.
    assert_eq!(
        check(&service("tcp", "127.0.0.2", "127.0.0.1:2"), true).0,
        0
    );
    if is_root() {
        let (code, err) = check(&service("http", "client", "127.0.0.1:2"), false);
        assert_eq!(code, 0, "{err}");
    }
}
