//! TCP through the ring: listeners bound with SO_REUSEPORT (one per worker,
//! so the kernel spreads connections over cores) and streams whose receive
//! and send go through io_uring.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use io_uring::{opcode, types};

use super::ring::{Op, Ring, ZcOp};

/// Pending connections the kernel queues per listener.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Something sent as a list of byte slices (a reply and its data).
pub trait IoSlices: 'static {
    fn slices<'a>(&'a self, out: &mut Vec<&'a [u8]>);
}

/// The buffers of one zero-copy send batch, alive until every send that
/// points into them has its notification.
struct ZcBatch<T> {
    items: Vec<T>,
}

/// One SENDMSG_ZC's header and iovecs, plus a hold on the batch.
struct ZcMsg<T> {
    msg: libc::msghdr,
    iovecs: Vec<libc::iovec>,
    _batch: Rc<ZcBatch<T>>,
}

/// What this kernel's zero-copy sends support, learnt from EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZcMode {
    WithUsage,
    Plain,
    Unsupported,
}

static ZC_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn zc_mode() -> ZcMode {
    match ZC_MODE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => ZcMode::WithUsage,
        1 => ZcMode::Plain,
        _ => ZcMode::Unsupported,
    }
}

fn zc_step_down() {
    let before = ZC_MODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if before < 2 {
        tracing::warn!(
            step = before + 1,
            "the kernel refused a zero-copy send option; using {}",
            if before == 0 {
                "zero-copy sends without usage reports"
            } else {
                "plain sends"
            }
        );
    }
}

/// Ask the kernel to say in each zero-copy notification whether it had to
/// copy after all (IORING_SEND_ZC_REPORT_USAGE).
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// iovecs in one send (Linux's UIO_MAXIOV is 1024).
pub const SEND_IOVECS_MAX: usize = 256;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn set_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passing a pointer to a live c_int of the stated size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A listening socket, shareable with other workers through SO_REUSEPORT.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Bind and listen with SO_REUSEADDR and SO_REUSEPORT.
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        let (ss, len) = to_sockaddr(&addr);
        // SAFETY: `ss` holds a valid address of length `len`.
        cvt(unsafe { libc::bind(raw, &ss as *const _ as *const libc::sockaddr, len) })?;
        // SAFETY: listen on our own socket.
        cvt(unsafe { libc::listen(raw, LISTEN_BACKLOG) })?;
        Ok(Listener { fd })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        // SAFETY: zeroed storage is valid; getsockname fills at most `len` bytes.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: getsockname writes at most `len` bytes into `ss`.
        cvt(unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        from_sockaddr(&ss).ok_or_else(|| io::Error::other("unknown address family"))
    }

    /// Accept one connection through the ring.
    pub async fn accept(&self, ring: &Rc<Ring>) -> io::Result<(Stream, Option<SocketAddr>)> {
        let mut addr: Box<(MaybeUninit<libc::sockaddr_storage>, libc::socklen_t)> = Box::new((
            MaybeUninit::uninit(),
            size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        ));
        let entry = opcode::Accept::new(
            types::Fd(self.fd.as_raw_fd()),
            addr.0.as_mut_ptr() as *mut libc::sockaddr,
            &mut addr.1,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        // SAFETY: the entry points into the boxed address, owned by the op.
        let done = unsafe { Op::submit(ring, entry, addr)? }.await;
        let raw = done.result? as RawFd;
        // SAFETY: the kernel handed us a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the kernel filled the storage on success.
        let peer = from_sockaddr(unsafe { done.data.0.assume_init_ref() });
        set_opt(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        Ok((Stream { fd: Rc::new(fd) }, peer))
    }
}

/// A connected TCP socket. Clones share the descriptor (reader and writer
/// halves of one connection).
#[derive(Clone)]
pub struct Stream {
    fd: Rc<OwnedFd>,
}

struct SendState {
    bufs: Vec<Vec<u8>>,
    iovecs: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Stream {
    /// Receive into the spare capacity of `buf`, appending to its contents.
    /// Returns the bytes received (0 at end of stream) and the buffer.
    pub async fn recv(&self, ring: &Rc<Ring>, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let spare = (buf.capacity() - len).min(u32::MAX as usize) as u32;
        // SAFETY: `len <= capacity`, so the pointer stays within the allocation.
        let ptr = unsafe { buf.as_mut_ptr().add(len) };
        let entry = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, spare).build();
        // SAFETY: the entry points into `buf`'s heap allocation, owned by the op.
        let op = match unsafe { Op::submit(ring, entry, buf) } {
            Ok(op) => op,
            Err(e) => return (Err(e), Vec::new()),
        };
        let mut done = op.await;
        match done.result {
            Ok(n) => {
                // SAFETY: the kernel initialised `n` bytes after `len`.
                unsafe { done.data.set_len(len + n as usize) };
                (Ok(n as usize), done.data)
            }
            Err(e) => (Err(e), done.data),
        }
    }

    /// Send all of `bufs` in order, gathering them into as few `sendmsg`
    /// calls as the kernel allows. Returns the buffers for reuse.
    pub async fn send_all(
        &self,
        ring: &Rc<Ring>,
        bufs: Vec<Vec<u8>>,
    ) -> (io::Result<()>, Vec<Vec<u8>>) {
        let total: usize = bufs.iter().map(Vec::len).sum();
        let mut state = Box::new(SendState {
            bufs,
            iovecs: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is valid.
            msg: unsafe { std::mem::zeroed() },
        });
        let mut sent = 0usize;
        while sent < total {
            state.iovecs.clear();
            let mut skip = sent;
            for b in &state.bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                state.iovecs.push(libc::iovec {
                    iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: b.len() - skip,
                });
                skip = 0;
                if state.iovecs.len() == SEND_IOVECS_MAX {
                    break;
                }
            }
            state.msg.msg_iov = state.iovecs.as_mut_ptr();
            state.msg.msg_iovlen = state.iovecs.len();
            let entry = opcode::SendMsg::new(types::Fd(self.fd.as_raw_fd()), &state.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            // SAFETY: msghdr, iovecs and buffers all live in the boxed state
            // (heap memory that does not move), owned by the op.
            let op = match unsafe { Op::submit(ring, entry, state) } {
                Ok(op) => op,
                Err(e) => return (Err(e), Vec::new()),
            };
            let done = op.await;
            state = done.data;
            match done.result {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "peer stopped reading",
                        )),
                        state.bufs,
                    )
                }
                Ok(n) => sent += n as usize,
                Err(e) => return (Err(e), state.bufs),
            }
        }
        (Ok(()), state.bufs)
    }

    /// Send every item's slices in order with zero-copy sends
    /// (SENDMSG_ZC). The items stay alive until the kernel's notification
    /// for each send says it no longer reads them; the caller does not wait
    /// for that.
    pub async fn send_all_zc<T: IoSlices>(&self, ring: &Rc<Ring>, items: Vec<T>) -> io::Result<()> {
        self.send_slices(ring, items, true).await
    }

    /// Send every item's slices in order, zero-copy or with a plain
    /// SENDMSG (which copies in the kernel but needs no notification; the
    /// better choice for small payloads).
    pub async fn send_slices<T: IoSlices>(
        &self,
        ring: &Rc<Ring>,
        items: Vec<T>,
        zero_copy: bool,
    ) -> io::Result<()> {
        let batch = Rc::new(ZcBatch { items });
        let mut slices: Vec<&[u8]> = Vec::new();
        for it in &batch.items {
            it.slices(&mut slices);
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut sent = 0usize;
        while sent < total {
            let mut zm = Box::new(ZcMsg {
                // SAFETY: msghdr is plain data; all-zero is valid.
                msg: unsafe { std::mem::zeroed() },
                iovecs: Vec::with_capacity(slices.len().min(SEND_IOVECS_MAX)),
                _batch: batch.clone(),
            });
            let mut skip = sent;
            for s in &slices {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                zm.iovecs.push(libc::iovec {
                    iov_base: s[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: s.len() - skip,
                });
                skip = 0;
                if zm.iovecs.len() == SEND_IOVECS_MAX {
                    break;
                }
            }
            zm.msg.msg_iov = zm.iovecs.as_mut_ptr();
            zm.msg.msg_iovlen = zm.iovecs.len();
            let zc = zero_copy && zc_mode() != ZcMode::Unsupported;
            let entry = if zc {
                let report = if zc_mode() == ZcMode::WithUsage {
                    SEND_ZC_REPORT_USAGE
                } else {
                    0
                };
                opcode::SendMsgZc::new(types::Fd(self.fd.as_raw_fd()), &zm.msg)
                    .ioprio(report)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            } else {
                opcode::SendMsg::new(types::Fd(self.fd.as_raw_fd()), &zm.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            };
            // SAFETY: msghdr and iovecs live in the box, the bytes in the
            // batch the box holds; the op keeps the box until the kernel's
            // notification.
            let op = unsafe { ZcOp::submit(ring, entry, zm) }?;
            let r = op.await;
            if zc {
                if let Err(e) = &r {
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        // An older kernel: no usage report (before 6.2) or no
                        // zero-copy sends at all. Step down and send again.
                        zc_step_down();
                        continue;
                    }
                }
                crate::telemetry::add(crate::telemetry::Counter::SendZc, 1);
            }
            match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped reading",
                    ))
                }
                Ok(n) => sent += n as usize,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shut both directions down so pending ring operations on the socket
    /// complete promptly.
    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on our own descriptor; errors are irrelevant here.
        unsafe {
            libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}
