//! The NFSv3 write procedures on the wire, by the raw client, over a local
//! source directory and over a SeaweedFS bucket: status codes, the write
//! verifier, SETATTR's guard, symbolic links, and what reaches the source
//! once the gateway has uploaded (it is stopped with SIGTERM after
//! `tidegate status --wait-drained`).

use tidegate_tests::backend::{Backend, Fixture};
use tidegate_tests::data::fingerprint;
use tidegate_tests::for_each_backend;
use tidegate_tests::rpc::*;

for_each_backend!(write_procedures_on_the_wire);

const NFS3ERR_EXIST: u32 = 17;
const NFS3ERR_ISDIR: u32 = 21;
const NFS3ERR_NOTEMPTY: u32 = 66;
const NFS3ERR_NOT_SYNC: u32 = 10002;
const NFS3ERR_NOTSUPP: u32 = 10004;
const NFS3ERR_NOENT: u32 = 2;

fn status(res: &[u8]) -> u32 {
    XdrReader::new(res).u32().unwrap()
}

fn sattr_none(w: &mut XdrWriter) {
    w.bool(false)
        .bool(false)
        .bool(false)
        .bool(false)
        .u32(0)
        .u32(0);
}

fn write_procedures_on_the_wire(backend: Backend) {
    let mut fx = Fixture::new(backend);
    std::fs::create_dir_all(fx.source_dir().join("full")).unwrap();
    std::fs::write(fx.source_dir().join("full/x"), b"x").unwrap();
    let admin = format!("127.0.0.1:{}", tidegate_tests::server::free_port());
    let server = fx.start_with_args(&["--upload-delay", "100ms", "--admin", &admin]);
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let call = |c: &mut NfsClient, proc_: u32, args: Vec<u8>| -> Vec<u8> {
        c.conn
            .call(NFS_PROGRAM, NFS_V3, proc_, &args)
            .unwrap()
            .success()
            .unwrap()
    };

    // CREATE, WRITE (both stabilities), COMMIT; one verifier per run.
    let f = c.create(&root, b"a.bin", true).unwrap().unwrap();
    assert_eq!(c.create(&root, b"a.bin", true).unwrap(), Err(NFS3ERR_EXIST));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let (n1, how1, v1) = c.write(&f, 0, &data[..200_000], 0).unwrap().unwrap();
    let (n2, how2, v2) = c.write(&f, 200_000, &data[200_000..], 2).unwrap().unwrap();
    assert_eq!((n1, n2), (200_000, 100_000));
    assert_eq!((how1, how2), (0, 2), "UNSTABLE then FILE_SYNC");
    assert_eq!(v1, v2, "one write verifier per run");
    assert_eq!(c.commit(&f).unwrap().unwrap(), v1);
    assert_eq!(
        fingerprint(&c.read_all(&f, 65_536, 1 << 20).unwrap()),
        fingerprint(&data),
        "read-your-writes"
    );

    // MKDIR, RMDIR of a non-empty directory, REMOVE of a directory.
    let d = c.mkdir(&root, b"d").unwrap().unwrap();
    assert_eq!(c.mkdir(&root, b"d").unwrap(), Err(NFS3ERR_EXIST));
    assert_eq!(
        c.remove(&root, b"full", true).unwrap(),
        Err(NFS3ERR_NOTEMPTY)
    );
    assert_eq!(c.remove(&root, b"d", false).unwrap(), Err(NFS3ERR_ISDIR));

    // SETATTR with a guard that does not match: NOT_SYNC.
    let mut sa = XdrWriter::new();
    sa.opaque(&f);
    sa.bool(true)
        .u32(0o600)
        .bool(false)
        .bool(false)
        .bool(false)
        .u32(0)
        .u32(0);
    sa.bool(true).u32(1).u32(2); // guard: ctime 1.000000002
    assert_eq!(
        status(&call(&mut c, NFSPROC3_SETATTR, sa.finish())),
        NFS3ERR_NOT_SYNC
    );
    let mut sa = XdrWriter::new();
    sa.opaque(&f);
    sa.bool(true)
        .u32(0o600)
        .bool(false)
        .bool(false)
        .bool(false)
        .u32(0)
        .u32(0);
    sa.bool(false);
    assert_eq!(status(&call(&mut c, NFSPROC3_SETATTR, sa.finish())), 0);
    assert_eq!(c.getattr(&f).unwrap().unwrap().mode & 0o7777, 0o600);

    // SYMLINK and READLINK.
    let mut sl = XdrWriter::new();
    sl.opaque(&d).opaque(b"ln");
    sattr_none(&mut sl);
    sl.opaque(b"../a.bin");
    assert_eq!(status(&call(&mut c, 10, sl.finish())), 0);
    let ln = c.lookup_path(&root, "d/ln").unwrap();
    assert_eq!(c.getattr(&ln).unwrap().unwrap().ftype, 5, "NF3LNK");
    let res = call(&mut c, 5, args_fh(&ln));
    let mut r = XdrReader::new(&res);
    assert_eq!(r.u32().unwrap(), 0);
    decode_post_op_attr(&mut r).unwrap();
    assert_eq!(r.opaque(4096).unwrap(), b"../a.bin");

    // LINK and MKNOD are not supported.
    let link = XdrWriter::new()
        .opaque(&f)
        .opaque(&d)
        .opaque(b"hard")
        .finish();
    assert_eq!(status(&call(&mut c, 15, link)), NFS3ERR_NOTSUPP);
    let mut mknod = XdrWriter::new();
    mknod.opaque(&d).opaque(b"fifo").u32(7); // NF3FIFO
    sattr_none(&mut mknod);
    assert_eq!(status(&call(&mut c, 11, mknod.finish())), NFS3ERR_NOTSUPP);

    // RENAME over an existing file; the renamed handle keeps working.
    let g = c.create(&d, b"g", false).unwrap().unwrap();
    c.write(&g, 0, b"gee", 2).unwrap().unwrap();
    assert_eq!(c.rename(&root, b"a.bin", &d, b"g").unwrap(), Ok(()));
    assert_eq!(
        c.lookup(&root, b"a.bin").unwrap().err(),
        Some(NFS3ERR_NOENT)
    );
    assert_eq!(
        fingerprint(&c.read_all(&f, 65_536, 1 << 20).unwrap()),
        fingerprint(&data),
        "the renamed file's handle"
    );
    assert!(
        c.getattr(&g).unwrap().is_err(),
        "the replaced file's handle is stale"
    );
    // RENAME onto itself is a no-op.
    assert_eq!(c.rename(&d, b"g", &d, b"g").unwrap(), Ok(()));
    drop(c);

    // Everything reaches the source; then a restart changes the verifier.
    let st = std::process::Command::new(tidegate_tests::server::tidegate_bin())
        .args(["status", "--admin", &admin, "--wait-drained", "60s"])
        .status()
        .unwrap();
    assert!(st.success(), "tidegate status --wait-drained: {st}");
    drop(server);
    let entries = fx.source_entries();
    assert_eq!(
        entries.get("d/g").cloned().flatten(),
        Some(fingerprint(&data)),
        "d/g in the source: {entries:?}"
    );
    assert!(!entries.contains_key("a.bin"), "{entries:?}");
    assert!(entries.contains_key("d/ln"), "{entries:?}");
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let h = c.create(&root, b"b", false).unwrap().unwrap();
    let (_, _, v3) = c.write(&h, 0, b"b", 0).unwrap().unwrap();
    assert_ne!(v3, v1, "the write verifier changes with a restart");
}
