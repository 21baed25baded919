//! A Luau state a plugin cannot escape from.
//!
//! - **Libraries:** `string`, `table`, `math`, `utf8`, `bit32`, `coroutine` and a trimmed base
//!   library: no `load`, `loadstring`, `dofile`, `loadfile`, `require`, `getfenv`, `setfenv`,
//!   `collectgarbage`, `io`, `os`, `debug`, `string.dump`. Luau has no `__gc` metamethod for
//!   tables, so no code runs outside a call. Then Luau's sandbox mode makes every library and
//!   builtin read-only; the script's globals live in its own table.
//! - **Memory:** the state's allocator refuses to grow past `plugin_memory`.
//! - **Time:** Luau calls an interrupt at every loop iteration, function call and step of a
//!   pattern match (inside `string.find`/`match`/`gmatch`/`gsub`). Ours compares the plugin
//!   clock with the call's deadline; once it has passed, *every* later interrupt raises the
//!   error again, so `pcall`/`xpcall` cannot swallow it: each catch returns into code that
//!   interrupts at its next iteration or call, until the call unwinds. Coroutines share the
//!   interrupt.
//! - **C work between interrupts:** library functions whose cost is not linear in their
//!   input are replaced: plain `string.find` and `string.split` search in linear time
//!   (Luau's own search is quadratic in the worst case), `table.sort` takes at most
//!   [`MAX_SORT`] elements. Every other library call is linear in data the memory cap bounds,
//!   so the deadline overshoots by at most one such call.

use std::cell::Cell;
use std::os::raw::c_int;

use mlua::{ffi, Lua, LuaOptions, StdLib, Table, Value, Variadic};

use crate::plugin::clock;

/// Largest table `table.sort` accepts (its cost is `n log n` with no interrupt inside).
pub const MAX_SORT: usize = 100_000;

thread_local! {
    /// The plugin-clock millisecond at which the call running on this thread must stop
    /// (`u64::MAX`: no call), and whether it has.
    static DEADLINE: Cell<u64> = const { Cell::new(u64::MAX) };
    static EXPIRED: Cell<bool> = const { Cell::new(false) };
}

const TIMEOUT_MESSAGE: &std::ffi::CStr = c"plugin deadline exceeded";

/// Luau's interrupt callback (see the module doc).
unsafe extern "C-unwind" fn interrupt(state: *mut ffi::lua_State, gc: c_int) {
    if gc >= 0 {
        // Garbage-collector steps: raising there is not allowed.
        return;
    }
    let expired = EXPIRED.get() || {
        let past = clock::now_ms() >= DEADLINE.get();
        EXPIRED.set(past);
        past
    };
    if expired {
        // SAFETY: raising from an interrupt at a safepoint is how Luau documents ending a
        // script; the error unwinds through this `C-unwind` function.
        unsafe { ffi::luaL_error(state, TIMEOUT_MESSAGE.as_ptr()) };
    }
}

/// Runs `f` with a deadline of `budget_ms` from now for Lua code on this thread; returns its
/// result and whether the deadline passed.
pub fn with_deadline<R>(budget_ms: u64, f: impl FnOnce() -> R) -> (R, bool) {
    clock::start();
    let outer = (DEADLINE.get(), EXPIRED.get());
    DEADLINE.set(clock::now_ms().saturating_add(budget_ms.max(1)));
    EXPIRED.set(false);
    let r = f();
    let expired = EXPIRED.get();
    DEADLINE.set(outer.0);
    EXPIRED.set(outer.1);
    (r, expired)
}

/// A fresh state with the libraries above, limited to `memory` bytes. Globals the caller
/// installs afterwards (`install`) become read-only when [`seal`] is called.
pub fn new_state(memory: usize) -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::STRING
            | StdLib::TABLE
            | StdLib::MATH
            | StdLib::UTF8
            | StdLib::BIT
            | StdLib::COROUTINE,
        LuaOptions::default(),
    )?;
    let g = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "require",
        "collectgarbage",
        "getfenv",
        "setfenv",
        "gcinfo",
    ] {
        g.raw_set(name, Value::Nil)?;
    }
    let string: Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    replace_string_search(&lua, &string)?;
    let table: Table = g.raw_get("table")?;
    let sort: mlua::Function = table.raw_get("sort")?;
    table.raw_set(
        "sort",
        lua.create_function(move |_, (t, cmp): (Table, Value)| {
            if t.raw_len() > MAX_SORT {
                return Err(mlua::Error::RuntimeError(format!(
                    "table.sort: a plugin may sort at most {MAX_SORT} elements"
                )));
            }
            sort.call::<()>((t, cmp))
        })?,
    )?;
    // SAFETY: sets a callback in the state's global callbacks table, which Luau reads at
    // safepoints; `interrupt` touches only thread-locals and the state it is given.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            (*ffi::lua_callbacks(state)).interrupt = Some(interrupt);
        })?;
    }
    lua.set_memory_limit(memory)?;
    Ok(lua)
}

/// Makes every global installed so far read-only (Luau's sandbox mode); the script's own
/// globals go to a fresh table.
pub fn seal(lua: &Lua) -> mlua::Result<()> {
    lua.sandbox(true)
}

/// `string.find` (plain, or a pattern without special characters) and `string.split` search
/// with `memchr::memmem` (linear time) instead of Luau's quadratic search; pattern searches
/// keep Luau's matcher, which calls the interrupt at each step.
fn replace_string_search(lua: &Lua, string: &Table) -> mlua::Result<()> {
    let find: mlua::Function = string.raw_get("find")?;
    string.raw_set(
        "find",
        lua.create_function(
            move |_, args: (mlua::LuaString, mlua::LuaString, Option<i64>, Option<bool>)| {
                let (s, p, init, plain) = args;
                let (hay, needle) = (s.as_bytes(), p.as_bytes());
                let plain =
                    plain.unwrap_or(false) || !needle.iter().any(|b| b"^$*+?.([%-".contains(b));
                if !plain {
                    return find.call::<Variadic<Value>>((s.clone(), p.clone(), init, false));
                }
                let len = hay.len() as i64;
                let start = match init.unwrap_or(1) {
                    0 => 1,
                    i if i < 0 => (len + i + 1).max(1),
                    i => i,
                };
                if start > len + 1 {
                    return Ok(Variadic::from_iter([Value::Nil]));
                }
                let from = (start - 1) as usize;
                Ok(match memchr::memmem::find(&hay[from..], &needle) {
                    Some(at) => {
                        let first = (from + at + 1) as i64;
                        Variadic::from_iter([
                            Value::Integer(first as _),
                            Value::Integer((first + needle.len() as i64 - 1) as _),
                        ])
                    }
                    None => Variadic::from_iter([Value::Nil]),
                })
            },
        )?,
    )?;
    string.raw_set(
        "split",
        lua.create_function(
            |lua, (s, sep): (mlua::LuaString, Option<mlua::LuaString>)| {
                let hay = s.as_bytes();
                let sep = sep.as_ref().map(|p| p.as_bytes());
                let sep: &[u8] = sep.as_deref().unwrap_or(b",");
                let out = lua.create_table()?;
                let mut n = 0;
                let mut push = |part: &[u8]| -> mlua::Result<()> {
                    n += 1;
                    out.raw_set(n, lua.create_string(part)?)
                };
                if sep.is_empty() {
                    for b in hay.iter() {
                        push(std::slice::from_ref(b))?;
                    }
                } else {
                    let mut last = 0;
                    for at in memchr::memmem::find_iter(&hay, sep) {
                        push(&hay[last..at])?;
                        last = at + sep.len();
                    }
                    push(&hay[last..])?;
                }
                Ok(out)
            },
        )?,
    )?;
    Ok(())
}
