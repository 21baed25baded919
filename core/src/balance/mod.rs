//! Choosing a backend: the three hook traits, the pool of backends with their live state, the
//! built-in schedulers and persistence keys, and the [`balancer::Balancer`] that ties them
//! together for one service. Nothing here knows whether a hook is built in or a plugin: hooks
//! a configuration names as `plugin:<name>` come from a [`balancer::HookSource`].

pub mod admission;
pub mod agent;
pub mod balancer;
pub mod follow;
pub mod hooks;
pub mod identity;
pub mod persistence;
pub mod pool;
pub mod queue;
pub mod scheduler;
