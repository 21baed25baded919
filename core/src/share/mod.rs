//! Persistence shared by several Plugboard instances through Redis (`[proxy] redis` and
//! `persistence = { .., shared = true }`).
//!
//! A request never waits on Redis: lookups read the local table ([`SharedTable`]); a new pin
//! goes into the local table and a bounded queue, and one task per process ([`Link`]) writes
//! the queue to Redis and publishes it, applies the pins other instances publish, loads the
//! pins already in Redis when it (re)connects, and refreshes the Redis expiry of the pins this
//! instance used. While Redis is slow or down, instances keep balancing with their local
//! tables; the link logs once, shows `plugboard_redis_up 0`, and catches up when Redis is back.

mod link;
mod table;
mod wire;

pub use link::{Link, LinkService};
pub use table::SharedTable;
