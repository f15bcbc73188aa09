//! ONC RPC over TCP: record marking ([`record`]), call and reply headers
//! with AUTH_NONE / AUTH_SYS ([`msg`]), per-connection concurrency
//! ([`conn`]) and program/version/procedure dispatch (here).

pub mod conn;
pub mod drc;
pub mod msg;
pub mod record;

use std::cell::RefCell;
use std::net::SocketAddr;

use crate::cache::block::Piece;
use crate::io::net::IoSlices;
use crate::nfs::xdr::Encoder;
use crate::nfs::{mount, v3};
use crate::telemetry::{self, Counter, Latency};
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
    /// Bulk data a procedure answers with (READ from the block cache): sent
    /// after the encoded reply, straight from the cache buffers.
    pub body: RefCell<Option<ReplyBody>>,
}

/// Data that follows a reply's encoded part, plus XDR padding.
pub struct ReplyBody {
    pub pieces: Vec<Piece>,
    pub pad_bytes: usize,
}

impl ReplyBody {
    pub fn len(&self) -> usize {
        self.pieces.iter().map(|p| p.bytes().len()).sum::<usize>() + self.pad_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One reply record: its encoded part (record mark included) and bulk data.
pub struct Reply {
    pub head: Vec<u8>,
    pub body: Option<ReplyBody>,
}

impl Reply {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.as_ref().map_or(0, ReplyBody::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const ZERO_PAD: [u8; 4] = [0; 4];

impl IoSlices for Reply {
    fn slices<'a>(&'a self, out: &mut Vec<&'a [u8]>) {
        out.push(&self.head);
        if let Some(b) = &self.body {
            out.extend(b.pieces.iter().map(Piece::bytes));
            if b.pad_bytes > 0 {
                out.push(&ZERO_PAD[..b.pad_bytes]);
            }
        }
    }
}

/// Shared by every connection of every worker.
pub struct Services {
    pub vfs: Vfs,
    pub mounts: mount::MountTable,
    pub drc: drc::ReplyCache,
}

/// NFSv3 procedures that must not run twice for one call: SETATTR, WRITE,
/// CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK.
fn non_idempotent(prog: u32, proc_num: u32) -> bool {
    prog == v3::PROGRAM && matches!(proc_num, 2 | 7..=15)
}

/// Forgets a call's reply-cache entry unless its reply was recorded (a call
/// cancelled half way must be able to run again).
struct DrcGuard<'a> {
    drc: &'a drc::ReplyCache,
    key: Option<drc::CallKey>,
}

impl Drop for DrcGuard<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.drc.abandon(k);
        }
    }
}

/// Bytes reserved at the start of every reply for its record mark.
pub const RECORD_MARK_BYTES: usize = 4;

/// The latency histogram a call is recorded in.
fn latency_kind(prog: u32, proc_num: u32) -> Latency {
    match (prog, proc_num) {
        (v3::PROGRAM, 1) => Latency::NfsGetattr,
        (v3::PROGRAM, 3) => Latency::NfsLookup,
        (v3::PROGRAM, 6) => Latency::NfsRead,
        (v3::PROGRAM, 16 | 17) => Latency::NfsReaddir,
        _ => Latency::NfsOther,
    }
}

/// Answer one record as a single buffer (the body copied in).
pub async fn handle_record(
    services: &Services,
    peer: Option<SocketAddr>,
    record: &[u8],
) -> Option<Vec<u8>> {
    let reply = handle_call(services, peer, record).await?;
    let mut out = reply.head;
    if let Some(b) = reply.body {
        for p in &b.pieces {
            out.extend_from_slice(p.bytes());
        }
        out.extend_from_slice(&ZERO_PAD[..b.pad_bytes]);
    }
    Some(out)
}

/// Answer one record. `None` means the record is not a usable call and
/// gets no reply.
pub async fn handle_call(
    services: &Services,
    peer: Option<SocketAddr>,
    record: &[u8],
) -> Option<Reply> {
    let mut body = None;
    let mut drc_guard = DrcGuard {
        drc: &services.drc,
        key: None,
    };
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
                body: RefCell::new(None),
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
                if non_idempotent(call.prog, call.proc_num) {
                    let key = drc::CallKey::new(
                        peer.map(|p| p.ip()),
                        call.xid,
                        call.prog,
                        call.vers,
                        call.proc_num,
                        call.args,
                    );
                    match services.drc.begin(key) {
                        drc::Seen::New => drc_guard.key = Some(key),
                        drc::Seen::Running => {
                            tracing::debug!(
                                ?peer,
                                xid = call.xid,
                                "retransmission of a call still running; dropped"
                            );
                            return None;
                        }
                        drc::Seen::Replay(reply) => {
                            tracing::debug!(
                                ?peer,
                                xid = call.xid,
                                "retransmission answered from the reply cache"
                            );
                            return Some(Reply {
                                head: reply.to_vec(),
                                body: None,
                            });
                        }
                    }
                }
                msg::encode_accepted(&mut e, call.xid, AcceptStat::Success);
                let started = std::time::Instant::now();
                let outcome = match call.prog {
                    v3::PROGRAM => v3::dispatch(&ctx, call.proc_num, call.args, &mut out).await,
                    _ => mount::dispatch(&ctx, call.proc_num, call.args, &mut out).await,
                };
                telemetry::add(Counter::NfsCalls, 1);
                telemetry::record(latency_kind(call.prog, call.proc_num), started.elapsed());
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
                } else {
                    body = ctx.body.take();
                }
            }
        }
    }
    let body_bytes = body.as_ref().map_or(0, ReplyBody::len);
    record::finish_record(&mut out, body_bytes);
    if let Some(key) = drc_guard.key.take() {
        services.drc.finish(key, &out);
    }
    Some(Reply { head: out, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::xdr::Decoder;
    use crate::store::memory::MemoryStore;
    use crate::vfs::HandleTable;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn services(state: &std::path::Path) -> Services {
        let store = Arc::new(MemoryStore::new());
        store.put("dir/file", b"0123456789");
        let handles = HandleTable::open(state, "memory").unwrap();
        Services {
            vfs: Vfs::new(
                store,
                handles,
                crate::cache::meta::MetaCache::new(crate::cache::meta::MetaTtls {
                    attrs: Duration::from_secs(1),
                    negative: Duration::from_secs(1),
                    immutable: false,
                }),
            ),
            mounts: mount::MountTable::default(),
            drc: drc::ReplyCache::default(),
        }
    }

    fn call(xid: u32, prog: u32, vers: u32, proc_num: u32, args: &[u8]) -> Vec<u8> {
        let mut v = msg::tests::call_bytes(xid, prog, vers, proc_num, true);
        v.extend_from_slice(args);
        v
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// (xid, accept_stat) of an accepted reply.
    fn accepted(reply: &[u8]) -> (u32, u32) {
        let mut d = Decoder::new(&reply[RECORD_MARK_BYTES..]);
        let xid = d.u32().unwrap();
        assert_eq!(d.u32().unwrap(), 1, "a reply");
        assert_eq!(d.u32().unwrap(), 0, "accepted");
        d.u32().unwrap();
        d.opaque(400).unwrap();
        (xid, d.u32().unwrap())
    }

    #[test]
    fn program_version_and_procedure_errors() {
        let t = tempfile::tempdir().unwrap();
        let s = services(t.path());
        block_on(async {
            let r = handle_record(&s, None, &call(1, 100099, 1, 0, &[]))
                .await
                .unwrap();
            assert_eq!(accepted(&r), (1, AcceptStat::ProgUnavail as u32));
            let r = handle_record(&s, None, &call(2, v3::PROGRAM, 4, 0, &[]))
                .await
                .unwrap();
            assert_eq!(accepted(&r), (2, AcceptStat::ProgMismatch as u32));
            assert_eq!(&r[r.len() - 8..], &[0, 0, 0, 3, 0, 0, 0, 3]);
            let r = handle_record(&s, None, &call(3, v3::PROGRAM, 3, 99, &[]))
                .await
                .unwrap();
            assert_eq!(accepted(&r), (3, AcceptStat::ProcUnavail as u32));
            let r = handle_record(&s, None, &call(4, v3::PROGRAM, 3, 1, &[0, 0, 3, 232]))
                .await
                .unwrap();
            assert_eq!(accepted(&r), (4, AcceptStat::GarbageArgs as u32));
            let r = handle_record(&s, None, &call(5, mount::PROGRAM, 3, 0, &[]))
                .await
                .unwrap();
            assert_eq!(accepted(&r), (5, AcceptStat::Success as u32));
            assert!(handle_record(&s, None, &[0, 0, 0, 1]).await.is_none());
        });
    }

    #[test]
    fn non_idempotent_retransmissions_are_answered_from_the_reply_cache() {
        let t = tempfile::tempdir().unwrap();
        let s = services(t.path());
        let peer: Option<SocketAddr> = Some("10.1.2.3:700".parse().unwrap());
        let args = [0u8, 0, 0, 4, 1, 2, 3, 4, 0, 0, 0, 1, b'x', 0, 0, 0];
        let key = |xid| drc::CallKey::new(peer.map(|p| p.ip()), xid, v3::PROGRAM, 3, 12, &args);
        block_on(async {
            // A recorded reply is sent again as it was, without running
            // the call, also to the client reconnected from another port.
            assert_eq!(s.drc.begin(key(42)), drc::Seen::New);
            s.drc.finish(key(42), b"recorded reply");
            let other_port: Option<SocketAddr> = Some("10.1.2.3:701".parse().unwrap());
            let again = handle_record(&s, other_port, &call(42, v3::PROGRAM, 3, 12, &args))
                .await
                .unwrap();
            assert_eq!(again, b"recorded reply");
            // A copy of a call still running gets no reply.
            assert_eq!(s.drc.begin(key(43)), drc::Seen::New);
            assert!(
                handle_record(&s, peer, &call(43, v3::PROGRAM, 3, 12, &args))
                    .await
                    .is_none()
            );
            // A new call runs and its reply is recorded; GETATTR never is.
            let first = handle_record(&s, peer, &call(44, v3::PROGRAM, 3, 12, &args))
                .await
                .unwrap();
            assert_eq!(
                s.drc.begin(key(44)),
                drc::Seen::Replay(Arc::from(&first[..]))
            );
            let before = s.drc.len();
            handle_record(&s, peer, &call(45, v3::PROGRAM, 3, 1, &[0, 0, 0, 0]))
                .await
                .unwrap();
            assert_eq!(s.drc.len(), before);
        });
    }

    #[test]
    fn mount_then_walk() {
        let t = tempfile::tempdir().unwrap();
        let s = services(t.path());
        block_on(async {
            let mut args = Vec::new();
            Encoder::new(&mut args).string(b"/dir");
            let r = handle_record(&s, None, &call(7, mount::PROGRAM, 3, 1, &args))
                .await
                .unwrap();
            assert_eq!(accepted(&r), (7, 0));
            let mut d = Decoder::new(&r[RECORD_MARK_BYTES + 24..]);
            assert_eq!(d.u32().unwrap(), 0, "MNT3_OK");
            let fh = d.opaque(64).unwrap().to_vec();
            let mut args = Vec::new();
            Encoder::new(&mut args).opaque(&fh).string(b"file");
            let r = handle_record(&s, None, &call(8, v3::PROGRAM, 3, 3, &args))
                .await
                .unwrap();
            let mut d = Decoder::new(&r[RECORD_MARK_BYTES + 24..]);
            assert_eq!(d.u32().unwrap(), 0, "LOOKUP ok");
            let file_fh = d.opaque(64).unwrap().to_vec();
            let mut args = Vec::new();
            Encoder::new(&mut args).opaque(&file_fh).u64(3).u32(100);
            let r = handle_record(&s, None, &call(9, v3::PROGRAM, 3, 6, &args))
                .await
                .unwrap();
            let mut d = Decoder::new(&r[RECORD_MARK_BYTES + 24..]);
            assert_eq!(d.u32().unwrap(), 0, "READ ok");
            assert!(d.bool().unwrap());
            d.opaque_fixed(84).unwrap();
            assert_eq!(d.u32().unwrap(), 7);
            assert!(d.bool().unwrap(), "eof");
            assert_eq!(d.opaque(100).unwrap(), b"3456789");
            assert!(d.remaining().is_empty());
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Every procedure of both programs, fed random argument bytes,
        /// answers with a well-formed reply (success or GARBAGE_ARGS) and
        /// never panics.
        #[test]
        fn every_decoder_survives_random_args(args in proptest::collection::vec(any::<u8>(), 0..256)) {
            let t = tempfile::tempdir().unwrap();
            let s = services(t.path());
            block_on(async {
                for (prog, procs) in [(v3::PROGRAM, 0..22u32), (mount::PROGRAM, 0..6u32)] {
                    for p in procs {
                        let r = handle_record(&s, None, &call(p, prog, 3, p, &args)).await.unwrap();
                        let (xid, stat) = accepted(&r);
                        assert_eq!(xid, p);
                        assert!(stat == 0 || stat == AcceptStat::GarbageArgs as u32);
                    }
                }
            });
        }
    }
}
