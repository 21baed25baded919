//! `plugboard check` and `plugboard run` on good and bad configurations.

mod common;

use std::path::Path;
use std::process::Command;

use common::{write_config, BIN};

fn check(path: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Checks `text` and returns the error lines with the temp path replaced by `F`.
fn errors(text: &str) -> Vec<String> {
    let (_dir, path) = write_config(text);
    let (code, _out, err) = check(&path);
    assert_eq!(code, 2, "expected refusal, got {code}: {err}");
    err.lines()
        .map(|l| l.replace(&path.display().to_string(), "F"))
        .collect()
}

const GOOD: &str = r#"
[proxy]
threads = 1

[[service]]
name = "web"
listen = "127.0.0.1:18080"
[[service.backend]]
address = "127.0.0.1:18081"
"#;

#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let (code, out, err) = check(&p);
            assert_eq!(code, 0, "{}: {err}", p.display());
            assert!(out.contains(": OK, "), "{out}");
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}

#[test]
fn summary_describes_the_config() {
    let (_d, path) = write_config(GOOD);
    let (code, out, _) = check(&path);
    assert_eq!(code, 0);
    assert!(out.contains("1 service(s), 1 worker thread(s)"), "{out}");
    assert!(
        out.contains("web [http] listen 127.0.0.1:18080 scheduler round_robin"),
        "{out}"
    );
    assert!(out.contains("backend 127.0.0.1:18081 weight 1"), "{out}");
}

#[test]
fn unknown_key_is_reported_at_its_line() {
    let e = errors("[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nlisten_backlog = 5\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("F:4:1: unknown field `listen_backlog`, expected one of"),
        "{e:?}"
    );
}

#[test]
fn wrong_type_is_reported_at_its_line() {
    let e = errors("[proxy]\nthreads = \"two\"\n");
    assert!(
        e[0].starts_with("F:2:11: invalid type: string \"two\", expected i64"),
        "{e:?}"
    );
}

#[test]
fn syntax_error_is_reported_at_its_line() {
    let e = errors("[[service]]\nname = \"web\n");
    assert!(e[0].starts_with("F:2:"), "{e:?}");
}

#[test]
fn all_semantic_errors_are_listed_with_lines() {
    let cfg = r#"[[service]]
name = "a"
listen = "127.0.0.1:99999"
scheduler = "fastest"
persistence = { key = "cookie:bad name" }
health_check = { kind = "udp", interval = "often" }
[[service.backend]]
address = "localhost"
[[service.backend]]
address = "127.0.0.1:5"
weight = -1

[[service]]
name = "b"
mode = "sctp"
listen = ["127.0.0.1:7000"]
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "c"
listen = "127.0.0.1:7000"
[[service.backend]]
address = "127.0.0.1:5"
"#;
    let e = errors(cfg);
    let expect = [
        "F:3:10: listen: invalid address \"127.0.0.1:99999\"",
        "F:4:13: scheduler: unknown scheduler \"fastest\"",
        "F:5:23: persistence.key: invalid cookie name \"bad name\"",
        "F:6:25: health_check.kind: unknown kind \"udp\"",
        "F:6:43: health_check.interval: invalid duration \"often\"",
        "F:8:11: backend address: invalid address \"localhost\": expected HOST:PORT",
        "F:11:10: weight: -1 is out of range 0..=256",
        "F:15:8: mode: unknown mode \"sctp\"",
        "F:22:10: duplicate listen address 127.0.0.1:7000 (already used by service \"b\" on line 16)",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn duplicate_names_and_missing_backends() {
    let e = errors("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\n[[service.backend]]\naddress = \"127.0.0.1:3\"\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("F:1:1: service \"a\" has no [[service.backend]]"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("F:6:8: duplicate service name \"a\" (first defined on line 2)"),
        "{e:?}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_the_same_message() {
    let (_d, path) = write_config("[proxy]\nthreads = 0\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:11: threads: 0 is out of range 1..=1024",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let (code, _, err) = check(Path::new("/nonexistent/plugboard.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn shared_persistence_needs_a_valid_redis_url() {
    let svc = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\npersistence = { key = \"source_ip\", shared = true }\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n";
    let e = errors(&format!("[proxy]\nthreads = 1\n{svc}"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("F:6:45: persistence.shared: needs [proxy] redis"),
        "{e:?}"
    );
    let e = errors(&format!(
        "[proxy]\nredis = \"http://127.0.0.1:6379\"\n{svc}"
    ));
    assert!(
        e[0].starts_with("F:2:9: redis: \"http://127.0.0.1:6379\" is not a Redis URL"),
        "{e:?}"
    );
    let e = errors(&format!(
        "[proxy]\nredis = \"redis://127.0.0.1:notaport/0\"\n{svc}"
    ));
    assert!(e[0].starts_with("F:2:9: redis: invalid URL"), "{e:?}");
    let e = errors(&format!("[proxy]\nredis_prefix = \"x\"\n{svc}"));
    assert!(
        e[0].starts_with("F:2:16: redis_prefix: set only with redis = \"URL\""),
        "{e:?}"
    );
    let e = errors("[proxy]\nredis = \"redis://127.0.0.1:6379\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\npersistence = { key = \"cookie:S\", shared = true }\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n");
    assert!(
        e.iter()
            .any(|l| l.starts_with("F:6:") && l.contains("cookie persistence keeps no table")),
        "{e:?}"
    );
    let (d, path) = write_config(&format!(
        "[proxy]\nredis = \"rediss://127.0.0.1:1/0\"\nredis_ca_file = \"ca.pem\"\n{svc}"
    ));
    std::fs::write(d.path().join("ca.pem"), "not a certificate").unwrap();
    let (code, _, err) = check(&path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":3:17: redis_ca_file:") && err.contains("holds no PEM certificate"),
        "{err}"
    );
    // A good URL passes without Redis running: `check` does not connect.
    let (_d, path) = write_config(&format!(
        "[proxy]\nredis = \"rediss://user:pw@127.0.0.1:1/3\"\n{svc}"
    ));
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{err}");
    // The summary names it without the password.
    assert!(
        out.contains("shared persistence through rediss://***@127.0.0.1:1/3"),
        "{out}"
    );
    assert!(
        out.contains("persistence source_ip timeout 30m shared"),
        "{out}"
    );
    assert!(!out.contains("pw"), "{out}");
}

#[test]
fn proxy_protocol_settings_are_checked_at_their_lines() {
    let cfg = r#"[[service]]
name = "a"
listen = "127.0.0.1:7100"
trusted_proxies = ["10.0.0.0/8"]
send_proxy = "v3"
health_check = { kind = "tcp", send_proxy = true }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "b"
listen = "127.0.0.1:7101"
accept_proxy = true
trusted_proxies = ["10.0.0.0/33", "127.0.0.1", "lb.example.com"]
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "c"
listen = "127.0.0.1:7102"
accept_proxy = true
trusted_proxies = []
send_proxy = "v1"
health_check = { kind = "plugin:x", send_proxy = true }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "d"
listen = "127.0.0.1:7103"
accept_proxy = true
match = { hosts = ["d.example.com"] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "e"
listen = "127.0.0.1:7103"
[[service.backend]]
address = "127.0.0.1:5"
"#;
    let e = errors(cfg);
    let expect = [
        "F:4:19: trusted_proxies needs accept_proxy = true",
        "F:5:14: send_proxy: unknown version \"v3\"; expected \"v1\" or \"v2\"",
        "F:6:45: health_check.send_proxy = true needs send_proxy on the service",
        "F:14:20: trusted_proxies: \"10.0.0.0/33\" is not an IP address or CIDR block",
        "F:14:48: trusted_proxies: \"lb.example.com\" is not an IP address or CIDR block",
        "F:22:19: trusted_proxies: empty list; leave it out to accept a PROXY header from any peer",
        "F:24:50: health_check.send_proxy only applies to kind = \"tcp\" or \"http\"",
        "F:38:10: services sharing 127.0.0.1:7103 must agree on accept_proxy and trusted_proxies (see service \"d\", line 30)",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn proxy_protocol_settings_show_in_the_summary() {
    let (_d, path) = write_config(
        "[[service]]\nname = \"rdp\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:7200\"\naccept_proxy = true\ntrusted_proxies = [\"10.1.2.3/8\", \"::1\"]\nsend_proxy = \"v2\"\nhealth_check = { kind = \"tcp\", send_proxy = true }\n[[service.backend]]\naddress = \"127.0.0.1:5\"\n",
    );
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("accept proxy protocol from 10.0.0.0/8,::1/128"),
        "{out}"
    );
    assert!(out.contains("send proxy protocol v2"), "{out}");
    assert!(out.contains("fall 3 send-proxy"), "{out}");
}

#[test]
fn health_check_matchers_are_checked_at_their_lines() {
    let cfg = r#"[[service]]
name = "a"
listen = "127.0.0.1:7300"
health_check = { kind = "http", expect_status = 700 }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "b"
listen = "127.0.0.1:7301"
health_check = { kind = "http", expect_status = [200, "399-300", "abc", 99] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "c"
listen = "127.0.0.1:7302"
health_check = { kind = "http", expect_status = [] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "d"
listen = "127.0.0.1:7303"
mode = "tcp"
health_check = { kind = "tcp", send = "EHLO x\r\n", expect_regex = "^220 (ESMTP" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "e"
listen = "127.0.0.1:7304"
mode = "tcp"
health_check = { kind = "tcp", expect = "220", expect_regex = "^220" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "f"
listen = "127.0.0.1:7305"
health_check = { kind = "http", expect = "220" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "g"
listen = "127.0.0.1:7306"
mode = "tcp"
health_check = { kind = "icmp", port = 25, send = "x" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "h"
listen = "127.0.0.1:7307"
mode = "tcp"
health_check = { kind = "tcp", expect_status = 200, expect = "" }
[[service.backend]]
address = "127.0.0.1:5"
"#;
    let e = errors(cfg);
    let expect = [
        "F:4:49: health_check.expect_status: 700 is not an HTTP status (100-599)",
        "F:11:49: health_check.expect_status: range \"399-300\" runs backwards (399 > 300)",
        "F:11:49: health_check.expect_status: \"abc\" is not a status or a range like \"200-399\"",
        "F:11:49: health_check.expect_status: 99 is not an HTTP status (100-599)",
        "F:18:49: health_check.expect_status: the list is empty",
        "F:26:68: health_check.expect_regex: not a valid regular expression: unclosed group",
        "F:34:63: health_check: give expect (a prefix) or expect_regex, not both",
        "F:41:42: health_check.expect only applies to kind = \"tcp\"",
        "F:49:40: health_check.port does not apply to kind = \"icmp\"",
        "F:49:51: health_check.send only applies to kind = \"tcp\"",
        "F:57:48: health_check.expect_status only applies to kind = \"http\"",
        "F:57:62: health_check.expect: must be 1 to 1024 bytes",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn new_health_options_show_in_the_summary() {
    let (_d, path) = write_config(
        r#"[[service]]
name = "smtp"
mode = "tcp"
listen = "127.0.0.1:7400"
health_check = { kind = "tcp", send = "EHLO plugboard\r\n", expect_regex = "^220 .*ESMTP" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "banner"
mode = "tcp"
listen = "127.0.0.1:7401"
health_check = { kind = "tcp", expect = "220" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "abs"
listen = "127.0.0.1:7402"
health_check = { kind = "http", path = "/abs/handler", expect_status = [200, "300-399", 401] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "ping"
mode = "tcp"
listen = "127.0.0.1:7403"
health_check = { kind = "icmp", interval = "5s" }
persistence = { key = ["plugin:rdp-cookie", "source_ip"], timeout = "8h" }
[[service.backend]]
address = "127.0.0.1:5"
"#,
    );
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{err}");
    for want in [
        r#"health tcp send "EHLO plugboard\r\n" expect_regex "^220 .*ESMTP" every 2s"#,
        r#"health tcp expect "220" every 2s"#,
        "health http GET /abs/handler expect 200,300-399,401 every 2s",
        "health icmp echo every 5s",
        "persistence [plugin:rdp-cookie, source_ip] timeout 8h",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
}

#[test]
fn persistence_chains_are_checked_at_their_lines() {
    let cfg = r#"[[service]]
name = "a"
listen = "127.0.0.1:7500"
persistence = { key = [] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "b"
listen = "127.0.0.1:7501"
persistence = { key = ["header:X-User", "source_ip", "header:x-user"] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "c"
listen = "127.0.0.1:7502"
persistence = { key = ["source_ip", "header:X-User"] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "d"
listen = "127.0.0.1:7503"
persistence = { key = ["header:X-User", "cookie:SRV"] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "e"
listen = "127.0.0.1:7504"
mode = "tcp"
persistence = { key = ["plugin:rdp-cookie", "header:X-User", 5] }
[[service.backend]]
address = "127.0.0.1:5"
"#;
    let e = errors(cfg);
    let expect = [
        "F:4:23: persistence.key: the list is empty",
        "F:11:23: persistence.key: header:x-user is in the list twice",
        "F:18:23: persistence.key: header:x-user would never be used: source_ip always yields a key",
        "F:25:23: persistence.key: cookie:SRV must be the first kind of the list",
        "F:33:23: persistence.key: 5 is not a key kind (a string)",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn udp_services_are_checked_at_their_lines() {
    let cfg = r#"[[service]]
name = "rds"
listen = "127.0.0.1:7300"
mode = "tcp"
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "u1"
listen = "127.0.0.1:7300"
mode = "udp"
follow = "nope"
header_timeout = "5s"
connect_timeout = "1s"
send_proxy = "v2"
persistence = { key = "cookie:SRV" }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "u2"
listen = "127.0.0.1:7301"
mode = "udp"
follow = "u2"
retries = 2
match = { hosts = ["a.example.com"] }
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "u3"
listen = "127.0.0.1:7302"
mode = "udp"
follow = "u1"
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "t2"
listen = "127.0.0.1:7303"
mode = "tcp"
follow = "rds"
[[service.backend]]
address = "127.0.0.1:5"

[[service]]
name = "u4"
listen = "127.0.0.1:7302"
mode = "udp"
[[service.backend]]
address = "127.0.0.1:5"
"#;
    let e = errors(cfg);
    let expect = [
        "F:12:10: follow: no service named \"nope\" in this file",
        "F:13:18: header_timeout only applies to mode = \"http\"",
        "F:14:19: connect_timeout does not apply to mode = \"udp\"",
        "F:15:14: send_proxy does not apply to mode = \"udp\"",
        "F:16:23: persistence.key: cookie persistence needs mode = \"http\"",
        "F:24:10: follow: service \"u2\" cannot follow itself",
        "F:25:11: retries does not apply to mode = \"udp\"",
        "F:26:9: match does not apply to mode = \"udp\"",
        // Two udp services on one address: as two tcp services would be.
        "F:32:10: listen address 127.0.0.1:7302 is shared with service \"u3\" (line 32); only http services can share an address",
        "F:34:10: follow: service \"u1\" (line 8) is a udp service",
        "F:42:10: follow only applies to mode = \"udp\"",
        "F:48:10: duplicate listen address 127.0.0.1:7302 (already used by service \"u3\" on line 32)",
        "F:48:10: listen address 127.0.0.1:7302 is shared with service \"u3\" (line 32)",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn udp_services_show_in_the_summary() {
    let (_d, path) = write_config(
        "[[service]]\nname = \"rds\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:7400\"\n[[service.backend]]\naddress = \"127.0.0.1:5\"\n\n[[service]]\nname = \"rds-udp\"\nmode = \"udp\"\nlisten = \"127.0.0.1:7400\"\nfollow = \"rds\"\nidle_timeout = \"2m\"\nmax_connections = 500\n[[service.backend]]\naddress = \"127.0.0.1:5\"\n",
    );
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rds-udp [udp] listen 127.0.0.1:7400"), "{out}");
    assert!(
        out.contains("flows end after 2m idle, at most 500 at once, following service rds"),
        "{out}"
    );
}

#[test]
fn connection_limits_and_the_queue_are_checked_at_their_lines() {
    let cfg = r#"[[service]]
name = "web"
listen = "127.0.0.1:7500"
queue_timeout = "soon"
queue_max = 0
[[service.backend]]
address = "127.0.0.1:5"
max_connections = 0
[[service.backend]]
address = "127.0.0.1:6"
max_connections = 99999999999

[[service]]
name = "dns"
listen = "127.0.0.1:7501"
mode = "udp"
queue_timeout = "1s"
queue_max = 10
[[service.backend]]
address = "127.0.0.1:5"
max_connections = 3
"#;
    let e = errors(cfg);
    let expect = [
        "F:4:17: queue_timeout: invalid duration \"soon\"",
        "F:5:13: queue_max: 0 is out of range 1..=1000000",
        "F:8:19: max_connections: 0 is out of range 1..=10000000",
        "F:11:19: max_connections: 99999999999 is out of range 1..=10000000",
        "F:17:17: queue_timeout does not apply to mode = \"udp\"",
        "F:18:13: queue_max does not apply to mode = \"udp\"",
        "F:21:19: max_connections of a backend does not apply to mode = \"udp\"",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn connection_limits_and_the_queue_show_in_the_summary() {
    let (_d, path) = write_config(
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:7502\"\nqueue_timeout = \"2s\"\nqueue_max = 50\n[[service.backend]]\naddress = \"127.0.0.1:5\"\nmax_connections = 20\n[[service.backend]]\naddress = \"127.0.0.1:6\"\n",
    );
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("backend 127.0.0.1:5 weight 1 max_connections 20\n"),
        "{out}"
    );
    assert!(out.contains("backend 127.0.0.1:6 weight 1\n"), "{out}");
    assert!(out.contains("queue up to 50 for 2s"), "{out}");
}
