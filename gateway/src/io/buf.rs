//! Per-thread pool of large reply buffers.
//!
//! READ replies are up to 1 MiB. Allocating and zero-filling a fresh buffer
//! for each costs page faults and a memset per reply; instead each worker
//! keeps a bounded stack of buffers that the connection writer hands back
//! after the send completes. The pool remembers how many bytes of each
//! buffer were ever initialised, so a reused buffer can be extended to that
//! length without zero-filling it again.

use std::cell::RefCell;

/// Buffers at or above this capacity are pooled.
pub const POOLED_BYTES_MIN: usize = 64 * 1024;
/// Buffers above this capacity are freed rather than pooled.
pub const POOLED_BYTES_MAX: usize = 2 << 20;
/// Buffers kept per worker thread.
pub const POOLED_BUFFERS_MAX: usize = 64;

/// A buffer plus the length up to which its bytes are initialised.
pub struct PooledBuf {
    buf: Vec<u8>,
    initialised: usize,
}

thread_local! {
    static POOL: RefCell<Vec<PooledBuf>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with at least `capacity` bytes of room, empty.
pub fn take(capacity: usize) -> PooledBuf {
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().rposition(|b| b.buf.capacity() >= capacity)?;
        Some(p.swap_remove(i))
    });
    match pooled {
        Some(mut b) => {
            b.buf.clear();
            b
        }
        None => PooledBuf {
            buf: Vec::with_capacity(capacity.max(POOLED_BYTES_MIN)),
            initialised: 0,
        },
    }
}

/// Return a buffer after use. Small or huge buffers are simply dropped.
pub fn give(buf: Vec<u8>) {
    let cap = buf.capacity();
    if !(POOLED_BYTES_MIN..=POOLED_BYTES_MAX).contains(&cap) {
        return;
    }
    let initialised = buf.len();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOLED_BUFFERS_MAX {
            p.push(PooledBuf { buf, initialised });
        }
    });
}

impl PooledBuf {
    /// Set the length to `len`, zero-filling only bytes never initialised.
    pub fn set_len_uninit_free(&mut self, len: usize) {
        if len <= self.initialised {
            // SAFETY: bytes below `initialised` were written earlier in this
            // allocation (so `len` is within capacity) and u8 has no invalid
            // values.
            unsafe { self.buf.set_len(len) };
        } else {
            // SAFETY: as above for the first `initialised` bytes.
            unsafe { self.buf.set_len(self.initialised) };
            self.buf.resize(len, 0);
            self.initialised = len;
        }
    }

    pub fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_keeps_contents_and_bounds() {
        let mut b = take(100_000);
        b.set_len_uninit_free(100_000);
        b.vec()[99_999] = 7;
        give(b.into_vec());
        let mut b = take(90_000);
        assert!(b.vec().is_empty());
        b.set_len_uninit_free(100_000);
        assert_eq!(b.vec()[99_999], 7, "reused without zero-filling");
        b.set_len_uninit_free(120_000);
        assert_eq!(b.vec()[119_999], 0, "new bytes are zeroed");
        give(vec![0u8; 10]);
        give(Vec::with_capacity(POOLED_BYTES_MAX * 2));
        POOL.with(|p| assert!(p.borrow().is_empty()));
    }
}
