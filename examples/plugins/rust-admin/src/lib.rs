//! `/admin` to the first backend; everything else round robin across the others, one
//! rotation for all worker threads (a shared counter).
use plugboard_sdk::{export_select, shared::Counter, Backends, Request};

fn select(req: &Request, backends: &Backends) -> Option<usize> {
    if req.path()?.starts_with("/admin") {
        return Some(0);
    }
    let rest = backends.available().filter(|b| b.index > 0);
    Counter(0).pick(rest).map(|b| b.index)
}

export_select!(select);
