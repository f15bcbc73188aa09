//! File handles and fileids are stable across restarts over the same state
//! directory; SIGTERM stops the server cleanly. Each body runs over a local
//! source directory and over a SeaweedFS bucket.

use std::collections::BTreeSet;
use std::time::Duration;

use tidegate_tests::backend::{Backend, Fixture};
use tidegate_tests::data::{fingerprint, fresh_seed, write_random_file};
use tidegate_tests::for_each_backend;
use tidegate_tests::rpc::{NfsClient, NFS3ERR_STALE};

for_each_backend!(
    handles_and_fileids_survive_restart,
    sigterm_with_connected_clients_exits_cleanly,
);

fn handles_and_fileids_survive_restart(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let seed = fresh_seed();
    let file_fp = fx.write_random_file("dir/sub/file.bin", 100_000, seed);
    fx.write_random_file("top.bin", 10, seed ^ 1);
    fx.write_random_file("doomed.bin", 10, seed ^ 2);

    // First run: learn the handles and fileids.
    let mut server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let dir = c.lookup_path(&root, "dir").unwrap();
    let sub = c.lookup_path(&dir, "sub").unwrap();
    let file = c.lookup_path(&sub, "file.bin").unwrap();
    let top = c.lookup_path(&root, "top.bin").unwrap();
    let doomed = c.lookup_path(&root, "doomed.bin").unwrap();
    let attr = |c: &mut NfsClient, fh: &[u8], what: &str| {
        c.getattr(fh)
            .unwrap()
            .unwrap_or_else(|s| panic!("GETATTR {what}: nfsstat3 {s}"))
    };
    let ids: Vec<u64> = [&root, &dir, &sub, &file, &top, &doomed]
        .iter()
        .map(|fh| attr(&mut c, fh, "first run").fileid)
        .collect();
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "fileids are not distinct: {ids:?}"
    );
    let file_attr = attr(&mut c, &file, "file.bin");
    assert_eq!(file_attr.size, 100_000);
    assert_eq!(
        fingerprint(&c.read_all(&file, 32_768, 1 << 20).unwrap()),
        file_fp
    );
    drop(c);

    let status = server.stop();
    assert!(
        status.success(),
        "tidegate exited with {status} on SIGTERM; stderr:\n{}",
        server.stderr_text()
    );

    // Between runs the source changes: one object appears, one disappears.
    fx.write_random_file("dir/new.bin", 3, seed ^ 3);
    fx.remove_file("doomed.bin");

    // Second run, same state directory.
    let mut server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root2 = c.mount_root().unwrap();
    assert_eq!(
        root2, root,
        "MNT / returned a different root handle after restart"
    );

    // Old handles still work, without any LOOKUP first.
    for (fh, want_id, what) in [
        (&file, ids[3], "file.bin"),
        (&sub, ids[2], "sub"),
        (&top, ids[4], "top.bin"),
    ] {
        let a = attr(&mut c, fh, what);
        assert_eq!(a.fileid, want_id, "fileid of {what} changed across restart");
    }
    assert_eq!(attr(&mut c, &file, "file.bin").size, 100_000);
    assert_eq!(
        fingerprint(&c.read_all(&file, 32_768, 1 << 20).unwrap()),
        file_fp,
        "READ via the old handle"
    );

    // LOOKUP hands out the same handles as before.
    assert_eq!(c.lookup_path(&root2, "dir").unwrap(), dir, "LOOKUP dir");
    assert_eq!(c.lookup_path(&dir, "sub").unwrap(), sub, "LOOKUP dir/sub");
    assert_eq!(
        c.lookup_path(&sub, "file.bin").unwrap(),
        file,
        "LOOKUP dir/sub/file.bin"
    );
    assert_eq!(
        c.lookup_path(&root2, "top.bin").unwrap(),
        top,
        "LOOKUP top.bin"
    );

    // The new object gets a new fileid; the removed one is stale.
    let new = c.lookup_path(&dir, "new.bin").unwrap();
    let new_id = attr(&mut c, &new, "new.bin").fileid;
    assert!(
        !ids.contains(&new_id),
        "new.bin reuses fileid {new_id} of an existing object"
    );
    assert!(
        ![&root, &dir, &sub, &file, &top, &doomed].contains(&&new),
        "new.bin reuses a handle"
    );
    match c.getattr(&doomed).unwrap() {
        Err(s) => assert_eq!(s, NFS3ERR_STALE, "GETATTR of a removed object"),
        Ok(a) => panic!("GETATTR of a removed object succeeded: {a:?}"),
    }
    drop(c);
    let status = server.stop();
    assert!(
        status.success(),
        "tidegate exited with {status} on SIGTERM; stderr:\n{}",
        server.stderr_text()
    );

    // A third run still agrees (the table was not rewritten differently).
    let server = fx.start();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    assert_eq!(c.mount_root().unwrap(), root);
    assert_eq!(
        c.lookup_path(&root, "dir/new.bin").unwrap(),
        new,
        "new.bin handle after second restart"
    );
    assert_eq!(attr(&mut c, &file, "file.bin").fileid, ids[3]);
}

/// SIGTERM with clients connected (one idle, one mid-conversation) exits 0
/// promptly.
fn sigterm_with_connected_clients_exits_cleanly(backend: Backend) {
    let mut fx = Fixture::new(backend);
    write_random_file(&fx.source_dir().join("f.bin"), 1 << 20, fresh_seed()).unwrap();
    let mut server = fx.start();
    let _idle = std::net::TcpStream::connect(server.addr()).unwrap();
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let f = c.lookup_path(&root, "f.bin").unwrap();
    c.read(&f, 0, 65_536).unwrap().unwrap();
    let start = std::time::Instant::now();
    let status = server.stop();
    assert!(
        status.success(),
        "tidegate exited with {status} on SIGTERM; stderr:\n{}",
        server.stderr_text()
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        start.elapsed()
    );
}
