//! Health-check plugins, run on threads of their own: a plugin's network helpers block, so
//! they never run on a worker thread.
//!
//! Each binding gets a small pool of check threads, each with its own instance, fed from one
//! queue. A backend that accepts a connection and never answers holds one thread for at most
//! the check's timeout; the other backends' checks go to the other threads. The timeout starts
//! when a thread takes the check, not when it was queued, so time spent waiting never makes a
//! check fail. The network helpers end by the timeout; the plugin's code gets [`AFTER_NET`]
//! more to read what they returned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::binding::HEALTH_HOOK;
use super::binding::{Binding, CallError};
use super::contract::NetScope;
use super::runtime::{HealthCall, Instance};
use crate::balance::hooks::{HealthCheck, HealthReport};
use crate::balance::pool::Pool;

/// Most check threads per binding.
pub const MAX_CHECK_THREADS: usize = 8;

/// Time a check's code gets after its network helpers' deadline (the check's timeout) to make
/// sense of what they returned.
pub const AFTER_NET: Duration = Duration::from_millis(100);

/// A check waiting for a thread.
struct Job {
    pool: Arc<Pool>,
    backend: usize,
    target: SocketAddr,
    budget: Duration,
    reply: tokio::sync::oneshot::Sender<Result<HealthReport, CallError>>,
}

/// health-check hook backed by a plugin.
pub struct PluginHealth {
    binding: Arc<Binding>,
    jobs: crossbeam_channel::Sender<Job>,
}

impl PluginHealth {
    /// Starts `threads` check threads (1 to [`MAX_CHECK_THREADS`]); they end when this is
    /// dropped.
    pub fn new(binding: Arc<Binding>, threads: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for n in 0..threads.clamp(1, MAX_CHECK_THREADS) {
            let (b, rx) = (binding.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("check-{}-{n}", binding.slot.name))
                .spawn(move || check_thread(b, rx))
                .expect("spawn a plugin check thread");
        }
        PluginHealth { binding, jobs: tx }
    }
}

fn check_thread(b: Arc<Binding>, jobs: crossbeam_channel::Receiver<Job>) {
    let mut inst: Option<(u64, Box<dyn Instance>)> = None;
    for job in jobs {
        let r = run(&b, &mut inst, &job);
        let _ = job.reply.send(r);
    }
}

fn run(
    b: &Binding,
    inst: &mut Option<(u64, Box<dyn Instance>)>,
    job: &Job,
) -> Result<HealthReport, CallError> {
    if !b.breaker.allows() {
        return Err(CallError::Skipped("circuit open"));
    }
    let generation = b.slot.generation();
    if inst.as_ref().map(|(g, _)| *g) != Some(generation) {
        *inst = Some(b.instantiate().map_err(CallError::Fault)?);
    }
    let (_, i) = inst.as_mut().expect("made above");
    let call = HealthCall {
        pool: &job.pool,
        backend: job.backend,
        target: job.target,
        budget: job.budget + AFTER_NET,
        net: NetScope {
            target: job.target,
            deadline: Instant::now() + job.budget,
        },
    };
    let started = Instant::now();
    let r = i.health(&call);
    b.counted(HEALTH_HOOK, started.elapsed());
    match r {
        Ok(r) => {
            b.breaker.success();
            Ok(r)
        }
        Err(f) => {
            *inst = None;
            Err(CallError::Fault(f))
        }
    }
}

#[async_trait]
impl HealthCheck for PluginHealth {
    async fn check(
        &self,
        pool: &Arc<Pool>,
        backend: usize,
        target: SocketAddr,
        timeout: Duration,
    ) -> Option<HealthReport> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            pool: pool.clone(),
            backend,
            target,
            budget: timeout,
            reply,
        };
        self.jobs.send(job).ok()?;
        match rx.await.ok()? {
            Ok(r) => Some(r),
            Err(e) => {
                self.binding.failed("health-check", &e);
                self.binding.rejects().then_some(HealthReport::DOWN)
            }
        }
    }
}
