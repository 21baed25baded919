//! The soak's configuration file: every kind of service Plugboard has, over the soak's
//! backends, with fast health checks so a killed backend is noticed within a second.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where everything listens and what the services balance over.
pub struct Layout {
    pub admin: SocketAddr,
    pub web: SocketAddr,
    pub fresh: SocketAddr,
    pub secure: SocketAddr,
    pub stream: SocketAddr,
    pub rds: SocketAddr,
    pub dgram: SocketAddr,
    pub redis: SocketAddr,
    pub plugins: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// (service names, backends as (name, address)) per backend group.
    pub http: Vec<(String, SocketAddr)>,
    pub stream_backends: Vec<(String, SocketAddr)>,
    pub rdp: Vec<(String, SocketAddr)>,
    pub udp: Vec<(String, SocketAddr)>,
}

const HEALTH: &str =
    "health_check = { kind = \"tcp\", interval = \"250ms\", timeout = \"250ms\", rise = 1, fall = 1 }";

/// How a generation of the file differs: `round` changes a weight (so a reload changes
/// something real); `bad` puts a weight out of range, which a reload must refuse.
pub fn render(l: &Layout, round: u64, bad: bool) -> String {
    let mut s = format!(
        "# soak configuration, round {round}\n[admin]\nlisten = \"{}\"\n\n[proxy]\nthreads = 2\n\
         plugins_dir = \"{}\"\nredis = \"redis://{}/0\"\n",
        l.admin,
        l.plugins.display(),
        l.redis
    );
    let backends = |s: &mut String, list: &[(String, SocketAddr)]| {
        for (i, (name, addr)) in list.iter().enumerate() {
            let weight = match (i, bad) {
                (0, true) => 9999,
                (1, _) => 1 + round % 2,
                _ => 1,
            };
            let _ = write!(
                s,
                "[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\nweight = {weight}\n"
            );
        }
    };
    let service = |s: &mut String, name: &str, listen: SocketAddr, mode: &str, extra: &str| {
        let _ = write!(
            s,
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nmode = \"{mode}\"\n{HEALTH}\n{extra}\n"
        );
    };
    service(
        &mut s,
        "web",
        l.web,
        "http",
        "scheduler = \"plugin:sched\"\nretries = 2\n\
         persistence = { key = \"header:X-User\", timeout = \"1h\", shared = true }",
    );
    backends(&mut s, &l.http);
    service(
        &mut s,
        "fresh",
        l.fresh,
        "http",
        "scheduler = \"plugin:sched\"\nretries = 2",
    );
    backends(&mut s, &l.http);
    service(&mut s, "secure", l.secure, "http", "retries = 2");
    let _ = write!(
        s,
        "[[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
        l.cert.display(),
        l.key.display()
    );
    backends(&mut s, &l.http);
    service(
        &mut s,
        "stream",
        l.stream,
        "tcp",
        "idle_timeout = \"30s\"\nretries = 2",
    );
    backends(&mut s, &l.stream_backends);
    service(
        &mut s,
        "rds",
        l.rds,
        "tcp",
        "retries = 2\ninspect_timeout = \"1s\"\n\
         persistence = { key = \"plugin:rdp-cookie\", timeout = \"8h\", shared = true }",
    );
    backends(&mut s, &l.rdp);
    service(&mut s, "dgram", l.dgram, "udp", "idle_timeout = \"30s\"");
    backends(&mut s, &l.udp);
    s
}

/// The scheduler plugin's versions: good ones, and faulty ones the proxy must survive with its
/// fallback scheduler (a Lua error, a loop cut by the deadline, memory past the cap).
pub const PLUGINS: &[(&str, &str)] = &[
    (
        "good round robin",
        "local next = 0\nfunction select_server(req, backends)\n  local n = #backends\n  for _ = 1, n do\n    next = next % n + 1\n    if backends[next].healthy then return next end\n  end\n  return nil\nend\n",
    ),
    (
        "good last-healthy",
        "function select_server(req, backends)\n  for i = #backends, 1, -1 do\n    if backends[i].healthy then return i end\n  end\n  return nil\nend\n",
    ),
    (
        "faulty: error",
        "function select_server(req, backends)\n  error('soak: a faulty plugin')\nend\n",
    ),
    (
        "faulty: endless loop",
        "function select_server(req, backends)\n  while true do end\nend\n",
    ),
    (
        "faulty: eats memory",
        "function select_server(req, backends)\n  local t = {}\n  for i = 1, 1e9 do t[i] = string.rep('x', 65536) .. i end\nend\n",
    ),
];
