//! Stable backend identity, through the real binary: cookies the proxy inserted still lead to
//! the same backend after the backend list is reordered (and grown) and the proxy restarted;
//! a different secret makes them worthless; metrics name backends by name.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;

/// A cookie-persistent service over `backends` (name, address), in that order.
fn config(listen: SocketAddr, secret: &std::path::Path, backends: &[(&str, SocketAddr)]) -> String {
    let mut s = format!(
        "[proxy]\nthreads = 2\nsecret_file = \"{}\"\n\n[[service]]\nname = \"web\"\nlisten = \"{listen}\"\npersistence = {{ key = \"cookie:SRV\" }}\n",
        secret.display()
    );
    for (name, addr) in backends {
        if name.is_empty() {
            s.push_str(&format!("[[service.backend]]\naddress = \"{addr}\"\n"));
        } else {
            s.push_str(&format!(
                "[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            ));
        }
    }
    s
}

/// Fresh clients until every backend has handed out its cookie: cookie value -> backend body.
async fn cookies(listen: SocketAddr, n: usize) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for _ in 0..20 {
        if m.len() == n {
            break;
        }
        let r = get_once(listen, "/").await.unwrap();
        let set = r.header("set-cookie").expect("a cookie for a new client");
        let value = set["SRV=".len()..].split(';').next().unwrap().to_string();
        m.insert(value, r.body);
    }
    assert_eq!(m.len(), n, "{m:?}");
    m
}

async fn follows(listen: SocketAddr, cookies: &HashMap<String, String>) {
    for (value, home) in cookies {
        let cookie = format!("SRV={value}");
        let mut c = Client::connect(listen).await.unwrap();
        for _ in 0..3 {
            let r = c.get("/", &[("Cookie", &cookie)]).await.unwrap();
            assert_eq!(&r.body, home, "cookie {value} moved");
            assert!(
                r.header("set-cookie").is_none(),
                "a valid cookie is not replaced"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_survive_reordering_and_restart() {
    let mut bs = Vec::new();
    for _ in 0..4 {
        bs.push(HttpBackend::start().await);
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cookie.secret");
    std::fs::write(&secret, "k3yk3yk3yk3yk3yk3yk3yk3y\n").unwrap();
    let listen = free_addr();
    // Named backends, and one known by its address.
    let first = [("fe1", bs[0].addr), ("fe2", bs[1].addr), ("", bs[2].addr)];
    let p = Proxy::start(&config(listen, &secret, &first), listen).await;
    let issued = cookies(listen, 3).await;
    follows(listen, &issued).await;
    drop(p);

    // Reordered, with a new backend in front, after a restart.
    let second = [
        ("fe9", bs[3].addr),
        ("", bs[2].addr),
        ("fe2", bs[1].addr),
        ("fe1", bs[0].addr),
    ];
    let p = Proxy::start(&config(listen, &secret, &second), listen).await;
    follows(listen, &issued).await;
    drop(p);

    // Another secret: the old values name nothing, so clients are rebalanced and re-cookied.
    std::fs::write(&secret, "an0th3r-s3cr3t-an0th3r-s3cr3t\n").unwrap();
    let _p = Proxy::start(&config(listen, &secret, &second), listen).await;
    for value in issued.keys() {
        let r = Client::connect(listen)
            .await
            .unwrap()
            .get("/", &[("Cookie", &format!("SRV={value}"))])
            .await
            .unwrap();
        let set = r
            .header("set-cookie")
            .expect("a new cookie under the new secret");
        assert!(!set.contains(value.as_str()), "{set}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_logs_name_backends_by_name() {
    let a = HttpBackend::start().await;
    let listen = free_addr();
    let metrics = free_addr();
    let cfg = format!(
        "[proxy]\nthreads = 1\nmetrics = \"{metrics}\"\n\n[[service]]\nname = \"web\"\nlisten = \"{listen}\"\n[[service.backend]]\nname = \"fe1\"\naddress = \"{}\"\n",
        a.addr
    );
    let _p = Proxy::start(&cfg, listen).await;
    assert_eq!(get_once(listen, "/").await.unwrap().status, 200);
    let text = scrape(metrics).await;
    assert!(
        text.contains("plugboard_backend_selected_total{backend=\"fe1\",service=\"web\"} 1"),
        "{text}"
    );
}
