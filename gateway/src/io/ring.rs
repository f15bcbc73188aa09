//! One io_uring per worker thread, driven from inside that thread's tokio
//! current-thread runtime.
//!
//! The ring's file descriptor is registered with tokio's reactor (it polls
//! readable when completions are waiting); a driver task reaps completions and
//! wakes the futures that wait for them. Submission happens when an operation
//! is created, so an operation is in the kernel as soon as its future exists.
//!
//! Memory safety rule: every buffer an operation points at is owned by the
//! operation's `data` until the kernel's completion arrives. If the future is
//! dropped early, `data` moves into the slot table ("orphaned") and is freed
//! only when the completion is reaped, so the kernel never writes into freed
//! memory.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{squeue, IoUring};
use tokio::io::unix::AsyncFd;

/// Set in a zero-copy notification's result when the kernel had to copy
/// (always the case on loopback).
const ZC_COPIED: u32 = 1 << 31;

/// Submission queue entries per ring.
pub const RING_SQ_ENTRIES: u32 = 256;
/// Completion queue entries per ring (operations in flight per ring are
/// bounded by this, since the kernel must have room to post them).
pub const RING_CQ_ENTRIES: u32 = 4096;

enum Slot {
    Vacant,
    Waiting(Option<Waker>),
    Completed {
        res: i32,
        flags: u32,
        notified: bool,
    },
    Orphaned(#[allow(dead_code)] Box<dyn Any>),
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

impl Slots {
    fn insert(&mut self) -> usize {
        if let Some(i) = self.free.pop() {
            self.slots[i] = Slot::Waiting(None);
            i
        } else {
            self.slots.push(Slot::Waiting(None));
            self.slots.len() - 1
        }
    }

    fn release(&mut self, i: usize) {
        self.slots[i] = Slot::Vacant;
        self.free.push(i);
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Counters kept per ring.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingStats {
    pub submitted_ops: u64,
    pub completed_ops: u64,
}

/// A per-thread io_uring. Not `Send`: it lives and dies on its worker.
pub struct Ring {
    uring: RefCell<IoUring>,
    slots: RefCell<Slots>,
    fd: AsyncFd<RingFd>,
    stats: Cell<RingStats>,
    /// Entries are queued that a failed submit did not hand over.
    submit_pending: Cell<bool>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Ring>>> = const { RefCell::new(None) };
}

impl Ring {
    /// Create the ring for this thread and start its driver task. Must be
    /// called inside a `LocalSet` on a runtime with IO enabled.
    pub fn start() -> io::Result<Rc<Ring>> {
        let uring = IoUring::builder()
            .setup_cqsize(RING_CQ_ENTRIES)
            .setup_clamp()
            .build(RING_SQ_ENTRIES)?;
        let fd = AsyncFd::with_interest(RingFd(uring.as_raw_fd()), tokio::io::Interest::READABLE)?;
        let ring = Rc::new(Ring {
            uring: RefCell::new(uring),
            slots: RefCell::new(Slots::default()),
            fd,
            stats: Cell::new(RingStats::default()),
            submit_pending: Cell::new(false),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(ring.clone()));
        let driver = ring.clone();
        tokio::task::spawn_local(async move { driver.drive().await });
        Ok(ring)
    }

    /// The ring of the calling thread, if it has one.
    pub fn try_current() -> Option<Rc<Ring>> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Register fixed buffers (READ_FIXED / WRITE_FIXED targets).
    ///
    /// # Safety
    /// The memory must stay allocated until the ring is dropped.
    pub unsafe fn register_buffers(&self, iovecs: &[libc::iovec]) -> io::Result<()> {
        let uring = self.uring.borrow();
        // SAFETY: forwarded to the caller.
        unsafe { uring.submitter().register_buffers(iovecs) }
    }

    /// The ring of the calling worker thread.
    pub fn current() -> Rc<Ring> {
        CURRENT.with(|c| {
            c.borrow()
                .clone()
                .expect("no io_uring on this thread: Ring::start was not called")
        })
    }

    pub fn stats(&self) -> RingStats {
        self.stats.get()
    }

    pub fn in_flight_ops(&self) -> usize {
        self.slots.borrow().in_flight()
    }

    async fn drive(&self) {
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "io_uring readiness failed; ring driver stops");
                    return;
                }
            };
            self.reap();
            guard.clear_ready();
            self.reap();
        }
    }

    fn reap(&self) {
        let mut uring = self.uring.borrow_mut();
        // Completions the kernel kept aside because the queue was full are
        // only flushed by entering the kernel; so are entries a failed
        // submit left queued.
        if self.submit_pending.get() || uring.submission().cq_overflow() {
            match uring.submit() {
                Ok(_) => self.submit_pending.set(false),
                Err(e) => tracing::warn!(error = %e, "io_uring submit failed while reaping"),
            }
        }
        let mut slots = self.slots.borrow_mut();
        let mut stats = self.stats.get();
        for cqe in uring.completion() {
            stats.completed_ops += 1;
            let i = cqe.user_data() as usize;
            let Some(slot) = slots.slots.get_mut(i) else {
                continue;
            };
            let (res, flags) = (cqe.result(), cqe.flags());
            if io_uring::cqueue::notif(flags) {
                // The second completion of a zero-copy send: the kernel is
                // done with the buffers.
                if res as u32 & ZC_COPIED != 0 {
                    crate::telemetry::add(crate::telemetry::Counter::SendZcCopied, 1);
                }
                match slot {
                    Slot::Orphaned(_) => slots.release(i),
                    Slot::Completed { notified, .. } => *notified = true,
                    _ => tracing::error!(slot = i, "zero-copy notification for an idle slot"),
                }
                continue;
            }
            match std::mem::replace(
                slot,
                Slot::Completed {
                    res,
                    flags,
                    notified: false,
                },
            ) {
                Slot::Waiting(w) => {
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                Slot::Orphaned(b) => {
                    if io_uring::cqueue::more(flags) {
                        // A zero-copy send whose future is gone: keep the
                        // buffers until the notification.
                        *slot = Slot::Orphaned(b);
                    } else {
                        slots.release(i);
                    }
                }
                Slot::Vacant | Slot::Completed { .. } => {
                    tracing::error!(slot = i, "completion for an idle io_uring slot");
                }
            }
        }
        self.stats.set(stats);
    }

    fn push(&self, entry: squeue::Entry) -> io::Result<()> {
        let mut uring = self.uring.borrow_mut();
        // SAFETY: the caller of `Op::submit` guarantees the entry's pointers
        // stay valid until completion (they point into the op's `data`).
        let pushed = unsafe { uring.submission().push(&entry).is_ok() };
        if !pushed {
            uring.submit()?;
            // SAFETY: as above.
            unsafe {
                uring
                    .submission()
                    .push(&entry)
                    .map_err(|_| io::Error::other("io_uring submission queue stays full"))?;
            }
        }
        // The entry is queued now and will reach the kernel with the next
        // submit even if this one fails (EAGAIN, EBUSY under pressure), so
        // the op must stay alive: never report an error from here on.
        if let Err(e) = uring.submit() {
            tracing::warn!(error = %e, "io_uring submit failed; the entry goes with the next one");
            self.submit_pending.set(true);
        }
        let mut stats = self.stats.get();
        stats.submitted_ops += 1;
        self.stats.set(stats);
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Orphaned buffers may still be targets of kernel operations until
        // the ring is torn down; leak them rather than risk a use after free.
        for slot in self.slots.get_mut().slots.drain(..) {
            if let Slot::Orphaned(b) = slot {
                std::mem::forget(b);
            }
        }
    }
}

/// What an operation returns: the kernel's result and the buffers it owned.
pub struct Completion<T> {
    pub result: io::Result<u32>,
    pub flags: u32,
    pub data: T,
}

/// An operation in flight. Resolves when its completion is reaped.
pub struct Op<T: 'static> {
    ring: Rc<Ring>,
    index: usize,
    data: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Submit `entry`, which may only point into `data` (heap memory that
    /// does not move when `data` does) or into memory that outlives the op.
    ///
    /// # Safety
    /// The caller guarantees the entry's pointers satisfy the rule above.
    pub unsafe fn submit(ring: &Rc<Ring>, entry: squeue::Entry, data: T) -> io::Result<Op<T>> {
        let index = ring.slots.borrow_mut().insert();
        let entry = entry.user_data(index as u64);
        if let Err(e) = ring.push(entry) {
            ring.slots.borrow_mut().release(index);
            return Err(e);
        }
        Ok(Op {
            ring: ring.clone(),
            index,
            data: Some(data),
        })
    }
}

impl<T: 'static + Unpin> Future for Op<T> {
    type Output = Completion<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut slots = this.ring.slots.borrow_mut();
        match &mut slots.slots[this.index] {
            Slot::Waiting(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Completed { res, flags, .. } => {
                let (res, flags) = (*res, *flags);
                slots.release(this.index);
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as u32)
                };
                Poll::Ready(Completion {
                    result,
                    flags,
                    data: this.data.take().expect("op polled after completion"),
                })
            }
            Slot::Vacant | Slot::Orphaned(_) => panic!("io_uring op polled in a bad state"),
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        let mut slots = self.ring.slots.borrow_mut();
        match slots.slots[self.index] {
            Slot::Completed {
                flags,
                notified: false,
                ..
            } if io_uring::cqueue::more(flags) => {
                slots.slots[self.index] = Slot::Orphaned(Box::new(data))
            }
            Slot::Completed { .. } => slots.release(self.index),
            _ => slots.slots[self.index] = Slot::Orphaned(Box::new(data)),
        }
    }
}

/// A zero-copy send in flight. It resolves with the bytes sent as soon as
/// the kernel reports them; the buffers in `data` stay parked in the slot
/// table until the kernel's notification says it no longer reads them.
pub struct ZcOp<T: 'static>(Op<T>);

impl<T: 'static> ZcOp<T> {
    /// # Safety
    /// As [`Op::submit`]; `entry` must be a SEND_ZC or SENDMSG_ZC.
    pub unsafe fn submit(ring: &Rc<Ring>, entry: squeue::Entry, data: T) -> io::Result<ZcOp<T>> {
        // SAFETY: forwarded to the caller.
        unsafe { Op::submit(ring, entry, data) }.map(ZcOp)
    }
}

impl<T: 'static + Unpin> Future for ZcOp<T> {
    type Output = io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let op = &mut self.0;
        let ring = op.ring.clone();
        let mut slots = ring.slots.borrow_mut();
        let (res, flags, notified) = match &mut slots.slots[op.index] {
            Slot::Waiting(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            Slot::Completed {
                res,
                flags,
                notified,
            } => (*res, *flags, *notified),
            Slot::Vacant | Slot::Orphaned(_) => panic!("io_uring op polled in a bad state"),
        };
        let data = op.data.take().expect("op polled after completion");
        if io_uring::cqueue::more(flags) && !notified {
            slots.slots[op.index] = Slot::Orphaned(Box::new(data));
        } else {
            slots.release(op.index);
            drop(slots);
            drop(data);
        }
        Poll::Ready(if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as u32)
        })
    }
}
