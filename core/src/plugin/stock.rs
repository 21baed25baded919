//! The stock plugins (`plugins/*`), built to WebAssembly by `build.rs` and embedded, so that
//! `plugin:rdp-cookie`, `plugin:mcx-affinity` and `plugin:agent-load` work with no file. A file
//! of the same name in `plugins_dir` takes precedence.

include!(concat!(env!("OUT_DIR"), "/stock.rs"));

/// The embedded module of stock plugin `name`: `None` if there is no such stock plugin,
/// `Some(Err)` if this binary was built without it (no wasm32 target at build time).
pub fn get(name: &str) -> Option<Result<&'static [u8], String>> {
    let (_, bytes) = STOCK.iter().find(|(n, _)| *n == name)?;
    Some(if bytes.is_empty() {
        Err(format!(
            "stock plugin {name} is not in this binary: it was built without the \
             wasm32-unknown-unknown Rust target (rustup target add wasm32-unknown-unknown, then rebuild)"
        ))
    } else {
        Ok(bytes)
    })
}

/// Names of the stock plugins.
pub fn names() -> impl Iterator<Item = &'static str> {
    STOCK.iter().map(|(n, _)| *n)
}
