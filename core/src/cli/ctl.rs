//! `plugboard ctl`: the admin API from the command line, a table for people and `--json` for
//! scripts. Exit code 0 on success, 1 when the API refuses (its message on stderr), 2 when
//! it cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct CtlArgs {
    /// Base URL of the admin API (`[admin] listen`).
    #[arg(long, env = "PLUGBOARD_ADMIN", default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// File holding the API token (`[admin] token_file`).
    #[arg(long, env = "PLUGBOARD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every service and its backends.
    Status,
    /// No new clients for BACKEND; clients pinned to it by persistence keep coming.
    Drain { service: String, backend: String },
    /// Nothing new for BACKEND (maintenance).
    Maint { service: String, backend: String },
    /// BACKEND takes new clients again.
    Ready { service: String, backend: String },
    /// Sets BACKEND's weight (0-256).
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
    /// Adds a backend at ADDRESS (IP:PORT or host:port).
    Add {
        service: String,
        address: String,
        /// Its name (default: the address as written).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Removes BACKEND: nothing new reaches it, and it leaves once its last request or
    /// connection ends.
    Remove { service: String, backend: String },
    /// Reads the configuration file again and applies it (as SIGHUP does); a file with
    /// errors is refused and the running configuration stays.
    Reload,
}

/// A failed call: the exit code and what to print.
struct Failed(u8, String);

pub fn run(args: CtlArgs) -> ExitCode {
    match call(&args) {
        Ok(answer) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            } else if matches!(args.command, CtlCommand::Reload) {
                print!("{}", reloaded(&answer));
            } else {
                print!("{}", table(&answer));
            }
            // A reload that applied but could not bind an address that changed hands.
            match answer["errors"].as_array() {
                Some(e) if !e.is_empty() => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            }
        }
        Err(Failed(code, message)) => {
            eprintln!("plugboard ctl: {message}");
            ExitCode::from(code)
        }
    }
}

fn call(args: &CtlArgs) -> Result<Value, Failed> {
    let token = match &args.token_file {
        None => None,
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Failed(2, format!("token file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
    };
    let base = args.admin.trim_end_matches('/');
    let backend_url = |s: &str, b: &str| {
        format!(
            "{base}/api/v1/services/{}/backends/{}",
            encode(s),
            encode(b)
        )
    };
    let backends_url = |s: &str| format!("{base}/api/v1/services/{}/backends", encode(s));
    let (method, url, body) = match &args.command {
        CtlCommand::Status => ("GET", format!("{base}/api/v1/services"), None),
        CtlCommand::Drain { service, backend } => (
            "PUT",
            backend_url(service, backend),
            Some(r#"{"state":"drain"}"#.to_string()),
        ),
        CtlCommand::Maint { service, backend } => (
            "PUT",
            backend_url(service, backend),
            Some(r#"{"state":"maint"}"#.to_string()),
        ),
        CtlCommand::Ready { service, backend } => (
            "PUT",
            backend_url(service, backend),
            Some(r#"{"state":"ready"}"#.to_string()),
        ),
        CtlCommand::Weight {
            service,
            backend,
            weight,
        } => (
            "PUT",
            backend_url(service, backend),
            Some(format!(r#"{{"weight":{weight}}}"#)),
        ),
        CtlCommand::Add {
            service,
            address,
            name,
            weight,
        } => {
            let mut body = serde_json::json!({ "address": address });
            if let Some(n) = name {
                body["name"] = n.as_str().into();
            }
            if let Some(w) = weight {
                body["weight"] = (*w).into();
            }
            ("POST", backends_url(service), Some(body.to_string()))
        }
        CtlCommand::Remove { service, backend } => ("DELETE", backend_url(service, backend), None),
        CtlCommand::Reload => ("POST", format!("{base}/api/v1/reload"), None),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = http::Request::builder().method(method).uri(&url);
    if let Some(t) = &token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => agent.run(
            req.header("content-type", "application/json")
                .body(b)
                .map_err(|e| Failed(2, e.to_string()))?,
        ),
        None => agent.run(req.body(()).map_err(|e| Failed(2, e.to_string()))?),
    };
    let mut resp = result.map_err(|e| Failed(2, format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| Failed(2, format!("{url}: {e}")))?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| Failed(2, format!("{url}: {status}, not JSON: {}", text.trim())))?;
    if status >= 400 {
        let mut message = format!(
            "{status}: {}",
            answer["error"].as_str().unwrap_or(text.trim())
        );
        for e in answer["errors"].as_array().into_iter().flatten() {
            message.push_str(&format!("\n  {}", e.as_str().unwrap_or_default()));
        }
        return Err(Failed(1, message));
    }
    Ok(answer)
}

/// Percent-encodes a path segment (backend names may hold `:`, `[`, `]`).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A reload's outcome, one line per kind of change.
fn reloaded(answer: &Value) -> String {
    let list = |k: &str| -> Vec<String> {
        answer[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let mut out = format!(
        "reloaded: {} services ({})\n",
        list("services").len(),
        list("services").join(", ")
    );
    for (k, what) in [
        ("listening", "now listening"),
        ("stopped", "stopped listening"),
    ] {
        if !list(k).is_empty() {
            out.push_str(&format!("{what}: {}\n", list(k).join(", ")));
        }
    }
    for w in list("warnings") {
        out.push_str(&format!("warning: {w}\n"));
    }
    for e in list("errors") {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

/// One line per backend, under a header, for a service list or one service.
fn table(answer: &Value) -> String {
    let services: Vec<&Value> = match answer.get("services").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![answer],
    };
    let mut rows = vec![[
        "SERVICE",
        "BACKEND",
        "ADDRESS",
        "STATE",
        "HEALTH",
        "WEIGHT",
        "EFFECTIVE",
        "ACTIVE",
        "LOAD",
        "PINNED",
    ]
    .map(String::from)];
    for s in services {
        for b in s["backends"].as_array().into_iter().flatten() {
            let text = |k: &str| match &b[k] {
                Value::String(v) => v.clone(),
                Value::Null => "-".into(),
                v => v.to_string(),
            };
            let mut state = text("state");
            if b["agent_state"].as_str().is_some_and(|a| a != "ready") {
                state = format!("{state} (agent: {})", text("agent_state"));
            }
            if b["removing"].as_bool() == Some(true) {
                state = format!("{state} (removing)");
            }
            rows.push([
                s["name"].as_str().unwrap_or("?").to_string(),
                text("name"),
                text("address"),
                state,
                text("health"),
                text("weight"),
                text("effective_weight"),
                match b["max_connections"].as_u64() {
                    Some(max) => format!("{}/{max}", text("active")),
                    None => text("active"),
                },
                text("load"),
                text("pinned"),
            ]);
        }
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
