//! Moving bytes between clients and backends: L7 ([`http`], pingora's HTTP/1 proxy behind our
//! own accept loop), L4 ([`tcp`], inspection and a relay) and datagrams ([`udp`], flows);
//! [`connect`] opens backend connections for the first two.

pub mod connect;
pub mod http;
pub mod tcp;
pub mod udp;
