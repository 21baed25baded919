//! The `shared` table: a Lua plugin's view of its shared data ([`crate::plugin::shared`]),
//! the same store and limits as the WASM `shared_*` host functions.
//!
//! - `shared.counter_add(n, delta)`: adds `delta` (default 1) to counter `n` (0-63, an id,
//!   the same counter as the ABI's) and returns its previous value.
//! - `shared.get(key)`: the value (a string), or `nil`.
//! - `shared.set(key, value)`: sets it (`value = nil` removes it); `true`, or `false, reason`
//!   when a size or the entry count is over its limit.
//! - `shared.cas(key, expected, value)`: sets (or removes) only if the current value is
//!   `expected` (`nil`: absent); `true` if it changed, else `false` (and a reason when refused).

use std::sync::Arc;

use mlua::{Lua, LuaString, Table};

use crate::plugin::shared::{Refused, SharedData, COUNTERS};

fn answer(r: Result<bool, Refused>) -> (bool, Option<&'static str>) {
    match r {
        Ok(changed) => (changed, None),
        Err(why) => (false, Some(why.as_str())),
    }
}

pub fn table(lua: &Lua, shared: Arc<SharedData>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.raw_set(
        "counter_add",
        lua.create_function(move |_, (n, delta): (i64, Option<i64>)| {
            s.counter_add(n, delta.unwrap_or(1)).ok_or_else(|| {
                mlua::Error::RuntimeError(format!(
                    "shared.counter_add: counter {n} is not 0-{}",
                    COUNTERS - 1
                ))
            })
        })?,
    )?;
    let s = shared.clone();
    t.raw_set(
        "get",
        lua.create_function(move |lua, key: LuaString| {
            s.get(&key.as_bytes(), |v| {
                v.map(|v| lua.create_string(v)).transpose()
            })
        })?,
    )?;
    let s = shared.clone();
    t.raw_set(
        "set",
        lua.create_function(move |_, (key, value): (LuaString, Option<LuaString>)| {
            let value = value.as_ref().map(|v| v.as_bytes());
            Ok(answer(
                s.set(&key.as_bytes(), value.as_deref()).map(|_| true),
            ))
        })?,
    )?;
    t.raw_set(
        "cas",
        lua.create_function(
            move |_, (key, expected, value): (LuaString, Option<LuaString>, Option<LuaString>)| {
                let expected = expected.as_ref().map(|v| v.as_bytes());
                let value = value.as_ref().map(|v| v.as_bytes());
                Ok(answer(shared.compare_and_set(
                    &key.as_bytes(),
                    Some(expected.as_deref()),
                    value.as_deref(),
                )))
            },
        )?,
    )?;
    t.set_readonly(true);
    Ok(t)
}
