//! Builds the stock plugins (`plugins/*`, ordinary plugboard-sdk crates) to WebAssembly and
//! embeds them in the binary, so that `plugin:rdp-cookie` and friends need no file.
//!
//! The nested cargo uses its own target directory, so it never waits on the outer build's
//! lock. Without the wasm32 target the build still succeeds: the stock plugins are then
//! missing from the binary and `plugboard check` says so for each reference.

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

    let built = build(&root, &out.join("stock-target"));
    let mut code = String::from("/// Stock plugins embedded at build time: (name, wasm bytes; empty if not built).\npub static STOCK: &[(&str, &[u8])] = &[\n");
    for p in STOCK {
        let wasm = out
            .join("stock-target/wasm32-unknown-unknown/release")
            .join(format!("{}.wasm", p.replace('-', "_")));
        if built && wasm.is_file() {
            code.push_str(&format!(
                "    ({p:?}, include_bytes!({:?})),\n",
                wasm.display().to_string()
            ));
        } else {
            code.push_str(&format!("    ({p:?}, &[]),\n"));
        }
    }
    code.push_str("];\n");
    std::fs::write(out.join("stock.rs"), code).unwrap();
}

fn build(root: &Path, target_dir: &Path) -> bool {
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
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err
                .lines()
                .filter(|l| l.contains("error"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            println!("cargo:warning=stock plugins not built (is the wasm32-unknown-unknown target installed?): {last}");
            false
        }
        Err(e) => {
            println!("cargo:warning=stock plugins not built: cannot run cargo: {e}");
            false
        }
    }
}
