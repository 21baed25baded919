//! L7 mode: the listener that holds idle clients cheaply ([`listener`]) and Plugboard's
//! hooks in pingora's proxy phases ([`phases`]).

mod client_socket;
pub mod listener;
pub mod phases;
pub mod route;
pub mod tls_info;
