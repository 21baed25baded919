//! The `plugboard` binary; the command line lives in [`plugboard::cli`].

use std::process::ExitCode;

/// mimalloc: fewer CPU cycles per request and less memory per idle connection than glibc's
/// allocator under pingora's many small per-request allocations (measured by benches/run).
/// Built with `no_thp`: otherwise mimalloc asks for transparent huge pages and its first arena
/// alone makes 64 MiB resident (93 -> 28 MiB at start, no throughput change measured).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    plugboard::cli::main()
}
