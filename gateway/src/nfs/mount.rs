//! MOUNT version 3 (RFC 1813 appendix I), program 100005, served on the
//! NFS port so clients need no portmapper (`mountport=` equals `port=`).
//!
//! The export is `/`; MNT also accepts a path below it and returns the
//! handle of that directory, so a client may mount a sub-directory.

use std::net::SocketAddr;
use std::sync::Mutex;

use crate::nfs::fh;
use crate::nfs::xdr::{Decoder, Encoder, XdrResult};
use crate::rpc::msg::Auth;
use crate::rpc::{CallContext, ProcOutcome};
use crate::vfs::{FsError, NodeKind};

pub const PROGRAM: u32 = 100005;
pub const VERSION: u32 = 3;

const MNTPATHLEN: u32 = 1024;
/// Mount records kept for DUMP.
pub const MOUNT_RECORDS_MAX: usize = 1024;

const MNT3_OK: u32 = 0;
const MNT3ERR_NOENT: u32 = 2;
const MNT3ERR_IO: u32 = 5;
const MNT3ERR_NOTDIR: u32 = 20;
const MNT3ERR_INVAL: u32 = 22;
const MNT3ERR_NAMETOOLONG: u32 = 63;
const MNT3ERR_SERVERFAULT: u32 = 10006;

/// Who mounted what, for DUMP. Advisory only, as in every implementation.
#[derive(Default)]
pub struct MountTable {
    records: Mutex<Vec<(String, String)>>,
}

impl MountTable {
    fn add(&self, host: String, dir: String) {
        let mut r = self.records.lock().expect("mount table poisoned");
        if r.iter().any(|(h, d)| *h == host && *d == dir) {
            return;
        }
        if r.len() == MOUNT_RECORDS_MAX {
            r.remove(0);
        }
        r.push((host, dir));
    }

    fn remove(&self, host: &str, dir: Option<&str>) {
        let mut r = self.records.lock().expect("mount table poisoned");
        r.retain(|(h, d)| !(h == host && dir.is_none_or(|x| x == d)));
    }
}

fn host_of(auth: &Auth, peer: Option<SocketAddr>) -> String {
    match (auth, peer) {
        (Auth::Sys(s), _) if !s.machine_name.is_empty() => s.machine_name.clone(),
        (_, Some(p)) => p.ip().to_string(),
        _ => "unknown".to_string(),
    }
}

fn mnt_status(e: &FsError) -> u32 {
    match e {
        FsError::NotFound | FsError::Stale => MNT3ERR_NOENT,
        FsError::NotDir => MNT3ERR_NOTDIR,
        FsError::NameTooLong => MNT3ERR_NAMETOOLONG,
        FsError::InvalidName(_) => MNT3ERR_INVAL,
        FsError::Store(_) => MNT3ERR_IO,
        _ => MNT3ERR_SERVERFAULT,
    }
}

pub async fn dispatch(
    call: &CallContext<'_>,
    proc_num: u32,
    args: &[u8],
    out: &mut Vec<u8>,
) -> ProcOutcome {
    let mut d = Decoder::new(args);
    let r = match proc_num {
        0 => Ok(()),
        1 => mnt(call, &mut d, out).await,
        2 => {
            dump(call, out);
            Ok(())
        }
        3 => umnt(call, &mut d),
        4 => {
            call.mounts.remove(&host_of(call.auth, call.peer), None);
            Ok(())
        }
        5 => {
            // One export, "/", open to every host (empty group list).
            Encoder::new(out)
                .bool(true)
                .string(b"/")
                .bool(false)
                .bool(false);
            Ok(())
        }
        _ => return ProcOutcome::ProcUnavail,
    };
    match r {
        Ok(()) => ProcOutcome::Done,
        Err(_) => ProcOutcome::GarbageArgs,
    }
}

async fn mnt(call: &CallContext<'_>, d: &mut Decoder<'_>, out: &mut Vec<u8>) -> XdrResult<()> {
    let path = d.string(MNTPATHLEN)?;
    let vfs = &call.vfs;
    let r = async {
        let mut node = vfs.root();
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if comp == b"." || comp == b".." {
                return Err(FsError::InvalidName("'.' or '..' in a mount path"));
            }
            node = vfs.lookup(&node, comp).await?.0;
        }
        if node.kind() != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(node)
    }
    .await;
    let mut e = Encoder::new(out);
    match r {
        Ok(node) => {
            let export_id = vfs.handles().identity().export_id;
            e.u32(MNT3_OK)
                .opaque(&fh::encode(export_id, &node))
                .u32(1)
                .u32(crate::rpc::msg::AUTH_SYS);
            call.mounts.add(
                host_of(call.auth, call.peer),
                String::from_utf8_lossy(path).into_owned(),
            );
            tracing::info!(path = %String::from_utf8_lossy(path), peer = ?call.peer, "mounted");
        }
        Err(err) => {
            tracing::info!(path = %String::from_utf8_lossy(path), error = %err, "mount refused");
            e.u32(mnt_status(&err));
        }
    }
    Ok(())
}

fn dump(call: &CallContext<'_>, out: &mut Vec<u8>) {
    let r = call.mounts.records.lock().expect("mount table poisoned");
    let mut e = Encoder::new(out);
    for (host, dir) in r.iter() {
        e.bool(true).string(host.as_bytes()).string(dir.as_bytes());
    }
    e.bool(false);
}

fn umnt(call: &CallContext<'_>, d: &mut Decoder<'_>) -> XdrResult<()> {
    let path = d.string(MNTPATHLEN)?;
    call.mounts.remove(
        &host_of(call.auth, call.peer),
        Some(&String::from_utf8_lossy(path)),
    );
    Ok(())
}
