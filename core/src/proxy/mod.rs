//! Moving bytes between clients and backends: L7 ([`http`], pingora's HTTP/1 proxy behind our
//! own accept loop) and L4 ([`tcp`], inspection and a relay).

pub mod http;
pub mod tcp;
