//! Page-aligned buffers for O_DIRECT device I/O, and a per-thread pool of
//! such buffers registered with that thread's ring.
//!
//! O_DIRECT needs the memory, the file offset and the length aligned to the
//! device's logical block; 4 KiB covers every NVMe and file system we run
//! on. Registered buffers (`IORING_REGISTER_BUFFERS`) spare the kernel the
//! page pinning of every read; they need locked memory, so when the
//! registration is refused (RLIMIT_MEMLOCK for non-root users) the pool
//! keeps working with plain buffers and says so once.
//!
//! A registered buffer must never be freed while registered: pooled buffers
//! are owned by the pool for the thread's lifetime, and a [`PoolBuf`]
//! handle (not `Send`) returns its buffer to the pool when dropped.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

/// Alignment of every device buffer and I/O (bytes).
pub const ALIGN_BYTES: usize = 4096;

/// Round `n` up to a multiple of [`ALIGN_BYTES`].
pub const fn align_up(n: usize) -> usize {
    (n + ALIGN_BYTES - 1) & !(ALIGN_BYTES - 1)
}

/// A zero-initialised, 4 KiB-aligned heap buffer of fixed capacity.
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes, rounded up to the alignment.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = align_up(cap.max(1));
        let layout = Layout::from_size_align(cap, ALIGN_BYTES).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `cap` bytes were allocated and zero-initialised.
        unsafe { std::slice::from_raw_parts(self.ptr, self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN_BYTES).expect("buffer layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}

/// The buffers of one thread's pool; index `i` is registered as fixed
/// buffer `i` when `registered` is true.
struct Pool {
    bufs: Vec<Option<AlignedBuf>>,
    free: Vec<usize>,
    buf_bytes: usize,
    registered: bool,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The ring may outlive the pool during thread teardown; memory it
        // has registered is never handed back to the allocator.
        if self.registered {
            self.bufs.drain(..).flatten().for_each(std::mem::forget);
        }
    }
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// Create this thread's pool: `count` buffers of `buf_bytes` each,
/// registered with the thread's ring when the kernel allows. Returns
/// whether they were registered. Calling it again is a no-op.
pub fn init_thread_pool(count: usize, buf_bytes: usize) -> bool {
    if let Some(r) = POOL.with(|p| p.borrow().as_ref().map(|p| p.registered)) {
        return r;
    }
    let bufs: Vec<AlignedBuf> = (0..count).map(|_| AlignedBuf::new(buf_bytes)).collect();
    let iovecs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.capacity(),
        })
        .collect();
    let registered = match super::ring::Ring::try_current() {
        // SAFETY: the buffers are owned by the pool, which lives until the
        // thread ends, after its ring (see `Pool` docs).
        Some(ring) => match unsafe { ring.register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, count, buf_bytes,
                    "registering cache buffers with io_uring was refused (RLIMIT_MEMLOCK?); using plain buffers");
                false
            }
        },
        None => false,
    };
    let free = (0..bufs.len()).rev().collect();
    POOL.with(|p| {
        *p.borrow_mut() = Some(Pool {
            bufs: bufs.into_iter().map(Some).collect(),
            free,
            buf_bytes: align_up(buf_bytes),
            registered,
        })
    });
    registered
}

/// A device buffer owned by one thread: a pooled (maybe registered) buffer
/// that goes back to its pool on drop, or a plain one when the pool is
/// empty or too small.
pub struct PoolBuf {
    inner: Option<AlignedBuf>,
    pool_index: Option<usize>,
    registered: bool,
    _not_send: PhantomData<Rc<()>>,
}

impl PoolBuf {
    /// A buffer of at least `bytes` (rounded up to the alignment).
    pub fn take(bytes: usize) -> PoolBuf {
        let pooled = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let p = p.as_mut()?;
            if bytes > p.buf_bytes {
                return None;
            }
            let i = p.free.pop()?;
            Some((
                p.bufs[i].take().expect("free pool slot holds a buffer"),
                i,
                p.registered,
            ))
        });
        match pooled {
            Some((b, i, registered)) => PoolBuf {
                inner: Some(b),
                pool_index: Some(i),
                registered,
                _not_send: PhantomData,
            },
            None => PoolBuf {
                inner: Some(AlignedBuf::new(bytes)),
                pool_index: None,
                registered: false,
                _not_send: PhantomData,
            },
        }
    }

    /// A plain buffer outside the pool, to be kept after the read
    /// ([`PoolBuf::into_aligned`]).
    pub fn unpooled(bytes: usize) -> PoolBuf {
        PoolBuf {
            inner: Some(AlignedBuf::new(bytes)),
            pool_index: None,
            registered: false,
            _not_send: PhantomData,
        }
    }

    /// The buffer itself, if it is not one of the pool's.
    pub fn into_aligned(mut self) -> Result<AlignedBuf, PoolBuf> {
        if self.pool_index.is_some() {
            return Err(self);
        }
        Ok(self.inner.take().expect("buffer present until drop"))
    }

    /// The fixed-buffer index to use with READ_FIXED, if registered.
    pub fn fixed_index(&self) -> Option<u16> {
        if self.registered {
            self.pool_index.map(|i| i as u16)
        } else {
            None
        }
    }

    pub fn buf(&self) -> &AlignedBuf {
        self.inner.as_ref().expect("buffer present until drop")
    }

    pub fn buf_mut(&mut self) -> &mut AlignedBuf {
        self.inner.as_mut().expect("buffer present until drop")
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let (Some(b), Some(i)) = (self.inner.take(), self.pool_index) else {
            return;
        };
        let leftover = POOL.with(|p| {
            let mut p = p.borrow_mut();
            match p.as_mut() {
                Some(p) if i < p.bufs.len() && p.bufs[i].is_none() => {
                    p.bufs[i] = Some(b);
                    p.free.push(i);
                    None
                }
                _ => Some(b),
            }
        });
        if let Some(b) = leftover {
            // Not this thread's pool (cannot happen: PoolBuf is not Send) or
            // the pool is gone; a registered buffer must not be reused.
            std::mem::forget(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_pooled() {
        let b = AlignedBuf::new(100);
        assert_eq!(b.capacity(), ALIGN_BYTES);
        assert_eq!(b.as_ptr() as usize % ALIGN_BYTES, 0);
        init_thread_pool(2, 8192);
        let a = PoolBuf::take(8000);
        let c = PoolBuf::take(8192);
        let d = PoolBuf::take(8192);
        assert!(a.pool_index.is_some() && c.pool_index.is_some());
        assert!(d.pool_index.is_none(), "pool of two is empty");
        let big = PoolBuf::take(1 << 20);
        assert!(big.pool_index.is_none() && big.buf().capacity() == 1 << 20);
        drop(a);
        let e = PoolBuf::take(10);
        assert!(e.pool_index.is_some(), "returned buffer is reused");
    }
}
