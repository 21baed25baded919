//! Benchmarks of Plugboard. `benches/hooks.rs`: the cost of one call of each hook, built-in
//! versus WASM versus Lua, with 16 backends (`cargo bench -p plugboard-benches`).
//!
//! The binaries in `src/bin` are the load generators and servers of `benches/run`.

#[path = "src/rdp.rs"]
pub mod rdp;
#[path = "src/tls_client.rs"]
pub mod tls_client;
