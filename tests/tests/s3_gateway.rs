//! The gateway over a real S3 server (SeaweedFS), in the situations only a
//! bucket produces: objects written by another S3 client before and while
//! the gateway runs, keys that are not valid NFS names, the S3 server going
//! away and coming back, and an export confined to a prefix.
//!
//! Objects are written and changed with boto3 (the way users fill their
//! buckets), never through the gateway. Waits for the gateway to notice a
//! change are polls with a bound; the bound is the assertion.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_tests::backend::{Backend, Fixture, BUCKET};
use tidegate_tests::data::{fingerprint, fresh_seed, hex, Fingerprint, SplitMix64};
use tidegate_tests::rpc::*;
use tidegate_tests::server::Server;
use tidegate_tests::tools::{nfs_cat, nfs_file_url, nfs_ls, nfs_root_url, parse_nfs_ls, run};

const MIB: usize = 1 << 20;
/// How long a change made in the bucket may take to show through the
/// gateway with `--meta-ttl 1s --negative-ttl 1s` (the TTL plus a generous
/// margin for a loaded two-core machine).
const CHANGE_VISIBLE_BOUND: Duration = Duration::from_secs(10);
/// The longest an uncached operation may take to answer while S3 is down.
const OUTAGE_REPLY_BOUND: Duration = Duration::from_secs(60);
/// How long the gateway may take to serve again once S3 is back.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

// ------------------------------------------------------------ helpers ----

/// One change to the bucket, made with boto3.
enum Op<'a> {
    /// PutObject with these bytes.
    Put(&'a str, &'a [u8]),
    /// `upload_file` of a local file: a multipart upload (8 MiB parts) when
    /// it is larger than 8 MiB, else one PutObject.
    File(&'a str, &'a Path),
    Delete(&'a str),
}

/// Applies `ops` in order in one boto3 process; returns, per operation,
/// `Ok(())` or the S3 error code the server answered.
fn bucket_ops(fx: &Fixture, ops: &[Op]) -> Vec<Result<(), String>> {
    let mut manifest = String::new();
    for op in ops {
        let line = match op {
            Op::Put(k, body) => format!("put {} {}\n", hex(k.as_bytes()), hex_or_dash(body)),
            Op::File(k, p) => format!(
                "file {} {}\n",
                hex(k.as_bytes()),
                hex(p.to_str().expect("UTF-8 path").as_bytes())
            ),
            Op::Delete(k) => format!("delete {} -\n", hex(k.as_bytes())),
        };
        manifest.push_str(&line);
    }
    let path = fx.scratch().join(format!("ops-{:016x}.txt", fresh_seed()));
    std::fs::write(&path, manifest).unwrap();
    let script = format!(
        r#"
import botocore.exceptions, boto3.s3.transfer
MIB = 1 << 20
cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
def unhex(s):
    return b'' if s == '-' else bytes.fromhex(s)
for line in open({path:?}):
    op, key, arg = line.split()
    key = unhex(key).decode('utf-8')
    try:
        if op == 'put':
            s3.put_object(Bucket={BUCKET:?}, Key=key, Body=unhex(arg))
        elif op == 'file':
            s3.upload_file(unhex(arg).decode('utf-8'), {BUCKET:?}, key, Config=cfg)
        elif op == 'delete':
            s3.delete_object(Bucket={BUCKET:?}, Key=key)
        print('ok', flush=True)
    except botocore.exceptions.ClientError as e:
        print('fail', e.response['Error']['Code'], flush=True)
"#,
        path = path.to_str().unwrap()
    );
    let out = fx
        .seaweed()
        .python(&script)
        .unwrap_or_else(|e| panic!("boto3: {e:#}"));
    let results: Vec<Result<(), String>> = out
        .lines()
        .map(|l| match l.strip_prefix("fail ") {
            Some(code) => Err(code.to_string()),
            None => {
                assert_eq!(l, "ok", "unexpected boto3 output line");
                Ok(())
            }
        })
        .collect();
    assert_eq!(results.len(), ops.len(), "boto3 output:\n{out}");
    results
}

/// As [`bucket_ops`], every operation must succeed.
fn bucket_ops_ok(fx: &Fixture, ops: &[Op]) {
    for (i, r) in bucket_ops(fx, ops).into_iter().enumerate() {
        if let Err(code) = r {
            panic!("bucket operation {i} failed with {code}");
        }
    }
}

fn hex_or_dash(b: &[u8]) -> String {
    if b.is_empty() {
        "-".to_string()
    } else {
        hex(b)
    }
}

/// (size, ETag) of an object, from boto3's HeadObject.
fn head_object(fx: &Fixture, key: &str) -> (u64, String) {
    let out = fx
        .seaweed()
        .python(&format!(
            "h = s3.head_object(Bucket={BUCKET:?}, Key={key:?})\nprint(h['ContentLength'], h['ETag'])"
        ))
        .unwrap_or_else(|e| panic!("HeadObject {key}: {e:#}"));
    let (size, etag) = out.trim().split_once(' ').expect("size and ETag");
    (size.parse().unwrap(), etag.trim_matches('"').to_string())
}

/// Call `f` until it returns `Ok`, at most `bound`; returns its value and
/// how long it took. Panics with the last complaint past the bound.
fn poll<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return (v, start.elapsed()),
            Err(why) => {
                if start.elapsed() >= bound {
                    panic!("{what}: not within {bound:?}; last: {why}");
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn connect(server: &Server) -> (NfsClient, Vec<u8>) {
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    (c, root)
}

fn lookup_status(c: &mut NfsClient, dir: &[u8], name: &str) -> Result<Lookup, u32> {
    c.lookup(dir, name.as_bytes()).unwrap()
}

fn getattr_ok(c: &mut NfsClient, fh: &[u8], what: &str) -> Fattr {
    c.getattr(fh)
        .unwrap()
        .unwrap_or_else(|s| panic!("GETATTR {what}: nfsstat3 {s}"))
}

/// Names of a directory (without `.` and `..`) by READDIR or READDIRPLUS.
fn dir_names(c: &mut NfsClient, dir: &[u8], plus: bool, page_bytes: u32) -> BTreeSet<Vec<u8>> {
    let (entries, _) = c
        .list_dir(dir, plus, page_bytes, 10_000)
        .unwrap_or_else(|e| panic!("listing (plus={plus}): {e:#}"));
    let mut out = BTreeSet::new();
    for e in entries {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        assert!(
            out.insert(e.name.clone()),
            "{:?} listed twice",
            String::from_utf8_lossy(&e.name)
        );
    }
    out
}

fn names_of(v: &[&str]) -> BTreeSet<Vec<u8>> {
    v.iter().map(|n| n.as_bytes().to_vec()).collect()
}

fn show(names: &BTreeSet<Vec<u8>>) -> Vec<String> {
    names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// READ of a whole file in `chunk`-byte calls.
fn read_whole(c: &mut NfsClient, fh: &[u8], chunk: u32, what: &str) -> Vec<u8> {
    c.read_all(fh, chunk, 1 << 30)
        .unwrap_or_else(|e| panic!("READ {what}: {e:#}"))
}

fn random_bytes(len: usize) -> Vec<u8> {
    SplitMix64::new(fresh_seed()).bytes(len)
}

/// `nfs-ls -R` of the export root: (path, kind, size for files).
fn ls_recursive(server: &Server) -> BTreeSet<(String, char, u64)> {
    let url = nfs_root_url(server.port);
    let out = run(
        Command::new(nfs_ls()).arg("-R").arg(&url),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "nfs-ls -R {url} failed: {}\nserver stderr:\n{}",
        out.stderr,
        server.stderr_text()
    );
    parse_nfs_ls(&out.stdout_text())
        .unwrap()
        .into_iter()
        .map(|e| {
            let size = if e.kind == 'd' { 0 } else { e.size };
            (e.path, e.kind, size)
        })
        .collect()
}

fn cat(server: &Server, rel: &str) -> Fingerprint {
    let url = nfs_file_url(server.port, rel);
    let (status, fp, stderr) = tidegate_tests::tools::run_hash_stdout(
        Command::new(nfs_cat()).arg(&url),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        status.success(),
        "nfs-cat {url} failed: {stderr}\nserver stderr:\n{}",
        server.stderr_text()
    );
    fp
}

// -------------------------------------------------------------- tests ----

/// A bucket filled by boto3 before the gateway starts (single PUTs, a
/// multipart upload, nested keys, a directory marker, UTF-8 and spaces):
/// every object is a file with its exact size and bytes, every prefix a
/// directory; no import step.
#[test]
fn prefilled_bucket_objects_appear_as_files() {
    let mut fx = Fixture::new(Backend::S3);
    let local = fx.scratch().join("prefill");
    let sizes: &[(&str, usize)] = &[
        ("empty.bin", 0),
        ("one.bin", 1),
        ("small.txt", 1000),
        ("ds/train/shard-0000.bin", 65_536 + 7),
        ("ds/train/shard-0001.bin", 5 * MIB + 3),
        ("ds/val/ünï cødé 数据.bin", 4096),
        ("ds/multipart.bin", 20 * MIB + 5),
    ];
    let mut expected = BTreeMap::new();
    let mut bodies = Vec::new();
    for (key, size) in sizes {
        let path = local.join(key.replace('/', "__"));
        let fp =
            tidegate_tests::data::write_random_file(&path, *size as u64, fresh_seed()).unwrap();
        expected.insert(key.to_string(), fp);
        bodies.push((key.to_string(), path));
    }
    let mut ops: Vec<Op> = bodies.iter().map(|(k, p)| Op::File(k, p)).collect();
    ops.push(Op::Put("ds/empty-dir/", b""));
    bucket_ops_ok(&fx, &ops);
    let (mp_size, mp_etag) = head_object(&fx, "ds/multipart.bin");
    assert_eq!(mp_size, (20 * MIB + 5) as u64);
    assert!(
        mp_etag.contains('-'),
        "ds/multipart.bin was not stored as a multipart object (ETag {mp_etag})"
    );

    let server = fx.start();

    // The namespace, as a real client lists it.
    let mut want: BTreeSet<(String, char, u64)> = expected
        .iter()
        .map(|(k, f)| (k.clone(), '-', f.len_bytes))
        .collect();
    for d in ["ds", "ds/train", "ds/val", "ds/empty-dir"] {
        want.insert((d.to_string(), 'd', 0));
    }
    assert_eq!(ls_recursive(&server), want, "nfs-ls -R of the bucket");

    // The bytes, through a real client and through raw READs.
    for (key, fp) in &expected {
        assert_eq!(&cat(&server, key), fp, "nfs-cat {key}");
    }
    let (mut c, root) = connect(&server);
    for (key, fp) in &expected {
        let fh = c.lookup_path(&root, key).unwrap();
        let a = getattr_ok(&mut c, &fh, key);
        assert_eq!((a.ftype, a.size), (NF3REG, fp.len_bytes), "{key}");
        assert!(a.mtime.0 > 0, "{key}: mtime {:?}", a.mtime);
        let data = read_whole(&mut c, &fh, 1 << 20, key);
        assert_eq!(&fingerprint(&data), fp, "LOOKUP+READ {key}");
    }
    // The marker makes an empty directory and is not its own child.
    let empty = c.lookup_path(&root, "ds/empty-dir").unwrap();
    assert_eq!(getattr_ok(&mut c, &empty, "ds/empty-dir").ftype, NF3DIR);
    assert!(dir_names(&mut c, &empty, true, 4096).is_empty());
}

/// Objects overwritten, added and deleted directly in the bucket show
/// through the gateway once the TTLs (1 s) run out: new attributes and
/// bytes, new names, NFS3ERR_NOENT for deleted names and NFS3ERR_STALE for
/// their old handles, listings that follow.
#[test]
fn bucket_changes_are_seen_after_the_ttl() {
    let mut fx = Fixture::new(Backend::S3);
    let v1 = random_bytes(1000);
    let v2 = random_bytes(3000);
    let added = random_bytes(50);
    let keep = random_bytes(100);
    bucket_ops_ok(
        &fx,
        &[
            Op::Put("keep.txt", &keep),
            Op::Put("change.bin", &v1),
            Op::Put("doomed.txt", b"soon gone"),
            Op::Put("dir/old.txt", b"old"),
            Op::Put("gone/a.txt", b"a"),
            Op::Put("gone/sub/b.txt", b"b"),
        ],
    );
    let server = fx.start_with_args(&["--meta-ttl", "1s", "--negative-ttl", "1s"]);
    let (mut c, root) = connect(&server);

    // Learn everything once, so that every kind of cache holds it.
    let change = lookup_status(&mut c, &root, "change.bin").unwrap().fh;
    assert_eq!(getattr_ok(&mut c, &change, "change.bin").size, 1000);
    assert_eq!(read_whole(&mut c, &change, 65_536, "change.bin"), v1);
    let keep_fh = lookup_status(&mut c, &root, "keep.txt").unwrap().fh;
    let keep_attr = getattr_ok(&mut c, &keep_fh, "keep.txt");
    let doomed = lookup_status(&mut c, &root, "doomed.txt").unwrap().fh;
    getattr_ok(&mut c, &doomed, "doomed.txt");
    let dir = lookup_status(&mut c, &root, "dir").unwrap().fh;
    let old = lookup_status(&mut c, &dir, "old.txt").unwrap().fh;
    assert_eq!(
        lookup_status(&mut c, &root, "new.txt").err(),
        Some(NFS3ERR_NOENT),
        "new.txt before it exists"
    );
    let gone = lookup_status(&mut c, &root, "gone").unwrap().fh;
    let gone_sub = lookup_status(&mut c, &gone, "sub").unwrap().fh;
    assert_eq!(
        dir_names(&mut c, &gone, false, 4096),
        names_of(&["a.txt", "sub"])
    );
    assert_eq!(
        dir_names(&mut c, &root, false, 4096),
        names_of(&["keep.txt", "change.bin", "doomed.txt", "dir", "gone"])
    );
    assert_eq!(dir_names(&mut c, &dir, true, 4096), names_of(&["old.txt"]));

    bucket_ops_ok(
        &fx,
        &[
            Op::Put("change.bin", &v2),
            Op::Put("new.txt", &added),
            Op::Delete("doomed.txt"),
            Op::Put("dir/added.txt", b"added"),
            Op::Delete("dir/old.txt"),
            Op::Delete("gone/a.txt"),
            Op::Delete("gone/sub/b.txt"),
            // SeaweedFS keeps an emptied folder listed as a common prefix
            // until the folder itself is deleted (S3 has no folders; these
            // are no-ops there).
            Op::Delete("gone/sub/"),
            Op::Delete("gone/"),
        ],
    );

    let (_, t) = poll(
        "GETATTR shows the overwritten object",
        CHANGE_VISIBLE_BOUND,
        || {
            let a = getattr_ok(&mut c, &change, "change.bin");
            if a.size == 3000 {
                Ok(())
            } else {
                Err(format!("size {}", a.size))
            }
        },
    );
    eprintln!("overwrite visible after {t:?}");
    let r = c.read(&change, 0, 65_536).unwrap().unwrap();
    assert_eq!(r.data, v2, "READ after the overwrite");
    assert!(r.eof);
    assert_eq!(r.attr.map(|a| a.size), Some(3000), "READ attributes");
    assert_eq!(
        lookup_status(&mut c, &root, "change.bin").unwrap().fh,
        change,
        "an overwritten object keeps its handle"
    );

    let (fh, t) = poll(
        "LOOKUP finds the added object",
        CHANGE_VISIBLE_BOUND,
        || lookup_status(&mut c, &root, "new.txt").map_err(|s| format!("nfsstat3 {s}")),
    );
    eprintln!("addition visible after {t:?}");
    assert_eq!(read_whole(&mut c, &fh.fh, 4096, "new.txt"), added);

    let (_, t) = poll(
        "LOOKUP misses the deleted object",
        CHANGE_VISIBLE_BOUND,
        || match lookup_status(&mut c, &root, "doomed.txt") {
            Err(NFS3ERR_NOENT) => Ok(()),
            other => Err(format!("{:?}", other.map(|l| l.fh))),
        },
    );
    eprintln!("deletion visible after {t:?}");
    // Its old handle names nothing any more.
    assert_eq!(
        c.getattr(&doomed).unwrap().err(),
        Some(NFS3ERR_STALE),
        "GETATTR of a deleted object's handle"
    );
    assert_eq!(
        c.read(&doomed, 0, 100).unwrap().err(),
        Some(NFS3ERR_STALE),
        "READ of a deleted object's handle"
    );

    poll("listings follow the bucket", CHANGE_VISIBLE_BOUND, || {
        for plus in [false, true] {
            let got = dir_names(&mut c, &root, plus, 4096);
            let want = names_of(&["keep.txt", "change.bin", "new.txt", "dir"]);
            if got != want {
                return Err(format!("root (plus={plus}): {:?}", show(&got)));
            }
            let got = dir_names(&mut c, &dir, plus, 4096);
            if got != names_of(&["added.txt"]) {
                return Err(format!("dir (plus={plus}): {:?}", show(&got)));
            }
        }
        Ok(())
    });
    assert_eq!(
        c.getattr(&old).unwrap().err(),
        Some(NFS3ERR_STALE),
        "dir/old.txt"
    );
    // A directory whose keys are all gone is gone too.
    assert_eq!(
        lookup_status(&mut c, &root, "gone").err(),
        Some(NFS3ERR_NOENT)
    );
    for (fh, what) in [(&gone, "gone"), (&gone_sub, "gone/sub")] {
        assert_eq!(
            c.getattr(fh).unwrap().err(),
            Some(NFS3ERR_STALE),
            "GETATTR {what}"
        );
        assert_eq!(
            c.readdir_page(fh, 0, [0; 8], 4096).unwrap().err(),
            Some(NFS3ERR_STALE),
            "READDIR {what}"
        );
    }
    assert_eq!(
        lookup_status(&mut c, &dir, "old.txt").err(),
        Some(NFS3ERR_NOENT)
    );

    // What did not change stayed as it was.
    let a = getattr_ok(&mut c, &keep_fh, "keep.txt");
    assert_eq!(
        (a.fileid, a.size, a.mtime),
        (keep_attr.fileid, 100, keep_attr.mtime)
    );
    assert_eq!(read_whole(&mut c, &keep_fh, 4096, "keep.txt"), keep);
}

/// With `--immutable` the gateway keeps what it first saw: attributes,
/// lookups and listings do not follow changes made in the bucket, however
/// long after the TTL. A READ of an object that did change still never
/// mixes versions: its bytes match the attributes it returns.
#[test]
fn immutable_source_is_not_revalidated() {
    let mut fx = Fixture::new(Backend::S3);
    let v1 = random_bytes(1000);
    let v2 = random_bytes(3000);
    bucket_ops_ok(
        &fx,
        &[
            Op::Put("change.bin", &v1),
            Op::Put("doomed.txt", b"still here"),
        ],
    );
    let server = fx.start_with_args(&["--immutable", "--meta-ttl", "1s", "--negative-ttl", "1s"]);
    let (mut c, root) = connect(&server);
    let change = lookup_status(&mut c, &root, "change.bin").unwrap().fh;
    let first = getattr_ok(&mut c, &change, "change.bin");
    assert_eq!(first.size, 1000);
    let doomed = lookup_status(&mut c, &root, "doomed.txt").unwrap().fh;
    getattr_ok(&mut c, &doomed, "doomed.txt");
    let listed = names_of(&["change.bin", "doomed.txt"]);
    assert_eq!(dir_names(&mut c, &root, true, 4096), listed);

    bucket_ops_ok(
        &fx,
        &[
            Op::Put("change.bin", &v2),
            Op::Delete("doomed.txt"),
            Op::Put("new.txt", b"new"),
        ],
    );
    assert_eq!(head_object(&fx, "change.bin").0, 3000, "the bucket changed");

    // Four TTLs long, the first view holds.
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < window {
        rounds += 1;
        let a = getattr_ok(&mut c, &change, "change.bin");
        assert_eq!(a, first, "GETATTR change.bin after {:?}", start.elapsed());
        let l = lookup_status(&mut c, &root, "change.bin").unwrap();
        assert_eq!(l.fh, change);
        if let Some(a) = l.attr {
            assert_eq!(a.size, 1000, "LOOKUP change.bin attributes");
        }
        assert!(
            lookup_status(&mut c, &root, "doomed.txt").is_ok(),
            "doomed.txt vanished after {:?}",
            start.elapsed()
        );
        getattr_ok(&mut c, &doomed, "doomed.txt");
        assert_eq!(
            lookup_status(&mut c, &root, "new.txt").err(),
            Some(NFS3ERR_NOENT),
            "new.txt appeared after {:?}",
            start.elapsed()
        );
        assert_eq!(dir_names(&mut c, &root, true, 4096), listed);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(rounds >= 4, "only {rounds} rounds in {window:?}");

    // The bytes in S3 are v2 now; a READ must not splice them into v1's
    // attributes.
    let r = c.read(&change, 0, 65_536).unwrap().unwrap();
    let size = r.attr.as_ref().map(|a| a.size);
    assert!(
        (r.data == v2 && size == Some(3000)) || (r.data == v1 && size == Some(1000)),
        "READ of a changed object returned {} bytes with size {size:?}",
        r.data.len()
    );
}

/// A READ whose cached attributes are out of date (long TTL, object
/// overwritten in the bucket) returns the new version whole with its new
/// attributes: never v1's length filled with v2's bytes, never a mix.
#[test]
fn read_of_a_changed_object_returns_the_new_version_whole() {
    let mut fx = Fixture::new(Backend::S3);
    let local = fx.scratch();
    let v1 = random_bytes(3 * MIB);
    let v2 = random_bytes(2 * MIB + 5);
    let v3 = random_bytes(2 * MIB + 5);
    let w1 = random_bytes(10_000);
    let w2 = random_bytes(7_000);
    std::fs::write(local.join("v1"), &v1).unwrap();
    std::fs::write(local.join("v2"), &v2).unwrap();
    std::fs::write(local.join("v3"), &v3).unwrap();
    bucket_ops_ok(
        &fx,
        &[
            Op::File("obj.bin", &local.join("v1")),
            Op::Put("listed.bin", &w1),
        ],
    );
    let server = fx.start_with_args(&["--meta-ttl", "300s"]);
    let (mut c, root) = connect(&server);
    let fh = lookup_status(&mut c, &root, "obj.bin").unwrap().fh;
    assert_eq!(getattr_ok(&mut c, &fh, "obj.bin").size, v1.len() as u64);
    let r = c.read(&fh, 0, MIB as u32).unwrap().unwrap();
    assert_eq!(r.data, v1[..MIB], "first MiB of v1");

    // Overwritten with a shorter version.
    bucket_ops_ok(&fx, &[Op::File("obj.bin", &local.join("v2"))]);
    let r = c.read(&fh, MIB as u64, MIB as u32).unwrap().unwrap();
    assert_eq!(
        r.attr.as_ref().map(|a| a.size),
        Some(v2.len() as u64),
        "READ after the overwrite must carry the new attributes"
    );
    assert!(
        r.data == v2[MIB..2 * MIB],
        "READ after the overwrite returned {} bytes that are not v2's second MiB",
        r.data.len()
    );
    // Past the new end.
    let r = c
        .read(&fh, (2 * MIB + MIB / 2) as u64, 4096)
        .unwrap()
        .unwrap();
    assert!(r.data.is_empty() && r.eof, "READ past the new end");
    assert_eq!(getattr_ok(&mut c, &fh, "obj.bin").size, v2.len() as u64);
    assert_eq!(read_whole(&mut c, &fh, MIB as u32, "obj.bin"), v2);

    // Overwritten with a version of the same size: the bytes are v3's,
    // whole.
    bucket_ops_ok(&fx, &[Op::File("obj.bin", &local.join("v3"))]);
    let r = c.read(&fh, 0, MIB as u32).unwrap().unwrap();
    assert!(r.data == v3[..MIB], "READ after a same-size overwrite");
    assert_eq!(read_whole(&mut c, &fh, MIB as u32, "obj.bin"), v3);

    // A file known only from READDIRPLUS (no LOOKUP) behaves the same.
    let (entries, _) = c.list_dir(&root, true, 8192, 100).unwrap();
    let listed = entries
        .iter()
        .find(|e| e.name == b"listed.bin")
        .and_then(|e| e.fh.clone())
        .expect("READDIRPLUS handle of listed.bin");
    bucket_ops_ok(&fx, &[Op::Put("listed.bin", &w2)]);
    let r = c.read(&listed, 0, 65_536).unwrap().unwrap();
    let size = r.attr.as_ref().map(|a| a.size);
    assert!(
        r.data == w2 && size == Some(w2.len() as u64),
        "READ of listed.bin after the overwrite: {} bytes, size {size:?}",
        r.data.len()
    );
}

/// Keys that are not valid NFS names, as far as SeaweedFS lets them be
/// created, follow the README's rules without disturbing anything else:
/// an object that is also a prefix (`a`, `a/b`) is hidden behind the
/// directory; a directory segment over 255 bytes is hidden; a segment of
/// exactly 255 bytes is fine; directory markers make directories and are
/// not their own children; names with spaces, `?`, `%`, `+`, `*`, tabs,
/// newlines and control characters are served as they are.
///
/// What SeaweedFS does not let exist (checked here, so a change shows):
/// `.` and `..` segments are refused on PUT (InvalidRequest); an object
/// name (the last segment) over 255 bytes is refused (KeyTooLongError);
/// `e//f` is stored as `e/f`, a leading `/` dropped and `\` turned into
/// `/`.
#[test]
fn odd_keys_never_break_a_listing() {
    let mut fx = Fixture::new(Backend::S3);
    let x255 = format!("L255/{}", "x".repeat(255));
    let z300 = "z".repeat(300);
    let long_dir_key = format!("L300/{z300}/deep");
    let y256 = format!("L256/{}", "y".repeat(256));
    let keys_ok: Vec<String> = [
        "a",
        "a/b",
        x255.as_str(),
        long_dir_key.as_str(),
        "L300/ok.txt",
        "L300/zz",
        "L256/ok.txt",
        "m/",
        "m/child",
        "empty/",
        "names/sp ace",
        "names/q?x",
        "names/pct%41",
        "names/plus+1",
        "names/star*",
        "names/tab\tname",
        "names/nl\nname",
        "names/ctl\u{1}x",
        "names/ünï 数据",
        "names/...",
        "names/..x",
        "names/x..",
        "names/.hidden",
        "dots/ok.txt",
        "e//f",
        "/lead",
        "back\\slash",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refused = [
        "dots/./x",
        "dots/../x",
        "dots/..",
        "./top",
        "../up",
        y256.as_str(),
    ];
    let body = |k: &str| format!("object {k:?}").into_bytes();
    let bodies: Vec<Vec<u8>> = keys_ok.iter().map(|k| body(k)).collect();
    let mut ops: Vec<Op> = keys_ok
        .iter()
        .zip(&bodies)
        .map(|(k, b)| Op::Put(k, b))
        .collect();
    let refused_bodies: Vec<Vec<u8>> = refused.iter().map(|k| body(k)).collect();
    ops.extend(
        refused
            .iter()
            .zip(&refused_bodies)
            .map(|(k, b)| Op::Put(k, b)),
    );
    let results = bucket_ops(&fx, &ops);
    for (k, r) in keys_ok.iter().zip(&results) {
        assert!(r.is_ok(), "PUT {k:?} failed: {r:?}");
    }
    for (k, r) in refused.iter().zip(&results[keys_ok.len()..]) {
        assert!(
            r.is_err(),
            "SeaweedFS now accepts the key {k:?}: extend this test"
        );
    }

    let mut server = fx.start();
    let (mut c, root) = connect(&server);
    // (directory, its names) as the README's rules make them.
    let expect: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "a", "L255", "L256", "L300", "m", "empty", "names", "dots", "e", "lead", "back",
            ],
        ),
        ("a", &["b"]),
        ("L255", &[&"x".repeat(255)]),
        ("L256", &["ok.txt"]),
        ("L300", &["ok.txt", "zz"]),
        ("m", &["child"]),
        ("empty", &[]),
        (
            "names",
            &[
                "sp ace",
                "q?x",
                "pct%41",
                "plus+1",
                "star*",
                "tab\tname",
                "nl\nname",
                "ctl\u{1}x",
                "ünï 数据",
                "...",
                "..x",
                "x..",
                ".hidden",
            ],
        ),
        ("dots", &["ok.txt"]),
        ("e", &["f"]),
        ("back", &["slash"]),
    ];
    for (dir, names) in expect {
        let fh = c.lookup_path(&root, dir).unwrap();
        let want = names_of(names);
        // Small pages, so that hidden keys fall at page boundaries too.
        for (plus, page) in [(false, 512), (true, 1024), (true, 65_536)] {
            let got = dir_names(&mut c, &fh, plus, page);
            assert_eq!(
                show(&got),
                show(&want),
                "listing of {dir:?} (READDIR{}, {page}-byte pages)",
                if plus { "PLUS" } else { "" }
            );
        }
    }
    // Every visible file reads back as its object.
    let files: &[(&str, &str)] = &[
        ("a/b", "a/b"),
        ("L300/ok.txt", "L300/ok.txt"),
        ("L300/zz", "L300/zz"),
        ("m/child", "m/child"),
        ("names/q?x", "names/q?x"),
        ("names/nl\nname", "names/nl\nname"),
        ("names/ctl\u{1}x", "names/ctl\u{1}x"),
        ("names/...", "names/..."),
        ("e/f", "e//f"),
        ("lead", "/lead"),
        ("back/slash", "back\\slash"),
    ];
    for (path, key) in files {
        let fh = c.lookup_path(&root, path).unwrap();
        assert_eq!(getattr_ok(&mut c, &fh, path).ftype, NF3REG, "{path:?}");
        assert_eq!(read_whole(&mut c, &fh, 4096, path), body(key), "{path:?}");
    }
    let fh = c.lookup_path(&root, &x255).unwrap();
    assert_eq!(read_whole(&mut c, &fh, 4096, "L255/x..."), body(&x255));

    // `a` is the directory; the object `a` is hidden.
    let a = lookup_status(&mut c, &root, "a").unwrap();
    assert_eq!(getattr_ok(&mut c, &a.fh, "a").ftype, NF3DIR);
    assert_eq!(c.read(&a.fh, 0, 100).unwrap().err(), Some(NFS3ERR_ISDIR));
    // Directories made by markers, with and without children.
    for d in ["m", "empty"] {
        let fh = lookup_status(&mut c, &root, d).unwrap().fh;
        assert_eq!(getattr_ok(&mut c, &fh, d).ftype, NF3DIR, "{d}");
    }
    // The over-long segment cannot even be named.
    let l300 = lookup_status(&mut c, &root, "L300").unwrap().fh;
    assert_eq!(
        lookup_status(&mut c, &l300, &z300).err(),
        Some(NFS3ERR_NAMETOOLONG)
    );
    server.assert_alive("after listing odd keys");
    // A real client walks it all.
    let listed = ls_recursive_lenient(&server);
    for p in ["a/b", "L300/ok.txt", "m/child", "dots/ok.txt", "e/f"] {
        assert!(listed.contains(p), "nfs-ls -R misses {p}");
    }
}

/// `nfs-ls -R` paths (names with newlines split lines; only the
/// well-formed ones are kept).
fn ls_recursive_lenient(server: &Server) -> BTreeSet<String> {
    let url = nfs_root_url(server.port);
    let out = run(
        Command::new(nfs_ls()).arg("-R").arg(&url),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "nfs-ls -R {url} failed: {}\nserver stderr:\n{}",
        out.stderr,
        server.stderr_text()
    );
    out.stdout_text()
        .lines()
        .filter_map(|l| parse_nfs_ls(l).ok())
        .flatten()
        .map(|e| e.path)
        .collect()
}

/// S3 killed under a running gateway (default outage bound): attributes
/// looked up before are still served; what was never fetched answers
/// NFS3ERR_JUKEBOX, promptly; once S3 is back the gateway serves again by
/// itself.
#[test]
fn s3_outage_serves_cached_metadata_and_recovers() {
    let mut fx = Fixture::new(Backend::S3);
    let cached = random_bytes(4096);
    let uncached = random_bytes(5000);
    bucket_ops_ok(
        &fx,
        &[
            Op::Put("cached.bin", &cached),
            Op::Put("uncached.bin", &uncached),
            Op::Put("dir/x.txt", b"x"),
        ],
    );
    let mut server = fx.start_with_args(&["--meta-ttl", "600s"]);
    let (mut c, root) = connect(&server);
    c.conn
        .stream
        .set_read_timeout(Some(OUTAGE_REPLY_BOUND + Duration::from_secs(30)))
        .unwrap();
    let fh = lookup_status(&mut c, &root, "cached.bin").unwrap().fh;
    let attr = getattr_ok(&mut c, &fh, "cached.bin");
    // A directory looked up (LOOKUP only, as a client walking a path does).
    let dir = lookup_status(&mut c, &root, "dir").unwrap().fh;

    fx.seaweed_mut().stop();

    // Every call is checked and timed; what answered differently from the
    // expectation is collected, so that one run reports every difference
    // (and the recovery below is exercised either way).
    type Call<'a> = Box<dyn Fn(&mut NfsClient) -> u32 + 'a>;
    let status = |r: Result<(), u32>| r.err().unwrap_or(NFS3_OK);
    let calls: Vec<(&str, u32, Call)> = vec![
        (
            "GETATTR of a file looked up before the outage",
            NFS3_OK,
            Box::new(|c| status(c.getattr(&fh).unwrap().map(|_| ()))),
        ),
        (
            "LOOKUP of a file never looked up",
            NFS3ERR_JUKEBOX,
            Box::new(|c| status(lookup_status(c, &root, "uncached.bin").map(|_| ()))),
        ),
        (
            "GETATTR of a directory looked up (LOOKUP only) before the outage",
            NFS3_OK,
            Box::new(|c| status(c.getattr(&dir).unwrap().map(|_| ()))),
        ),
        (
            "READDIR of a directory never listed",
            NFS3ERR_JUKEBOX,
            Box::new(|c| status(c.readdir_page(&dir, 0, [0; 8], 4096).unwrap().map(|_| ()))),
        ),
        (
            // No data is cached yet: READ must wait for S3, and say so.
            "READ of a file whose attributes are cached",
            NFS3ERR_JUKEBOX,
            Box::new(|c| status(c.read(&fh, 0, 4096).unwrap().map(|_| ()))),
        ),
        (
            "GETATTR of the same file after that READ failed",
            NFS3_OK,
            Box::new(|c| status(c.getattr(&fh).unwrap().map(|_| ()))),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, want, call) in &calls {
        let t = Instant::now();
        let got = call(&mut c);
        let took = t.elapsed();
        eprintln!("{what}: nfsstat3 {got} after {took:?}");
        assert!(took < OUTAGE_REPLY_BOUND, "{what} took {took:?}");
        if got != *want {
            wrong.push(format!("{what}: nfsstat3 {got}, expected {want}"));
        }
    }
    drop(calls);
    if wrong.is_empty() {
        assert_eq!(getattr_ok(&mut c, &fh, "cached.bin"), attr);
    }
    server.assert_alive("during the S3 outage");

    fx.seaweed_mut().restart().unwrap();
    let (l, t) = poll("LOOKUP after S3 is back", RECOVERY_BOUND, || {
        lookup_status(&mut c, &root, "uncached.bin").map_err(|s| format!("nfsstat3 {s}"))
    });
    eprintln!("recovered after {t:?}");
    assert_eq!(read_whole(&mut c, &l.fh, 4096, "uncached.bin"), uncached);
    assert_eq!(read_whole(&mut c, &fh, 4096, "cached.bin"), cached);
    assert_eq!(dir_names(&mut c, &dir, true, 4096), names_of(&["x.txt"]));
    assert!(
        wrong.is_empty(),
        "while S3 was down:\n  {}",
        wrong.join("\n  ")
    );
}

/// With `--store-outage-bound 3s`, an outage first answers NFS3ERR_JUKEBOX
/// and, once S3 has been down longer than the bound, NFS3ERR_IO; cached
/// attributes are still served; when S3 returns, so does the service.
#[test]
fn s3_outage_past_the_bound_answers_io_errors() {
    let mut fx = Fixture::new(Backend::S3);
    bucket_ops_ok(
        &fx,
        &[
            Op::Put("cached.bin", b"cached"),
            Op::Put("uncached.bin", b"uncached"),
        ],
    );
    let mut server = fx.start_with_args(&["--meta-ttl", "600s", "--store-outage-bound", "3s"]);
    let (mut c, root) = connect(&server);
    c.conn
        .stream
        .set_read_timeout(Some(OUTAGE_REPLY_BOUND + Duration::from_secs(30)))
        .unwrap();
    let fh = lookup_status(&mut c, &root, "cached.bin").unwrap().fh;
    getattr_ok(&mut c, &fh, "cached.bin");

    fx.seaweed_mut().stop();
    let t = Instant::now();
    let first = lookup_status(&mut c, &root, "uncached.bin").err();
    let first_at = t.elapsed();
    assert_eq!(first, Some(NFS3ERR_JUKEBOX), "first LOOKUP in the outage");
    assert!(
        first_at < OUTAGE_REPLY_BOUND,
        "first reply took {first_at:?}"
    );

    let mut seen = Vec::new();
    let (_, _) = poll(
        "NFS3ERR_IO past the outage bound",
        Duration::from_secs(40),
        || {
            let t = Instant::now();
            let s = lookup_status(&mut c, &root, "uncached.bin").err();
            let took = t.elapsed();
            if took >= OUTAGE_REPLY_BOUND {
                panic!("LOOKUP took {took:?} in the outage");
            }
            seen.push(s);
            match s {
                Some(NFS3ERR_IO) => Ok(()),
                Some(NFS3ERR_JUKEBOX) => Err("still JUKEBOX".to_string()),
                other => panic!("LOOKUP in the outage answered {other:?}"),
            }
        },
    );
    let io_at = t.elapsed();
    eprintln!(
        "JUKEBOX at {first_at:?}, IO at {io_at:?} ({} calls)",
        seen.len()
    );
    assert!(
        io_at >= first_at + Duration::from_millis(2_500),
        "NFS3ERR_IO after {io_at:?}, before the 3 s bound had passed since the first failure at {first_at:?}"
    );
    // Cached attributes are served even now.
    getattr_ok(&mut c, &fh, "cached.bin while S3 is down past the bound");
    server.assert_alive("past the outage bound");

    fx.seaweed_mut().restart().unwrap();
    let (l, t) = poll("LOOKUP after S3 is back", RECOVERY_BOUND, || {
        lookup_status(&mut c, &root, "uncached.bin").map_err(|s| format!("nfsstat3 {s}"))
    });
    eprintln!("recovered after {t:?}");
    assert_eq!(read_whole(&mut c, &l.fh, 4096, "uncached.bin"), b"uncached");
    assert_eq!(read_whole(&mut c, &fh, 4096, "cached.bin"), b"cached");
}

/// `s3://bucket/sub` exports the keys under `sub/` and nothing else:
/// listings, LOOKUP (including `..` at the export root), MNT paths and a
/// real client's walk stay inside.
#[test]
fn prefix_export_does_not_leak_keys() {
    let mut fx = Fixture::new(Backend::S3);
    bucket_ops_ok(
        &fx,
        &[
            Op::Put("sub/", b""),
            Op::Put("outside.txt", b"outside"),
            Op::Put("sub", b"object named like the prefix"),
            Op::Put("subway.txt", b"shares the string prefix"),
            Op::Put("sub2/x.txt", b"sibling prefix"),
            Op::Put("sub/in.txt", b"inside"),
            Op::Put("sub/d/deep.txt", b"deep inside"),
        ],
    );
    let server = fx.start_prefix("sub", &[]);
    let (mut c, root) = connect(&server);
    let root_attr = getattr_ok(&mut c, &root, "export root");
    assert_eq!(root_attr.ftype, NF3DIR);

    for plus in [false, true] {
        assert_eq!(
            show(&dir_names(&mut c, &root, plus, 4096)),
            show(&names_of(&["in.txt", "d"])),
            "listing of the export root"
        );
    }
    // `..` of the export root is the root itself.
    let up = lookup_status(&mut c, &root, "..").expect("LOOKUP .. at the root");
    assert_eq!(up.fh, root, "LOOKUP .. at the export root");
    let d = lookup_status(&mut c, &root, "d").unwrap().fh;
    let up = lookup_status(&mut c, &d, "..").expect("LOOKUP .. in d");
    assert_eq!(up.fh, root, "LOOKUP .. in d");
    let up2 = lookup_status(&mut c, &up.fh, "..").unwrap();
    assert_eq!(up2.fh, root, "LOOKUP .. twice");
    for name in ["outside.txt", "sub", "subway.txt", "sub2"] {
        assert_eq!(
            lookup_status(&mut c, &root, name).err(),
            Some(NFS3ERR_NOENT),
            "LOOKUP {name:?} at the export root"
        );
    }
    for name in ["", "../outside.txt", "../sub2"] {
        assert_eq!(
            lookup_status(&mut c, &root, name).err(),
            Some(NFS3ERR_INVAL),
            "LOOKUP {name:?}"
        );
    }
    // MOUNT: inside works, outside does not.
    let m = c.mnt_raw(b"/d").unwrap().expect("MNT /d");
    assert_eq!(m.fh, d);
    for bad in [
        &b"/.."[..],
        b"/../outside.txt",
        b"/../sub2",
        b"/../sub/in.txt",
        b"/outside.txt",
        b"/sub2",
        b"/sub",
        b"/d/../..",
    ] {
        if let Ok(m) = c.mnt_raw(bad).unwrap() {
            panic!(
                "MNT {:?} succeeded with handle {:?}",
                String::from_utf8_lossy(bad),
                m.fh
            );
        }
    }
    // The content is the prefix's.
    let f = lookup_status(&mut c, &root, "in.txt").unwrap().fh;
    assert_eq!(read_whole(&mut c, &f, 4096, "in.txt"), b"inside");
    let want: BTreeSet<(String, char, u64)> = [
        ("in.txt".to_string(), '-', 6),
        ("d".to_string(), 'd', 0),
        ("d/deep.txt".to_string(), '-', 11),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        ls_recursive(&server),
        want,
        "nfs-ls -R of the prefix export"
    );
}

/// READDIR pages from `cookie` until eof or `pages` pages.
fn readdir_from(
    c: &mut NfsClient,
    dir: &[u8],
    cookie: &mut u64,
    verf: &mut [u8; 8],
    pages: usize,
    out: &mut Vec<Vec<u8>>,
) -> bool {
    for _ in 0..pages {
        let page = c
            .readdir_page(dir, *cookie, *verf, 4096)
            .unwrap()
            .unwrap_or_else(|s| panic!("READDIR from cookie {cookie:#x}: nfsstat3 {s}"));
        assert!(
            !page.entries.is_empty() || page.eof,
            "READDIR page without entries and without eof"
        );
        if let Some(last) = page.entries.last() {
            *cookie = last.cookie;
        }
        *verf = page.cookieverf;
        out.extend(
            page.entries
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n != b"." && n != b".."),
        );
        if page.eof {
            return true;
        }
    }
    false
}

/// A READDIR walk keeps its place by cookie while the listing behind it is
/// fetched again (TTL run out, entries deleted and added in the bucket
/// meanwhile) and across a restart of the gateway: nothing twice, no
/// surviving entry skipped, entries deleted ahead of the cursor not shown.
#[test]
fn listing_resumes_across_refetch_and_restart() {
    const N: usize = 3000;
    let mut fx = Fixture::new(Backend::S3);
    let name = |i: usize| format!("e-{i:05}");
    for i in 0..N {
        std::fs::create_dir_all(fx.source_dir().join("d")).unwrap();
        std::fs::File::create(fx.source_dir().join("d").join(name(i))).unwrap();
    }
    let args = ["--meta-ttl", "1s", "--negative-ttl", "1s"];
    let mut server = fx.start_with_args(&args);
    let (mut c, root) = connect(&server);
    let d = lookup_status(&mut c, &root, "d").unwrap().fh;
    let (mut cookie, mut verf, mut got) = (0u64, [0u8; 8], Vec::new());
    assert!(!readdir_from(
        &mut c,
        &d,
        &mut cookie,
        &mut verf,
        5,
        &mut got
    ));
    let before = got.len();
    assert!(before > 50 && before < 1000, "{before} entries in 5 pages");

    // Behind the cursor and ahead of it: deletions and additions.
    let deleted_behind: Vec<String> = (0..10).map(name).collect();
    let deleted_ahead: Vec<String> = (2000..2010).map(name).collect();
    for n in deleted_behind.iter().chain(&deleted_ahead) {
        fx.remove_file(&format!("d/{n}"));
    }
    fx.write_random_file("d/a-added-behind", 1, 1);
    fx.write_random_file("d/e-01500-added-ahead", 1, 2);
    // Let the cached listing expire, so the next page comes from a new LIST.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!readdir_from(
        &mut c,
        &d,
        &mut cookie,
        &mut verf,
        5,
        &mut got
    ));
    let middle = got.len();
    assert!(middle > before);

    // Restart between two pages; the cookie still leads on.
    drop(c);
    let status = server.stop();
    assert!(status.success(), "tidegate exited with {status}");
    server = fx.start_with_args(&args);
    let (mut c, _) = connect(&server);
    assert!(
        readdir_from(&mut c, &d, &mut cookie, &mut verf, 1000, &mut got),
        "no eof"
    );

    let mut seen = BTreeSet::new();
    for n in &got {
        assert!(
            seen.insert(n.clone()),
            "{:?} listed twice",
            String::from_utf8_lossy(n)
        );
    }
    for i in 0..N {
        let n = name(i);
        if deleted_behind.contains(&n) && !seen.contains(n.as_bytes()) {
            panic!("{n} was listed neither before nor after its deletion");
        }
        if deleted_ahead.contains(&n) {
            assert!(
                !seen.contains(n.as_bytes()),
                "{n}, deleted ahead of the cursor, was listed"
            );
            continue;
        }
        assert!(seen.contains(n.as_bytes()), "{n} was skipped");
    }
    assert!(
        seen.contains(&b"e-01500-added-ahead"[..]),
        "an entry added ahead of the cursor before the refetch is missing"
    );
    eprintln!(
        "{} entries: {before} before the change, {} before the restart",
        got.len(),
        middle
    );
}

/// A prefix whose objects were all deleted: SeaweedFS (like other stores
/// with real folders) keeps listing it as a common prefix while a
/// non-delimited LIST finds no key under it. Whatever the gateway makes of
/// that, READDIR, LOOKUP, GETATTR and READDIR of the directory itself must
/// agree: a name that is listed can be looked up, and one that cannot be
/// looked up is not listed.
#[test]
fn emptied_prefix_is_listed_and_looked_up_alike() {
    let mut fx = Fixture::new(Backend::S3);
    bucket_ops_ok(
        &fx,
        &[
            Op::Put("keep.txt", b"keep"),
            Op::Put("emptied/a.txt", b"a"),
            Op::Put("emptied/sub/b.txt", b"b"),
        ],
    );
    let server = fx.start_with_args(&["--meta-ttl", "1s", "--negative-ttl", "1s"]);
    let (mut c, root) = connect(&server);
    let emptied = lookup_status(&mut c, &root, "emptied").unwrap().fh;
    assert_eq!(
        dir_names(&mut c, &root, true, 4096),
        names_of(&["keep.txt", "emptied"])
    );
    bucket_ops_ok(
        &fx,
        &[Op::Delete("emptied/a.txt"), Op::Delete("emptied/sub/b.txt")],
    );
    // Wait out the TTLs of everything cached above.
    poll("a.txt gone", CHANGE_VISIBLE_BOUND, || {
        match lookup_status(&mut c, &emptied, "a.txt") {
            Err(NFS3ERR_NOENT) | Err(NFS3ERR_STALE) => Ok(()),
            other => Err(format!("{:?}", other.map(|l| l.fh))),
        }
    });
    std::thread::sleep(Duration::from_millis(1500));

    let listed = dir_names(&mut c, &root, true, 4096).contains(&b"emptied"[..]);
    let looked_up = lookup_status(&mut c, &root, "emptied");
    let getattr = c.getattr(&emptied).unwrap();
    let listing = c.readdir_page(&emptied, 0, [0; 8], 4096).unwrap();
    eprintln!(
        "listed: {listed}, LOOKUP: {:?}, GETATTR: {:?}, READDIR: {:?}",
        looked_up.as_ref().map(|_| "ok"),
        getattr.as_ref().map(|_| "ok"),
        listing.as_ref().map(|p| p.entries.len())
    );
    if listed {
        let l = looked_up.unwrap_or_else(|s| {
            panic!("READDIR of the root lists `emptied`, but LOOKUP answers nfsstat3 {s}")
        });
        assert_eq!(l.fh, emptied);
        let a = getattr.unwrap_or_else(|s| {
            panic!("READDIR of the root lists `emptied`, but GETATTR answers nfsstat3 {s}")
        });
        assert_eq!(a.ftype, NF3DIR);
        listing.unwrap_or_else(|s| {
            panic!("READDIR of the root lists `emptied`, but READDIR of it answers nfsstat3 {s}")
        });
    } else {
        assert_eq!(looked_up.err(), Some(NFS3ERR_NOENT), "LOOKUP emptied");
        assert_eq!(getattr.err(), Some(NFS3ERR_STALE), "GETATTR emptied");
        assert_eq!(listing.err(), Some(NFS3ERR_STALE), "READDIR emptied");
    }
}
