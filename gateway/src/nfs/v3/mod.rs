//! NFS version 3 (RFC 1813), program 100003.
//!
//! Each procedure: decode arguments (borrowing from the record), resolve
//! handles, call the vfs, encode the result into the reply buffer. The
//! procedures that change things are in [`write`]; without write-back they
//! answer NFS3ERR_ROFS.

mod write;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::io::buf;
use crate::nfs::fh::{self, FH_BYTES};
use crate::nfs::xdr::{padded_len, Decoder, Encoder, XdrResult};
use crate::rpc::{CallContext, ProcOutcome, ReplyBody};
use crate::store::StoreError;
use crate::vfs::{Attr, FsError, Node, NodeKind};

pub const PROGRAM: u32 = 100003;
pub const VERSION: u32 = 3;

/// Largest handle a v3 client may send (NFS3_FHSIZE).
const FHSIZE3: u32 = 64;
/// Largest READ served and WRITE accepted (bytes).
pub const IO_BYTES_MAX: u32 = 1 << 20;
/// Largest READDIR/READDIRPLUS reply built (bytes).
pub const DIR_REPLY_BYTES_MAX: u32 = 1 << 20;
/// Preferred READDIR size advertised in FSINFO.
const DTPREF: u32 = 64 * 1024;

// nfsstat3 values.
const NFS3_OK: u32 = 0;
const NFS3ERR_PERM: u32 = 1;
const NFS3ERR_IO: u32 = 5;
const NFS3ERR_NOENT: u32 = 2;
const NFS3ERR_ACCES: u32 = 13;
const NFS3ERR_EXIST: u32 = 17;
const NFS3ERR_XDEV: u32 = 18;
const NFS3ERR_FBIG: u32 = 27;
const NFS3ERR_NOSPC: u32 = 28;
const NFS3ERR_DQUOT: u32 = 69;
const NFS3ERR_NOTEMPTY: u32 = 66;
const NFS3ERR_NOT_SYNC: u32 = 10002;
const NFS3ERR_NOTDIR: u32 = 20;
const NFS3ERR_ISDIR: u32 = 21;
const NFS3ERR_INVAL: u32 = 22;
const NFS3ERR_ROFS: u32 = 30;
const NFS3ERR_NAMETOOLONG: u32 = 63;
const NFS3ERR_STALE: u32 = 70;
const NFS3ERR_BADHANDLE: u32 = 10001;
const NFS3ERR_BAD_COOKIE: u32 = 10003;
const NFS3ERR_NOTSUPP: u32 = 10004;
const NFS3ERR_TOOSMALL: u32 = 10005;
const NFS3ERR_SERVERFAULT: u32 = 10006;
const NFS3ERR_JUKEBOX: u32 = 10008;

// ACCESS bits.
const ACCESS3_READ: u32 = 0x01;
const ACCESS3_LOOKUP: u32 = 0x02;
const ACCESS3_EXECUTE: u32 = 0x20;

/// The one table from file system errors to NFSv3 status codes.
pub fn status_of(e: &FsError) -> u32 {
    match e {
        FsError::NotFound => NFS3ERR_NOENT,
        FsError::NotDir => NFS3ERR_NOTDIR,
        FsError::IsDir => NFS3ERR_ISDIR,
        FsError::NameTooLong => NFS3ERR_NAMETOOLONG,
        FsError::InvalidName(_) => NFS3ERR_INVAL,
        FsError::BadHandle => NFS3ERR_BADHANDLE,
        FsError::Stale => NFS3ERR_STALE,
        FsError::BadCookie => NFS3ERR_BAD_COOKIE,
        FsError::ReadOnly => NFS3ERR_ROFS,
        FsError::NotSupported => NFS3ERR_NOTSUPP,
        FsError::TooManyEntries(_) => NFS3ERR_IO,
        FsError::Exists => NFS3ERR_EXIST,
        FsError::NotStaged => NFS3ERR_JUKEBOX,
        FsError::Access => NFS3ERR_ACCES,
        FsError::Perm => NFS3ERR_PERM,
        FsError::NotEmpty => NFS3ERR_NOTEMPTY,
        FsError::Delay => NFS3ERR_JUKEBOX,
        FsError::TooBig => NFS3ERR_FBIG,
        FsError::Invalid(_) => NFS3ERR_INVAL,
        FsError::NotSync => NFS3ERR_NOT_SYNC,
        FsError::CrossDevice => NFS3ERR_XDEV,
        FsError::Local { source, .. } => match source.raw_os_error() {
            Some(libc::ENOSPC) => NFS3ERR_NOSPC,
            Some(libc::EDQUOT) => NFS3ERR_DQUOT,
            Some(libc::EFBIG) => NFS3ERR_FBIG,
            Some(libc::EPERM) => NFS3ERR_PERM,
            _ => NFS3ERR_IO,
        },
        FsError::Journal(j) if j.is_no_space() => NFS3ERR_NOSPC,
        FsError::Journal(_) => NFS3ERR_IO,
        FsError::Store(StoreError::NotFound { .. }) => NFS3ERR_NOENT,
        FsError::Store(StoreError::InvalidKey { .. }) => NFS3ERR_INVAL,
        FsError::Store(StoreError::Io { .. }) => NFS3ERR_IO,
        FsError::Store(StoreError::PreconditionFailed { .. }) => NFS3ERR_IO,
        FsError::Store(StoreError::Unavailable { .. }) => NFS3ERR_JUKEBOX,
        FsError::Store(StoreError::Down { .. }) => NFS3ERR_IO,
        FsError::Store(StoreError::Denied { .. }) => NFS3ERR_ACCES,
        FsError::Store(StoreError::Config { .. }) => NFS3ERR_IO,
        FsError::Handles(_) => NFS3ERR_SERVERFAULT,
    }
}

fn log_error(proc_name: &str, e: &FsError) {
    match e {
        FsError::Store(StoreError::Io { .. })
        | FsError::Handles(_)
        | FsError::TooManyEntries(_) => {
            tracing::warn!(procedure = proc_name, error = %e, "request failed")
        }
        _ => tracing::debug!(procedure = proc_name, error = %e, "request failed"),
    }
}

fn nfstime(e: &mut Encoder<'_>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    e.u32(d.as_secs().min(u32::MAX as u64) as u32)
        .u32(d.subsec_nanos());
}

/// Bytes of an encoded fattr3.
const FATTR3_BYTES: usize = 84;

fn fattr3(e: &mut Encoder<'_>, fsid: u64, a: &Attr) {
    let (ftype, nlink) = match a.kind {
        NodeKind::File => (1u32, 1u32),
        NodeKind::Dir => (2, 2),
        NodeKind::Symlink => (5, 1),
    };
    e.u32(ftype)
        .u32(a.mode & 0o7777)
        .u32(nlink)
        .u32(a.uid)
        .u32(a.gid);
    e.u64(a.size).u64(a.size.div_ceil(4096) * 4096);
    e.u32(0).u32(0); // rdev
    e.u64(fsid).u64(a.fileid);
    nfstime(e, a.atime);
    nfstime(e, a.mtime);
    nfstime(e, a.ctime);
}

fn post_op_attr(e: &mut Encoder<'_>, fsid: u64, a: Option<&Attr>) {
    match a {
        Some(a) => {
            e.bool(true);
            fattr3(e, fsid, a);
        }
        None => {
            e.bool(false);
        }
    }
}

struct Ctx<'c, 'a> {
    call: &'c CallContext<'a>,
    export_id: u32,
    fsid: u64,
}

impl Ctx<'_, '_> {
    fn node(&self, handle: &[u8]) -> Result<std::sync::Arc<Node>, FsError> {
        let (id, kind) = fh::decode(self.export_id, handle)?;
        let node = self.call.vfs.node(id)?;
        if node.kind() != kind {
            return Err(FsError::Stale);
        }
        Ok(node)
    }
}

fn handle_arg<'a>(d: &mut Decoder<'a>) -> XdrResult<&'a [u8]> {
    d.opaque(FHSIZE3)
}

/// Dispatch one NFSv3 call. The reply header is already in `out`.
pub async fn dispatch(
    call: &CallContext<'_>,
    proc_num: u32,
    args: &[u8],
    out: &mut Vec<u8>,
) -> ProcOutcome {
    let identity = call.vfs.handles().identity();
    let ctx = Ctx {
        call,
        export_id: identity.export_id,
        fsid: identity.export_id as u64,
    };
    let mut d = Decoder::new(args);
    let r = match proc_num {
        0 => Ok(()),
        1 => getattr(&ctx, &mut d, out).await,
        2 => write::setattr(&ctx, &mut d, out).await,
        3 => lookup(&ctx, &mut d, out).await,
        4 => access(&ctx, &mut d, out).await,
        5 => write::readlink(&ctx, &mut d, out).await,
        6 => read(&ctx, &mut d, out).await,
        7 => write::write(&ctx, &mut d, out).await,
        8 => write::create(&ctx, &mut d, out).await,
        9 => write::mkdir(&ctx, &mut d, out).await,
        10 => write::symlink(&ctx, &mut d, out).await,
        11 => write::mknod(&ctx, &mut d, out).await,
        12 => write::remove(&ctx, &mut d, out, false).await,
        13 => write::remove(&ctx, &mut d, out, true).await,
        14 => write::rename(&ctx, &mut d, out).await,
        15 => write::link(&ctx, &mut d, out).await,
        16 => readdir(&ctx, &mut d, out).await,
        17 => readdirplus(&ctx, &mut d, out).await,
        18 => fsstat(&ctx, &mut d, out).await,
        19 => fsinfo(&ctx, &mut d, out).await,
        20 => pathconf(&ctx, &mut d, out).await,
        21 => write::commit(&ctx, &mut d, out).await,
        _ => return ProcOutcome::ProcUnavail,
    };
    match r {
        Ok(()) => ProcOutcome::Done,
        Err(_) => ProcOutcome::GarbageArgs,
    }
}

async fn getattr(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let r = async {
        let n = ctx.node(h)?;
        ctx.call.vfs.getattr(&n).await
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            e.u32(NFS3_OK);
            fattr3(&mut e, ctx.fsid, &a);
        }
        Err(err) => {
            log_error("GETATTR", &err);
            e.u32(status_of(&err));
        }
    }
    Ok(())
}

async fn lookup(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    // filename3 is unbounded in the RFC; anything past 1 KiB is garbage.
    let name = d.string(1024)?;
    let vfs = &ctx.call.vfs;
    let dir = ctx.node(h);
    let (r, dir_attr) = match dir {
        Ok(dir) => {
            let r = vfs.lookup(&dir, name).await;
            let da = vfs.getattr(&dir).await.ok();
            (r, da)
        }
        Err(e) => (Err(e), None),
    };
    let mut e = Encoder::new(out);
    match r {
        Ok((node, attr)) => {
            e.u32(NFS3_OK).opaque(&fh::encode(ctx.export_id, &node));
            post_op_attr(&mut e, ctx.fsid, Some(&attr));
            post_op_attr(&mut e, ctx.fsid, dir_attr.as_ref());
        }
        Err(err) => {
            log_error("LOOKUP", &err);
            e.u32(status_of(&err));
            post_op_attr(&mut e, ctx.fsid, dir_attr.as_ref());
        }
    }
    Ok(())
}

async fn access(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let want = d.u32()?;
    let r = async {
        let n = ctx.node(h)?;
        ctx.call.vfs.getattr(&n).await
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            let allowed = access_bits(&a, ctx.call.auth, ctx.call.vfs.write_back().is_some());
            e.u32(NFS3_OK);
            post_op_attr(&mut e, ctx.fsid, Some(&a));
            e.u32(want & allowed);
        }
        Err(err) => {
            log_error("ACCESS", &err);
            e.u32(status_of(&err)).bool(false);
        }
    }
    Ok(())
}

/// What ACCESS grants: the mode bits for the caller (owner, group or
/// other; root may read and write anything and execute what anyone may),
/// write bits only on a writable export.
fn access_bits(a: &Attr, auth: &crate::rpc::msg::Auth, writable: bool) -> u32 {
    const ACCESS3_MODIFY: u32 = 0x04;
    const ACCESS3_EXTEND: u32 = 0x08;
    const ACCESS3_DELETE: u32 = 0x10;
    let (uid, gid, gids): (u32, u32, &[u32]) = match auth {
        crate::rpc::msg::Auth::Sys(s) => (s.uid, s.gid, &s.gids),
        crate::rpc::msg::Auth::None => (65534, 65534, &[]),
    };
    let m = a.mode;
    let (r, w, x) = if uid == 0 {
        (true, true, m & 0o111 != 0 || a.kind == NodeKind::Dir)
    } else {
        let bits = if uid == a.uid {
            (m >> 6) & 7
        } else if gid == a.gid || gids.contains(&a.gid) {
            (m >> 3) & 7
        } else {
            m & 7
        };
        (bits & 4 != 0, bits & 2 != 0, bits & 1 != 0)
    };
    let mut allowed = 0;
    if r {
        allowed |= ACCESS3_READ;
    }
    if writable && w {
        allowed |= ACCESS3_MODIFY | ACCESS3_EXTEND;
        if a.kind == NodeKind::Dir {
            allowed |= ACCESS3_DELETE;
        }
    }
    if x {
        allowed |= if a.kind == NodeKind::Dir {
            ACCESS3_LOOKUP | ACCESS3_EXECUTE
        } else {
            ACCESS3_EXECUTE
        };
    }
    allowed
}

/// A client for read-pattern tracking: its address (all its connections
/// and ports are one client).
fn client_id(ip: std::net::IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    h.finish()
}

/// status + post_op_attr(present) + count + eof + data length.
const READ_HEADER_BYTES: usize = 4 + 4 + FATTR3_BYTES + 4 + 4 + 4;

async fn read(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let offset = d.u64()?;
    let count = d.u32()?.min(IO_BYTES_MAX) as usize;
    let node = match ctx.node(h) {
        Ok(n) => n,
        Err(err) => {
            Encoder::new(out).u32(status_of(&err)).bool(false);
            return Ok(());
        }
    };
    let client = ctx.call.peer.map_or(0, |p| client_id(p.ip()));
    if let Some(r) = ctx.call.vfs.read_cached(&node, offset, count, client).await {
        let mut e = Encoder::new(out);
        match r {
            Ok((pieces, n, eof, attr)) => {
                e.u32(NFS3_OK);
                post_op_attr(&mut e, ctx.fsid, Some(&attr));
                e.u32(n as u32).bool(eof).u32(n as u32);
                *ctx.call.body.borrow_mut() = Some(ReplyBody {
                    pieces,
                    pad_bytes: padded_len(n) - n,
                });
            }
            Err(err) => {
                log_error("READ", &err);
                e.u32(status_of(&err)).bool(false);
            }
        }
        return Ok(());
    }
    // Build the reply in a pooled buffer: the data lands right behind the
    // header without a zero-fill or a fresh allocation.
    let base = out.len();
    let mut pooled = buf::take(base + READ_HEADER_BYTES + padded_len(count));
    pooled.set_len_uninit_free(base + READ_HEADER_BYTES + padded_len(count));
    pooled.vec()[..base].copy_from_slice(out);
    *out = pooled.into_vec();
    let r = ctx
        .call
        .vfs
        .read(
            &node,
            offset,
            &mut out[base + READ_HEADER_BYTES..base + READ_HEADER_BYTES + count],
        )
        .await;
    match r {
        Ok((n, eof, attr)) => {
            let mut header = Vec::with_capacity(READ_HEADER_BYTES);
            let mut e = Encoder::new(&mut header);
            e.u32(NFS3_OK);
            post_op_attr(&mut e, ctx.fsid, Some(&attr));
            e.u32(n as u32).bool(eof).u32(n as u32);
            debug_assert_eq!(header.len(), READ_HEADER_BYTES);
            out[base..base + READ_HEADER_BYTES].copy_from_slice(&header);
            let end = base + READ_HEADER_BYTES + n;
            out.truncate(end + (padded_len(n) - n));
            out[end..].fill(0);
        }
        Err(err) => {
            log_error("READ", &err);
            out.truncate(base);
            Encoder::new(out).u32(status_of(&err)).bool(false);
        }
    }
    Ok(())
}

struct DirArgs<'a> {
    handle: &'a [u8],
    cookie: u64,
    verf: &'a [u8],
}

fn cookie_verifier(export_id: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(b"tgv1");
    v[4..].copy_from_slice(&export_id.to_be_bytes());
    v
}

async fn readdir_common(
    ctx: &Ctx<'_, '_>,
    args: DirArgs<'_>,
    out: &mut Vec<u8>,
    plus: bool,
    dircount: usize,
    maxcount: usize,
) {
    let vfs = &ctx.call.vfs;
    let verf = cookie_verifier(ctx.export_id);
    let proc_name = if plus { "READDIRPLUS" } else { "READDIR" };
    let prep = async {
        let dir = ctx.node(args.handle)?;
        let dir_attr = vfs.getattr(&dir).await?;
        Ok::<_, FsError>((dir, dir_attr))
    }
    .await;
    let (dir, dir_attr) = match prep {
        Ok(v) => v,
        Err(err) => {
            log_error(proc_name, &err);
            Encoder::new(out).u32(status_of(&err)).bool(false);
            return;
        }
    };
    let fail = |out: &mut Vec<u8>, err: FsError| {
        log_error(proc_name, &err);
        let mut e = Encoder::new(out);
        e.u32(status_of(&err));
        post_op_attr(&mut e, ctx.fsid, Some(&dir_attr));
    };
    if dir.kind() != NodeKind::Dir {
        return fail(out, FsError::NotDir);
    }
    if args.cookie != 0 && args.verf != [0u8; 8] && args.verf != verf {
        return fail(out, FsError::BadCookie);
    }
    let base = out.len();
    let mut e = Encoder::new(out);
    e.u32(NFS3_OK);
    post_op_attr(&mut e, ctx.fsid, Some(&dir_attr));
    e.opaque_fixed(&verf);
    // Room for the list terminator and eof.
    let limit = base + maxcount.min(DIR_REPLY_BYTES_MAX as usize) - 8;
    let mut dir_bytes = 0usize;
    let mut emitted = 0usize;
    let r = vfs
        .readdir(&dir, args.cookie, |entry| {
            let name = entry.name().as_bytes();
            let info_bytes = 8 + 4 + padded_len(name.len()) + 8;
            let entry_bytes = 4
                + info_bytes
                + if plus {
                    4 + FATTR3_BYTES + 4 + 4 + FH_BYTES
                } else {
                    0
                };
            if e.len() + entry_bytes > limit || (plus && dir_bytes + info_bytes > dircount) {
                return false;
            }
            dir_bytes += info_bytes;
            e.bool(true).u64(entry.id).string(name).u64(entry.id);
            if plus {
                let attr = vfs.entry_attr(&dir.key, entry);
                post_op_attr(&mut e, ctx.fsid, Some(&attr));
                e.bool(true)
                    .opaque(&fh::encode_id(ctx.export_id, entry.id, entry.kind()));
            }
            emitted += 1;
            true
        })
        .await;
    match r {
        Ok(eof) if emitted > 0 || eof => {
            e.bool(false).bool(eof);
        }
        Ok(_) => {
            out.truncate(base);
            let mut e = Encoder::new(out);
            e.u32(NFS3ERR_TOOSMALL);
            post_op_attr(&mut e, ctx.fsid, Some(&dir_attr));
        }
        Err(err) => {
            out.truncate(base);
            fail(out, err);
        }
    }
}

async fn readdir(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let handle = handle_arg(d)?;
    let cookie = d.u64()?;
    let verf = d.opaque_fixed(8)?;
    let count = d.u32()? as usize;
    let args = DirArgs {
        handle,
        cookie,
        verf,
    };
    readdir_common(ctx, args, out, false, usize::MAX, count.max(64)).await;
    Ok(())
}

async fn readdirplus(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let handle = handle_arg(d)?;
    let cookie = d.u64()?;
    let verf = d.opaque_fixed(8)?;
    let dircount = d.u32()? as usize;
    let maxcount = d.u32()? as usize;
    let args = DirArgs {
        handle,
        cookie,
        verf,
    };
    readdir_common(ctx, args, out, true, dircount.max(64), maxcount.max(64)).await;
    Ok(())
}

async fn attr_only(ctx: &Ctx<'_, '_>, h: &[u8]) -> Result<Attr, FsError> {
    let n = ctx.node(h)?;
    ctx.call.vfs.getattr(&n).await
}

async fn fsstat(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let r = attr_only(ctx, h).await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            // An object store has no fixed capacity: report a large,
            // constant size so tools show something stable.
            const PIB: u64 = 1 << 50;
            e.u32(NFS3_OK);
            post_op_attr(&mut e, ctx.fsid, Some(&a));
            e.u64(PIB).u64(PIB).u64(PIB);
            e.u64(1 << 40).u64(1 << 40).u64(1 << 40);
            e.u32(0);
        }
        Err(err) => {
            e.u32(status_of(&err)).bool(false);
        }
    }
    Ok(())
}

async fn fsinfo(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let r = attr_only(ctx, h).await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            const FSF3_HOMOGENEOUS: u32 = 0x08;
            const FSF3_CANSETTIME: u32 = 0x10;
            e.u32(NFS3_OK);
            post_op_attr(&mut e, ctx.fsid, Some(&a));
            e.u32(IO_BYTES_MAX).u32(IO_BYTES_MAX).u32(4096);
            e.u32(IO_BYTES_MAX).u32(IO_BYTES_MAX).u32(4096);
            e.u32(DTPREF);
            e.u64(u64::MAX >> 1);
            e.u32(0).u32(1);
            e.u32(FSF3_HOMOGENEOUS | FSF3_CANSETTIME);
        }
        Err(err) => {
            e.u32(status_of(&err)).bool(false);
        }
    }
    Ok(())
}

async fn pathconf(ctx: &Ctx<'_, '_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let r = attr_only(ctx, h).await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            e.u32(NFS3_OK);
            post_op_attr(&mut e, ctx.fsid, Some(&a));
            e.u32(1).u32(crate::vfs::NAME_BYTES_MAX as u32);
            e.bool(true).bool(true).bool(false).bool(true);
        }
        Err(err) => {
            e.u32(status_of(&err)).bool(false);
        }
    }
    Ok(())
}
