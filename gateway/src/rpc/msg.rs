//! ONC RPC v2 messages (RFC 5531): call headers, credentials and the reply
//! headers for every accept and reject status.

use crate::nfs::xdr::{Decoder, Encoder, XdrError};

pub const RPC_VERSION: u32 = 2;
const MSG_CALL: u32 = 0;
const MSG_REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// Credential and verifier bodies are at most 400 bytes (RFC 5531 §8.2).
pub const AUTH_BODY_BYTES_MAX: u32 = 400;
/// AUTH_SYS limits (RFC 5531 appendix A).
pub const AUTH_SYS_MACHINE_NAME_BYTES_MAX: u32 = 255;
pub const AUTH_SYS_GIDS_MAX: u32 = 16;

/// `accept_stat` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    Success = 0,
    ProgUnavail = 1,
    ProgMismatch = 2,
    ProcUnavail = 3,
    GarbageArgs = 4,
    SystemErr = 5,
}

/// `auth_stat` values used in AUTH_ERROR rejections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStat {
    BadCred = 1,
    RejectedCred = 2,
    BadVerf = 3,
    TooWeak = 5,
}

/// The caller's identity, as parsed from the credential.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    Sys(AuthSys),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSys {
    pub stamp: u32,
    pub machine_name: String,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

/// A decoded call header. `args` borrows the procedure arguments.
#[derive(Debug)]
pub struct Call<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_num: u32,
    pub auth: Auth,
    pub args: &'a [u8],
}

/// Why a call header could not be accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// Not even an xid could be read, or the message is not a call: drop it.
    Unusable,
    /// The header after the xid is malformed.
    Garbage { xid: u32 },
    /// `rpcvers` is not 2.
    RpcMismatch { xid: u32 },
    /// Unsupported or malformed credential.
    Auth { xid: u32, stat: AuthStat },
}

fn parse_auth_sys(body: &[u8]) -> Result<AuthSys, XdrError> {
    let mut d = Decoder::new(body);
    let stamp = d.u32()?;
    let name = d.string(AUTH_SYS_MACHINE_NAME_BYTES_MAX)?;
    let uid = d.u32()?;
    let gid = d.u32()?;
    let n = d.array_len(AUTH_SYS_GIDS_MAX)?;
    let mut gids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        gids.push(d.u32()?);
    }
    Ok(AuthSys {
        stamp,
        machine_name: String::from_utf8_lossy(name).into_owned(),
        uid,
        gid,
        gids,
    })
}

/// Parse a call message header.
pub fn parse_call(record: &[u8]) -> Result<Call<'_>, CallError> {
    let mut d = Decoder::new(record);
    let xid = d.u32().map_err(|_| CallError::Unusable)?;
    let mtype = d.u32().map_err(|_| CallError::Unusable)?;
    if mtype != MSG_CALL {
        return Err(CallError::Unusable);
    }
    let garbage = |_| CallError::Garbage { xid };
    let rpcvers = d.u32().map_err(garbage)?;
    if rpcvers != RPC_VERSION {
        return Err(CallError::RpcMismatch { xid });
    }
    let prog = d.u32().map_err(garbage)?;
    let vers = d.u32().map_err(garbage)?;
    let proc_num = d.u32().map_err(garbage)?;
    let bad_cred = |_| CallError::Auth {
        xid,
        stat: AuthStat::BadCred,
    };
    let cred_flavor = d.u32().map_err(bad_cred)?;
    let cred_body = d.opaque(AUTH_BODY_BYTES_MAX).map_err(bad_cred)?;
    let bad_verf = |_| CallError::Auth {
        xid,
        stat: AuthStat::BadVerf,
    };
    let _verf_flavor = d.u32().map_err(bad_verf)?;
    let _verf_body = d.opaque(AUTH_BODY_BYTES_MAX).map_err(bad_verf)?;
    let auth = match cred_flavor {
        AUTH_NONE => Auth::None,
        AUTH_SYS => Auth::Sys(parse_auth_sys(cred_body).map_err(bad_cred)?),
        _ => {
            return Err(CallError::Auth {
                xid,
                stat: AuthStat::RejectedCred,
            })
        }
    };
    Ok(Call {
        xid,
        prog,
        vers,
        proc_num,
        auth,
        args: d.remaining(),
    })
}

/// Bytes of an accepted reply header with an AUTH_NONE verifier.
pub const ACCEPTED_REPLY_HEADER_BYTES: usize = 24;

/// Append an accepted reply header with the given status.
pub fn encode_accepted(e: &mut Encoder<'_>, xid: u32, stat: AcceptStat) {
    e.u32(xid)
        .u32(MSG_REPLY)
        .u32(MSG_ACCEPTED)
        .u32(AUTH_NONE)
        .u32(0)
        .u32(stat as u32);
}

/// PROG_MISMATCH carries the lowest and highest supported versions.
pub fn encode_prog_mismatch(e: &mut Encoder<'_>, xid: u32, low: u32, high: u32) {
    encode_accepted(e, xid, AcceptStat::ProgMismatch);
    e.u32(low).u32(high);
}

pub fn encode_rpc_mismatch(e: &mut Encoder<'_>, xid: u32) {
    e.u32(xid)
        .u32(MSG_REPLY)
        .u32(MSG_DENIED)
        .u32(0)
        .u32(RPC_VERSION)
        .u32(RPC_VERSION);
}

pub fn encode_auth_error(e: &mut Encoder<'_>, xid: u32, stat: AuthStat) {
    e.u32(xid)
        .u32(MSG_REPLY)
        .u32(MSG_DENIED)
        .u32(1)
        .u32(stat as u32);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn call_bytes(xid: u32, prog: u32, vers: u32, proc_num: u32, auth_sys: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let mut e = Encoder::new(&mut v);
        e.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_num);
        if auth_sys {
            let mut body = Vec::new();
            Encoder::new(&mut body)
                .u32(7)
                .string(b"host")
                .u32(1000)
                .u32(100)
                .u32(2)
                .u32(4)
                .u32(27);
            e.u32(AUTH_SYS).opaque(&body);
        } else {
            e.u32(AUTH_NONE).u32(0);
        }
        e.u32(AUTH_NONE).u32(0);
        v
    }

    #[test]
    fn parses_auth_sys_call() {
        let mut v = call_bytes(9, 100003, 3, 1, true);
        v.extend_from_slice(&[1, 2, 3, 4]);
        let c = parse_call(&v).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.proc_num), (9, 100003, 3, 1));
        assert_eq!(c.args, &[1, 2, 3, 4]);
        match c.auth {
            Auth::Sys(s) => {
                assert_eq!((s.uid, s.gid, s.gids), (1000, 100, vec![4, 27]));
                assert_eq!(s.machine_name, "host");
            }
            Auth::None => panic!("expected AUTH_SYS"),
        }
    }

    #[test]
    fn rejects_wrong_rpc_version_and_unknown_flavor() {
        let mut v = call_bytes(5, 1, 1, 0, false);
        v[8..12].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            parse_call(&v).unwrap_err(),
            CallError::RpcMismatch { xid: 5 }
        );
        let mut v = call_bytes(6, 1, 1, 0, false);
        v[24..28].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(
            parse_call(&v).unwrap_err(),
            CallError::Auth {
                xid: 6,
                stat: AuthStat::RejectedCred
            }
        );
    }

    #[test]
    fn replies_are_not_calls() {
        let mut v = call_bytes(5, 1, 1, 0, false);
        v[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(parse_call(&v).unwrap_err(), CallError::Unusable);
        assert_eq!(parse_call(&[1, 2]).unwrap_err(), CallError::Unusable);
    }

    proptest! {
        #[test]
        fn random_headers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_call(&data);
        }

        #[test]
        fn truncated_headers_are_errors(cut in 0usize..60) {
            let v = call_bytes(1, 100003, 3, 0, true);
            if cut < v.len() {
                prop_assert!(parse_call(&v[..cut]).is_err());
            }
        }
    }
}
