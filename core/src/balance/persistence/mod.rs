//! Persistence: the built-in persistence-key hooks and the table that pins keys to backends.
//!
//! The table sits behind [`PersistenceTable`] so that a table shared by several Plugboard
//! instances can replace the in-memory one. It pins a key to a backend's stable identity
//! ([`crate::balance::identity::BackendId`]), never to a position in the backend list.

mod cookie;
mod keys;
mod table;

pub use cookie::InsertedCookie;
pub use keys::{HeaderKey, SourceIp};
pub use table::{idle_cache, MemoryTable, PersistenceTable};

use crate::balance::hooks::PersistenceKey;
use crate::config::PersistenceKeyKind;

/// Builds the built-in key hook of this key kind; `None` for plugins.
pub fn builtin_key(kind: &PersistenceKeyKind) -> Option<Box<dyn PersistenceKey>> {
    Some(match kind {
        PersistenceKeyKind::SourceIp => Box::new(SourceIp),
        PersistenceKeyKind::Header(name) => Box::new(HeaderKey::new(name)),
        PersistenceKeyKind::Cookie(name) => Box::new(InsertedCookie::new(name)),
        PersistenceKeyKind::Plugin(_) => return None,
    })
}
