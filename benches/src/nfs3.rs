//! A minimal blocking NFSv3 client for the benchmark's walkers: MOUNT's
//! MNT and NFS's GETATTR, LOOKUP, READDIR and READDIRPLUS over one TCP
//! connection with AUTH_SYS, one call in flight (as a walker that waits for
//! each page is).
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
const NFSPROC3_READDIR: u32 = 16;
const NFSPROC3_READDIRPLUS: u32 = 17;
const MOUNTPROC3_MNT: u32 = 1;
const AUTH_SYS: u32 = 1;
const LAST_FRAGMENT: u32 = 1 << 31;
/// Largest reply accepted (a READDIRPLUS reply is at most its maxcount).
const REPLY_BYTES_MAX: usize = 4 << 20;
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
        })
    }

    fn call(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<Vec<u8>> {
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
        let record = self.recv_record()?;
        let mut r = Reader {
            buf: &record,
            pos: 0,
        };
        ensure!(r.u32()? == xid, "reply for another call");
        ensure!(r.u32()? == 1, "not a reply");
        ensure!(r.u32()? == 0, "RPC call denied");
        let _verf_flavor = r.u32()?;
        r.opaque(400)?;
        let accept = r.u32()?;
        ensure!(accept == 0, "RPC call not accepted (accept_stat {accept})");
        Ok(record[r.pos..].to_vec())
    }

    fn recv_record(&mut self) -> Result<Vec<u8>> {
        let mut record = Vec::new();
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
                return Ok(record);
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
        let res = self.call(NFS_PROGRAM, 3, proc_, &w.0)?;
        let mut r = Reader { buf: &res, pos: 0 };
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
}
