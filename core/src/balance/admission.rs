//! Admission: one decision, or a wait in the service's queue for a backend with room.
//!
//! [`Balancer::admit`] is what the http and tcp proxies call. Its first step is
//! [`Balancer::decide`], which on the fast path chooses, takes the slot and returns; only a
//! request that found what it may use at its `max_connections` (or its agent's `maxconn`)
//! joins the queue ([`super::queue`]) and decides again each time a slot it could take
//! frees, until it gets one, no backend can take it any more, or `queue_timeout` passes.

use std::time::{Duration, Instant};

use super::balancer::{Balancer, Decision, Keyed, Persisted};
use super::hooks::Request;
use super::pool::ActiveGuard;

/// How a request's or connection's time in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueEnd {
    /// A backend took it.
    Served,
    /// `queue_timeout` passed.
    Timeout,
    /// `queue_max` were already waiting: refused without waiting.
    Full,
    /// While it waited, every backend it could use went away (down, maint, removed).
    NoBackend,
}

impl QueueEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueEnd::Served => "served",
            QueueEnd::Timeout => "timeout",
            QueueEnd::Full => "full",
            QueueEnd::NoBackend => "no_backend",
        }
    }
}

/// A request's or connection's time in the queue.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Queued {
    #[serde(rename = "waited_ms", serialize_with = "millis")]
    pub waited: Duration,
    pub end: QueueEnd,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// What [`Balancer::admit`] made of a request or connection.
#[derive(Debug)]
pub struct Admission {
    /// The backend, its slot held until the guard drops; `None`: refused.
    pub chosen: Option<(usize, ActiveGuard)>,
    pub persisted: Persisted,
    /// It waited (or was refused a place in the queue).
    pub queued: Option<Queued>,
}

impl Balancer {
    /// Chooses a backend and takes its slot, waiting in the queue while every backend the
    /// request may use is at its limit; counts the outcome.
    pub async fn admit(&self, req: &Request<'_>, keyed: &Keyed<'_>, avoid: &[usize]) -> Admission {
        let (first, persisted) = self.decide(req, keyed, avoid);
        let wait_for = match first {
            Decision::Go(i, g) => return self.admitted(req, Some((i, g)), persisted, None),
            Decision::Refuse => return self.admitted(req, None, persisted, None),
            Decision::Wait(w) => w,
        };
        let cfg = self.config();
        if cfg.queue_timeout.is_zero() {
            return self.admitted(req, None, persisted, None);
        }
        let sc = self.service_counters();
        let started = Instant::now();
        let backend = wait_for.map(|i| self.pool.get(i).id);
        let Some(ticket) = self.pool.queue().join(backend, cfg.queue_max) else {
            sc.queue_refused[QUEUE_FULL].inc();
            self.count_persisted(persisted);
            return Admission {
                chosen: None,
                persisted,
                queued: Some(Queued {
                    waited: Duration::ZERO,
                    end: QueueEnd::Full,
                }),
            };
        };
        sc.queued.inc();
        let deadline = tokio::time::Instant::now() + cfg.queue_timeout;
        loop {
            ticket.rearm();
            let (d, persisted) = self.decide(req, keyed, avoid);
            let queued = |end| {
                let waited = started.elapsed();
                sc.queue_wait.observe(waited.as_secs_f64());
                Some(Queued { waited, end })
            };
            match d {
                Decision::Go(i, g) => {
                    ticket.served();
                    let q = queued(QueueEnd::Served);
                    return self.admitted(req, Some((i, g)), persisted, q);
                }
                Decision::Refuse => {
                    let q = queued(QueueEnd::NoBackend);
                    return self.admitted(req, None, persisted, q);
                }
                Decision::Wait(w) => {
                    if ticket.wait_for(w.map(|i| self.pool.get(i).id)) {
                        continue;
                    }
                }
            }
            if tokio::time::timeout_at(deadline, ticket.woken())
                .await
                .is_err()
            {
                sc.queue_refused[QUEUE_TIMEOUT].inc();
                self.count_persisted(persisted);
                return Admission {
                    chosen: None,
                    persisted,
                    queued: queued(QueueEnd::Timeout),
                };
            }
        }
    }

    fn admitted(
        &self,
        req: &Request<'_>,
        chosen: Option<(usize, ActiveGuard)>,
        persisted: Persisted,
        queued: Option<Queued>,
    ) -> Admission {
        self.count(req, chosen.as_ref().map(|c| c.0), persisted);
        Admission {
            chosen,
            persisted,
            queued,
        }
    }
}

/// Indexes of [`crate::observe::metrics::QUEUE_REFUSALS`].
const QUEUE_TIMEOUT: usize = 0;
const QUEUE_FULL: usize = 1;
