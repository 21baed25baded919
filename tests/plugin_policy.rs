//! What a service does when its plugins fail or have no opinion, through the real binary:
//! the `reject` policy for key and health plugins, `fallback_scheduler`, and a file that
//! overrides a stock plugin.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Config with one http service per `(listen, extra)`, all over `backends`.
fn services(
    plugins_dir: &Path,
    list: &[(SocketAddr, &str)],
    backends: &[(SocketAddr, u32)],
) -> String {
    let mut s = format!(
        "[proxy]\nthreads = 2\nplugins_dir = \"{}\"\n",
        plugins_dir.display()
    );
    for (i, (listen, extra)) in list.iter().enumerate() {
        s.push_str(&format!(
            "\n[[service]]\nname = \"s{i}\"\nlisten = \"{listen}\"\n{extra}\n{}",
            backends_toml(backends)
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_for_key_and_health_plugins() {
    let (_a, _b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("badkey.lua"),
        "function persistence_key(req) error('no key today') end",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("badcheck.lua"),
        "function health_check(b) error('no verdict today') end",
    )
    .unwrap();
    let (key_reject, check_reject, check_fallback) = (free_addr(), free_addr(), free_addr());
    let check = "health_check = { kind = \"plugin:badcheck\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }";
    let cfg = services(
        dir.path(),
        &[
            (
                key_reject,
                "persistence = { key = \"plugin:badkey\" }\non_plugin_error = \"reject\"",
            ),
            (
                check_reject,
                &format!("{check}\non_plugin_error = \"reject\""),
            ),
            (check_fallback, check),
        ],
        &list,
    );
    let p = Proxy::start(&cfg, key_reject).await;
    // A failing key hook under `reject`: the request is refused.
    for r in bodies(key_reject, 3, &[]).await {
        assert_eq!(r.status, 503);
    }
    // A failing health hook under `reject`: a failed check, so the backends go down.
    p.wait_log(
        &["backend is DOWN", "service=s1"],
        2,
        Duration::from_secs(5),
    )
    .await;
    for r in bodies(check_reject, 3, &[]).await {
        assert_eq!(r.status, 503);
    }
    // Under `fallback`: no verdict, the backends keep their state.
    for r in bodies(check_fallback, 6, &[]).await {
        assert_eq!(r.status, 200);
    }
    assert!(!p.log_text().contains("backend is DOWN service=s2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_scheduler_decides_when_the_plugin_has_no_opinion() {
    let (a, b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shrug.lua"),
        "function select_server(req, backends) return nil end",
    )
    .unwrap();
    let (hashed, default) = (free_addr(), free_addr());
    let cfg = services(
        dir.path(),
        &[
            (
                hashed,
                "scheduler = \"plugin:shrug\"\nfallback_scheduler = \"source_hash\"",
            ),
            (default, "scheduler = \"plugin:shrug\""),
        ],
        &list,
    );
    let _p = Proxy::start(&cfg, hashed).await;
    let from = |ip: [u8; 4]| Some(std::net::IpAddr::from(ip));
    let mut homes = std::collections::HashSet::new();
    for ip in [
        [127, 0, 0, 2],
        [127, 0, 0, 3],
        [127, 0, 0, 4],
        [127, 0, 0, 5],
    ] {
        let mut c = Client::connect_from(hashed, from(ip)).await.unwrap();
        let first = c.get("/", &[]).await.unwrap().body;
        for _ in 0..5 {
            assert_eq!(
                c.get("/", &[]).await.unwrap().body,
                first,
                "source_hash is sticky"
            );
        }
        homes.insert(first);
    }
    assert!(!homes.is_empty());
    // The default fallback is round robin: one client sees both backends.
    let t = tally(
        bodies(default, 10, &[])
            .await
            .iter()
            .map(|r| r.body.as_str()),
    );
    assert_eq!(t.get(&a.addr.to_string()), Some(&5), "{t:?}");
    assert_eq!(t.get(&b.addr.to_string()), Some(&5), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_plugins_dir_overrides_a_stock_plugin() {
    let (_a, _b, list) = two().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mcx-affinity.lua"),
        "function persistence_key(req) return nil end\nfunction on_response(req, served) return { ['x-overridden'] = 'yes' } end",
    )
    .unwrap();
    let listen = free_addr();
    let cfg = services(
        dir.path(),
        &[(listen, "persistence = { key = \"plugin:mcx-affinity\" }")],
        &list,
    );
    let _p = Proxy::start(&cfg, listen).await;
    for r in bodies(listen, 3, &[]).await {
        assert_eq!(r.header("x-overridden"), Some("yes"), "{r:?}");
        assert!(
            r.header("set-cookie").is_none(),
            "the stock plugin ran: {r:?}"
        );
    }
}
