//! NFSv3 procedures that change the namespace or file data. Each decodes
//! its arguments, calls the vfs and encodes the result with weak cache
//! consistency data (pre-operation attributes are not sent: clients then
//! revalidate, which is always correct).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    fattr3, handle_arg, log_error, post_op_attr, status_of, Ctx, NFS3ERR_NOTSUPP, NFS3_OK,
};
use crate::nfs::fh;
use crate::nfs::xdr::{Decoder, Encoder, XdrResult};
use crate::rpc::msg::Auth;
use crate::vfs::{Attr, CreateHow, Cred, FsError, SetAttrs, TimeSet};

/// Longest file name decoded (anything longer is garbage).
const NAME_ARG_BYTES_MAX: u32 = 1024;
/// Longest symbolic link target decoded.
const PATH_ARG_BYTES_MAX: u32 = 4096;

// stable_how
const UNSTABLE: u32 = 0;
const FILE_SYNC: u32 = 2;

fn cred(ctx: &Ctx<'_, '_>) -> Cred {
    match ctx.call.auth {
        Auth::Sys(a) => Cred::new(a.uid, a.gid).with_groups(&a.gids),
        Auth::None => Cred::NOBODY,
    }
}

fn nfstime_arg(d: &mut Decoder<'_>) -> XdrResult<SystemTime> {
    let s = d.u32()?;
    let ns = d.u32()?;
    Ok(UNIX_EPOCH + Duration::new(s as u64, ns.min(999_999_999)))
}

fn time_how(d: &mut Decoder<'_>) -> XdrResult<Option<TimeSet>> {
    Ok(match d.u32()? {
        0 => None,
        1 => Some(TimeSet::ServerNow),
        2 => Some(TimeSet::At(nfstime_arg(d)?)),
        v => return Err(crate::nfs::xdr::XdrError::BadEnum(v)),
    })
}

fn sattr3(d: &mut Decoder<'_>) -> XdrResult<SetAttrs> {
    let mut s = SetAttrs::default();
    if d.bool()? {
        s.mode = Some(d.u32()?);
    }
    if d.bool()? {
        s.uid = Some(d.u32()?);
    }
    if d.bool()? {
        s.gid = Some(d.u32()?);
    }
    if d.bool()? {
        s.size = Some(d.u64()?);
    }
    s.atime = time_how(d)?;
    s.mtime = time_how(d)?;
    Ok(s)
}

/// wcc_data without pre-operation attributes.
fn wcc(e: &mut Encoder<'_>, fsid: u64, after: Option<&Attr>) {
    e.bool(false);
    post_op_attr(e, fsid, after);
}

async fn attr_of(ctx: &Ctx<'_, '_>, h: &[u8]) -> Option<Attr> {
    let n = ctx.node(h).ok()?;
    ctx.call.vfs.getattr(&n).await.ok()
}

/// A failed procedure on the file `h`: its status, then wcc_data with the
/// file's attributes as they are now.
async fn fail_with_wcc(ctx: &Ctx<'_, '_>, out: &mut Vec<u8>, name: &str, h: &[u8], err: FsError) {
    log_error(name, &err);
    let a = attr_of(ctx, h).await;
    let mut e = Encoder::new(out);
    e.u32(status_of(&err));
    wcc(&mut e, ctx.fsid, a.as_ref());
}

pub(super) async fn setattr(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let sa = sattr3(d)?;
    let guard = if d.bool()? {
        Some(nfstime_arg(d)?)
    } else {
        None
    };
    let r = async {
        let n = ctx.node(h)?;
        ctx.call.vfs.setattr(&n, &sa, guard, cred(ctx)).await
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            e.u32(NFS3_OK);
            wcc(&mut e, ctx.fsid, Some(&a));
        }
        Err(err) => fail_with_wcc(ctx, out, "SETATTR", h, err).await,
    }
    Ok(())
}

pub(super) async fn write(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let offset = d.u64()?;
    let count = d.u32()?;
    let stable = d.u32()?;
    let data = d.opaque(super::IO_BYTES_MAX)?;
    let data = &data[..(count as usize).min(data.len())];
    let vfs = &ctx.call.vfs;
    let r = async {
        let n = ctx.node(h)?;
        vfs.write(&n, offset, data, stable != UNSTABLE).await
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            let verf = vfs.write_back().map(|w| w.verifier()).unwrap_or_default();
            e.u32(NFS3_OK);
            wcc(&mut e, ctx.fsid, Some(&a));
            e.u32(data.len() as u32);
            e.u32(if stable == UNSTABLE {
                UNSTABLE
            } else {
                FILE_SYNC
            });
            e.opaque_fixed(&verf);
        }
        Err(err) => fail_with_wcc(ctx, out, "WRITE", h, err).await,
    }
    Ok(())
}

/// The reply of CREATE, MKDIR and SYMLINK.
async fn new_node_reply(
    ctx: &Ctx<'_, '_>,
    out: &mut Vec<u8>,
    name: &str,
    dir_h: &[u8],
    r: Result<(std::sync::Arc<crate::vfs::Node>, Attr), FsError>,
) {
    let dir_attr = attr_of(ctx, dir_h).await;
    let mut e = Encoder::new(out);
    match r {
        Ok((node, a)) => {
            e.u32(NFS3_OK);
            e.bool(true).opaque(&fh::encode(ctx.export_id, &node));
            e.bool(true);
            fattr3(&mut e, ctx.fsid, &a);
            wcc(&mut e, ctx.fsid, dir_attr.as_ref());
        }
        Err(err) => {
            log_error(name, &err);
            e.u32(status_of(&err));
            wcc(&mut e, ctx.fsid, dir_attr.as_ref());
        }
    }
}

pub(super) async fn create(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let name = d.string(NAME_ARG_BYTES_MAX)?;
    let how = match d.u32()? {
        0 => CreateHow::Unchecked(sattr3(d)?),
        1 => CreateHow::Guarded(sattr3(d)?),
        2 => {
            let v = d.opaque_fixed(8)?;
            CreateHow::Exclusive(v.try_into().expect("8 bytes"))
        }
        v => return Err(crate::nfs::xdr::XdrError::BadEnum(v)),
    };
    let r = async {
        let dir = ctx.node(h)?;
        ctx.call.vfs.create(&dir, name, how, cred(ctx)).await
    }
    .await;
    new_node_reply(ctx, out, "CREATE", h, r).await;
    Ok(())
}

pub(super) async fn mkdir(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let name = d.string(NAME_ARG_BYTES_MAX)?;
    let sa = sattr3(d)?;
    let r = async {
        let dir = ctx.node(h)?;
        ctx.call.vfs.mkdir(&dir, name, &sa, cred(ctx)).await
    }
    .await;
    new_node_reply(ctx, out, "MKDIR", h, r).await;
    Ok(())
}

pub(super) async fn symlink(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let name = d.string(NAME_ARG_BYTES_MAX)?;
    let sa = sattr3(d)?;
    let target = d.string(PATH_ARG_BYTES_MAX)?;
    let r = async {
        let dir = ctx.node(h)?;
        ctx.call
            .vfs
            .symlink(&dir, name, target, &sa, cred(ctx))
            .await
    }
    .await;
    new_node_reply(ctx, out, "SYMLINK", h, r).await;
    Ok(())
}

pub(super) async fn mknod(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    d.string(NAME_ARG_BYTES_MAX)?;
    let a = attr_of(ctx, h).await;
    let mut e = Encoder::new(out);
    e.u32(NFS3ERR_NOTSUPP);
    wcc(&mut e, ctx.fsid, a.as_ref());
    Ok(())
}

pub(super) async fn link(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let dir_h = handle_arg(d)?;
    d.string(NAME_ARG_BYTES_MAX)?;
    let a = attr_of(ctx, h).await;
    let da = attr_of(ctx, dir_h).await;
    let mut e = Encoder::new(out);
    e.u32(NFS3ERR_NOTSUPP);
    post_op_attr(&mut e, ctx.fsid, a.as_ref());
    wcc(&mut e, ctx.fsid, da.as_ref());
    Ok(())
}

pub(super) async fn remove(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
    dir_op: bool,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let name = d.string(NAME_ARG_BYTES_MAX)?;
    let r = async {
        let dir = ctx.node(h)?;
        if dir_op {
            ctx.call.vfs.rmdir(&dir, name, cred(ctx)).await
        } else {
            ctx.call.vfs.remove(&dir, name, cred(ctx)).await
        }
    }
    .await;
    let a = attr_of(ctx, h).await;
    let mut e = Encoder::new(out);
    match r {
        Ok(()) => {
            e.u32(NFS3_OK);
        }
        Err(err) => {
            log_error(if dir_op { "RMDIR" } else { "REMOVE" }, &err);
            e.u32(status_of(&err));
        }
    }
    wcc(&mut e, ctx.fsid, a.as_ref());
    Ok(())
}

pub(super) async fn rename(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let fh_from = handle_arg(d)?;
    let from = d.string(NAME_ARG_BYTES_MAX)?;
    let fh_to = handle_arg(d)?;
    let to = d.string(NAME_ARG_BYTES_MAX)?;
    let r = async {
        let a = ctx.node(fh_from)?;
        let b = ctx.node(fh_to)?;
        ctx.call.vfs.rename(&a, from, &b, to, cred(ctx)).await
    }
    .await;
    let fa = attr_of(ctx, fh_from).await;
    let ta = attr_of(ctx, fh_to).await;
    let mut e = Encoder::new(out);
    match r {
        Ok(()) => {
            e.u32(NFS3_OK);
        }
        Err(err) => {
            log_error("RENAME", &err);
            e.u32(status_of(&err));
        }
    }
    wcc(&mut e, ctx.fsid, fa.as_ref());
    wcc(&mut e, ctx.fsid, ta.as_ref());
    Ok(())
}

pub(super) async fn commit(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let _offset = d.u64()?;
    let _count = d.u32()?;
    let vfs = &ctx.call.vfs;
    let r = async {
        let n = ctx.node(h)?;
        vfs.commit(&n).await
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok(a) => {
            let verf = vfs.write_back().map(|w| w.verifier()).unwrap_or_default();
            e.u32(NFS3_OK);
            wcc(&mut e, ctx.fsid, Some(&a));
            e.opaque_fixed(&verf);
        }
        Err(err) => fail_with_wcc(ctx, out, "COMMIT", h, err).await,
    }
    Ok(())
}

pub(super) async fn readlink(
    ctx: &Ctx<'_, '_>,
    d: &mut Decoder<'_>,
    out: &mut Vec<u8>,
) -> XdrResult<()> {
    let h = handle_arg(d)?;
    let r = async {
        let n = ctx.node(h)?;
        let t = ctx.call.vfs.readlink(&n).await?;
        let a = ctx.call.vfs.getattr(&n).await?;
        Ok::<_, FsError>((t, a))
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok((t, a)) => {
            e.u32(NFS3_OK);
            post_op_attr(&mut e, ctx.fsid, Some(&a));
            e.string(t.as_bytes());
        }
        Err(err) => {
            log_error("READLINK", &err);
            e.u32(status_of(&err));
            let a = attr_of(ctx, h).await;
            post_op_attr(&mut Encoder::new(out), ctx.fsid, a.as_ref());
        }
    }
    Ok(())
}
