//! The host functions of the ABI (`sdk/ABI.md`), module `"plugboard"`. Every pointer and
//! length a guest passes is checked against its memory; a bad one gets `-2`, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::instance::State;
use crate::balance::hooks::Request;
use crate::plugin::contract;

/// Guest memory and host state of the calling instance.
pub(super) fn split<'a>(
    caller: &'a mut Caller<'_, State>,
) -> Option<(&'a mut [u8], &'a mut State)> {
    let mem = caller.data().memory()?;
    Some(mem.data_and_store_mut(caller))
}

pub(super) fn slice(mem: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    mem.get(p..p.checked_add(l)?)
}

/// Copies `src` into the guest buffer (as much as fits); returns its full length, or -2 when
/// the buffer is out of bounds.
pub(super) fn write_out(mem: &mut [u8], buf: i32, cap: i32, src: &[u8]) -> i32 {
    let (p, c) = (buf as u32 as usize, cap as u32 as usize);
    let Some(dst) = p.checked_add(c).and_then(|end| mem.get_mut(p..end)) else {
        return -2;
    };
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    src.len().min(i32::MAX as usize) as i32
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
}

/// Shared body of `request_header` and `request_cookie`: a value looked up by a name the
/// guest passes, copied into its buffer.
fn named_value(
    c: &mut Caller<'_, State>,
    np: i32,
    nl: i32,
    buf: i32,
    cap: i32,
    lookup: impl for<'r> Fn(&Request<'r>, &str) -> Option<&'r [u8]>,
) -> i32 {
    let Some((mem, st)) = split(c) else {
        return -2;
    };
    let Some(req) = st.call.req() else { return -1 };
    let Some(name) = slice(mem, np, nl).and_then(|n| std::str::from_utf8(n).ok()) else {
        return -2;
    };
    match lookup(req, name) {
        Some(v) => write_out(mem, buf, cap, v),
        None => -1,
    }
}

/// Shared body of `backend_address`, `backend_name` and `backend_cookie_id`.
fn backend_text(
    c: &mut Caller<'_, State>,
    i: i32,
    buf: i32,
    cap: i32,
    text: impl Fn(&crate::balance::pool::Backend, &mut Vec<u8>),
) -> i32 {
    let Some((mem, st)) = split(c) else {
        return -2;
    };
    let Some(b) = st
        .call
        .pool()
        .and_then(|p| usize::try_from(i).ok().and_then(|i| p.backends().get(i)))
    else {
        return -1;
    };
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        text(b, &mut s);
        write_out(mem, buf, cap, &s)
    })
}

/// The address and timeout a network helper may use, or `None` (and a log line saying why).
fn admitted(st: &State, addr: &[u8], timeout_ms: i32) -> Result<(SocketAddr, Duration), i32> {
    let Some(scope) = st.call.net else {
        return Err(-3);
    };
    let Some(addr) = std::str::from_utf8(addr)
        .ok()
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        return Err(-2);
    };
    match scope.admit(addr, Duration::from_millis(timeout_ms.max(1) as u64)) {
        Ok(t) => Ok((addr, t)),
        Err(why) => {
            st.log.line(1, &format!("network call refused: {why}"));
            Err(-3)
        }
    }
}

pub(super) fn define_imports(l: &mut Linker<State>) -> wasmtime::Result<()> {
    const M: &str = "plugboard";
    l.func_wrap(
        M,
        "request_get",
        |mut c: Caller<'_, State>, f: i32, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(req) = st.call.req() else { return -1 };
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if contract::request_field(req, f, &mut s) {
                    write_out(mem, buf, cap, &s)
                } else {
                    -1
                }
            })
        },
    )?;
    l.func_wrap(
        M,
        "request_header",
        |mut c: Caller<'_, State>, np: i32, nl: i32, buf: i32, cap: i32| -> i32 {
            named_value(&mut c, np, nl, buf, cap, |req, name| req.header(name))
        },
    )?;
    l.func_wrap(
        M,
        "request_cookie",
        |mut c: Caller<'_, State>, np: i32, nl: i32, buf: i32, cap: i32| -> i32 {
            named_value(&mut c, np, nl, buf, cap, |req, name| req.cookie(name))
        },
    )?;
    l.func_wrap(M, "backend_count", |c: Caller<'_, State>| -> i32 {
        c.data().call.pool().map_or(0, |p| p.len() as i32)
    })?;
    l.func_wrap(
        M,
        "backend_get",
        |c: Caller<'_, State>, i: i32, prop: i32| -> i64 {
            let call = &c.data().call;
            match call.pool() {
                Some(pool) => contract::backend_prop(pool, call.avoid(), i as i64, prop),
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "backend_address",
        |mut c: Caller<'_, State>, i: i32, buf: i32, cap: i32| -> i32 {
            backend_text(&mut c, i, buf, cap, |b, out| {
                use std::io::Write;
                let _ = write!(out, "{}", b.address);
            })
        },
    )?;
    l.func_wrap(
        M,
        "backend_name",
        |mut c: Caller<'_, State>, i: i32, buf: i32, cap: i32| -> i32 {
            backend_text(&mut c, i, buf, cap, |b, out| {
                out.extend_from_slice(b.name.as_bytes())
            })
        },
    )?;
    l.func_wrap(
        M,
        "backend_cookie_id",
        |mut c: Caller<'_, State>, i: i32, buf: i32, cap: i32| -> i32 {
            backend_text(&mut c, i, buf, cap, |b, out| {
                out.extend_from_slice(&b.cookie_id)
            })
        },
    )?;
    l.func_wrap(
        M,
        "set_key",
        |mut c: Caller<'_, State>, p: i32, len: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(k) = slice(mem, p, len) else {
                return -2;
            };
            st.key.clear();
            st.key.extend_from_slice(k);
            st.key_set = true;
            0
        },
    )?;
    l.func_wrap(
        M,
        "set_backend",
        |mut c: Caller<'_, State>, i: i32| -> i32 {
            c.data_mut().backend = Some(i);
            0
        },
    )?;
    l.func_wrap(
        M,
        "set_load",
        |mut c: Caller<'_, State>, load: i32| -> i32 {
            if !(-1..=100).contains(&load) {
                return -2;
            }
            let d = c.data_mut();
            let (Some(pool), Some(i)) = (d.call.pool(), d.call.backend) else {
                return -3;
            };
            let load = u8::try_from(load).ok();
            pool.set_load(i, load);
            d.load = load;
            0
        },
    )?;
    l.func_wrap(
        M,
        "set_agent",
        |c: Caller<'_, State>, prop: i32, value: i64| -> i32 {
            let d = c.data();
            let (Some(pool), Some(i)) = (d.call.pool(), d.call.backend) else {
                return -3;
            };
            match contract::agent_update(prop, value) {
                Some(u) if pool.set_agent(i, u) => 0,
                _ => -2,
            }
        },
    )?;
    l.func_wrap(
        M,
        "response_add_header",
        |mut c: Caller<'_, State>, np: i32, nl: i32, vp: i32, vl: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let Some(resp) = st.call.resp else { return -1 };
            let (Some(n), Some(v)) = (slice(mem, np, nl), slice(mem, vp, vl)) else {
                return -2;
            };
            let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n),
                http::HeaderValue::from_bytes(v),
            ) else {
                return -3;
            };
            // SAFETY: as for `Call::req`.
            match unsafe { &mut *resp }.append_header(n, v) {
                Ok(_) => 0,
                Err(_) => -3,
            }
        },
    )?;
    l.func_wrap(
        M,
        "log",
        |mut c: Caller<'_, State>, level: i32, p: i32, len: i32| {
            let Some((mem, st)) = split(&mut c) else {
                return;
            };
            let Some(m) = slice(mem, p, len) else { return };
            let m = String::from_utf8_lossy(m);
            if level == 0 {
                st.last_error = Some(m.chars().take(500).collect());
            }
            st.log.line(level, &m);
        },
    )?;
    l.func_wrap(
        M,
        "check_target",
        |mut c: Caller<'_, State>, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            match st.call.net {
                Some(s) => write_out(mem, buf, cap, s.target.to_string().as_bytes()),
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "tcp_exchange",
        |mut c: Caller<'_, State>,
         ap: i32,
         al: i32,
         sp: i32,
         sl: i32,
         want: i32,
         timeout_ms: i32|
         -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let (Some(a), Some(send)) = (slice(mem, ap, al), slice(mem, sp, sl)) else {
                return -2;
            };
            let (addr, timeout) = match admitted(st, a, timeout_ms) {
                Ok(x) => x,
                Err(code) => return code,
            };
            match crate::plugin::net::tcp_exchange(addr, send, want.max(0) as usize, timeout) {
                Some(r) => {
                    st.last_response = r;
                    st.last_response.len() as i32
                }
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "http_get",
        |mut c: Caller<'_, State>, ap: i32, al: i32, pp: i32, pl: i32, timeout_ms: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            let (Some(a), Some(p)) = (slice(mem, ap, al), slice(mem, pp, pl)) else {
                return -2;
            };
            let Some(path) = std::str::from_utf8(p)
                .ok()
                .filter(|p| crate::plugin::net::valid_path(p))
            else {
                return -2;
            };
            let (addr, timeout) = match admitted(st, a, timeout_ms) {
                Ok(x) => x,
                Err(code) => return code,
            };
            match crate::plugin::net::http_get(addr, path, timeout) {
                Some((status, body)) => {
                    st.last_response = body;
                    status as i32
                }
                None => -1,
            }
        },
    )?;
    l.func_wrap(
        M,
        "last_response",
        |mut c: Caller<'_, State>, buf: i32, cap: i32| -> i32 {
            let Some((mem, st)) = split(&mut c) else {
                return -2;
            };
            write_out(mem, buf, cap, &st.last_response)
        },
    )?;
    super::shared::define_imports(l)
}
