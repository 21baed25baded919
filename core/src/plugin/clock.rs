//! A coarse clock for plugin deadlines, advanced by one thread every millisecond.
//!
//! Checking a deadline must cost next to nothing, because a Lua plugin checks it at every loop
//! iteration and function call: reading an atomic costs a nanosecond where `Instant::now()`
//! costs twenty. The same tick advances the epoch of every wasmtime engine registered here,
//! which is how WASM calls meet their deadlines. Precision is one tick (1 ms).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One tick.
pub const TICK: Duration = Duration::from_millis(1);

static NOW_MS: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);
static ENGINES: Mutex<Vec<wasmtime::Engine>> = Mutex::new(Vec::new());

/// Milliseconds since the clock started (0 before).
#[inline]
pub fn now_ms() -> u64 {
    NOW_MS.load(Relaxed)
}

/// Starts the ticking thread, once per process.
pub fn start() {
    if STARTED.swap(true, Relaxed) {
        return;
    }
    let epoch = Instant::now();
    std::thread::Builder::new()
        .name("plugin-clock".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            NOW_MS.store(epoch.elapsed().as_millis() as u64, Relaxed);
            if let Ok(engines) = ENGINES.lock() {
                for e in engines.iter() {
                    e.increment_epoch();
                }
            }
        })
        .expect("spawn the plugin clock thread");
}

/// Advances `engine`'s epoch on every tick from now on (and starts the clock).
pub fn drive(engine: &wasmtime::Engine) {
    if let Ok(mut engines) = ENGINES.lock() {
        engines.push(engine.clone());
    }
    start();
}
