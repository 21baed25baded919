//! The HA pair of `examples/ha-pair/`, built for real: network namespaces made by this test
//! (a bridge for the LAN, veth links to two Plugboard nodes and a client), Debian's keepalived
//! with the example's configuration files unchanged, the example's plugboard.toml on both
//! nodes, one redis-server and three HTTP backends (python3's http.server) on the LAN.
//!
//! Shows: the virtual address on node 1; Plugboard killed there moves it to node 2 within
//! seconds; users reconnecting through it keep their backends (pins shared through Redis);
//! node 1 coming back takes the address back and still sends every user, including those
//! pinned through node 2 meanwhile, to the same backend. Needs root (namespaces).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::ip;
use common::{have, missing_dependency, BIN};

const VIP: &str = "192.0.2.50";
/// Debian's, in /usr/sbin (not on every user's PATH).
const KEEPALIVED: &str = "/usr/sbin/keepalived";
const REDIS_PASSWORD: &str = "ha-pair-test-redis-password";
const BACKENDS: [(&str, &str); 3] = [
    ("web1", "192.0.2.21"),
    ("web2", "192.0.2.22"),
    ("web3", "192.0.2.23"),
];

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ha-pair")
        .join(file)
}

/// The namespaces and every process started in them; all removed on drop.
struct Lab {
    id: String,
    dir: tempfile::TempDir,
    procs: Vec<(String, Child)>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    fn build() -> Lab {
        let lab = Lab {
            id: format!("pbha{}", std::process::id()),
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
        };
        let lan = lab.ns("lan");
        for n in ["lan", "n1", "n2", "cl"] {
            ip(&["netns", "add", &lab.ns(n)]);
            ip(&["-n", &lab.ns(n), "link", "set", "lo", "up"]);
        }
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        ip(&["-n", &lan, "addr", "add", "192.0.2.1/24", "dev", "br0"]);
        for (_, addr) in BACKENDS {
            ip(&[
                "-n",
                &lan,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "br0",
            ]);
        }
        for (n, addr) in [
            ("n1", "192.0.2.11"),
            ("n2", "192.0.2.12"),
            ("cl", "192.0.2.100"),
        ] {
            let ns = lab.ns(n);
            let port = format!("p-{n}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &lan,
            ]);
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// Starts `cmd` in namespace `ns`, its output in `<dir>/<label>.log`.
    fn spawn(&mut self, ns: &str, label: &str, cmd: &[&str]) {
        let log = self.dir.path().join(format!("{label}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {label}: {e}"));
        self.procs.push((label.to_string(), child));
    }

    /// Kills the process started as `label` (as a crash would).
    fn kill(&mut self, label: &str) {
        let i = self.procs.iter().position(|(l, _)| l == label).unwrap();
        let (_, mut c) = self.procs.remove(i);
        let _ = c.kill();
        let _ = c.wait();
    }

    fn log(&self, label: &str) -> String {
        let p = self.dir.path().join(format!("{label}.log"));
        let mut s = std::fs::read_to_string(&p).unwrap_or_default();
        s += &std::fs::read_to_string(p.with_extension("err")).unwrap_or_default();
        s
    }

    /// Runs `cmd` in `ns` to completion: (success, stdout).
    fn run(&self, ns: &str, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(cmd)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The node holding the virtual address (`None`: neither; both is a failure).
    fn vip_holder(&self) -> Option<&'static str> {
        let has = |n: &str| {
            let out = Command::new("ip")
                .args(["-n", &self.ns(n), "-4", "-o", "addr", "show", "dev", "eth0"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
        };
        match (has("n1"), has("n2")) {
            (true, true) => panic!("both nodes hold {VIP}"),
            (true, false) => Some("n1"),
            (false, true) => Some("n2"),
            _ => None,
        }
    }

    /// Waits up to `limit` for `node` to hold the address; how long it took.
    fn wait_vip(&self, node: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        while self.vip_holder() != Some(node) {
            assert!(
                start.elapsed() < limit,
                "{VIP} not on {node} after {limit:?} (on {:?})\nkeepalived n1:\n{}\nkeepalived n2:\n{}",
                self.vip_holder(),
                self.log("keepalived-n1"),
                self.log("keepalived-n2")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    /// Starts Plugboard on `node` with the example's configuration, and waits for /healthz.
    fn start_plugboard(&mut self, node: &str) {
        let dir = self.dir.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(example("plugboard.toml"), dir.join("plugboard.toml")).unwrap();
        // The same secret on both nodes (pins are keyed with it), a token of their own.
        std::fs::write(dir.join("secret"), "ha pair test secret, 32 bytes long").unwrap();
        std::fs::write(
            dir.join("admin.token"),
            format!("token-of-{node}-0123456789"),
        )
        .unwrap();
        std::fs::write(dir.join("redis.password"), REDIS_PASSWORD).unwrap();
        let config = dir.join("plugboard.toml");
        let label = format!("plugboard-{node}");
        self.spawn(
            node,
            &label,
            &[BIN, "run", "--config", config.to_str().unwrap()],
        );
        let start = Instant::now();
        loop {
            let (ok, _) = self.run(
                node,
                &["curl", "-fsS", "-m", "1", "http://127.0.0.1:9000/healthz"],
            );
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{label} not healthy:\n{}",
                self.log(&label)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until Plugboard on `node` is connected to Redis (`plugboard_redis_up 1`).
    fn wait_shared(&self, node: &str) {
        let auth = format!("Authorization: Bearer token-of-{node}-0123456789");
        let start = Instant::now();
        loop {
            let (_, m) = self.run(
                node,
                &[
                    "curl",
                    "-s",
                    "-m",
                    "1",
                    "-H",
                    &auth,
                    "http://127.0.0.1:9000/metrics",
                ],
            );
            if m.lines().any(|l| l == "plugboard_redis_up 1") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{node} not connected to Redis:\n{}",
                self.log(&format!("plugboard-{node}"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The backend a user reaches through the virtual address.
    fn user(&self, user: &str) -> String {
        let header = format!("X-User: {user}");
        let url = format!("http://{VIP}:8080/");
        for _ in 0..20 {
            let (ok, body) = self.run("cl", &["curl", "-fsS", "-m", "2", "-H", &header, &url]);
            if ok {
                return body.trim().to_string();
            }
            // The address may be moving (ARP updates): retry briefly.
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{user}: no answer through {VIP}\nn1:\n{}\nn2:\n{}",
            self.log("plugboard-n1"),
            self.log("plugboard-n2")
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["cl", "n2", "n1", "lan"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
    }
}

#[test]
fn keepalived_pair_fails_over_and_users_keep_their_backends() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing_dependency("root", "network namespaces need root");
        return;
    }
    for cmd in ["ip", KEEPALIVED, "redis-server", "python3", "curl"] {
        if !have(cmd) {
            missing_dependency("redis-server", &format!("{cmd} is not installed"));
            return;
        }
    }
    let mut lab = Lab::build();
    let data = lab.dir.path().join("redis");
    std::fs::create_dir_all(&data).unwrap();
    lab.spawn(
        "lan",
        "redis",
        &[
            "redis-server",
            "--bind",
            "192.0.2.1",
            "--port",
            "6379",
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            data.to_str().unwrap(),
        ],
    );
    for (name, addr) in BACKENDS {
        let root = lab.dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), format!("{name}\n")).unwrap();
        let root = root.to_str().unwrap().to_string();
        lab.spawn(
            "lan",
            name,
            &[
                "python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
                addr,
                "--directory",
                &root,
            ],
        );
    }
    lab.start_plugboard("n1");
    lab.start_plugboard("n2");
    for n in ["n1", "n2"] {
        let conf = example(&format!("keepalived-node{}.conf", &n[1..]));
        let dir = lab.dir.path().join(n);
        let (pid, vrrp) = (dir.join("keepalived.pid"), dir.join("vrrp.pid"));
        lab.spawn(
            n,
            &format!("keepalived-{n}"),
            &[
                "keepalived",
                "-n",
                "-l",
                "-G",
                "-D",
                "-P",
                "-f",
                conf.to_str().unwrap(),
                "-p",
                pid.to_str().unwrap(),
                "-r",
                vrrp.to_str().unwrap(),
            ],
        );
    }
    lab.wait_vip("n1", Duration::from_secs(30));
    for n in ["n1", "n2"] {
        lab.wait_shared(n);
    }

    let early: Vec<String> = (0..30).map(|u| lab.user(&format!("early{u}"))).collect();
    let used: std::collections::HashSet<&String> = early.iter().collect();
    assert!(used.len() >= 2, "all users on one backend: {used:?}");
    for b in &early {
        assert!(
            BACKENDS.iter().any(|(n, _)| n == b),
            "unexpected body {b:?}"
        );
    }

    lab.kill("plugboard-n1");
    let took = lab.wait_vip("n2", Duration::from_secs(10));
    eprintln!("failover: {VIP} on node 2 {took:?} after Plugboard died on node 1");
    // In another order than they came first: the scheduler alone (least_connections over idle
    // backends takes them in turn) would then give most of them another backend.
    for (u, b) in early.iter().enumerate().rev() {
        assert_eq!(
            &lab.user(&format!("early{u}")),
            b,
            "early{u} after failover"
        );
    }
    let late: Vec<String> = (0..20).map(|u| lab.user(&format!("late{u}"))).collect();

    // Node 1 comes back: after preempt_delay it takes the address back, with every pin.
    lab.start_plugboard("n1");
    lab.wait_shared("n1");
    let took = lab.wait_vip("n1", Duration::from_secs(30));
    eprintln!("{VIP} back on node 1 {took:?} after its Plugboard restarted");
    let all = early
        .iter()
        .enumerate()
        .map(|(u, b)| (format!("early{u}"), b))
        .chain(
            late.iter()
                .enumerate()
                .map(|(u, b)| (format!("late{u}"), b)),
        );
    let mut all: Vec<_> = all.collect();
    all.rotate_left(7);
    for (user, b) in all {
        assert_eq!(&lab.user(&user), b, "{user} after failback");
    }
}
