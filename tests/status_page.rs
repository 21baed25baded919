//! The status page in real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver by `fantoccini` from crates.io): the token is asked once, every
//! backend shows with its health, a backend going down and up shows within seconds (and in
//! the recent transitions), the drain button drains. A browser request from another site is
//! refused. The screenshot is written to `target/status-page.png`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};

use common::*;

const TOKEN: &str = "status-page-token-0123";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Option<Driver> {
    let have = ["chromium", "chromedriver"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !have
        && !missing_dependency(
            "chromium",
            "chromium and chromedriver (Debian: chromium chromium-driver) drive the status page",
        )
    {
        return None;
    }
    let addr = free_addr();
    let child = Command::new("chromedriver")
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, addr })
}

async fn browser(driver: &Driver) -> Browser {
    // The WebDriver client's rustls needs the process's crypto provider, as the proxy's does.
    plugboard::tls::provider();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,860"],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls connector")
        .capabilities(caps)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("a WebDriver session")
}

/// Waits until `css` matches an element, for 10 s at most.
async fn wait_for(c: &Browser, css: &str) {
    let found = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await;
    if let Err(e) = found {
        let html = c.source().await.unwrap_or_default();
        panic!("{css} never appeared ({e}):\n{html}");
    }
}

/// Waits until backend `backend` of the test's service shows `attr="value"`.
async fn shows(c: &Browser, backend: &str, attr: &str, value: &str) {
    wait_for(
        c,
        &format!("{} [{attr}=\"{value}\"]", row("http-svc", backend)),
    )
    .await;
}

async fn click(c: &Browser, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn row(service: &str, backend: &str) -> String {
    format!("section[data-service=\"{service}\"] tr[data-backend=\"{backend}\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_health_live_and_its_buttons_work() {
    let Some(driver) = start_driver() else {
        return;
    };
    let (a, b, list) = two().await;
    let (web, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n{}",
        token.display(),
        service_toml(
            "http",
            web,
            "health_check = { kind = \"http\", path = \"/health\", interval = \"200ms\", rise = 1, fall = 1 }",
            &list
        )
    );
    let p = Proxy::start(&cfg, web).await;
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    // Some traffic for the chart, bounded in time.
    let load = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = Client::connect(web).await.unwrap();
        while Instant::now() < deadline {
            if c.get("/", &[]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let c = browser(&driver).await;
    c.goto(&format!("http://{admin}/")).await.unwrap();
    // The token is asked once.
    wait_for(&c, "form#login:not([hidden])").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&c, "form#login button").await;
    shows(&c, &sa, "data-health", "up").await;
    shows(&c, &sb, "data-health", "up").await;

    // a goes down, then up: both show, and the transitions are listed.
    a.set_health(500);
    shows(&c, &sa, "data-health", "down").await;
    wait_for(&c, "#event-list li .pill.down").await;
    a.set_health(200);
    shows(&c, &sa, "data-health", "up").await;
    wait_for(&c, "#event-list li .pill.up").await;

    // The drain button drains b (the API says so too).
    click(
        &c,
        &format!("{} button[data-action=\"drain\"]", row("http-svc", &sb)),
    )
    .await;
    shows(&c, &sb, "data-state", "drain").await;
    let (code, out, err) = ctl_with_token(admin, dir.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(&sb) && l.contains(" drain ")),
        "{out}"
    );
    // Let the chart gather a few seconds, then keep a screenshot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let png = c.screenshot().await.unwrap();
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    std::fs::write(&shot, png).unwrap();
    c.close().await.unwrap();
    load.abort();

    // A browser request from another site is refused, whatever its token.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Origin: http://evil.example"])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"state":"maint"}"#,
        ])
        .arg(format!(
            "http://{admin}/api/v1/services/http-svc/backends/{sa}"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    assert!(
        p.log_text().contains("cross-site request refused")
            || p.log_text().contains("refused, Origin")
    );
}

fn ctl_with_token(
    admin: SocketAddr,
    dir: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    ctl(admin, Some(&dir.join("token")), args)
}
