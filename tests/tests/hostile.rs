//! Hostile clients: garbage, oversized and truncated records, calls for
//! programs, versions and procedures that do not exist, malformed
//! arguments, dangerous names and forged handles. Each gets an error reply
//! or a closed connection; the server's memory stays bounded; and a second,
//! well-behaved client on its own connection keeps being served throughout.

use std::time::Duration;

use tidegate_tests::data::{fresh_seed, write_random_file, SplitMix64};
use tidegate_tests::rpc::*;
use tidegate_tests::server::{proc_status_kib, Dirs, Server};

const GIB_KIB: u64 = 1 << 20;
const AFTERMATH: Duration = Duration::from_secs(10);

/// Fields drop in order: the bystander's connection, then the server, then
/// its directories.
struct Fixture {
    bystander: Bystander,
    server: Server,
    _dirs: Dirs,
}

impl Fixture {
    fn new() -> Fixture {
        let dirs = Dirs::new();
        let seed = fresh_seed();
        write_random_file(&dirs.source.join("a/b"), 1000, seed).unwrap();
        write_random_file(&dirs.source.join("file.bin"), 65_536, seed ^ 1).unwrap();
        // A sibling of the source directory that must stay unreachable.
        std::fs::write(dirs.root.path().join("outside.txt"), b"not exported").unwrap();
        let server = Server::start(&dirs.source, &dirs.state);
        let bystander = Bystander::new(server.addr());
        Fixture {
            bystander,
            server,
            _dirs: dirs,
        }
    }

    fn conn(&self) -> RpcConn {
        RpcConn::connect(self.server.addr()).expect("connect")
    }

    fn client(&self) -> NfsClient {
        NfsClient::connect(self.server.addr()).expect("connect")
    }

    /// The server is alive and the bystander is still served.
    fn still_serving(&mut self, after: &str) {
        self.server.assert_alive(after);
        self.bystander.check(after);
    }
}

fn assert_closed_or_error_reply(what: &str, a: &Aftermath) {
    match a {
        Aftermath::Closed => {}
        Aftermath::Replied(bytes) => {
            for rec in split_records(bytes) {
                if let Ok(r) = decode_reply(&rec) {
                    assert!(
                        !matches!(r.body, ReplyBody::Success(_)),
                        "{what}: server answered SUCCESS: {r:?}"
                    );
                }
            }
        }
        Aftermath::StillOpen => {
            panic!("{what}: connection neither answered nor closed within {AFTERMATH:?}")
        }
    }
}

#[test]
fn garbage_bytes_get_closed_or_rejected() {
    let mut fx = Fixture::new();
    let mut rng = SplitMix64::new(fresh_seed());

    // Random bytes, then EOF from our side.
    for round in 0..8 {
        let mut c = fx.conn();
        let len = 1 + (rng.next_u64() % 8192) as usize;
        let _ = c.send_bytes(&rng.bytes(len));
        c.shutdown_write();
        let a = c.aftermath(AFTERMATH);
        assert_closed_or_error_reply(&format!("random bytes round {round}"), &a);
        fx.still_serving(&format!("random bytes round {round}"));
    }

    // An HTTP request: "GET " read as a record mark claims ~1.2 GB.
    let mut c = fx.conn();
    let _ = c.send_bytes(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let a = c.aftermath(AFTERMATH);
    assert_eq!(
        a,
        Aftermath::Closed,
        "an HTTP request must get the connection closed"
    );
    fx.still_serving("HTTP request");

    // Well-framed records holding random bytes: the server may drop the
    // message, answer it with an error or close; if it keeps the connection
    // it must still understand the next proper call on it.
    for round in 0..12 {
        let mut c = fx.conn();
        let len = (rng.next_u64() % 200) as usize;
        let mut body = rng.bytes(len);
        if round % 2 == 0 && body.len() >= 12 {
            // A CALL with rpcvers 2 and random everything else.
            body[4..8].copy_from_slice(&0u32.to_be_bytes());
            body[8..12].copy_from_slice(&2u32.to_be_bytes());
        }
        let _ = c.send_bytes(&frame(&body));
        match c.aftermath(Duration::from_millis(300)) {
            Aftermath::Closed => {}
            Aftermath::Replied(bytes) => {
                for rec in split_records(&bytes) {
                    let r = decode_reply(&rec)
                        .unwrap_or_else(|e| panic!("undecodable reply to garbage: {e:#}"));
                    assert!(
                        !matches!(r.body, ReplyBody::Success(_)),
                        "garbage record answered SUCCESS: {r:?}"
                    );
                }
            }
            Aftermath::StillOpen => {
                let r = c
                    .call(NFS_PROGRAM, NFS_V3, NFSPROC3_NULL, &[])
                    .unwrap_or_else(|e| {
                        panic!(
                            "connection kept after garbage record {round} but NULL failed: {e:#}"
                        )
                    });
                assert!(
                    matches!(r.body, ReplyBody::Success(_)),
                    "NULL after garbage: {r:?}"
                );
            }
        }
        fx.still_serving(&format!("garbage record {round}"));
    }

    // RPC version 3: MSG_DENIED / RPC_MISMATCH naming version 2.
    let mut c = fx.conn();
    let mut w = XdrWriter::new();
    w.u32(0x1234)
        .u32(0)
        .u32(3)
        .u32(NFS_PROGRAM)
        .u32(NFS_V3)
        .u32(0);
    w.u32(AUTH_NONE).opaque(&[]).u32(AUTH_NONE).opaque(&[]);
    c.send_bytes(&frame(&w.finish())).unwrap();
    let r = c.recv_reply().expect("a reply to an RPC version 3 call");
    assert_eq!(r.xid, 0x1234);
    assert_eq!(
        r.body,
        ReplyBody::RpcMismatch { low: 2, high: 2 },
        "rpcvers 3"
    );
    fx.still_serving("rpcvers 3");

    // A credential whose length runs past the record.
    let mut c = fx.conn();
    let mut w = XdrWriter::new();
    w.u32(0x2345)
        .u32(0)
        .u32(2)
        .u32(NFS_PROGRAM)
        .u32(NFS_V3)
        .u32(NFSPROC3_GETATTR);
    w.u32(AUTH_SYS).u32(0xFFFF_FF00).raw(&[0u8; 32]);
    let _ = c.send_bytes(&frame(&w.finish()));
    match c.aftermath(AFTERMATH) {
        Aftermath::Closed => {}
        Aftermath::Replied(bytes) => {
            let recs = split_records(&bytes);
            assert!(!recs.is_empty(), "partial reply to a bad credential");
            let r = decode_reply(&recs[0]).unwrap();
            assert!(
                matches!(r.body, ReplyBody::AuthError(_) | ReplyBody::GarbageArgs),
                "bad credential answered with {r:?}"
            );
        }
        Aftermath::StillOpen => {
            panic!("a call with an overlong credential was neither answered nor closed")
        }
    }
    fx.still_serving("overlong credential");

    // A REPLY sent to the server is not a call: no SUCCESS may come back.
    let mut c = fx.conn();
    let reply = XdrWriter::new()
        .u32(0x3456)
        .u32(1)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .finish();
    let _ = c.send_bytes(&frame(&reply));
    if let Aftermath::Replied(bytes) = c.aftermath(Duration::from_millis(500)) {
        for rec in split_records(&bytes) {
            if let Ok(r) = decode_reply(&rec) {
                assert!(
                    !matches!(r.body, ReplyBody::Success(_)),
                    "a REPLY message was answered SUCCESS"
                );
            }
        }
    }
    fx.still_serving("REPLY message sent to the server");
}

#[test]
fn oversized_record_marks_close_the_connection_without_allocating() {
    let mut fx = Fixture::new();
    let pid = fx.server.pid();
    let peak_virtual_before = proc_status_kib(pid, "VmPeak:").unwrap();
    let rss_before = fx.server.rss_kib();

    // Single claims of ~2 GiB and 1 GiB, last fragment or not.
    for mark in [0xFFFF_FFFFu32, 0x7FFF_FFFF, 0xC000_0000, 0x4000_0000] {
        let mut c = fx.conn();
        let mut bytes = mark.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xAB; 1024]);
        let _ = c.send_bytes(&bytes);
        let a = c.aftermath(AFTERMATH);
        assert_eq!(
            a,
            Aftermath::Closed,
            "record mark {mark:#010x}: connection must be closed"
        );
        fx.still_serving(&format!("record mark {mark:#010x}"));
    }

    // Sixteen at once.
    let mut conns: Vec<RpcConn> = (0..16).map(|_| fx.conn()).collect();
    for c in &mut conns {
        let _ = c.send_bytes(&0xFFFF_FFFFu32.to_be_bytes());
    }
    fx.still_serving("16 concurrent 2 GiB record marks");
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(
            c.aftermath(AFTERMATH),
            Aftermath::Closed,
            "concurrent 2 GiB mark, connection {i}"
        );
    }

    // Many small fragments that never end: the record as a whole must be
    // bounded too. 1 MiB fragments, up to 256 MiB in total.
    let mut c = fx.conn();
    let frag = {
        let mut v = (1u32 << 20).to_be_bytes().to_vec(); // not last
        v.extend_from_slice(&vec![0x5Au8; 1 << 20]);
        v
    };
    c.stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sent_mib = 0;
    let mut write_failed = false;
    for _ in 0..256 {
        if c.send_bytes(&frag).is_err() {
            write_failed = true;
            break;
        }
        sent_mib += 1;
    }
    if !write_failed {
        let a = c.aftermath(AFTERMATH);
        assert_eq!(
            a,
            Aftermath::Closed,
            "server accepted {sent_mib} MiB of fragments of one unfinished record without closing"
        );
    }
    drop(c);
    fx.still_serving("endless fragments");

    let rss_after = fx.server.rss_kib();
    let peak_rss = fx.server.rss_peak_kib();
    let peak_virtual_after = proc_status_kib(pid, "VmPeak:").unwrap();
    assert!(
        peak_rss < GIB_KIB,
        "server peak RSS {peak_rss} KiB after oversized records (before: {rss_before} KiB)"
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        peak_virtual_after < peak_virtual_before + GIB_KIB,
        "server peak virtual size grew from {peak_virtual_before} KiB to {peak_virtual_after} KiB: \
         something sized an allocation by the claimed record length"
    );
}

#[test]
fn truncated_calls_leave_the_server_serving() {
    let mut fx = Fixture::new();
    let call = encode_call(
        0x4242,
        NFS_PROGRAM,
        NFS_V3,
        NFSPROC3_GETATTR,
        &Auth::sys(),
        &args_fh(fx.bystander.root()),
    );

    // Record mark says 100 bytes, 20 arrive, then the socket closes.
    let mut c = fx.conn();
    let mut bytes = (LAST_FRAGMENT | 100).to_be_bytes().to_vec();
    bytes.extend_from_slice(&call[..20]);
    c.send_bytes(&bytes).unwrap();
    drop(c);
    fx.still_serving("truncated record then close");

    // Same, but half-close: the server sees EOF mid-record and must close
    // without answering.
    let mut c = fx.conn();
    c.send_bytes(&bytes).unwrap();
    c.shutdown_write();
    assert_eq!(
        c.aftermath(AFTERMATH),
        Aftermath::Closed,
        "EOF in the middle of a record"
    );
    fx.still_serving("truncated record then half-close");

    // Same, but the client just stalls: others are still served meanwhile.
    let mut stalled = fx.conn();
    stalled.send_bytes(&bytes).unwrap();
    for i in 0..5 {
        fx.still_serving(&format!("stalled partial record, check {i}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stalled);

    // Half a record mark.
    let mut c = fx.conn();
    c.send_bytes(&[0x80, 0x00]).unwrap();
    drop(c);
    fx.still_serving("two bytes of a record mark");

    // A complete record whose call is cut short inside the header.
    let mut c = fx.conn();
    let _ = c.send_bytes(&frame(&call[..10]));
    let a = c.aftermath(Duration::from_millis(500));
    if let Aftermath::Replied(bytes) = &a {
        for rec in split_records(bytes) {
            if let Ok(r) = decode_reply(&rec) {
                assert!(
                    !matches!(r.body, ReplyBody::Success(_)),
                    "short call header answered SUCCESS"
                );
            }
        }
    }
    fx.still_serving("call cut inside its header");

    // A complete record whose arguments are cut short: GARBAGE_ARGS.
    let mut c = fx.conn();
    let cut = call.len() - 8;
    c.send_bytes(&frame(&call[..cut])).unwrap();
    let r = c
        .recv_reply()
        .expect("reply to a call with truncated arguments");
    assert_eq!(
        (r.xid, r.body),
        (0x4242, ReplyBody::GarbageArgs),
        "GETATTR with a truncated handle"
    );
    fx.still_serving("truncated arguments");
}

#[test]
fn unknown_programs_versions_procedures_and_garbage_arguments() {
    let mut fx = Fixture::new();
    let mut c = fx.conn();
    let root = fx.bystander.root().to_vec();

    let r = c.call(100_099, 1, 0, &[]).unwrap();
    assert_eq!(r.body, ReplyBody::ProgUnavail, "program 100099");
    let r = c.call(100_000, 2, 0, &[]).unwrap();
    assert_eq!(r.body, ReplyBody::ProgUnavail, "portmapper (not served)");
    fx.still_serving("unknown programs");

    for vers in [2, 4, 1000] {
        let r = c.call(NFS_PROGRAM, vers, 0, &[]).unwrap();
        assert_eq!(
            r.body,
            ReplyBody::ProgMismatch { low: 3, high: 3 },
            "NFS version {vers}"
        );
    }
    let r = c.call(MOUNT_PROGRAM, 4, 0, &[]).unwrap();
    match r.body {
        ReplyBody::ProgMismatch { low, high } => {
            assert!(low <= 3 && 3 <= high, "MOUNT mismatch range {low}..{high}")
        }
        other => panic!("MOUNT version 4: {other:?}"),
    }
    fx.still_serving("unknown versions");

    for proc_ in [22, 99, 0xFFFF_FFFF] {
        let r = c.call(NFS_PROGRAM, NFS_V3, proc_, &args_fh(&root)).unwrap();
        assert_eq!(r.body, ReplyBody::ProcUnavail, "NFSv3 procedure {proc_}");
    }
    let r = c.call(MOUNT_PROGRAM, MOUNT_V3, 99, &[]).unwrap();
    assert_eq!(r.body, ReplyBody::ProcUnavail, "MOUNT procedure 99");
    fx.still_serving("unknown procedures");

    // Handle longer than NFS3_FHSIZE, with and without its bytes.
    let long = XdrWriter::new().opaque(&[7u8; 1000]).finish();
    let r = c
        .call(NFS_PROGRAM, NFS_V3, NFSPROC3_GETATTR, &long)
        .unwrap();
    assert_eq!(
        r.body,
        ReplyBody::GarbageArgs,
        "GETATTR with a 1000-byte handle"
    );
    let huge = XdrWriter::new().u32(0xFFFF_FFFF).finish();
    let r = c
        .call(NFS_PROGRAM, NFS_V3, NFSPROC3_GETATTR, &huge)
        .unwrap();
    assert_eq!(
        r.body,
        ReplyBody::GarbageArgs,
        "GETATTR with handle length 0xFFFFFFFF"
    );
    let r = c.call(NFS_PROGRAM, NFS_V3, NFSPROC3_GETATTR, &[]).unwrap();
    assert_eq!(r.body, ReplyBody::GarbageArgs, "GETATTR without arguments");
    // LOOKUP without a name, READ without a count, READ with a name length
    // where the offset should be.
    let r = c
        .call(NFS_PROGRAM, NFS_V3, NFSPROC3_LOOKUP, &args_fh(&root))
        .unwrap();
    assert_eq!(r.body, ReplyBody::GarbageArgs, "LOOKUP without a name");
    let no_count = XdrWriter::new().opaque(&root).u64(0).finish();
    let r = c
        .call(NFS_PROGRAM, NFS_V3, NFSPROC3_READ, &no_count)
        .unwrap();
    assert_eq!(r.body, ReplyBody::GarbageArgs, "READ without a count");
    let name_len = XdrWriter::new().opaque(&root).u32(0x7FFF_FFFF).finish();
    let r = c
        .call(NFS_PROGRAM, NFS_V3, NFSPROC3_LOOKUP, &name_len)
        .unwrap();
    assert_eq!(
        r.body,
        ReplyBody::GarbageArgs,
        "LOOKUP with name length 0x7FFFFFFF"
    );
    let mnt = XdrWriter::new().u32(0x7FFF_FFFF).finish();
    let r = c
        .call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3_MNT, &mnt)
        .unwrap();
    assert_eq!(
        r.body,
        ReplyBody::GarbageArgs,
        "MNT with path length 0x7FFFFFFF"
    );
    fx.still_serving("garbage arguments");

    // The connection that sent all this still works.
    let r = c
        .call(NFS_PROGRAM, NFS_V3, NFSPROC3_GETATTR, &args_fh(&root))
        .unwrap();
    let attr = decode_getattr(&r.success().unwrap()).unwrap().unwrap();
    assert_eq!(attr.ftype, NF3DIR);
}

#[test]
fn dangerous_lookup_names_get_nfs_errors() {
    let mut fx = Fixture::new();
    let mut c = fx.client();
    let root = c.mount_root().unwrap();
    let root_id = c.getattr(&root).unwrap().unwrap().fileid;
    let a = c.lookup_path(&root, "a").unwrap();
    let a_id = c.getattr(&a).unwrap().unwrap().fileid;
    let file = c.lookup_path(&root, "file.bin").unwrap();

    let must_fail: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("slash", root.clone(), b"a/b".to_vec()),
        ("leading slash", root.clone(), b"/a".to_vec()),
        ("trailing slash", root.clone(), b"a/".to_vec()),
        ("dotdot slash", root.clone(), b"../outside.txt".to_vec()),
        ("dotdot slash from a", a.clone(), b"../file.bin".to_vec()),
        ("NUL", root.clone(), b"a\0".to_vec()),
        ("NUL inside", root.clone(), b"file.bin\0junk".to_vec()),
        ("NUL only", root.clone(), b"\0".to_vec()),
        ("empty", root.clone(), b"".to_vec()),
        ("256 bytes", root.clone(), vec![b'n'; 256]),
        ("4096 bytes", root.clone(), vec![b'n'; 4096]),
        ("outside via name", root.clone(), b"outside.txt".to_vec()),
        ("not a directory", file.clone(), b"x".to_vec()),
        ("invalid UTF-8", root.clone(), vec![0xff, 0xfe, b'a']),
    ];
    for (what, dir, name) in &must_fail {
        let reply = c
            .conn
            .call(
                NFS_PROGRAM,
                NFS_V3,
                NFSPROC3_LOOKUP,
                &args_lookup(dir, name),
            )
            .unwrap();
        match reply.body {
            ReplyBody::Success(res) => match decode_lookup(&res).unwrap() {
                Ok(l) => panic!("LOOKUP {what} ({name:?}) succeeded with handle {:?}", l.fh),
                Err(status) => assert_ne!(status, NFS3_OK),
            },
            // A server may refuse over-long names while decoding.
            ReplyBody::GarbageArgs if name.len() > 255 => {}
            other => panic!("LOOKUP {what}: {other:?}"),
        }
        fx.still_serving(&format!("LOOKUP {what}"));
    }

    // Specific statuses where the RFC is clear.
    let status = |c: &mut NfsClient, dir: &[u8], name: &[u8]| c.lookup(dir, name).unwrap().err();
    assert_eq!(
        status(&mut c, &root, &[b'n'; 255]),
        Some(NFS3ERR_NOENT),
        "255-byte name that does not exist"
    );
    assert_eq!(
        status(&mut c, &file, b"x"),
        Some(NFS3ERR_NOTDIR),
        "LOOKUP in a regular file"
    );
    let long = status(&mut c, &root, &[b'n'; 256]);
    assert!(
        matches!(
            long,
            Some(NFS3ERR_NAMETOOLONG)
                | Some(NFS3ERR_NOENT)
                | Some(NFS3ERR_INVAL)
                | Some(NFS3ERR_ACCES)
        ),
        "256-byte name: {long:?}"
    );

    // '..' of the root stays at the root; '..' of a directory is its parent;
    // '.' is the directory itself. None of them leaves the export.
    for (what, dir, name, want) in [
        ("'..' of root", &root, &b".."[..], root_id),
        ("'.' of root", &root, &b"."[..], root_id),
        ("'..' of a", &a, &b".."[..], root_id),
        ("'.' of a", &a, &b"."[..], a_id),
    ] {
        match c.lookup(dir, name).unwrap() {
            Ok(l) => {
                let id = c.getattr(&l.fh).unwrap().unwrap().fileid;
                assert_eq!(id, want, "{what} resolved to fileid {id}");
                if id == root_id {
                    assert_eq!(
                        c.lookup(&l.fh, b"outside.txt").unwrap().err(),
                        Some(NFS3ERR_NOENT),
                        "{what} reached outside the export"
                    );
                }
            }
            Err(s) => assert_ne!(s, NFS3_OK, "{what}"),
        }
        fx.still_serving(what);
    }
    // '..' twice from the root is still the root.
    if let Ok(up) = c.lookup(&root, b"..").unwrap() {
        if let Ok(up2) = c.lookup(&up.fh, b"..").unwrap() {
            assert_eq!(
                c.getattr(&up2.fh).unwrap().unwrap().fileid,
                root_id,
                "'..' of '..' of root"
            );
        }
    }
}

#[test]
fn forged_handles_get_badhandle_or_stale() {
    let mut fx = Fixture::new();
    let mut c = fx.client();
    let root = c.mount_root().unwrap();
    let file = c.lookup_path(&root, "file.bin").unwrap();
    let mut rng = SplitMix64::new(fresh_seed());

    let mut forged: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..8 {
        forged.push((format!("random, root's length #{i}"), rng.bytes(root.len())));
    }
    for len in [0usize, 1, 7, 8, 16, 32, 63, 64] {
        forged.push((format!("random, {len} bytes"), rng.bytes(len)));
    }
    forged.push(("zeros, root's length".into(), vec![0u8; root.len()]));
    forged.push(("ones, root's length".into(), vec![0xffu8; root.len()]));
    if root.len() > 1 {
        forged.push((
            "root minus its last byte".into(),
            root[..root.len() - 1].to_vec(),
        ));
    }
    if root.len() < NFS3_FHSIZE {
        let mut longer = root.clone();
        longer.push(0);
        forged.push(("root plus a byte".into(), longer));
    }

    let ok_status = |s: u32| s == NFS3ERR_BADHANDLE || s == NFS3ERR_STALE;
    for (what, fh) in &forged {
        if fh == &root || fh == &file {
            continue;
        }
        match c.getattr(fh).unwrap() {
            Ok(a) => panic!("GETATTR with forged handle ({what}) succeeded: {a:?}"),
            Err(s) => assert!(ok_status(s), "GETATTR forged ({what}): nfsstat3 {s}"),
        }
        match c.lookup(fh, b"file.bin").unwrap() {
            Ok(l) => panic!("LOOKUP in forged handle ({what}) succeeded: {:?}", l.fh),
            Err(s) => assert!(ok_status(s), "LOOKUP forged ({what}): nfsstat3 {s}"),
        }
        match c.read(fh, 0, 4096).unwrap() {
            Ok(_) => panic!("READ with forged handle ({what}) succeeded"),
            Err(s) => assert!(ok_status(s), "READ forged ({what}): nfsstat3 {s}"),
        }
        match c.readdir_page(fh, 0, [0; 8], 4096).unwrap() {
            Ok(_) => panic!("READDIR with forged handle ({what}) succeeded"),
            Err(s) => assert!(ok_status(s), "READDIR forged ({what}): nfsstat3 {s}"),
        }
        fx.still_serving(&format!("forged handle ({what})"));
    }
    let zero_len = c.getattr(&[]).unwrap().err();
    assert_eq!(
        zero_len,
        Some(NFS3ERR_BADHANDLE),
        "an empty handle is malformed"
    );

    // Real handles used for the wrong kind of object.
    assert_eq!(
        c.readdir_page(&file, 0, [0; 8], 4096).unwrap().err(),
        Some(NFS3ERR_NOTDIR),
        "READDIR of a file"
    );
    let r = c.read(&root, 0, 4096).unwrap();
    assert!(r.is_err(), "READ of a directory succeeded");
}

/// 64 calls written before any reply is read, then 1000 with a writer
/// thread racing the reader: every call is answered once, with its xid,
/// and with the right content.
#[test]
fn pipelined_calls_are_all_answered_by_xid() {
    let mut fx = Fixture::new();
    let mut c = fx.client();
    let root = c.mount_root().unwrap();
    let file = c.lookup_path(&root, "file.bin").unwrap();
    let content = c.read_all(&file, 65_536, 1 << 20).unwrap();
    assert_eq!(content.len(), 65_536);
    let file_id = c.getattr(&file).unwrap().unwrap().fileid;
    let root_id = c.getattr(&root).unwrap().unwrap().fileid;

    #[derive(Clone)]
    enum Want {
        Read { offset: usize, count: usize },
        Attr(u64),
        Lookup(u64),
    }
    let build = |i: usize, xid: u32| -> (Vec<u8>, Want) {
        match i % 4 {
            0 | 2 => {
                let count = 1024 + (i * 37) % 3000;
                let offset = (i * 4099) % (65_536 - count);
                let args = args_read(&file, offset as u64, count as u32);
                (
                    frame(&encode_call(
                        xid,
                        NFS_PROGRAM,
                        NFS_V3,
                        NFSPROC3_READ,
                        &Auth::sys(),
                        &args,
                    )),
                    Want::Read { offset, count },
                )
            }
            1 => {
                let fh = if i % 8 == 1 { &file } else { &root };
                let want = if i % 8 == 1 { file_id } else { root_id };
                (
                    frame(&encode_call(
                        xid,
                        NFS_PROGRAM,
                        NFS_V3,
                        NFSPROC3_GETATTR,
                        &Auth::sys(),
                        &args_fh(fh),
                    )),
                    Want::Attr(want),
                )
            }
            _ => {
                let args = args_lookup(&root, b"file.bin");
                (
                    frame(&encode_call(
                        xid,
                        NFS_PROGRAM,
                        NFS_V3,
                        NFSPROC3_LOOKUP,
                        &Auth::sys(),
                        &args,
                    )),
                    Want::Lookup(file_id),
                )
            }
        }
    };
    let check = |want: &Want, res: Vec<u8>| match want {
        Want::Read { offset, count } => {
            let r = decode_read(&res)
                .unwrap()
                .unwrap_or_else(|s| panic!("pipelined READ: nfsstat3 {s}"));
            assert_eq!(
                r.data,
                content[*offset..offset + count],
                "pipelined READ at {offset}+{count}"
            );
        }
        Want::Attr(id) => {
            let a = decode_getattr(&res)
                .unwrap()
                .unwrap_or_else(|s| panic!("pipelined GETATTR: nfsstat3 {s}"));
            assert_eq!(a.fileid, *id, "pipelined GETATTR fileid");
        }
        Want::Lookup(id) => {
            let l = decode_lookup(&res)
                .unwrap()
                .unwrap_or_else(|s| panic!("pipelined LOOKUP: nfsstat3 {s}"));
            assert_eq!(
                l.attr.map(|a| a.fileid).unwrap_or(*id),
                *id,
                "pipelined LOOKUP fileid"
            );
        }
    };

    // Round 1: 64 calls in one write.
    let mut p = fx.conn();
    let base = p.next_xid();
    let mut wants = std::collections::HashMap::new();
    let mut batch = Vec::new();
    for i in 0..64 {
        let xid = base.wrapping_add(i as u32 * 3);
        let (bytes, want) = build(i, xid);
        batch.extend_from_slice(&bytes);
        wants.insert(xid, want);
    }
    p.send_bytes(&batch).unwrap();
    for n in 0..64 {
        let r = p
            .recv_reply()
            .unwrap_or_else(|e| panic!("pipelined reply {n} of 64: {e:#}"));
        let want = wants
            .remove(&r.xid)
            .unwrap_or_else(|| panic!("reply with unknown or repeated xid {:#x}", r.xid));
        check(&want, r.success().unwrap());
    }
    assert!(wants.is_empty());
    fx.still_serving("64 pipelined calls");

    // Round 2: 1000 calls from a writer thread while this thread reads.
    let mut p = fx.conn();
    let base = p.next_xid();
    let mut wants = std::collections::HashMap::new();
    let mut records = Vec::new();
    for i in 0..1000 {
        let xid = base.wrapping_add(i as u32);
        let (bytes, want) = build(i, xid);
        records.push(bytes);
        wants.insert(xid, want);
    }
    let mut writer = p.stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        for r in records {
            writer.write_all(&r)?;
        }
        Ok::<(), std::io::Error>(())
    });
    for n in 0..1000 {
        let r = p
            .recv_reply()
            .unwrap_or_else(|e| panic!("pipelined reply {n} of 1000: {e:#}"));
        let want = wants
            .remove(&r.xid)
            .unwrap_or_else(|| panic!("reply with unknown or repeated xid {:#x}", r.xid));
        check(&want, r.success().unwrap());
    }
    t.join().unwrap().expect("writer thread");
    assert!(wants.is_empty());
    fx.still_serving("1000 pipelined calls");
}
