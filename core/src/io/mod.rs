//! Where connections come in and how sockets are held: binding and accepting
//! ([`listener`]) within connection limits ([`limits`]), idle clients parked outside any task
//! ([`parking`]), reads that keep tokio's readiness exact ([`socket`]), and giving memory back
//! after a burst ([`memory`]).

pub mod limits;
pub mod listener;
pub mod memory;
pub mod parking;
pub mod socket;
