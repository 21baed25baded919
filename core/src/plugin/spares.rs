//! Instances made ahead of time, off the request path.
//!
//! Making an instance can take milliseconds (a WASM instantiation, a Lua script's top level),
//! so a worker thread never makes one: it takes a spare from its binding's queue when it has
//! none (first call, after a fault, after a reload), and the factory thread refills the queues.
//! The factory also drops the instances workers give up, for the same reason.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use super::binding::Binding;
use super::runtime::Instance;

/// How often the factory looks at every queue even when nobody asked.
const SWEEP: Duration = Duration::from_secs(1);

/// One binding's ready instances, each with the generation of the version it runs.
pub struct Spares {
    queue: ArrayQueue<(u64, Box<dyn Instance>)>,
}

impl Spares {
    pub fn new(capacity: usize) -> Spares {
        Spares {
            queue: ArrayQueue::new(capacity.max(1)),
        }
    }

    /// A ready instance of generation `generation`; older ones found on the way are returned
    /// for disposal.
    pub fn take(&self, generation: u64, factory: &Factory) -> Option<Box<dyn Instance>> {
        while let Some((g, inst)) = self.queue.pop() {
            if g == generation {
                return Some(inst);
            }
            factory.dispose(inst);
        }
        None
    }

    /// Tops the queue up with instances of `generation` made by `make`; stops at the first
    /// failure. Returns that failure.
    pub fn fill<E>(
        &self,
        generation: u64,
        mut make: impl FnMut() -> Result<Box<dyn Instance>, E>,
    ) -> Result<(), E> {
        // Drop spares of an older version (keep the current ones).
        for _ in 0..self.queue.len() {
            match self.queue.pop() {
                Some((g, inst)) if g == generation => {
                    let _ = self.queue.push((g, inst));
                }
                _ => {}
            }
        }
        while !self.queue.is_full() {
            let inst = make()?;
            if self.queue.push((generation, inst)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

enum Job {
    Refill,
    Dispose(Box<dyn Instance>),
}

/// The thread that makes and drops instances for every binding of a registry.
pub struct Factory {
    tx: SyncSender<Job>,
    bindings: Arc<Mutex<Vec<Weak<Binding>>>>,
}

impl Factory {
    pub fn start() -> Arc<Factory> {
        let (tx, rx) = mpsc::sync_channel(256);
        let bindings = Arc::new(Mutex::new(Vec::new()));
        let list = bindings.clone();
        std::thread::Builder::new()
            .name("plugin-factory".into())
            .spawn(move || run(rx, list))
            .expect("spawn the plugin factory thread");
        Arc::new(Factory { tx, bindings })
    }

    /// Keeps `b`'s spares filled from now on.
    pub fn register(&self, b: &Arc<Binding>) {
        if let Ok(mut l) = self.bindings.lock() {
            l.push(Arc::downgrade(b));
        }
    }

    /// Asks for the queues to be refilled soon (never blocks).
    pub fn poke(&self) {
        let _ = self.tx.try_send(Job::Refill);
    }

    /// Drops `inst` on the factory thread (or here, if its queue is full).
    pub fn dispose(&self, inst: Box<dyn Instance>) {
        if let Err(TrySendError::Full(Job::Dispose(inst))) = self.tx.try_send(Job::Dispose(inst)) {
            drop(inst);
        }
    }
}

fn run(rx: Receiver<Job>, bindings: Arc<Mutex<Vec<Weak<Binding>>>>) {
    loop {
        match rx.recv_timeout(SWEEP) {
            Ok(Job::Dispose(inst)) => {
                drop(inst);
                continue;
            }
            Ok(Job::Refill) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Several pokes in a row make one sweep.
        while let Ok(job) = rx.try_recv() {
            drop(job);
        }
        let live: Vec<Arc<Binding>> = match bindings.lock() {
            Ok(mut l) => {
                l.retain(|w| w.strong_count() > 0);
                l.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        for b in live {
            b.refill();
        }
    }
}
