//! A service's wait queue: requests (http) and connections (tcp) that found every backend
//! they may use at its `max_connections` wait here, first come first served, until a slot
//! frees or `queue_timeout` passes (HAProxy's server `maxconn` and its queue).
//!
//! The queue costs nothing while it is empty: a backend's in-flight count is taken with one
//! compare-and-swap against its limit ([`crate::balance::pool::Pool::try_acquire`]) and
//! given back with one subtraction followed by a load of [`WaitQueue::waiting`]; only when
//! that load sees waiters is the lock taken. A waiter does not receive a slot: it is woken and
//! decides again (persistence, scheduler, limit), so everything that decides for a new client
//! decides for it too, and the slot is its only if that decision takes it.
//!
//! No wake-up is lost: a waiter counts itself in `waiting` before it decides again, and a
//! release subtracts from the backend's count before it reads `waiting` (both sequentially
//! consistent), so either the waiter sees the free slot or the release sees the waiter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::identity::BackendId;

/// The waiters of one service, shared by every version of its pool.
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Waiters now; read lock-free by every release.
    waiting: AtomicUsize,
    list: Mutex<VecDeque<Arc<Waiter>>>,
}

#[derive(Debug)]
struct Waiter {
    /// Persistence sends it to the backend `backend` holds (a [`BackendId`]); else any
    /// backend will do. Changed by [`Ticket::wait_for`] when a new decision names another.
    pinned: AtomicBool,
    backend: AtomicU64,
    /// Told to decide again and has not yet; a release skips it and wakes the next one.
    woken: AtomicBool,
    notify: Notify,
}

/// A place in the queue; leaving it (dropped) removes the waiter.
#[derive(Debug)]
pub struct Ticket<'q> {
    queue: &'q WaitQueue,
    waiter: Arc<Waiter>,
    served: bool,
}

impl WaitQueue {
    /// Requests or connections waiting now.
    #[inline]
    pub fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Waiter>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the end of the queue, waiting for `backend` or, without one, for any; `None`
    /// when `max` are already waiting.
    pub fn join(&self, backend: Option<BackendId>, max: usize) -> Option<Ticket<'_>> {
        let waiter = Arc::new(Waiter {
            pinned: AtomicBool::new(backend.is_some()),
            backend: AtomicU64::new(backend.map_or(0, |b| b.0)),
            woken: AtomicBool::new(false),
            notify: Notify::new(),
        });
        {
            let mut list = self.lock();
            if list.len() >= max {
                return None;
            }
            list.push_back(waiter.clone());
            self.waiting.fetch_add(1, SeqCst);
        }
        Some(Ticket {
            queue: self,
            waiter,
            served: false,
        })
    }

    /// A slot of backend `id` freed: wakes the first waiter that may take it (one for it,
    /// or, when `open` (the backend takes new clients), one for any backend).
    pub(super) fn released(&self, id: BackendId, open: bool) {
        let list = self.lock();
        let first = list.iter().find(|w| {
            !w.woken.load(SeqCst)
                && match w.pinned.load(SeqCst) {
                    true => w.backend.load(SeqCst) == id.0,
                    false => open,
                }
        });
        if let Some(w) = first {
            w.woken.store(true, SeqCst);
            w.notify.notify_one();
        }
    }

    /// Something else changed what backends can take (a limit raised, a backend up, ready
    /// or added): every waiter decides again, in queue order.
    pub fn wake_all(&self) {
        if self.waiting() == 0 {
            return;
        }
        for w in self.lock().iter() {
            w.woken.store(true, SeqCst);
            w.notify.notify_one();
        }
    }
}

impl Ticket<'_> {
    /// Call before deciding again: a release from now on wakes this waiter.
    pub fn rearm(&self) {
        self.waiter.woken.store(false, SeqCst);
    }

    /// The waiter now waits for `backend` (or any): a decision made again may name another
    /// one (its pin expired or moved). True if that changed: decide again before waiting, as
    /// a release for the new one may have passed it by.
    pub fn wait_for(&self, backend: Option<BackendId>) -> bool {
        let _list = self.queue.lock();
        let w = &self.waiter;
        let (pinned, id) = (backend.is_some(), backend.map_or(0, |b| b.0));
        let pin_changed = w.pinned.swap(pinned, SeqCst) != pinned;
        let id_changed = w.backend.swap(id, SeqCst) != id;
        pin_changed || id_changed
    }

    /// Until a release (or a change) wakes this waiter; a wake that came since
    /// [`Ticket::rearm`] returns at once.
    pub async fn woken(&self) {
        self.waiter.notify.notified().await;
    }

    /// Leaves the queue with a slot.
    pub fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let woken = {
            let mut list = self.queue.lock();
            if let Some(k) = list.iter().position(|w| Arc::ptr_eq(w, &self.waiter)) {
                list.remove(k);
                self.queue.waiting.fetch_sub(1, SeqCst);
            }
            self.waiter.woken.load(SeqCst)
        };
        // Leaving unserved with a wake in hand (timed out, client gone): the slot it was
        // woken for may be free, so the others look again.
        if woken && !self.served {
            self.queue.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> BackendId {
        BackendId::new("s", n)
    }

    #[tokio::test]
    async fn a_release_wakes_the_first_waiter_that_may_take_it() {
        let q = WaitQueue::default();
        let pinned = q.join(Some(id("b")), 10).unwrap();
        let any = q.join(None, 10).unwrap();
        assert_eq!(q.waiting(), 2);
        q.released(id("a"), true);
        assert!(
            !pinned.waiter.woken.load(SeqCst),
            "pinned to b: a's slot is not its"
        );
        assert!(any.waiter.woken.load(SeqCst));
        any.woken().await;
        q.released(id("a"), false);
        assert!(
            !pinned.waiter.woken.load(SeqCst),
            "a is not open to new clients"
        );
        q.released(id("b"), true);
        pinned.woken().await;
        drop(any);
        assert_eq!(q.waiting(), 1);
        // Its pin moved to a: a's slots are its now, b's no longer.
        assert!(pinned.wait_for(Some(id("a"))));
        assert!(!pinned.wait_for(Some(id("a"))));
        pinned.rearm();
        q.released(id("b"), true);
        assert!(!pinned.waiter.woken.load(SeqCst));
        q.released(id("a"), false);
        assert!(pinned.waiter.woken.load(SeqCst));
    }

    #[test]
    fn the_queue_is_bounded() {
        let q = WaitQueue::default();
        let _a = q.join(None, 1).unwrap();
        assert!(q.join(None, 1).is_none());
    }
}
