//! Gives memory freed by a burst of connections back to the operating system.
//!
//! The `plugboard` binary allocates with mimalloc, which returns a freed page to the system
//! lazily: during a later allocation on the same thread. A worker that falls quiet after a burst
//! (10,000 clients connect, then all go idle and are parked) would hold the freed memory
//! indefinitely. The parking lot calls [`release_free_memory`] shortly after parking a batch.
//! It runs on the lot's thread: with several worker threads, pages freed by the others are
//! returned when those threads next allocate, as before.

/// Returns this thread's free mimalloc pages and the process's purgeable arena memory to the
/// system (`force`: without it mimalloc keeps pages freed within its purge delay, which is all
/// of them right after a burst). Costs a walk over the thread's heap pages and page faults for
/// the next allocations, so call it at most a few times a second.
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
