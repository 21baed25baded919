//! The request-path hook traits implemented by a plugin binding, so that the balancer cannot
//! tell a plugin from a built-in. A failed or skipped call becomes what the service's
//! `on_plugin_error` policy says: the fallback (no opinion, no key) or a refusal.

use std::sync::Arc;

use pingora::http::ResponseHeader;

use super::binding::{Binding, CallError, KEY_HOOK, SELECT_HOOK};
use super::runtime::{Fault, FaultKind, SelectCall, HOOK_RESPONSE};
use crate::balance::hooks::{KeyOutcome, PersistenceKey, Pick, Request, SelectServer};
use crate::balance::pool::Pool;

/// select-server hook backed by a plugin.
pub struct PluginSelect(pub Arc<Binding>);

impl SelectServer for PluginSelect {
    fn select(&self, req: &Request<'_>, pool: &Pool, avoid: &[usize]) -> Pick {
        let call = SelectCall { req, pool, avoid };
        let r = self.0.call(SELECT_HOOK, |i| {
            i.select(&call).and_then(|p| match p {
                Some(i) if i >= pool.len() => Err(Fault::new(
                    FaultKind::Invalid,
                    format!(
                        "returned backend {i}, but the pool has {} (numbered from 0)",
                        pool.len()
                    ),
                )),
                p => Ok(p),
            })
        });
        match r {
            Ok(Some(i)) if pool.get(i).available() && !avoid.contains(&i) => Pick::Backend(i),
            // No opinion, or a backend that cannot take this request (a plugin sees the same
            // availability as the core, but a backend may change state during the call): the
            // fallback scheduler decides.
            Ok(_) => Pick::NoOpinion,
            Err(e) => {
                self.0.failed("select-server", &e);
                if self.0.rejects() {
                    Pick::Reject
                } else {
                    Pick::NoOpinion
                }
            }
        }
    }
}

/// persistence-key hook (and its response step) backed by a plugin.
pub struct PluginKey {
    pub binding: Arc<Binding>,
    /// tcp mode: the plugin reads the client's first bytes.
    pub tcp: bool,
}

impl PluginKey {
    fn failed<'r>(&self, e: &CallError) -> KeyOutcome<'r> {
        self.binding.failed("persistence-key", e);
        if self.binding.rejects() {
            KeyOutcome::Reject
        } else {
            KeyOutcome::None
        }
    }
}

impl PersistenceKey for PluginKey {
    fn wants_payload(&self) -> bool {
        self.tcp
    }

    fn key<'r>(&self, req: &Request<'r>, pool: &Pool) -> KeyOutcome<'r> {
        let r = self.binding.call(KEY_HOOK, |i| {
            i.key(req, pool).and_then(|o| match o {
                KeyOutcome::Backend(i) if i >= pool.len() => Err(Fault::new(
                    FaultKind::Invalid,
                    format!(
                        "named backend {i}, but the pool has {} (numbered from 0)",
                        pool.len()
                    ),
                )),
                o => Ok(o),
            })
        });
        match r {
            Ok(o) => o,
            Err(e) => self.failed(&e),
        }
    }

    fn on_response(
        &self,
        req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        pool: &Pool,
        resp: &mut ResponseHeader,
    ) {
        if self.binding.slot.hooks() & HOOK_RESPONSE == 0 {
            return;
        }
        if let Err(e) = self
            .binding
            .call(KEY_HOOK, |i| i.on_response(req, named, served, pool, resp))
        {
            self.binding.failed("response step", &e);
        }
    }
}
