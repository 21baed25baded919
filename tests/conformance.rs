//! One plugin contract for both runtimes: the same plugin written for WASM
//! (`tests/plugins/conformance`) and for Lua (`tests/plugins/conformance.lua`) runs side by
//! side in one proxy, over the same backends and agents, and must route every request the same
//! way: availability (agent drain, maintenance, down), naming a backend from the key hook,
//! what the response step sees, and agent feeds from a scheduler's health hook.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// An agent on `ip:port` that answers every connection with its current line.
struct Agent {
    line: Arc<Mutex<String>>,
}

impl Agent {
    async fn start(addr: SocketAddr) -> Agent {
        let listener = TcpListener::bind(addr).await.unwrap();
        let line = Arc::new(Mutex::new("ready\n".to_string()));
        let l = line.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let text = l.lock().unwrap().clone();
                tokio::spawn(async move {
                    let _ = s.write_all(text.as_bytes()).await;
                });
            }
        });
        Agent { line }
    }

    fn say(&self, line: &str) {
        *self.line.lock().unwrap() = format!("{line}\n");
    }
}

/// The backend names each runtime's service routes `n` requests to.
async fn route(listen: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<Response> {
    let mut c = Client::connect(listen).await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let r = c.get(&format!("/p{i}"), headers).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        out.push(r);
    }
    out
}

fn served(rs: &[Response]) -> Vec<String> {
    rs.iter()
        .map(|r| r.header("x-served").unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_and_lua_plugins_route_the_same_way() {
    let Some(wasm) = sdk_plugin("conformance") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, dir.path().join("conf-wasm.wasm")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/plugins/conformance.lua"
        ),
        dir.path().join("conf-lua.lua"),
    )
    .unwrap();

    // Three hosts (127.0.0.11-13), each with a backend and an agent on the same ports.
    let (port, agent_port) = (free_addr().port(), free_addr().port());
    let mut backends = Vec::new();
    let mut agents = Vec::new();
    for h in 11..=13u8 {
        let ip = IpAddr::from([127, 0, 0, h]);
        backends.push(HttpBackend::start_on(SocketAddr::new(ip, port)).await);
        agents.push(Agent::start(SocketAddr::new(ip, agent_port)).await);
    }
    let backend_tables: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "[[service.backend]]\nname = \"b{}\"\naddress = \"{}\"\n",
                i + 1,
                b.addr
            )
        })
        .collect();
    let (lw, ll) = (free_addr(), free_addr());
    let mut cfg = format!(
        "[proxy]\nthreads = 2\nplugins_dir = \"{}\"\n",
        dir.path().display()
    );
    for (name, listen, plugin) in [("wasm", lw, "conf-wasm"), ("lua", ll, "conf-lua")] {
        cfg.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nscheduler = \"plugin:{plugin}\"\npersistence = {{ key = \"plugin:{plugin}\" }}\n[service.plugin.{plugin}]\nagent_port = {agent_port}\ninterval = \"100ms\"\n{backend_tables}"
        ));
    }
    let p = Proxy::start(&cfg, lw).await;

    // Runs one step on both services; both must route alike, and as `expect` says.
    let step = async |what: &str, headers: &[(&str, &str)], expect: &str| {
        let ok = eventually(Duration::from_secs(5), async || {
            let w = served(&route(lw, 1, headers).await);
            let l = served(&route(ll, 1, headers).await);
            w == [expect] && l == [expect]
        })
        .await;
        let w = route(lw, 6, headers).await;
        let l = route(ll, 6, headers).await;
        assert!(
            ok,
            "{what}: wasm {:?}, lua {:?}\n{}",
            served(&w),
            served(&l),
            p.log_text()
        );
        assert_eq!(served(&w), vec![expect; 6], "{what} (wasm)");
        assert_eq!(served(&l), vec![expect; 6], "{what} (lua)");
        for (a, b) in w.iter().zip(&l) {
            assert_eq!(
                (a.header("x-named"), a.header("x-path"), &a.body),
                (b.header("x-named"), b.header("x-path"), &b.body),
                "{what}: the response step saw different things"
            );
        }
        (w, l)
    };

    step("all ready: the first available backend", &[], "b1").await;
    agents[0].say("drain");
    step("b1 drained by its agent", &[], "b2").await;
    agents[1].say("maint");
    step("b2 in maintenance by its agent", &[], "b3").await;
    step(
        "a request naming a draining backend still reaches it (drain honours persistence)",
        &[("x-backend", "b1")],
        "b1",
    )
    .await;
    step(
        "a request naming a backend in maintenance is rebalanced",
        &[("x-backend", "b2")],
        "b3",
    )
    .await;
    agents[0].say("ready");
    agents[1].say("ready");
    step("back to ready", &[], "b1").await;
    let (w, _) = step("a request naming b2", &[("x-backend", "b2")], "b2").await;
    assert_eq!(w[0].header("x-named"), Some("b2"));
    assert_eq!(
        w[0].header("x-path"),
        Some("/p0"),
        "the response step sees the request"
    );
    agents[0].say("down");
    step(
        "b1 reported down by its agent",
        &[("x-user", "alice")],
        "b2",
    )
    .await;
    agents[0].say("ready");
    // alice was pinned to b2 while b1 was down: the pin holds now that b1 is back.
    step("a pinned user stays put", &[("x-user", "alice")], "b2").await;
    step("others go to the first available", &[], "b1").await;
}
