//! Moving bytes between clients and backends: L7 ([`http`], pingora's HTTP/1 proxy behind our
//! own accept loop), L4 ([`tcp`], inspection and a relay) and datagrams ([`udp`], flows).

pub mod http;
pub mod tcp;
pub mod udp;
