//! A minimal blocking NFSv3 client for the benchmark's walkers and readers:
//! MOUNT's MNT and NFS's GETATTR, LOOKUP, READ, READDIR and READDIRPLUS over
//! one TCP connection with AUTH_SYS, one call in flight (as a walker that
//! waits for each page is).
//!
//! ONC RPC (RFC 5531) with record marking; XDR (RFC 4506); NFSv3 and
//! MOUNT v3 (RFC 1813). Only what the walkers read is decoded; the rest is
//! skipped by its fixed size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

pub const NFS_PROGRAM: u32 = 100_003;
pub const MOUNT_PROGRAM: u32 = 100_005;
const NFSPROC3_GETATTR: u32 = 1;
const NFSPROC3_LOOKUP: u32 = 3;
const NFSPROC3_READ: u32 = 6;
const NFSPROC3_READDIR: u32 = 16;
const NFSPROC3_READDIRPLUS: u32 = 17;
const MOUNTPROC3_MNT: u32 = 1;
const AUTH_SYS: u32 = 1;
const LAST_FRAGMENT: u32 = 1 << 31;
/// Largest reply accepted (a READDIRPLUS reply is at most its maxcount).
const REPLY_BYTES_MAX: usize = 4 << 20;
/// Room in a READ reply for everything but the data: RPC reply header with
/// its verifier (at most 400 bytes), status, post-op attributes, count, eof
/// and the data's length.
const READ_REPLY_OVERHEAD_BYTES: usize = 1024;
/// Largest `count` [`NfsClient::read`] asks for, so that the reply fits
/// [`REPLY_BYTES_MAX`].
pub const READ_BYTES_MAX: u32 = (REPLY_BYTES_MAX - READ_REPLY_OVERHEAD_BYTES) as u32;
const FHSIZE3_MAX: usize = 64;
/// Bytes of a fattr3.
const FATTR3_BYTES: usize = 84;
pub const NF3REG: u32 = 1;
pub const NF3DIR: u32 = 2;

/// An NFS status other than NFS3_OK (or a MOUNT status other than 0).
#[derive(Debug)]
pub struct Status(pub u32);

/// The attributes the walkers use.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ftype: u32,
    pub size: u64,
    pub fileid: u64,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Option<Attr>,
    pub fh: Option<Vec<u8>>,
}

/// A LOOKUP result: the handle and, when the server sent them, the
/// attributes.
pub type Found = (Vec<u8>, Option<Attr>);

/// What a READ returned besides its data.
#[derive(Debug, Clone, Copy)]
pub struct ReadReply {
    /// Bytes of data (appended to the caller's buffer).
    pub bytes: usize,
    /// The data reaches the end of the file.
    pub eof: bool,
    /// The file's attributes after the read, when the server sent them.
    pub attr: Option<Attr>,
}

#[derive(Debug)]
pub struct DirPage {
    pub verf: [u8; 8],
    pub entries: Vec<Entry>,
    pub eof: bool,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn fixed(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        let pad = (4 - b.len() % 4) % 4;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn opaque(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32).fixed(b)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(
            self.pos + n <= self.buf.len(),
            "reply truncated at byte {} (wanted {n} more)",
            self.pos
        );
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => bail!("bad XDR bool {v}"),
        }
    }
    fn opaque(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        ensure!(n <= max, "opaque of {n} bytes (limit {max})");
        let s = self.take(n)?;
        self.take((4 - n % 4) % 4)?;
        Ok(s)
    }
    fn fattr(&mut self) -> Result<Attr> {
        let raw = self.take(FATTR3_BYTES)?;
        let be32 = |o: usize| u32::from_be_bytes(raw[o..o + 4].try_into().expect("4"));
        let be64 = |o: usize| u64::from_be_bytes(raw[o..o + 8].try_into().expect("8"));
        // type, mode, nlink, uid, gid, size@20, used@28, rdev@36, fsid@44, fileid@52
        Ok(Attr {
            ftype: be32(0),
            size: be64(20),
            fileid: be64(52),
        })
    }
    fn post_op_attr(&mut self) -> Result<Option<Attr>> {
        if self.bool()? {
            Ok(Some(self.fattr()?))
        } else {
            Ok(None)
        }
    }
}

pub struct NfsClient {
    stream: TcpStream,
    xid: u32,
    /// The last reply record, reused from call to call (at most
    /// [`REPLY_BYTES_MAX`]).
    reply: Vec<u8>,
}

impl NfsClient {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connect to NFS at {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            xid: std::process::id().wrapping_mul(0x9e37_79b9) | 1,
            reply: Vec::new(),
        })
    }

    /// One call; the results (what follows the accepted reply's header).
    fn call(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<Vec<u8>> {
        let start = self.call_in_place(prog, vers, proc_, args)?;
        Ok(self.reply[start..].to_vec())
    }

    /// One call, leaving the reply in `self.reply`; the offset of the
    /// results in it.
    fn call_in_place(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<usize> {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let mut w = Writer(Vec::with_capacity(128 + args.len()));
        w.u32(0)
            .u32(xid)
            .u32(0)
            .u32(2)
            .u32(prog)
            .u32(vers)
            .u32(proc_);
        // AUTH_SYS: stamp, machine name, uid 0, gid 0, no extra groups.
        let mut cred = Writer(Vec::new());
        cred.u32(0).opaque(b"bench").u32(0).u32(0).u32(0);
        w.u32(AUTH_SYS).opaque(&cred.0);
        w.u32(0).u32(0); // verifier AUTH_NONE
        w.0.extend_from_slice(args);
        let len = (w.0.len() - 4) as u32;
        w.0[..4].copy_from_slice(&(len | LAST_FRAGMENT).to_be_bytes());
        self.stream.write_all(&w.0).context("send RPC call")?;
        self.recv_record()?;
        let mut r = Reader {
            buf: &self.reply,
            pos: 0,
        };
        ensure!(r.u32()? == xid, "reply for another call");
        ensure!(r.u32()? == 1, "not a reply");
        ensure!(r.u32()? == 0, "RPC call denied");
        let _verf_flavor = r.u32()?;
        r.opaque(400)?;
        let accept = r.u32()?;
        ensure!(accept == 0, "RPC call not accepted (accept_stat {accept})");
        Ok(r.pos)
    }

    /// Reads one record (all its fragments) into `self.reply`.
    fn recv_record(&mut self) -> Result<()> {
        let record = &mut self.reply;
        record.clear();
        loop {
            let mut mark = [0u8; 4];
            self.stream
                .read_exact(&mut mark)
                .context("read RPC record mark")?;
            let mark = u32::from_be_bytes(mark);
            let len = (mark & !LAST_FRAGMENT) as usize;
            ensure!(
                record.len() + len <= REPLY_BYTES_MAX,
                "RPC reply over {REPLY_BYTES_MAX} bytes"
            );
            let start = record.len();
            record.resize(start + len, 0);
            self.stream
                .read_exact(&mut record[start..])
                .context("read RPC record")?;
            if mark & LAST_FRAGMENT != 0 {
                return Ok(());
            }
        }
    }

    /// MOUNT v3 MNT of `path`: the root handle.
    pub fn mount(&mut self, path: &str) -> Result<Vec<u8>> {
        let mut w = Writer(Vec::new());
        w.opaque(path.as_bytes());
        let res = self.call(MOUNT_PROGRAM, 3, MOUNTPROC3_MNT, &w.0)?;
        let mut r = Reader { buf: &res, pos: 0 };
        let status = r.u32()?;
        ensure!(status == 0, "MNT {path} failed with mountstat3 {status}");
        Ok(r.opaque(FHSIZE3_MAX)?.to_vec())
    }

    pub fn getattr(&mut self, fh: &[u8]) -> Result<Result<Attr, Status>> {
        let mut w = Writer(Vec::new());
        w.opaque(fh);
        let res = self.call(NFS_PROGRAM, 3, NFSPROC3_GETATTR, &w.0)?;
        let mut r = Reader { buf: &res, pos: 0 };
        let status = r.u32()?;
        if status != 0 {
            return Ok(Err(Status(status)));
        }
        Ok(Ok(r.fattr()?))
    }

    /// LOOKUP: the handle and (when returned) the attributes.
    pub fn lookup(&mut self, dir: &[u8], name: &[u8]) -> Result<Result<Found, Status>> {
        let mut w = Writer(Vec::new());
        w.opaque(dir).opaque(name);
        let res = self.call(NFS_PROGRAM, 3, NFSPROC3_LOOKUP, &w.0)?;
        let mut r = Reader { buf: &res, pos: 0 };
        let status = r.u32()?;
        if status != 0 {
            return Ok(Err(Status(status)));
        }
        let fh = r.opaque(FHSIZE3_MAX)?.to_vec();
        let attr = r.post_op_attr()?;
        Ok(Ok((fh, attr)))
    }

    /// LOOKUP each `/`-separated component of `path` from `root`.
    pub fn lookup_path(&mut self, root: &[u8], path: &str) -> Result<Vec<u8>> {
        let mut fh = root.to_vec();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            fh = match self.lookup(&fh, comp.as_bytes())? {
                Ok((fh, _)) => fh,
                Err(Status(s)) => bail!("LOOKUP {comp:?} of {path:?} failed with nfsstat3 {s}"),
            };
        }
        Ok(fh)
    }

    /// READ of at most `count` bytes (up to [`READ_BYTES_MAX`]) at
    /// `offset`; the data is appended to `out`, which the caller can reuse
    /// from call to call.
    pub fn read(
        &mut self,
        fh: &[u8],
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<Result<ReadReply, Status>> {
        ensure!(
            count <= READ_BYTES_MAX,
            "READ of {count} bytes (limit {READ_BYTES_MAX})"
        );
        let args = read_args(fh, offset, count);
        let start = self.call_in_place(NFS_PROGRAM, 3, NFSPROC3_READ, &args)?;
        decode_read(&self.reply[start..], count, out)
    }

    /// One READDIR (`plus` false) or READDIRPLUS page.
    pub fn readdir_page(
        &mut self,
        dir: &[u8],
        plus: bool,
        cookie: u64,
        verf: [u8; 8],
        count: u32,
    ) -> Result<Result<DirPage, Status>> {
        let mut w = Writer(Vec::new());
        w.opaque(dir).u64(cookie).fixed(&verf).u32(count);
        if plus {
            w.u32(count);
        }
        let proc_ = if plus {
            NFSPROC3_READDIRPLUS
        } else {
            NFSPROC3_READDIR
        };
        let start = self.call_in_place(NFS_PROGRAM, 3, proc_, &w.0)?;
        decode_dir_page(&self.reply[start..], plus)
    }

    /// Reads all of `dir` with READDIR (`plus` false) or READDIRPLUS pages
    /// of `page_bytes` (both dircount and maxcount), one call in flight,
    /// calling `each` for every entry in the order returned (`.` and `..`
    /// included) until eof or the first error `each` returns. Fails after
    /// `pages_max` pages without eof. Returns the number of calls.
    pub fn readdir_all(
        &mut self,
        dir: &[u8],
        plus: bool,
        page_bytes: u32,
        pages_max: u64,
        mut each: impl FnMut(&Entry) -> Result<()>,
    ) -> Result<u64> {
        let op = if plus { "READDIRPLUS" } else { "READDIR" };
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        for calls in 1..=pages_max {
            let page = match self.readdir_page(dir, plus, cookie, verf, page_bytes)? {
                Ok(p) => p,
                Err(Status(s)) => bail!("{op} at cookie {cookie} failed with nfsstat3 {s}"),
            };
            ensure!(
                !page.entries.is_empty() || page.eof,
                "{op} reply without entries and without eof"
            );
            for e in &page.entries {
                each(e)?;
            }
            if page.eof {
                return Ok(calls);
            }
            cookie = page.entries.last().map_or(cookie, |e| e.cookie);
            verf = page.verf;
        }
        bail!("{op} did not reach eof in {pages_max} pages")
    }
}

/// The arguments of READ3.
fn read_args(fh: &[u8], offset: u64, count: u32) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(fh.len() + 20));
    w.opaque(fh).u64(offset).u32(count);
    w.0
}

/// Decodes READ3res (after the RPC header), appending the data to `out`;
/// `requested` is the count asked for, which the data may not exceed.
fn decode_read(res: &[u8], requested: u32, out: &mut Vec<u8>) -> Result<Result<ReadReply, Status>> {
    let mut r = Reader { buf: res, pos: 0 };
    let status = r.u32()?;
    let attr = r.post_op_attr()?;
    if status != 0 {
        return Ok(Err(Status(status)));
    }
    let count = r.u32()?;
    let eof = r.bool()?;
    let data = r.opaque(requested as usize)?;
    ensure!(
        data.len() == count as usize,
        "READ reply says {count} bytes but carries {}",
        data.len()
    );
    out.extend_from_slice(data);
    Ok(Ok(ReadReply {
        bytes: data.len(),
        eof,
        attr,
    }))
}

/// Decodes READDIR3res (`plus` false) or READDIRPLUS3res.
fn decode_dir_page(res: &[u8], plus: bool) -> Result<Result<DirPage, Status>> {
    let mut r = Reader { buf: res, pos: 0 };
    let status = r.u32()?;
    r.post_op_attr()?;
    if status != 0 {
        return Ok(Err(Status(status)));
    }
    let verf: [u8; 8] = r.take(8)?.try_into().expect("8");
    let mut entries = Vec::new();
    while r.bool()? {
        let fileid = r.u64()?;
        let name = r.opaque(4096)?.to_vec();
        let cookie = r.u64()?;
        let (attr, fh) = if plus {
            let attr = r.post_op_attr()?;
            let fh = if r.bool()? {
                Some(r.opaque(FHSIZE3_MAX)?.to_vec())
            } else {
                None
            };
            (attr, fh)
        } else {
            (None, None)
        };
        entries.push(Entry {
            fileid,
            name,
            cookie,
            attr,
            fh,
        });
    }
    let eof = r.bool()?;
    Ok(Ok(DirPage { verf, entries, eof }))
}

/// The libnfs URL of a server's export root.
pub fn libnfs_url(port: u16) -> String {
    format!("nfs://127.0.0.1/?nfsport={port}&mountport={port}&version=3")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdr_round_trip_of_a_readdir_entry() {
        let mut w = Writer(Vec::new());
        w.u32(1).u64(42).opaque(b"abcde").u64(7);
        let mut r = Reader { buf: &w.0, pos: 0 };
        assert!(r.bool().unwrap());
        assert_eq!(r.u64().unwrap(), 42);
        assert_eq!(r.opaque(10).unwrap(), b"abcde");
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.pos, w.0.len());
        let mut r = Reader { buf: &w.0, pos: 0 };
        r.u32().unwrap();
        r.u64().unwrap();
        assert!(r.opaque(4).is_err(), "limit enforced");
    }

    /// A fattr3 of a regular file of `size` bytes with file id `fileid`.
    fn fattr(w: &mut Writer, size: u64, fileid: u64) {
        let mut raw = [0u8; FATTR3_BYTES];
        raw[..4].copy_from_slice(&NF3REG.to_be_bytes());
        raw[20..28].copy_from_slice(&size.to_be_bytes());
        raw[52..60].copy_from_slice(&fileid.to_be_bytes());
        w.fixed(&raw);
    }

    #[test]
    fn read_args_are_handle_offset_count() {
        let args = read_args(&[1, 2, 3, 4, 5], 0x1_0000_0002, 4096);
        let mut want = Writer(Vec::new());
        want.u32(5)
            .fixed(&[1, 2, 3, 4, 5])
            .u64(0x1_0000_0002)
            .u32(4096);
        assert_eq!(args, want.0);
        assert_eq!(args.len(), 4 + 8 + 8 + 4, "handle padded to 4 bytes");
    }

    #[test]
    fn read_reply_is_appended_to_the_buffer() {
        let mut w = Writer(Vec::new());
        w.u32(0).u32(1);
        fattr(&mut w, 5, 77);
        w.u32(5).u32(1).opaque(b"hello");
        let mut out = b"xy".to_vec();
        let reply = decode_read(&w.0, 8, &mut out).unwrap().unwrap();
        assert_eq!(out, b"xyhello");
        assert_eq!(reply.bytes, 5);
        assert!(reply.eof);
        let attr = reply.attr.unwrap();
        assert_eq!((attr.ftype, attr.size, attr.fileid), (NF3REG, 5, 77));

        // Without attributes, not at the end.
        let mut w = Writer(Vec::new());
        w.u32(0).u32(0).u32(3).u32(0).opaque(b"abc");
        out.clear();
        let reply = decode_read(&w.0, 3, &mut out).unwrap().unwrap();
        assert_eq!((out.as_slice(), reply.eof), (&b"abc"[..], false));
        assert!(reply.attr.is_none());
    }

    #[test]
    fn read_reply_errors() {
        // NFS3ERR_STALE with no attributes.
        let mut w = Writer(Vec::new());
        w.u32(70).u32(0);
        let mut out = Vec::new();
        assert!(matches!(
            decode_read(&w.0, 8, &mut out).unwrap(),
            Err(Status(70))
        ));
        // More data than asked for.
        let mut w = Writer(Vec::new());
        w.u32(0).u32(0).u32(5).u32(1).opaque(b"hello");
        assert!(decode_read(&w.0, 4, &mut out).is_err());
        // A count that disagrees with the data.
        let mut w = Writer(Vec::new());
        w.u32(0).u32(0).u32(4).u32(1).opaque(b"hello");
        assert!(decode_read(&w.0, 8, &mut out).is_err());
        // Truncated.
        let mut w = Writer(Vec::new());
        w.u32(0).u32(0).u32(5).u32(1).u32(5).fixed(b"he");
        assert!(decode_read(&w.0, 8, &mut out).is_err());
        assert!(out.is_empty(), "nothing appended on failure");
    }

    #[test]
    fn readdirplus_page_is_decoded() {
        let mut w = Writer(Vec::new());
        w.u32(0).u32(0).fixed(&[9; 8]);
        // `.` with neither attributes nor handle, then a file with both.
        w.u32(1).u64(1).opaque(b".").u64(1).u32(0).u32(0);
        w.u32(1).u64(42).opaque(b"f0000001").u64(2).u32(1);
        fattr(&mut w, 0, 42);
        w.u32(1).opaque(&[7; 12]);
        w.u32(0).u32(1);
        let page = decode_dir_page(&w.0, true).unwrap().unwrap();
        assert_eq!(page.verf, [9; 8]);
        assert!(page.eof);
        assert_eq!(page.entries.len(), 2);
        let e = &page.entries[1];
        assert_eq!(
            (e.name.as_slice(), e.cookie, e.fileid),
            (&b"f0000001"[..], 2, 42)
        );
        assert_eq!(e.attr.unwrap().fileid, 42);
        assert_eq!(e.fh.as_deref(), Some(&[7u8; 12][..]));
        assert!(page.entries[0].attr.is_none() && page.entries[0].fh.is_none());
    }
}
