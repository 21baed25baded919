//! Health checks through the real binary: `expect_status` lists and ranges, `tcp` checks with
//! `send` and `expect` / `expect_regex` against real servers, and `icmp` echo checks. Each
//! backend's health is read from the admin API (what the status page shows) and its check
//! counts from the metrics.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::*;

/// Fast checks: a backend that fails twice is down, one success brings it up.
const FAST: &str = r#"interval = "100ms", timeout = "500ms", rise = 1, fall = 2"#;

/// `backend name -> "up" | "down"` of a service, from the admin API.
fn health(admin: SocketAddr, service: &str) -> Vec<(String, String)> {
    let (code, body) = api(
        "GET",
        &format!("http://{admin}/api/v1/services/{service}"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["health"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `plugboard_health_checks_total` of one backend and result.
fn checks(metrics: &str, service: &str, backend: &str, result: &str) -> u64 {
    let (s, b, r) = (
        format!("service=\"{service}\""),
        format!("backend=\"{backend}\""),
        format!("result=\"{result}\""),
    );
    metrics
        .lines()
        .filter(|l| l.starts_with("plugboard_health_checks_total{"))
        .filter(|l| l.contains(&s) && l.contains(&b) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum()
}

/// Waits until every service's backends have the expected health, each having been checked
/// at least 3 times with the result that health implies (so "up" is the checks' verdict, not
/// the state backends start in); panics with what was seen.
async fn expect_health(admin: SocketAddr, p: &Proxy, want: &[(&str, &[(SocketAddr, &str)])]) {
    let seen = || {
        let mut wrong = Vec::new();
        for (svc, backends) in want {
            let h = health(admin, svc);
            for (addr, state) in *backends {
                let name = addr.to_string();
                let got = h
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| s.as_str())
                    .unwrap_or("missing");
                if got != *state {
                    wrong.push(format!("{svc}/{name}: {got}, want {state}"));
                }
            }
        }
        wrong
    };
    let ok = eventually(Duration::from_secs(10), async || {
        if !seen().is_empty() {
            return false;
        }
        let m = scrape(admin).await;
        want.iter().all(|(svc, backends)| {
            backends.iter().all(|(addr, state)| {
                let result = if *state == "up" { "ok" } else { "failed" };
                checks(&m, svc, &addr.to_string(), result) >= 3
            })
        })
    })
    .await;
    assert!(ok, "{:#?}\n{}", seen(), p.log_text());
    // Up ones never failed a check: they stayed up on their own merit.
    let m = scrape(admin).await;
    for (svc, backends) in want {
        for (addr, state) in *backends {
            if *state == "up" {
                assert_eq!(
                    checks(&m, svc, &addr.to_string(), "failed"),
                    0,
                    "{svc}/{addr} failed a check"
                );
            }
        }
    }
}

/// A service table with `health_check = { ... }` and these backends.
fn service(name: &str, mode: &str, check: &str, backends: &[SocketAddr]) -> String {
    let listen = free_addr();
    let list: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nmode = \"{mode}\"\nhealth_check = {{ {check}, {FAST} }}\n{}\n",
        backends_toml(&list)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_status_takes_lists_and_ranges() {
    // Lync's /abs/handler answers 401 to a client without credentials.
    let (a401, b302, c503, d200) = (
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    );
    a401.set_health(401);
    b302.set_health(302);
    c503.set_health(503);
    let all = [a401.addr, b302.addr, c503.addr, d200.addr];
    let http =
        |status: &str| format!("kind = \"http\", path = \"/health\", expect_status = {status}");
    let admin = free_addr();
    let cfg = with_admin(
        admin,
        &[
            service("list", "http", &http("[200, 401]"), &all),
            service("one", "http", &http("200"), &all),
            service("range", "http", &http("\"200-399\""), &all),
            service("mixed", "http", &http("[200, \"300-399\", 401]"), &all),
        ]
        .concat(),
    );
    let p = Proxy::start(&cfg, admin).await;
    let (a, b, c, d) = (a401.addr, b302.addr, c503.addr, d200.addr);
    expect_health(
        admin,
        &p,
        &[
            ("list", &[(a, "up"), (b, "down"), (c, "down"), (d, "up")]),
            ("one", &[(a, "down"), (b, "down"), (c, "down"), (d, "up")]),
            ("range", &[(a, "down"), (b, "up"), (c, "down"), (d, "up")]),
            ("mixed", &[(a, "up"), (b, "up"), (c, "down"), (d, "up")]),
        ],
    )
    .await;
}

/// A server that writes `banner` to every connection, then echoes what it reads when `echo`,
/// and holds the connection until the client closes.
async fn line_server(banner: &'static [u8], echo: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if echo => {
                            let _ = s.write_all(&buf[..n]).await;
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_send_and_expect() {
    let esmtp = line_server(
        b"220 mail.example.com Microsoft ESMTP MAIL Service ready\r\n",
        false,
    )
    .await;
    let plain220 = line_server(b"220 mail ready\r\n", false).await;
    let refused = line_server(b"554 no\r\n", false).await;
    let echo = line_server(b"", true).await;
    let silent = line_server(b"", false).await;
    let admin = free_addr();
    let cfg = with_admin(
        admin,
        &[
            service(
                "prefix",
                "tcp",
                "kind = \"tcp\", expect = \"220\"",
                &[esmtp, plain220, refused, silent],
            ),
            service(
                "regex",
                "tcp",
                "kind = \"tcp\", expect_regex = \"^220 .*ESMTP\"",
                &[esmtp, plain220, refused],
            ),
            service(
                "echo",
                "tcp",
                "kind = \"tcp\", send = \"PING plugboard\\r\\n\", expect = \"PING plug\"",
                &[echo, silent, refused],
            ),
            service(
                "connect",
                "tcp",
                "kind = \"tcp\", send = \"x\"",
                &[silent, refused],
            ),
        ]
        .concat(),
    );
    let p = Proxy::start(&cfg, admin).await;
    expect_health(
        admin,
        &p,
        &[
            (
                "prefix",
                &[
                    (esmtp, "up"),
                    (plain220, "up"),
                    (refused, "down"),
                    (silent, "down"),
                ],
            ),
            (
                "regex",
                &[(esmtp, "up"), (plain220, "down"), (refused, "down")],
            ),
            ("echo", &[(echo, "up"), (silent, "down"), (refused, "down")]),
            ("connect", &[(silent, "up"), (refused, "up")]),
        ],
    )
    .await;
}

/// TEST-NET-2 (RFC 5737): reserved for documentation, assigned to no host, so an echo
/// request to it gets no reply (on this machine's network too: the test would fail loudly if
/// it did).
const NOBODY_ANSWERS: &str = "198.51.100.1";

/// As the test's user, the proxy uses a ping socket when `ping_group_range` covers its group
/// (`scripts/test` sets the range as systemd does), else a raw one; as root, a second proxy
/// runs in a group outside any range, so it must use the raw-socket fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_checks_tell_a_host_that_answers_from_one_that_does_not() {
    // Any 127.0.0.0/8 address answers; the port is not used by an echo request.
    let up: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let down: SocketAddr = format!("{NOBODY_ANSWERS}:9").parse().unwrap();
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    for raw in [false, true] {
        if raw && !root {
            break;
        }
        let admin = free_addr();
        let cfg = with_admin(
            admin,
            &service(
                "ping",
                "tcp",
                "kind = \"icmp\", timeout = \"300ms\"",
                &[up, down],
            )
            .replace("timeout = \"500ms\", ", ""),
        );
        let p = Proxy::start_with(&cfg, admin, |cmd| {
            if raw {
                use std::os::unix::process::CommandExt;
                // SAFETY: setgroups and setgid are async-signal-safe and touch only the child.
                unsafe {
                    cmd.pre_exec(|| {
                        // Root keeps CAP_NET_RAW; no group of its own is left in the range.
                        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(FAR_GROUP) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        })
        .await;
        expect_health(admin, &p, &[("ping", &[(up, "up"), (down, "down")])]).await;
    }
}

/// The uid/gid of `nobody`, and a group id no `ping_group_range` short of the whole range
/// covers.
const NOBODY: u32 = 65534;
const FAR_GROUP: u32 = u32::MAX - 1;

/// A process that may open neither a ping socket (its group is outside
/// `net.ipv4.ping_group_range`) nor a raw one (no CAP_NET_RAW) gets an error at the check's
/// line naming the sysctl, from `check` (and so from `run`, which loads the same way).
#[test]
fn icmp_without_ping_sockets_is_refused_at_load() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
    let hi: u64 = range.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (_d, path) = write_config(
        "[[service]]\nname = \"p\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:7600\"\nhealth_check = { kind = \"icmp\" }\n[[service.backend]]\naddress = \"127.0.0.2:9\"\n",
    );
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["check", "--config"]).arg(&path);
    if root {
        use std::os::unix::process::CommandExt;
        // The child drops to nobody in a group outside the range (and so loses CAP_NET_RAW).
        std::fs::set_permissions(
            _d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        cmd.gid(FAR_GROUP).uid(NOBODY);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // SAFETY: getgid has no preconditions.
    let gid = if root {
        FAR_GROUP
    } else {
        unsafe { libc::getgid() }
    };
    if gid as u64 <= hi {
        // The range covers the child's group: ping sockets are allowed, nothing to refuse.
        assert!(out.status.success(), "{err}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            ":5:25: health_check.kind = \"icmp\": this process cannot open an ICMP socket"
        ) && err.contains("net.ipv4.ping_group_range"),
        "{err}"
    );
}
