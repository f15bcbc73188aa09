//! ONC RPC over TCP: record marking ([`record`]), call and reply headers
//! with AUTH_NONE / AUTH_SYS ([`msg`]), per-connection concurrency
//! ([`conn`]) and program/version/procedure dispatch (here).

pub mod conn;
pub mod msg;
pub mod record;

use std::net::SocketAddr;

use crate::nfs::xdr::Encoder;
use crate::nfs::{mount, v3};
use crate::vfs::Vfs;
use msg::{AcceptStat, Auth, CallError};

/// What a procedure made of its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcOutcome {
    Done,
    ProcUnavail,
    GarbageArgs,
}

/// Everything a procedure may consult.
pub struct CallContext<'a> {
    pub vfs: &'a Vfs,
    pub mounts: &'a mount::MountTable,
    pub auth: &'a Auth,
    pub peer: Option<SocketAddr>,
}

/// Shared by every connection of every worker.
pub struct Services {
    pub vfs: Vfs,
    pub mounts: mount::MountTable,
}

/// Bytes reserved at the start of every reply for its record mark.
pub const RECORD_MARK_BYTES: usize = 4;

/// Answer one record. `None` means the record is not a usable call and
/// gets no reply.
pub async fn handle_record(
    services: &Services,
    peer: Option<SocketAddr>,
    record: &[u8],
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&[0u8; RECORD_MARK_BYTES]);
    match msg::parse_call(record) {
        Err(CallError::Unusable) => {
            tracing::debug!(
                ?peer,
                bytes = record.len(),
                "dropping a record that is not a call"
            );
            return None;
        }
        Err(CallError::Garbage { xid }) => {
            msg::encode_accepted(&mut Encoder::new(&mut out), xid, AcceptStat::GarbageArgs)
        }
        Err(CallError::RpcMismatch { xid }) => {
            msg::encode_rpc_mismatch(&mut Encoder::new(&mut out), xid)
        }
        Err(CallError::Auth { xid, stat }) => {
            msg::encode_auth_error(&mut Encoder::new(&mut out), xid, stat)
        }
        Ok(call) => {
            let ctx = CallContext {
                vfs: &services.vfs,
                mounts: &services.mounts,
                auth: &call.auth,
                peer,
            };
            let (low, high, known) = match call.prog {
                v3::PROGRAM => (v3::VERSION, v3::VERSION, true),
                mount::PROGRAM => (mount::VERSION, mount::VERSION, true),
                _ => (0, 0, false),
            };
            let mut e = Encoder::new(&mut out);
            if !known {
                msg::encode_accepted(&mut e, call.xid, AcceptStat::ProgUnavail);
            } else if call.vers < low || call.vers > high {
                msg::encode_prog_mismatch(&mut e, call.xid, low, high);
            } else {
                msg::encode_accepted(&mut e, call.xid, AcceptStat::Success);
                let outcome = match call.prog {
                    v3::PROGRAM => v3::dispatch(&ctx, call.proc_num, call.args, &mut out).await,
                    _ => mount::dispatch(&ctx, call.proc_num, call.args, &mut out).await,
                };
                let stat = match outcome {
                    ProcOutcome::Done => None,
                    ProcOutcome::ProcUnavail => Some(AcceptStat::ProcUnavail),
                    ProcOutcome::GarbageArgs => Some(AcceptStat::GarbageArgs),
                };
                if let Some(stat) = stat {
                    tracing::debug!(
                        ?peer,
                        prog = call.prog,
                        proc_num = call.proc_num,
                        ?stat,
                        "call rejected"
                    );
                    out.truncate(RECORD_MARK_BYTES);
                    msg::encode_accepted(&mut Encoder::new(&mut out), call.xid, stat);
                }
            }
        }
    }
    record::finish_record(&mut out);
    Some(out)
}
