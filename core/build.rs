//! Builds the stock plugins (`plugins/*`, ordinary plugboard-sdk crates) to WebAssembly and
//! embeds them in the binary, so that `plugin:rdp-cookie` and friends need no file.
//!
//! The nested cargo uses its own target directory, so it never waits on the outer build's
//! lock. Without the wasm32 target the build fails with a message saying how to install it
//! (`scripts/setup` does): a binary without the stock plugins would refuse every seed example.

use std::path::{Path, PathBuf};
use std::process::Command;

const STOCK: [&str; 3] = ["rdp-cookie", "mcx-affinity", "agent-load"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for dir in ["plugins", "sdk/src", "sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for p in STOCK {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("plugins").join(p).display()
        );
    }

    if let Err(e) = build(&root, &out.join("stock-target")) {
        eprintln!(
            "\nerror: the stock plugins (rdp-cookie, mcx-affinity, agent-load) could not be built \
             to WebAssembly, and plugboard embeds them.\n{e}\nInstall the target with \
             `rustup target add wasm32-unknown-unknown` (./scripts/setup does), then build again.\n"
        );
        std::process::exit(1);
    }
    let mut code = String::from("/// Stock plugins embedded at build time: (name, wasm bytes).\npub static STOCK: &[(&str, &[u8])] = &[\n");
    for p in STOCK {
        let wasm = out
            .join("stock-target/wasm32-unknown-unknown/release")
            .join(format!("{}.wasm", p.replace('-', "_")));
        code.push_str(&format!(
            "    ({p:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("stock.rs"), code).unwrap();
}

fn build(root: &Path, target_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--target-dir")
        .arg(target_dir);
    for p in STOCK {
        cmd.args(["-p", p]);
    }
    // Nothing of the outer build's configuration applies to the wasm build.
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(v);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            Err(err
                .lines()
                .filter(|l| l.contains("error"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Err(e) => Err(format!("cannot run cargo: {e}")),
    }
}
