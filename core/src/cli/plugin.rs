//! `plugboard plugin check|test|new`: the plugin author's commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::new;
use crate::plugin::author::{check, sample::Sample, test};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Load a .wasm or .lua plugin (or a stock plugin by name: rdp-cookie, mcx-affinity,
    /// agent-load), print its hooks and ABI version and the sample input, and run each hook
    /// once on it.
    Check {
        file: PathBuf,
        /// Settings handed to the plugin, as JSON (what `[service.plugin.<name>]` becomes).
        #[arg(long, default_value = "{}")]
        settings: String,
        #[command(flatten)]
        input: Input,
    },
    /// Run the cases of a CASES.toml file (inputs and expected decisions); exit 1 on a
    /// mismatch, 2 on a bad file or a plugin that does not load.
    Test { file: PathBuf, cases: PathBuf },
    /// Write a new plugin project: the plugin, a test, and a CASES.toml.
    New {
        name: String,
        /// Language: rust, lua or c.
        #[arg(long)]
        lang: String,
        /// The hook it implements: select, key or health.
        #[arg(long, default_value = "select")]
        hook: String,
        /// The project's directory (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// This repository's sdk/ directory (default: where this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// The sample input of `plugin check`; what is not given keeps its default (`GET /` with
/// `X-User: alice` and `Cookie: session=s1`, from 127.0.0.1:40000, backends 127.0.0.1:9001-9003).
#[derive(Args)]
pub struct Input {
    /// The request: METHOD and TARGET, as in 'GET /admin/x?y=1'.
    #[arg(long, conflicts_with = "payload_hex")]
    request: Option<String>,
    /// A request header 'Name: value' (repeatable); replaces the default headers.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// The client's address, IP:PORT.
    #[arg(long)]
    client: Option<String>,
    /// A tcp connection's first bytes, in hex, instead of an http request.
    #[arg(long)]
    payload_hex: Option<String>,
    /// A number of backends (127.0.0.1:9001 on), or a comma-separated list of IP:PORT.
    #[arg(long)]
    backends: Option<String>,
}

impl Input {
    fn sample(&self) -> Result<Sample, String> {
        let mut s = Sample::new();
        if let Some(r) = &self.request {
            s.set_request(r)?;
        }
        if !self.headers.is_empty() {
            s.set_headers(&self.headers)?;
        }
        if let Some(p) = &self.payload_hex {
            s.set_payload_hex(p)?;
        }
        if let Some(c) = &self.client {
            s.set_client(c)?;
        }
        if let Some(b) = &self.backends {
            s.set_backends(b)?;
        }
        Ok(s)
    }
}

pub fn run(command: PluginCommand) -> ExitCode {
    match command {
        PluginCommand::Check {
            file,
            settings,
            input,
        } => {
            let report = input
                .sample()
                .and_then(|s| check::exercise(&file, &settings, &s));
            match report {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&file, &e),
            }
        }
        PluginCommand::Test { file, cases } => match test::run(&file, &cases) {
            Ok(o) => {
                print!("{}", o.report);
                match o.failed {
                    0 => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        PluginCommand::New {
            name,
            lang,
            hook,
            dir,
            sdk,
        } => {
            let r = new::Request {
                name: &name,
                lang: &lang,
                hook: &hook,
                dir: dir.as_deref(),
                sdk: sdk.as_deref(),
            };
            match new::create(&r) {
                Ok((dir, next)) => {
                    println!(
                        "wrote {} ({lang}, {hook} hook); next:\n{next}",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("plugin new: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn fail(file: &Path, e: &str) -> ExitCode {
    eprintln!("{}: {e}", file.display());
    ExitCode::from(2)
}
