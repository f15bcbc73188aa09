//! Positioned reads and writes on a file or block device through the
//! calling thread's ring, for O_DIRECT cache I/O.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::aligned::PoolBuf;
use super::ring::{Op, Ring};

/// Read `len` bytes at `offset` into the start of `buf` (READ_FIXED when the
/// buffer is registered). Short reads are continued; reading past the end
/// of the file is an `UnexpectedEof` error.
pub async fn read_at(
    fd: RawFd,
    mut buf: PoolBuf,
    offset: u64,
    len: usize,
) -> (io::Result<()>, PoolBuf) {
    assert!(len <= buf.buf().capacity(), "read larger than its buffer");
    let ring = Ring::current();
    let mut done = 0usize;
    while done < len {
        // SAFETY: `done < len <= capacity`, so the pointer stays in bounds.
        let ptr = unsafe { buf.buf_mut().as_mut_ptr().add(done) };
        let n = (len - done) as u32;
        let at = offset + done as u64;
        let entry = match buf.fixed_index() {
            Some(index) => opcode::ReadFixed::new(types::Fd(fd), ptr, n, index)
                .offset(at)
                .build(),
            None => opcode::Read::new(types::Fd(fd), ptr, n).offset(at).build(),
        };
        // SAFETY: the entry points into `buf`'s heap allocation, owned by the op.
        let op = match unsafe { Op::submit(&ring, entry, buf) } {
            Ok(op) => op,
            Err(e) => return (Err(e), PoolBuf::take(len)),
        };
        let c = op.await;
        buf = c.data;
        match c.result {
            Ok(0) => {
                return (
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cache device ended early",
                    )),
                    buf,
                )
            }
            Ok(n) => done += n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// Write `len` bytes from `ptr` at `offset`, continuing short writes.
///
/// # Safety
/// `ptr..ptr + len` must lie in heap memory owned by `holder` that does not
/// move when `holder` does (e.g. behind an `Arc`).
pub async unsafe fn write_at<T: 'static + Unpin>(
    fd: RawFd,
    holder: T,
    ptr: *const u8,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    let ring = Ring::current();
    let mut done = 0usize;
    let mut holder = holder;
    while done < len {
        // SAFETY: in bounds as `done < len`, per the caller's guarantee.
        let p = unsafe { ptr.add(done) };
        let entry = opcode::Write::new(types::Fd(fd), p, (len - done) as u32)
            .offset(offset + done as u64)
            .build();
        // SAFETY: the entry points into memory kept alive by `holder`,
        // which the op owns until completion.
        let op = unsafe { Op::submit(&ring, entry, holder) }?;
        let c = op.await;
        holder = c.data;
        match c.result {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "cache device took no bytes",
                ))
            }
            Ok(n) => done += n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
