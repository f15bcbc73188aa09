//! MOUNT v3 and NFSv3 spoken correctly, on the wire, by the raw client:
//! MNT/EXPORT, sub-directory mounts (what libnfs sends for nested paths),
//! multi-fragment records, READ edge cases, READDIRPLUS against LOOKUP, and
//! write procedures answering NFS3ERR_ROFS on a `--read-only` export
//! without touching the source.
//! Each body runs over a local source directory and over a SeaweedFS
//! bucket.

use std::collections::BTreeMap;

use tidegate_tests::backend::{Backend, Fixture};
use tidegate_tests::data::{fingerprint, fresh_seed, write_random_file};
use tidegate_tests::for_each_backend;
use tidegate_tests::rpc::*;

const MIB: u64 = 1 << 20;

for_each_backend!(
    mount_protocol,
    mount_of_a_subdirectory_matches_lookup,
    multi_fragment_records,
    read_edge_cases,
    readdirplus_agrees_with_lookup,
    write_procedures_answer_rofs,
);

fn decode_exports(res: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut r = XdrReader::new(res);
    let mut dirs = Vec::new();
    while r.bool()? {
        anyhow::ensure!(dirs.len() < 1000, "EXPORT list too long");
        dirs.push(String::from_utf8(r.opaque(1024)?.to_vec())?);
        let mut groups = 0;
        while r.bool()? {
            r.opaque(1024)?;
            groups += 1;
            anyhow::ensure!(groups < 1000, "EXPORT group list too long");
        }
    }
    r.expect_end()?;
    Ok(dirs)
}

fn mount_protocol(backend: Backend) {
    let mut fx = Fixture::new(backend);
    write_random_file(&fx.source_dir().join("a/b/c.bin"), 10, fresh_seed()).unwrap();
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();

    c.mount_null().unwrap();
    let m = c
        .mnt_raw(b"/")
        .unwrap()
        .unwrap_or_else(|s| panic!("MNT /: mountstat3 {s}"));
    assert!(
        !m.fh.is_empty() && m.fh.len() <= NFS3_FHSIZE,
        "root handle length {}",
        m.fh.len()
    );
    assert!(
        m.auth_flavors.contains(&AUTH_SYS) || m.auth_flavors.contains(&AUTH_NONE),
        "MNT auth flavors {:?}",
        m.auth_flavors
    );
    let root = m.fh;
    let attr = c.getattr(&root).unwrap().unwrap();
    assert_eq!(attr.ftype, NF3DIR);

    // The same handle every time, on any connection.
    assert_eq!(c.mount_root().unwrap(), root);
    let mut c2 = NfsClient::connect(server.addr()).unwrap();
    assert_eq!(c2.mount_root().unwrap(), root);

    // EXPORT lists "/".
    let res = c
        .conn
        .call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3_EXPORT, &[])
        .unwrap()
        .success()
        .unwrap();
    let exports = decode_exports(&res).unwrap();
    assert!(exports.iter().any(|e| e == "/"), "EXPORT lists {exports:?}");

    // Paths that are not directories of the export are refused.
    for bad in [
        &b"/nonexistent"[..],
        b"/a/b/c.bin",
        b"relative",
        b"/a/../../etc",
    ] {
        match c.mnt_raw(bad).unwrap() {
            Ok(m) => panic!(
                "MNT {:?} succeeded with handle {:?}",
                String::from_utf8_lossy(bad),
                m.fh
            ),
            Err(s) => assert_ne!(s, 0),
        }
    }
}

/// libnfs mounts the parent path of the file it opens (`nfs-cat
/// nfs://h//a/b/c.bin` sends MNT `//a/b`): a directory below the export
/// mounts to the same handle LOOKUP gives.
fn mount_of_a_subdirectory_matches_lookup(backend: Backend) {
    let mut fx = Fixture::new(backend);
    write_random_file(&fx.source_dir().join("a/b/c.bin"), 10, fresh_seed()).unwrap();
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let ab = c.lookup_path(&root, "a/b").unwrap();
    for path in [&b"/a/b"[..], b"//a/b", b"/a/b/", b"/a//b"] {
        let m = c
            .mnt_raw(path)
            .unwrap()
            .unwrap_or_else(|s| panic!("MNT {:?}: mountstat3 {s}", String::from_utf8_lossy(path)));
        assert_eq!(
            m.fh,
            ab,
            "MNT {:?} versus LOOKUP a/b",
            String::from_utf8_lossy(path)
        );
    }
    for path in [&b"//"[..], b"/."] {
        if let Ok(m) = c.mnt_raw(path).unwrap() {
            assert_eq!(m.fh, root, "MNT {:?}", String::from_utf8_lossy(path));
        }
    }
}

/// Calls split over several record fragments (including empty ones) are
/// reassembled; replies come back whole.
fn multi_fragment_records(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let fp = write_random_file(&fx.source_dir().join("f.bin"), 3 * MIB + 1, fresh_seed()).unwrap();
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let f = c.lookup_path(&root, "f.bin").unwrap();

    let splits: [&[usize]; 4] = [
        &[1],
        &[4, 0, 1, 7],
        &[0, 0, 0],
        &[3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
    ];
    for (i, sizes) in splits.iter().enumerate() {
        let xid = 0x7000 + i as u32;
        let call = encode_call(
            xid,
            NFS_PROGRAM,
            NFS_V3,
            NFSPROC3_GETATTR,
            &Auth::sys(),
            &args_fh(&f),
        );
        c.conn.send_bytes(&frame_fragments(&call, sizes)).unwrap();
        let r = c.conn.wait_for(xid).unwrap();
        let a = decode_getattr(&r.success().unwrap()).unwrap().unwrap();
        assert_eq!(a.size, 3 * MIB + 1, "GETATTR in fragments {sizes:?}");
    }
    // A READ call in three fragments, sent byte-group by byte-group.
    let xid = 0x7100;
    let call = encode_call(
        xid,
        NFS_PROGRAM,
        NFS_V3,
        NFSPROC3_READ,
        &Auth::sys(),
        &args_read(&f, 4096, 1000),
    );
    let framed = frame_fragments(&call, &[10, 30]);
    for chunk in framed.chunks(5) {
        c.conn.send_bytes(chunk).unwrap();
    }
    let r = c.conn.wait_for(xid).unwrap();
    let rd = decode_read(&r.success().unwrap()).unwrap().unwrap();
    assert_eq!(rd.data.len(), 1000);

    // The whole file with large READs (the server may clamp the count).
    let data = c.read_all(&f, 4 << 20, 16 << 20).unwrap();
    assert_eq!(fingerprint(&data), fp);
}

fn read_edge_cases(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let fp = write_random_file(&fx.source_dir().join("f.bin"), 10_000, fresh_seed()).unwrap();
    write_random_file(&fx.source_dir().join("empty.bin"), 0, 1).unwrap();
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let f = c.lookup_path(&root, "f.bin").unwrap();
    let all = c.read_all(&f, 3000, 1 << 20).unwrap();
    assert_eq!(fingerprint(&all), fp);

    let r = c.read(&f, 9_000, 5_000).unwrap().unwrap();
    assert_eq!(r.data, all[9_000..], "READ across EOF");
    assert!(r.eof, "READ across EOF must set eof");
    let r = c.read(&f, 10_000, 100).unwrap().unwrap();
    assert!(r.data.is_empty() && r.eof, "READ at EOF");
    let r = c.read(&f, u64::MAX - 10, 100).unwrap().unwrap();
    assert!(r.data.is_empty() && r.eof, "READ far past EOF");
    let r = c.read(&f, 0, 0).unwrap().unwrap();
    assert!(r.data.is_empty(), "READ of 0 bytes");
    let r = c.read(&f, 0, 10_000).unwrap().unwrap();
    assert_eq!(r.data, all, "READ of exactly the file");
    if let Some(a) = r.attr {
        assert_eq!(a.size, 10_000);
    }

    let e = c.lookup_path(&root, "empty.bin").unwrap();
    let r = c.read(&e, 0, 4096).unwrap().unwrap();
    assert!(r.data.is_empty() && r.eof, "READ of an empty file");
}

/// READDIRPLUS pages carry the same handles and fileids as LOOKUP and
/// GETATTR, and READDIR agrees on the names.
fn readdirplus_agrees_with_lookup(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let seed = fresh_seed();
    let mut sizes = BTreeMap::new();
    for i in 0..300u64 {
        let name = format!("f{i:03}-{}", "y".repeat((i % 40) as usize));
        write_random_file(&fx.source_dir().join("d").join(&name), i * 3, seed ^ i).unwrap();
        sizes.insert(name, i * 3);
    }
    std::fs::create_dir_all(fx.source_dir().join("d/subdir")).unwrap();
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let d = c.lookup_path(&root, "d").unwrap();

    let (plus, plus_pages) = c.list_dir(&d, true, 2048, 10_000).unwrap();
    let (plain, _) = c.list_dir(&d, false, 1024, 10_000).unwrap();
    assert!(
        plus_pages > 3,
        "READDIRPLUS with 2 KiB pages took only {plus_pages} pages"
    );
    let names = |v: &[DirEntry]| {
        let mut n: Vec<String> = v
            .iter()
            .map(|e| String::from_utf8(e.name.clone()).unwrap())
            .filter(|n| n != "." && n != "..")
            .collect();
        n.sort();
        n
    };
    let mut want: Vec<String> = sizes.keys().cloned().collect();
    want.push("subdir".into());
    want.sort();
    assert_eq!(names(&plus), want, "READDIRPLUS names");
    assert_eq!(names(&plain), want, "READDIR names");

    for e in plus.iter().filter(|e| e.name != b"." && e.name != b"..") {
        let name = String::from_utf8(e.name.clone()).unwrap();
        let l = c.lookup(&d, &e.name).unwrap().unwrap();
        let a = c.getattr(&l.fh).unwrap().unwrap();
        assert_eq!(
            e.fileid, a.fileid,
            "{name}: READDIRPLUS fileid versus GETATTR"
        );
        if let Some(fh) = &e.fh {
            assert_eq!(fh, &l.fh, "{name}: READDIRPLUS handle versus LOOKUP");
        }
        if let Some(attr) = &e.attr {
            assert_eq!(attr.fileid, a.fileid, "{name}: READDIRPLUS attributes");
            assert_eq!(attr.size, a.size, "{name}: READDIRPLUS size");
        }
        if let Some(size) = sizes.get(&name) {
            assert_eq!(a.size, *size, "{name}: size");
        }
    }
    assert!(
        plus.iter().any(|e| e.fh.is_some()),
        "READDIRPLUS returned no handles at all"
    );
}

/// With `--read-only`, write-side procedures answer NFS3ERR_ROFS and
/// leave the source alone.
fn write_procedures_answer_rofs(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let fp = write_random_file(&fx.source_dir().join("keep.bin"), 5_000, fresh_seed()).unwrap();
    let server = fx.start_with_args(&["--read-only"]);
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let f = c.lookup_path(&root, "keep.bin").unwrap();

    let sattr_none = |w: &mut XdrWriter| {
        w.u32(0).u32(0).u32(0).u32(0).u32(0).u32(0);
    };
    let mut setattr = XdrWriter::new();
    setattr
        .opaque(&f)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(1)
        .u64(0)
        .u32(0)
        .u32(0)
        .u32(0); // truncate to 0
    let mut write = XdrWriter::new();
    write.opaque(&f).u64(0).u32(5).u32(2).opaque(b"HELLO");
    let mut create = XdrWriter::new();
    create.opaque(&root).opaque(b"new.txt").u32(0);
    sattr_none(&mut create);
    let mut mkdir = XdrWriter::new();
    mkdir.opaque(&root).opaque(b"newdir");
    sattr_none(&mut mkdir);
    let remove = args_lookup(&root, b"keep.bin");
    let mut rename = XdrWriter::new();
    rename
        .opaque(&root)
        .opaque(b"keep.bin")
        .opaque(&root)
        .opaque(b"moved.bin");

    for (what, proc_, args) in [
        ("SETATTR", NFSPROC3_SETATTR, setattr.finish()),
        ("WRITE", NFSPROC3_WRITE, write.finish()),
        ("CREATE", NFSPROC3_CREATE, create.finish()),
        ("MKDIR", 9, mkdir.finish()),
        ("REMOVE", NFSPROC3_REMOVE, remove),
        ("RENAME", 14, rename.finish()),
    ] {
        let res = c
            .conn
            .call(NFS_PROGRAM, NFS_V3, proc_, &args)
            .unwrap()
            .success()
            .unwrap();
        let status = XdrReader::new(&res).u32().unwrap();
        assert_eq!(status, NFS3ERR_ROFS, "{what}");
    }
    // Read back from the source itself (the bucket for S3): keep.bin
    // unchanged and nothing else.
    assert_eq!(
        fx.source_entries(),
        BTreeMap::from([("keep.bin".to_string(), Some(fp))]),
        "the source changed"
    );
}
