//! The `shared_*` host functions: a guest's view of its plugin's shared data
//! ([`crate::plugin::shared`]). Every pointer and length is checked against guest memory
//! (`-2`); a length of `-1` means "no value" where the ABI says so; a key or value over its
//! limit, or a new key in a full store, is `-4`.

use wasmtime::{Caller, Linker};

use super::abi::{slice, split, write_out};
use super::instance::State;
use crate::plugin::shared::Refused;

/// Over a limit (size or entry count).
const LIMIT: i32 = -4;

/// An optional value: `len == -1` is `None`; any other length must lie inside guest memory.
fn optional(mem: &[u8], ptr: i32, len: i32) -> Result<Option<&[u8]>, i32> {
    match len {
        -1 => Ok(None),
        _ => slice(mem, ptr, len).map(Some).ok_or(-2),
    }
}

fn refused(_: Refused) -> i32 {
    LIMIT
}

pub(super) fn define_imports(l: &mut Linker<State>) -> wasmtime::Result<()> {
    const M: &str = "plugboard";
    l.func_wrap(
        M,
        "shared_counter_add",
        |c: Caller<'_, State>, n: i32, delta: i64| -> i64 {
            c.data()
                .shared
                .counter_add(n as i64, delta)
                .unwrap_or(i64::MIN)
        },
    )?;
    l.func_wrap(
        M,
        "shared_get",
        |mut c: Caller<'_, State>, kp: i32, kl: i32, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(key) = slice(mem, kp, kl) else {
                return -2;
            };
            if key.len() > crate::plugin::shared::MAX_KEY {
                return LIMIT;
            }
            // The key is copied out first: guest memory is written while the shard is locked.
            let mut k = [0u8; crate::plugin::shared::MAX_KEY];
            k[..key.len()].copy_from_slice(key);
            let key = &k[..key.len()];
            st.shared.get(key, |v| match v {
                Some(v) => write_out(mem, buf, cap, v),
                None => -1,
            })
        },
    )?;
    l.func_wrap(
        M,
        "shared_set",
        |mut c: Caller<'_, State>, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let (Some(key), Ok(value)) = (slice(mem, kp, kl), optional(mem, vp, vl)) else {
                return -2;
            };
            st.shared.set(key, value).map_or_else(refused, |_| 0)
        },
    )?;
    l.func_wrap(
        M,
        "shared_cas",
        |mut c: Caller<'_, State>, kp: i32, kl: i32, ep: i32, el: i32, vp: i32, vl: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let (Some(key), Ok(expected), Ok(value)) = (
                slice(mem, kp, kl),
                optional(mem, ep, el),
                optional(mem, vp, vl),
            ) else {
                return -2;
            };
            st.shared
                .compare_and_set(key, Some(expected), value)
                .map_or_else(refused, i32::from)
        },
    )?;
    Ok(())
}
