//! Network namespaces a test makes for itself (needs root): sockets opened in one, from a
//! thread that entered it, stay in it.

use std::process::Command;

/// Runs `ip ARGS`, panicking with its error output on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs `cmd ARGS` in namespace `ns`, panicking with its error output on failure.
pub fn exec(ns: &str, cmd: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, cmd];
    all.extend_from_slice(args);
    run("ip", &all);
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread of its own inside namespace `ns` (made by `ip netns add`), so that
/// the sockets `f` opens belong to `ns`; the test's other threads are untouched.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a namespace file descriptor; this thread alone changes namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Namespaces named `<prefix>-<name>`, with `lo` up; deleted on drop.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    pub fn new(prefix: &str, names: &[&str]) -> Namespaces {
        let n = Namespaces {
            prefix: prefix.to_string(),
            names: names.iter().map(|s| s.to_string()).collect(),
        };
        for name in names {
            let ns = n.ns(name);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        n
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A veth pair: `a_if` in `a` with `a_addrs`, `b_if` in `b` with `b_addrs` (CIDR), both up.
    pub fn link(
        &self,
        (a, a_if, a_addrs): (&str, &str, &[&str]),
        (b, b_if, b_addrs): (&str, &str, &[&str]),
    ) {
        let (na, nb) = (self.ns(a), self.ns(b));
        ip(&[
            "link", "add", a_if, "netns", &na, "type", "veth", "peer", "name", b_if, "netns", &nb,
        ]);
        for (ns, dev, addrs) in [(&na, a_if, a_addrs), (&nb, b_if, b_addrs)] {
            for addr in addrs {
                ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(name)])
                .status();
        }
    }
}
