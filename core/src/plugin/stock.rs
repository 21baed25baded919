//! The stock plugins (`plugins/*`), built to WebAssembly by `build.rs` and embedded, so that
//! `plugin:rdp-cookie`, `plugin:mcx-affinity` and `plugin:agent-load` work with no file. A file
//! of the same name in `plugins_dir` takes precedence. A build that cannot make them fails.

include!(concat!(env!("OUT_DIR"), "/stock.rs"));

/// The embedded module of stock plugin `name`, if there is one.
pub fn get(name: &str) -> Option<&'static [u8]> {
    STOCK.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Names of the stock plugins.
pub fn names() -> impl Iterator<Item = &'static str> {
    STOCK.iter().map(|(n, _)| *n)
}
