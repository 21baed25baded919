//! Benchmarks of Plugboard. `benches/hooks.rs`: the cost of one call of each hook, built-in
//! versus WASM versus Lua, with 16 backends (`cargo bench -p plugboard-benches`).
