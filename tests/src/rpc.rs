//! A small ONC RPC (RFC 5531) client over TCP with XDR (RFC 4506) encoding
//! written by hand, plus MOUNT v3 and NFSv3 (RFC 1813) helpers.
//!
//! It is meant for probing the server, politely or not: calls can be built
//! byte by byte, sent as one record, split into fragments, or replaced by
//! arbitrary bytes; replies are matched by xid and decoded strictly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

pub const MOUNT_PROGRAM: u32 = 100005;
pub const MOUNT_V3: u32 = 3;
pub const MOUNTPROC3_NULL: u32 = 0;
pub const MOUNTPROC3_MNT: u32 = 1;
pub const MOUNTPROC3_EXPORT: u32 = 5;

pub const NFS_PROGRAM: u32 = 100003;
pub const NFS_V3: u32 = 3;
pub const NFSPROC3_NULL: u32 = 0;
pub const NFSPROC3_GETATTR: u32 = 1;
pub const NFSPROC3_SETATTR: u32 = 2;
pub const NFSPROC3_LOOKUP: u32 = 3;
pub const NFSPROC3_ACCESS: u32 = 4;
pub const NFSPROC3_READ: u32 = 6;
pub const NFSPROC3_WRITE: u32 = 7;
pub const NFSPROC3_CREATE: u32 = 8;
pub const NFSPROC3_MKDIR: u32 = 9;
pub const NFSPROC3_REMOVE: u32 = 12;
pub const NFSPROC3_RMDIR: u32 = 13;
pub const NFSPROC3_RENAME: u32 = 14;
pub const NFSPROC3_COMMIT: u32 = 21;
pub const NFSPROC3_READDIR: u32 = 16;
pub const NFSPROC3_READDIRPLUS: u32 = 17;
pub const NFSPROC3_FSINFO: u32 = 19;

pub const NFS3_OK: u32 = 0;
pub const NFS3ERR_NOENT: u32 = 2;
pub const NFS3ERR_IO: u32 = 5;
pub const NFS3ERR_ACCES: u32 = 13;
pub const NFS3ERR_NOTDIR: u32 = 20;
pub const NFS3ERR_ISDIR: u32 = 21;
pub const NFS3ERR_INVAL: u32 = 22;
pub const NFS3ERR_ROFS: u32 = 30;
pub const NFS3ERR_NAMETOOLONG: u32 = 63;
pub const NFS3ERR_STALE: u32 = 70;
pub const NFS3ERR_BADHANDLE: u32 = 10001;
pub const NFS3ERR_JUKEBOX: u32 = 10008;

pub const NF3REG: u32 = 1;
pub const NF3DIR: u32 = 2;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// accept_stat values.
pub const SUCCESS: u32 = 0;
pub const PROG_UNAVAIL: u32 = 1;
pub const PROG_MISMATCH: u32 = 2;
pub const PROC_UNAVAIL: u32 = 3;
pub const GARBAGE_ARGS: u32 = 4;
pub const SYSTEM_ERR: u32 = 5;

/// Largest reply record the client accepts (the server's READ maximum is
/// a few MiB at most).
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// Default socket read/write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Record-marking bit for the last fragment of a record.
pub const LAST_FRAGMENT: u32 = 0x8000_0000;

// ---------------------------------------------------------------- XDR ----

/// XDR encoder into a growable buffer.
#[derive(Default, Clone)]
pub struct XdrWriter {
    pub buf: Vec<u8>,
}

impl XdrWriter {
    pub fn new() -> Self {
        XdrWriter { buf: Vec::new() }
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }

    /// Fixed-length opaque: the bytes and padding to a multiple of four.
    pub fn fixed(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        let pad = (4 - data.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    /// Variable-length opaque or string: length, bytes, padding.
    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(data.len() as u32);
        self.fixed(data)
    }

    /// Bytes as they are, no length, no padding.
    pub fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// XDR decoder over a byte slice; every read is bounds-checked.
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        XdrReader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(
            n <= self.remaining(),
            "XDR: need {n} bytes at offset {}, only {} left",
            self.pos,
            self.remaining()
        );
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => bail!("XDR: bool with value {v}"),
        }
    }

    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let data = self.take(n)?;
        let pad = (4 - n % 4) % 4;
        self.take(pad)?;
        Ok(data)
    }

    /// Variable-length opaque of at most `max` bytes.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        ensure!(n <= max, "XDR: opaque of {n} bytes exceeds its bound {max}");
        self.fixed(n)
    }

    pub fn expect_end(&self) -> Result<()> {
        ensure!(
            self.remaining() == 0,
            "XDR: {} trailing bytes",
            self.remaining()
        );
        Ok(())
    }
}

// ---------------------------------------------------------------- RPC ----

/// Credentials for a CALL.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Sys { uid: u32, gid: u32, machine: String },
}

impl Auth {
    /// AUTH_SYS as the calling process.
    pub fn sys() -> Auth {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Auth::Sys {
            uid,
            gid,
            machine: "tidegate-tests".to_string(),
        }
    }

    pub fn encode(&self, w: &mut XdrWriter) {
        match self {
            Auth::None => {
                w.u32(AUTH_NONE).opaque(&[]);
            }
            Auth::Sys { uid, gid, machine } => {
                let mut body = XdrWriter::new();
                body.u32(0x5469_6465) // stamp
                    .opaque(machine.as_bytes())
                    .u32(*uid)
                    .u32(*gid)
                    .u32(0); // no supplementary groups
                w.u32(AUTH_SYS).opaque(&body.buf);
            }
        }
    }
}

/// The body of a CALL message (without record marking).
pub fn encode_call(
    xid: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: &Auth,
    args: &[u8],
) -> Vec<u8> {
    let mut w = XdrWriter::new();
    w.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_);
    cred.encode(&mut w);
    w.u32(AUTH_NONE).opaque(&[]); // verifier
    w.raw(args);
    w.finish()
}

/// One record in one fragment.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.extend_from_slice(&(LAST_FRAGMENT | payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// One record split into fragments of the given sizes (the remainder goes
/// into a final fragment). Zero-length pieces are allowed.
pub fn frame_fragments(payload: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut off = 0;
    for &s in sizes {
        let s = s.min(payload.len() - off);
        v.extend_from_slice(&(s as u32).to_be_bytes());
        v.extend_from_slice(&payload[off..off + s]);
        off += s;
    }
    v.extend_from_slice(&(LAST_FRAGMENT | (payload.len() - off) as u32).to_be_bytes());
    v.extend_from_slice(&payload[off..]);
    v
}

/// Decoded reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub xid: u32,
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// MSG_ACCEPTED / SUCCESS with the procedure's results.
    Success(Vec<u8>),
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
    /// MSG_DENIED / RPC_MISMATCH.
    RpcMismatch {
        low: u32,
        high: u32,
    },
    /// MSG_DENIED / AUTH_ERROR with its auth_stat.
    AuthError(u32),
}

impl Reply {
    /// The results of a successful call, or an error naming what came back.
    pub fn success(self) -> Result<Vec<u8>> {
        match self.body {
            ReplyBody::Success(b) => Ok(b),
            other => bail!("RPC call xid {:#x} was not successful: {other:?}", self.xid),
        }
    }
}

/// Decode one reply record strictly.
pub fn decode_reply(record: &[u8]) -> Result<Reply> {
    let mut r = XdrReader::new(record);
    let xid = r.u32()?;
    let mtype = r.u32()?;
    ensure!(mtype == 1, "msg_type {mtype} in a reply (xid {xid:#x})");
    let body = match r.u32()? {
        0 => {
            let _verf_flavor = r.u32()?;
            let _verf = r.opaque(400)?;
            match r.u32()? {
                SUCCESS => ReplyBody::Success(r.rest().to_vec()),
                PROG_UNAVAIL => ReplyBody::ProgUnavail,
                PROG_MISMATCH => {
                    let low = r.u32()?;
                    let high = r.u32()?;
                    ReplyBody::ProgMismatch { low, high }
                }
                PROC_UNAVAIL => ReplyBody::ProcUnavail,
                GARBAGE_ARGS => ReplyBody::GarbageArgs,
                SYSTEM_ERR => ReplyBody::SystemErr,
                s => bail!("unknown accept_stat {s} (xid {xid:#x})"),
            }
        }
        1 => match r.u32()? {
            0 => {
                let low = r.u32()?;
                let high = r.u32()?;
                ReplyBody::RpcMismatch { low, high }
            }
            1 => ReplyBody::AuthError(r.u32()?),
            s => bail!("unknown reject_stat {s} (xid {xid:#x})"),
        },
        s => bail!("unknown reply_stat {s} (xid {xid:#x})"),
    };
    if !matches!(body, ReplyBody::Success(_)) {
        r.expect_end()
            .with_context(|| format!("error reply xid {xid:#x}"))?;
    }
    Ok(Reply { xid, body })
}

/// How a connection ended up after the server was sent something hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aftermath {
    /// EOF or reset: the server closed the connection.
    Closed,
    /// The server sent these bytes (and then closed, or went quiet).
    Replied(Vec<u8>),
    /// Nothing arrived and the connection stayed open.
    StillOpen,
}

/// A TCP connection to `addr` bound to the local address `local` first
/// (std has no bind-before-connect).
fn connect_v4_from(local: Ipv4Addr, addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) takes no pointers; the descriptor it returns is
    // owned by the OwnedFd right below and by nothing else.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let here = sockaddr(SocketAddrV4::new(local, 0));
    // SAFETY: `here` is a valid sockaddr_in of `len` bytes that outlives
    // the call; `fd` is open.
    if unsafe { libc::bind(fd, (&here as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let there = sockaddr(addr);
    // SAFETY: as for bind.
    if unsafe { libc::connect(fd, (&there as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(owned))
}

/// A TCP connection speaking ONC RPC.
pub struct RpcConn {
    pub stream: TcpStream,
    next_xid: u32,
    pub cred: Auth,
}

impl RpcConn {
    pub fn connect(addr: SocketAddr) -> Result<RpcConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connect to {addr}"))?;
        Self::from_stream(stream)
    }

    /// As [`RpcConn::connect`], from the local IPv4 address `local` (any
    /// of 127.0.0.0/8 works on loopback): the server sees a different
    /// client address than 127.0.0.1.
    pub fn connect_from(local: Ipv4Addr, addr: SocketAddrV4) -> Result<RpcConn> {
        let stream = connect_v4_from(local, addr)
            .with_context(|| format!("connect to {addr} from {local}"))?;
        Self::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Result<RpcConn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let seed = crate::data::fresh_seed() as u32;
        Ok(RpcConn {
            stream,
            next_xid: seed | 1,
            cred: Auth::sys(),
        })
    }

    pub fn next_xid(&mut self) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        x
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).context("send to server")?;
        Ok(())
    }

    /// Read one whole record (all fragments), bounded by [`MAX_REPLY_BYTES`].
    pub fn recv_record(&mut self) -> Result<Vec<u8>> {
        let mut record = Vec::new();
        loop {
            let mut mark = [0u8; 4];
            self.stream
                .read_exact(&mut mark)
                .context("read record mark")?;
            let mark = u32::from_be_bytes(mark);
            let len = (mark & !LAST_FRAGMENT) as usize;
            ensure!(
                record.len() + len <= MAX_REPLY_BYTES,
                "reply record larger than {MAX_REPLY_BYTES} bytes"
            );
            let start = record.len();
            record.resize(start + len, 0);
            self.stream
                .read_exact(&mut record[start..])
                .context("read record fragment")?;
            if mark & LAST_FRAGMENT != 0 {
                return Ok(record);
            }
        }
    }

    pub fn recv_reply(&mut self) -> Result<Reply> {
        let rec = self.recv_record()?;
        decode_reply(&rec)
    }

    /// Send a call with this connection's credentials and wait for its reply.
    pub fn call(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<Reply> {
        let cred = self.cred.clone();
        self.call_as(&cred, prog, vers, proc_, args)
    }

    pub fn call_as(
        &mut self,
        cred: &Auth,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Reply> {
        let xid = self.next_xid();
        let msg = encode_call(xid, prog, vers, proc_, cred, args);
        self.send_bytes(&frame(&msg))?;
        self.wait_for(xid)
    }

    /// Read replies until the one for `xid` (others are an error: this
    /// client has one call in flight unless a test pipelines explicitly).
    pub fn wait_for(&mut self, xid: u32) -> Result<Reply> {
        let reply = self.recv_reply()?;
        ensure!(
            reply.xid == xid,
            "reply xid {:#x} while waiting for {xid:#x}",
            reply.xid
        );
        Ok(reply)
    }

    /// Half-close our side (the server sees EOF after what was sent).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Watch the connection for up to `within`: report the first complete
    /// reply record the server sends, or that it closed, or that nothing
    /// happened.
    pub fn aftermath(&mut self, within: Duration) -> Aftermath {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return if got.is_empty() {
                    Aftermath::StillOpen
                } else {
                    Aftermath::Replied(got)
                };
            }
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return if got.is_empty() {
                        Aftermath::Closed
                    } else {
                        Aftermath::Replied(got)
                    }
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if !split_records(&got).is_empty() {
                        // A whole reply is in: report it without waiting
                        // to see whether the server also closes.
                        return Aftermath::Replied(got);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    return if got.is_empty() {
                        Aftermath::Closed
                    } else {
                        Aftermath::Replied(got)
                    }
                }
            }
        }
    }
}

/// Split a byte stream into complete records (for bytes collected by
/// [`RpcConn::aftermath`]); an incomplete tail is dropped.
pub fn split_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    while bytes.len() >= 4 {
        let mark = u32::from_be_bytes(bytes[..4].try_into().unwrap());
        let len = (mark & !LAST_FRAGMENT) as usize;
        if bytes.len() < 4 + len {
            break;
        }
        cur.extend_from_slice(&bytes[4..4 + len]);
        bytes = &bytes[4 + len..];
        if mark & LAST_FRAGMENT != 0 {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

// ---------------------------------------------------------------- NFS ----

/// fattr3 (RFC 1813 section 2.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fattr {
    pub ftype: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev: (u32, u32),
    pub fsid: u64,
    pub fileid: u64,
    pub atime: (u32, u32),
    pub mtime: (u32, u32),
    pub ctime: (u32, u32),
}

impl Fattr {
    pub fn decode(r: &mut XdrReader) -> Result<Fattr> {
        Ok(Fattr {
            ftype: r.u32()?,
            mode: r.u32()?,
            nlink: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            size: r.u64()?,
            used: r.u64()?,
            rdev: (r.u32()?, r.u32()?),
            fsid: r.u64()?,
            fileid: r.u64()?,
            atime: (r.u32()?, r.u32()?),
            mtime: (r.u32()?, r.u32()?),
            ctime: (r.u32()?, r.u32()?),
        })
    }
}

/// post_op_attr.
pub fn decode_post_op_attr(r: &mut XdrReader) -> Result<Option<Fattr>> {
    if r.bool()? {
        Ok(Some(Fattr::decode(r)?))
    } else {
        Ok(None)
    }
}

/// Largest NFSv3 file handle.
pub const NFS3_FHSIZE: usize = 64;

/// nfsstat3 or a value: the inner result of an NFS procedure.
pub type NfsResult<T> = std::result::Result<T, u32>;

/// Arguments: a bare nfs_fh3.
pub fn args_fh(fh: &[u8]) -> Vec<u8> {
    XdrWriter::new().opaque(fh).finish()
}

/// Arguments: diropargs3.
pub fn args_lookup(dir: &[u8], name: &[u8]) -> Vec<u8> {
    XdrWriter::new().opaque(dir).opaque(name).finish()
}

/// Arguments: READ3args.
pub fn args_read(fh: &[u8], offset: u64, count: u32) -> Vec<u8> {
    XdrWriter::new().opaque(fh).u64(offset).u32(count).finish()
}

/// Skip wcc_data (pre_op_attr, post_op_attr).
pub fn skip_wcc(r: &mut XdrReader) -> Result<()> {
    if r.bool()? {
        r.u64()?;
        r.fixed(16)?;
    }
    decode_post_op_attr(r)?;
    Ok(())
}

/// Decode CREATE3res / MKDIR3res: the new handle (which must be there).
pub fn decode_new_handle(res: &[u8]) -> Result<NfsResult<Vec<u8>>> {
    let mut r = XdrReader::new(res);
    let status = r.u32()?;
    if status != NFS3_OK {
        skip_wcc(&mut r)?;
        r.expect_end()?;
        return Ok(Err(status));
    }
    ensure!(r.bool()?, "no handle in the reply");
    let fh = r.opaque(NFS3_FHSIZE)?.to_vec();
    decode_post_op_attr(&mut r)?;
    skip_wcc(&mut r)?;
    r.expect_end()?;
    Ok(Ok(fh))
}

/// Decode GETATTR3res.
pub fn decode_getattr(res: &[u8]) -> Result<NfsResult<Fattr>> {
    let mut r = XdrReader::new(res);
    let status = r.u32()?;
    if status != NFS3_OK {
        r.expect_end()?;
        return Ok(Err(status));
    }
    let a = Fattr::decode(&mut r)?;
    r.expect_end()?;
    Ok(Ok(a))
}

/// LOOKUP3resok: object handle and its attributes.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub fh: Vec<u8>,
    pub attr: Option<Fattr>,
    pub dir_attr: Option<Fattr>,
}

pub fn decode_lookup(res: &[u8]) -> Result<NfsResult<Lookup>> {
    let mut r = XdrReader::new(res);
    let status = r.u32()?;
    if status != NFS3_OK {
        let _dir = decode_post_op_attr(&mut r)?;
        r.expect_end()?;
        return Ok(Err(status));
    }
    let fh = r.opaque(NFS3_FHSIZE)?.to_vec();
    let attr = decode_post_op_attr(&mut r)?;
    let dir_attr = decode_post_op_attr(&mut r)?;
    r.expect_end()?;
    Ok(Ok(Lookup { fh, attr, dir_attr }))
}

/// READ3resok.
#[derive(Debug, Clone)]
pub struct ReadOk {
    pub attr: Option<Fattr>,
    pub data: Vec<u8>,
    pub eof: bool,
}

pub fn decode_read(res: &[u8]) -> Result<NfsResult<ReadOk>> {
    let mut r = XdrReader::new(res);
    let status = r.u32()?;
    let attr = decode_post_op_attr(&mut r)?;
    if status != NFS3_OK {
        r.expect_end()?;
        return Ok(Err(status));
    }
    let count = r.u32()?;
    let eof = r.bool()?;
    let data = r.opaque(MAX_REPLY_BYTES)?.to_vec();
    ensure!(
        count as usize == data.len(),
        "READ count {count} but {} data bytes",
        data.len()
    );
    r.expect_end()?;
    Ok(Ok(ReadOk { attr, data, eof }))
}

/// One directory page from READDIR or READDIRPLUS.
#[derive(Debug, Clone)]
pub struct DirPage {
    pub cookieverf: [u8; 8],
    /// (fileid, name, cookie, handle when READDIRPLUS returned one)
    pub entries: Vec<DirEntry>,
    pub eof: bool,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Option<Fattr>,
    pub fh: Option<Vec<u8>>,
}

pub fn decode_readdir(res: &[u8], plus: bool) -> Result<NfsResult<DirPage>> {
    let mut r = XdrReader::new(res);
    let status = r.u32()?;
    let _dir_attr = decode_post_op_attr(&mut r)?;
    if status != NFS3_OK {
        r.expect_end()?;
        return Ok(Err(status));
    }
    let cookieverf: [u8; 8] = r.fixed(8)?.try_into().unwrap();
    let mut entries = Vec::new();
    while r.bool()? {
        let fileid = r.u64()?;
        let name = r.opaque(4096)?.to_vec();
        let cookie = r.u64()?;
        let (attr, fh) = if plus {
            let attr = decode_post_op_attr(&mut r)?;
            let fh = if r.bool()? {
                Some(r.opaque(NFS3_FHSIZE)?.to_vec())
            } else {
                None
            };
            (attr, fh)
        } else {
            (None, None)
        };
        entries.push(DirEntry {
            fileid,
            name,
            cookie,
            attr,
            fh,
        });
    }
    let eof = r.bool()?;
    r.expect_end()?;
    Ok(Ok(DirPage {
        cookieverf,
        entries,
        eof,
    }))
}

/// MOUNT v3 MNT result: the root handle and auth flavors.
#[derive(Debug, Clone)]
pub struct MountOk {
    pub fh: Vec<u8>,
    pub auth_flavors: Vec<u32>,
}

pub fn decode_mnt(res: &[u8]) -> Result<NfsResult<MountOk>> {
    let mut r = XdrReader::new(res);
    let status = r.u32()?;
    if status != 0 {
        r.expect_end()?;
        return Ok(Err(status));
    }
    let fh = r.opaque(NFS3_FHSIZE)?.to_vec();
    let n = r.u32()? as usize;
    ensure!(n <= 64, "MNT reply lists {n} auth flavors");
    let mut auth_flavors = Vec::with_capacity(n);
    for _ in 0..n {
        auth_flavors.push(r.u32()?);
    }
    r.expect_end()?;
    Ok(Ok(MountOk { fh, auth_flavors }))
}

/// A well-behaved MOUNT + NFSv3 client on one connection.
pub struct NfsClient {
    pub conn: RpcConn,
}

impl NfsClient {
    pub fn connect(addr: SocketAddr) -> Result<NfsClient> {
        Ok(NfsClient {
            conn: RpcConn::connect(addr)?,
        })
    }

    /// As [`NfsClient::connect`], from the local address `local` (see
    /// [`RpcConn::connect_from`]).
    pub fn connect_from(local: Ipv4Addr, addr: SocketAddrV4) -> Result<NfsClient> {
        Ok(NfsClient {
            conn: RpcConn::connect_from(local, addr)?,
        })
    }

    fn nfs(&mut self, proc_: u32, args: &[u8]) -> Result<Vec<u8>> {
        self.conn
            .call(NFS_PROGRAM, NFS_V3, proc_, args)?
            .success()
            .with_context(|| format!("NFSv3 procedure {proc_}"))
    }

    pub fn mount_null(&mut self) -> Result<()> {
        let res = self
            .conn
            .call_as(&Auth::None, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3_NULL, &[])?
            .success()?;
        ensure!(res.is_empty(), "MOUNT NULL returned {} bytes", res.len());
        Ok(())
    }

    pub fn mnt_raw(&mut self, path: &[u8]) -> Result<NfsResult<MountOk>> {
        let args = XdrWriter::new().opaque(path).finish();
        let res = self
            .conn
            .call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3_MNT, &args)?
            .success()?;
        decode_mnt(&res)
    }

    /// MNT `/`: the root handle.
    pub fn mount_root(&mut self) -> Result<Vec<u8>> {
        match self.mnt_raw(b"/")? {
            Ok(m) => Ok(m.fh),
            Err(s) => bail!("MNT / failed with mountstat3 {s}"),
        }
    }

    pub fn null(&mut self) -> Result<()> {
        let res = self
            .conn
            .call_as(&Auth::None, NFS_PROGRAM, NFS_V3, NFSPROC3_NULL, &[])?
            .success()?;
        ensure!(res.is_empty(), "NFS NULL returned {} bytes", res.len());
        Ok(())
    }

    pub fn getattr(&mut self, fh: &[u8]) -> Result<NfsResult<Fattr>> {
        let res = self.nfs(NFSPROC3_GETATTR, &args_fh(fh))?;
        decode_getattr(&res)
    }

    pub fn lookup(&mut self, dir: &[u8], name: &[u8]) -> Result<NfsResult<Lookup>> {
        let res = self.nfs(NFSPROC3_LOOKUP, &args_lookup(dir, name))?;
        decode_lookup(&res)
    }

    /// LOOKUP each '/'-separated component from `root`.
    pub fn lookup_path(&mut self, root: &[u8], path: &str) -> Result<Vec<u8>> {
        let mut fh = root.to_vec();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            fh = match self.lookup(&fh, comp.as_bytes())? {
                Ok(l) => l.fh,
                Err(s) => bail!("LOOKUP {comp:?} (in {path:?}) failed with nfsstat3 {s}"),
            };
        }
        Ok(fh)
    }

    pub fn read(&mut self, fh: &[u8], offset: u64, count: u32) -> Result<NfsResult<ReadOk>> {
        let res = self.nfs(NFSPROC3_READ, &args_read(fh, offset, count))?;
        decode_read(&res)
    }

    /// Read a whole file with READ calls of `chunk` bytes (bounded by
    /// `max_bytes`).
    pub fn read_all(&mut self, fh: &[u8], chunk: u32, max_bytes: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            ensure!(
                out.len() as u64 <= max_bytes,
                "file longer than {max_bytes} bytes"
            );
            let r = match self.read(fh, out.len() as u64, chunk)? {
                Ok(r) => r,
                Err(s) => bail!("READ at {} failed with nfsstat3 {s}", out.len()),
            };
            let n = r.data.len();
            out.extend_from_slice(&r.data);
            if r.eof {
                return Ok(out);
            }
            ensure!(
                n > 0,
                "READ returned 0 bytes without eof at offset {}",
                out.len()
            );
        }
    }

    pub fn readdir_page(
        &mut self,
        dir: &[u8],
        cookie: u64,
        verf: [u8; 8],
        count: u32,
    ) -> Result<NfsResult<DirPage>> {
        let args = XdrWriter::new()
            .opaque(dir)
            .u64(cookie)
            .fixed(&verf)
            .u32(count)
            .finish();
        let res = self.nfs(NFSPROC3_READDIR, &args)?;
        decode_readdir(&res, false)
    }

    pub fn readdirplus_page(
        &mut self,
        dir: &[u8],
        cookie: u64,
        verf: [u8; 8],
        dircount: u32,
        maxcount: u32,
    ) -> Result<NfsResult<DirPage>> {
        let args = XdrWriter::new()
            .opaque(dir)
            .u64(cookie)
            .fixed(&verf)
            .u32(dircount)
            .u32(maxcount)
            .finish();
        let res = self.nfs(NFSPROC3_READDIRPLUS, &args)?;
        decode_readdir(&res, true)
    }

    /// CREATE `name` in `dir` (UNCHECKED, or GUARDED with `guarded`):
    /// the new handle.
    pub fn create(&mut self, dir: &[u8], name: &[u8], guarded: bool) -> Result<NfsResult<Vec<u8>>> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name).u32(guarded as u32);
        // sattr3: nothing set.
        w.bool(false)
            .bool(false)
            .bool(false)
            .bool(false)
            .u32(0)
            .u32(0);
        let res = self.nfs(NFSPROC3_CREATE, &w.finish())?;
        decode_new_handle(&res)
    }

    /// MKDIR `name` in `dir`: the new handle.
    pub fn mkdir(&mut self, dir: &[u8], name: &[u8]) -> Result<NfsResult<Vec<u8>>> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name);
        w.bool(false)
            .bool(false)
            .bool(false)
            .bool(false)
            .u32(0)
            .u32(0);
        let res = self.nfs(NFSPROC3_MKDIR, &w.finish())?;
        decode_new_handle(&res)
    }

    /// WRITE `data` at `offset`; `stable`: 0 UNSTABLE, 1 DATA_SYNC, 2
    /// FILE_SYNC. Returns (count, committed, verifier).
    pub fn write(
        &mut self,
        fh: &[u8],
        offset: u64,
        data: &[u8],
        stable: u32,
    ) -> Result<NfsResult<(u32, u32, [u8; 8])>> {
        let args = XdrWriter::new()
            .opaque(fh)
            .u64(offset)
            .u32(data.len() as u32)
            .u32(stable)
            .opaque(data)
            .finish();
        let res = self.nfs(NFSPROC3_WRITE, &args)?;
        let mut r = XdrReader::new(&res);
        let status = r.u32()?;
        skip_wcc(&mut r)?;
        if status != NFS3_OK {
            r.expect_end()?;
            return Ok(Err(status));
        }
        let count = r.u32()?;
        let committed = r.u32()?;
        let verf: [u8; 8] = r.fixed(8)?.try_into().unwrap();
        r.expect_end()?;
        Ok(Ok((count, committed, verf)))
    }

    /// COMMIT the whole file: the write verifier.
    pub fn commit(&mut self, fh: &[u8]) -> Result<NfsResult<[u8; 8]>> {
        let args = XdrWriter::new().opaque(fh).u64(0).u32(0).finish();
        let res = self.nfs(NFSPROC3_COMMIT, &args)?;
        let mut r = XdrReader::new(&res);
        let status = r.u32()?;
        skip_wcc(&mut r)?;
        if status != NFS3_OK {
            r.expect_end()?;
            return Ok(Err(status));
        }
        let verf: [u8; 8] = r.fixed(8)?.try_into().unwrap();
        r.expect_end()?;
        Ok(Ok(verf))
    }

    /// RENAME `from_dir/from` to `to_dir/to`.
    pub fn rename(
        &mut self,
        from_dir: &[u8],
        from: &[u8],
        to_dir: &[u8],
        to: &[u8],
    ) -> Result<NfsResult<()>> {
        let args = XdrWriter::new()
            .opaque(from_dir)
            .opaque(from)
            .opaque(to_dir)
            .opaque(to)
            .finish();
        let res = self.nfs(NFSPROC3_RENAME, &args)?;
        let mut r = XdrReader::new(&res);
        let status = r.u32()?;
        skip_wcc(&mut r)?;
        skip_wcc(&mut r)?;
        r.expect_end()?;
        Ok(if status == NFS3_OK {
            Ok(())
        } else {
            Err(status)
        })
    }

    /// REMOVE (or with `dir`, RMDIR) `name` in `dir_fh`.
    pub fn remove(&mut self, dir_fh: &[u8], name: &[u8], dir: bool) -> Result<NfsResult<()>> {
        let proc_ = if dir { NFSPROC3_RMDIR } else { NFSPROC3_REMOVE };
        let res = self.nfs(proc_, &args_lookup(dir_fh, name))?;
        let mut r = XdrReader::new(&res);
        let status = r.u32()?;
        skip_wcc(&mut r)?;
        r.expect_end()?;
        Ok(if status == NFS3_OK {
            Ok(())
        } else {
            Err(status)
        })
    }

    /// Every entry of a directory, paging with READDIR (`plus == false`) or
    /// READDIRPLUS, at most `max_pages` pages.
    pub fn list_dir(
        &mut self,
        dir: &[u8],
        plus: bool,
        page_bytes: u32,
        max_pages: usize,
    ) -> Result<(Vec<DirEntry>, usize)> {
        let mut all = Vec::new();
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        for page_no in 0..max_pages {
            let page = if plus {
                self.readdirplus_page(dir, cookie, verf, page_bytes, page_bytes)?
            } else {
                self.readdir_page(dir, cookie, verf, page_bytes)?
            };
            let page = page.map_err(|s| {
                anyhow!(
                    "READDIR{} page {page_no} failed with nfsstat3 {s}",
                    if plus { "PLUS" } else { "" }
                )
            })?;
            ensure!(
                !page.entries.is_empty() || page.eof,
                "directory page {page_no} has no entries and no eof"
            );
            if let Some(last) = page.entries.last() {
                cookie = last.cookie;
            }
            verf = page.cookieverf;
            let eof = page.eof;
            all.extend(page.entries);
            if eof {
                return Ok((all, page_no + 1));
            }
        }
        bail!("directory listing did not reach eof within {max_pages} pages")
    }
}

/// A second, well-behaved client that must keep being served while another
/// connection misbehaves.
pub struct Bystander {
    client: NfsClient,
    root: Vec<u8>,
    root_fileid: u64,
}

impl Bystander {
    pub fn new(addr: SocketAddr) -> Bystander {
        let mut client = NfsClient::connect(addr).expect("bystander: connect");
        let root = client.mount_root().expect("bystander: MNT /");
        let attr = client
            .getattr(&root)
            .expect("bystander: GETATTR root")
            .unwrap_or_else(|s| panic!("bystander: GETATTR root: nfsstat3 {s}"));
        Bystander {
            client,
            root,
            root_fileid: attr.fileid,
        }
    }

    /// NULL and GETATTR of the root succeed, on the same connection as
    /// before.
    pub fn check(&mut self, after: &str) {
        self.client
            .null()
            .unwrap_or_else(|e| panic!("bystander NULL failed after {after}: {e:#}"));
        let attr = self
            .client
            .getattr(&self.root)
            .unwrap_or_else(|e| panic!("bystander GETATTR failed after {after}: {e:#}"))
            .unwrap_or_else(|s| panic!("bystander GETATTR returned nfsstat3 {s} after {after}"));
        assert_eq!(
            attr.ftype, NF3DIR,
            "root is not a directory (after {after})"
        );
        assert_eq!(
            attr.fileid, self.root_fileid,
            "root fileid changed (after {after})"
        );
    }

    pub fn root(&self) -> &[u8] {
        &self.root
    }
}
