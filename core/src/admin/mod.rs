//! The admin API: what an operator changes while the proxy runs (backend state and weight),
//! the listener that serves it, and the state file that keeps the changes across restarts.
//! `plugboard ctl` (in `cli/ctl.rs`) is its client.

pub mod api;
pub mod control;
pub mod state_file;
pub mod view;
