//! Writes when things go wrong: the staging disk fills up, the staged
//! bytes reach their bound while S3 is down, S3 refuses uploads. In every
//! case the gateway keeps answering, keeps what it acknowledged (readable
//! through NFS, uploaded whole once the store takes it), says what is
//! owed in `/stats` and `tidegate status`, and takes writes again once
//! the trouble is over.
//!
//! Two more: a COMMIT on a full staging disk (the gateway must stay
//! usable), and FILE_SYNC writes racing the uploader picking their files
//! (nothing acknowledged may be lost).
//!
//! The staging-disk tests mount a tmpfs, so they need root. Without it
//! they fail (they never skip): run them as root, or in the VM.

use std::process::Command;
use std::time::{Duration, Instant};

use tidegate::store::s3::S3Store;
use tidegate::store::{ObjectStore, StoreError};
use tidegate_tests::cache_rig::{Rig, Stats, BUCKET, MIB};
use tidegate_tests::data::{fresh_seed, SplitMix64};
use tidegate_tests::privileged::{require_root, sh, Tmpfs};
use tidegate_tests::rpc::{NfsClient, NFS3ERR_JUKEBOX};
use tidegate_tests::s3proxy::{FaultScope, UploadFault};

const KIB: u64 = 1024;
/// nfsstat3 NFS3ERR_NOSPC.
const NFS3ERR_NOSPC: u32 = 28;
/// WRITE size (the gateway's largest).
const CHUNK: usize = 1 << 20;
const UNSTABLE: u32 = 0;
const FILE_SYNC: u32 = 2;
/// How often `/stats` is polled while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How long a backlog may take to drain once the store takes uploads
/// again: the longest retry backoff (30 s) would be reached only after
/// minutes of failures; these outages last seconds, so retries come
/// within a few seconds.
const DRAIN_BOUND: Duration = Duration::from_secs(45);

// ------------------------------------------------------------ helpers ----

/// Reads objects straight from SeaweedFS (not through the proxy).
struct S3Reader {
    rt: tokio::runtime::Runtime,
    store: S3Store,
}

impl S3Reader {
    fn new(rig: &Rig) -> S3Reader {
        let cfg = rig.seaweed().store_config(BUCKET, "");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(S3Store::new(cfg)).expect("S3 client");
        S3Reader { rt, store }
    }

    /// The object `key`: `None` when there is none.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let s = &self.store;
        self.rt.block_on(async {
            let m = match s.head(key).await {
                Ok(m) => m,
                Err(StoreError::NotFound { .. }) => return None,
                Err(e) => panic!("HEAD {key} in SeaweedFS: {e}"),
            };
            let mut buf = vec![0u8; m.size as usize];
            let n = s
                .get_range(key, 0, &mut buf, Some(&m.etag))
                .await
                .unwrap_or_else(|e| panic!("GET {key} from SeaweedFS: {e}"));
            buf.truncate(n);
            Some(buf)
        })
    }
}

/// The object `key` as SeaweedFS holds it: `None` when there is none.
fn s3_object(rig: &Rig, key: &str) -> Option<Vec<u8>> {
    S3Reader::new(rig).get(key)
}

/// Panics unless SeaweedFS holds exactly `want` under `key`.
fn assert_in_s3(rig: &Rig, key: &str, want: &[u8], what: &str) {
    match s3_object(rig, key) {
        None => panic!("{what}: {key} is not in SeaweedFS"),
        Some(got) => assert_same(key, &got, want, &format!("{what}: SeaweedFS")),
    }
}

fn assert_same(key: &str, got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: {key} differs: {} bytes, want {}; first difference at byte {first}",
        got.len(),
        want.len()
    );
}

/// Reads `name` (in the root) through NFS and checks it.
fn assert_reads_back(c: &mut NfsClient, root: &[u8], name: &str, want: &[u8], what: &str) {
    let fh = c
        .lookup_path(root, name)
        .unwrap_or_else(|e| panic!("{what}: LOOKUP {name}: {e:#}"));
    let got = c
        .read_all(&fh, CHUNK as u32, want.len() as u64 + CHUNK as u64)
        .unwrap_or_else(|e| panic!("{what}: READ {name}: {e:#}"));
    assert_same(name, &got, want, &format!("{what}: NFS"));
}

/// CREATE `name` in `dir`: its handle.
fn create(c: &mut NfsClient, dir: &[u8], name: &str) -> Vec<u8> {
    c.create(dir, name.as_bytes(), false)
        .unwrap_or_else(|e| panic!("CREATE {name}: {e:#}"))
        .unwrap_or_else(|s| panic!("CREATE {name} failed with nfsstat3 {s}"))
}

/// WRITE `data` at `offset` in one call: `Ok(())` or the nfsstat3.
fn write_at(
    c: &mut NfsClient,
    fh: &[u8],
    offset: u64,
    data: &[u8],
    stable: u32,
) -> Result<(), u32> {
    let (count, _, _) = c
        .write(fh, offset, data, stable)
        .unwrap_or_else(|e| panic!("WRITE at {offset}: {e:#}"))?;
    assert_eq!(
        count as usize,
        data.len(),
        "short WRITE at {offset}: {count} of {} bytes",
        data.len()
    );
    Ok(())
}

/// WRITE all of `data` in [`CHUNK`]s; panics on any error.
fn write_all(c: &mut NfsClient, fh: &[u8], data: &[u8], stable: u32, what: &str) {
    for (i, piece) in data.chunks(CHUNK).enumerate() {
        let off = (i * CHUNK) as u64;
        if let Err(s) = write_at(c, fh, off, piece, stable) {
            panic!("{what}: WRITE at {off} failed with nfsstat3 {s}");
        }
    }
}

fn commit(c: &mut NfsClient, fh: &[u8], what: &str) {
    c.commit(fh)
        .unwrap_or_else(|e| panic!("{what}: COMMIT: {e:#}"))
        .unwrap_or_else(|s| panic!("{what}: COMMIT failed with nfsstat3 {s}"));
}

/// Creates `name` with `data` (UNSTABLE writes, then COMMIT).
fn put_file(c: &mut NfsClient, root: &[u8], name: &str, data: &[u8]) {
    let fh = create(c, root, name);
    write_all(c, &fh, data, UNSTABLE, name);
    commit(c, &fh, name);
}

/// Polls `/stats` until `done` holds; panics after `bound` with the last
/// answer and the gateway's stderr. Returns that answer and the wait.
fn wait_stats(
    rig: &Rig,
    what: &str,
    bound: Duration,
    done: impl Fn(&Stats) -> bool,
) -> (Stats, Duration) {
    let t = Instant::now();
    loop {
        let s = rig.stats();
        if done(&s) {
            return (s, t.elapsed());
        }
        if t.elapsed() >= bound {
            panic!(
                "{what}: not within {bound:?}; /stats: {}\ngateway stderr:\n{}",
                upload_brief(&s),
                tail(&rig.stderr(), 40)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The upload and write numbers of `/stats`, for messages.
fn upload_brief(s: &Stats) -> String {
    s.values
        .iter()
        .filter(|(k, _)| {
            k.starts_with("upload_") || k.starts_with("write_") || k.starts_with("staged_")
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `tidegate status --admin ADDR [more]`: its stdout.
fn status(rig: &mut Rig, more: &[&str]) -> String {
    let admin = rig.server().admin_addr().to_string();
    let mut cmd = Command::new(tidegate_tests::server::tidegate_bin());
    cmd.args(["status", "--admin", &admin]).args(more);
    sh(&mut cmd)
}

/// Replaces (or adds) `flag VALUE` in the rig's extra arguments.
fn set_arg(rig: &mut Rig, flag: &str, value: &str) {
    if let Some(i) = rig.extra_args.iter().position(|a| a == flag) {
        rig.extra_args[i + 1] = value.to_string();
    } else {
        rig.extra_args.push(flag.to_string());
        rig.extra_args.push(value.to_string());
    }
}

// -------------------------------------------------------------- tests ----

/// The staging directory is on a 24 MiB tmpfs, the staged-bytes bound far
/// above it, uploads held back for an hour: a committed file stays
/// readable, a second file grows until a WRITE answers NOSPC (not an I/O
/// error, not a crash); removing it frees its space and writes succeed
/// again; after a restart with a short upload delay the committed files
/// reach SeaweedFS whole.
#[test]
fn staging_disk_full_answers_nospc_and_recovers() {
    require_root(
        "staging_disk_full_answers_nospc_and_recovers",
        "it mounts a tmpfs",
    );
    // Declared first, dropped last: the gateway is gone before the
    // unmount.
    let tmpfs = Tmpfs::mount("24m");
    let mut rig = Rig::s3();
    let staging = tmpfs.path().join("staging");
    rig.extra_args = ["--staging-dir", &staging.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    set_arg(&mut rig, "--staging-size", "1GiB");
    set_arg(&mut rig, "--upload-delay", "1h");
    rig.start();
    let free_at_start = tmpfs.free_bytes();

    let mut rng = SplitMix64::new(fresh_seed());
    let first = rng.bytes(4 * MIB as usize + 12_345);
    let (mut c, root) = rig.connect();
    put_file(&mut c, &root, "first.bin", &first);
    let free_after_first = tmpfs.free_bytes();

    // The second file until the disk is full.
    let fh2 = create(&mut c, &root, "second.bin");
    let piece = rng.bytes(CHUNK);
    let mut written = 0u64;
    let mut failed = None;
    for i in 0..64u64 {
        match write_at(&mut c, &fh2, i * CHUNK as u64, &piece, UNSTABLE) {
            Ok(()) => written += CHUNK as u64,
            Err(s) => {
                failed = Some(s);
                break;
            }
        }
    }
    let free_when_full = tmpfs.free_bytes();
    eprintln!(
        "staging tmpfs 24 MiB: {} KiB free at start, {} KiB after the first file ({} bytes \
         committed), the second file took {} MiB before WRITE answered {failed:?}, {} KiB free then",
        free_at_start / KIB,
        free_after_first / KIB,
        first.len(),
        written / MIB,
        free_when_full / KIB
    );
    assert_eq!(
        failed,
        Some(NFS3ERR_NOSPC),
        "the second file took {} MiB on a 24 MiB staging tmpfs: its WRITEs should end with \
         NFS3ERR_NOSPC (28); gateway stderr:\n{}",
        written / MIB,
        tail(&rig.stderr(), 40)
    );
    assert!(
        written >= 8 * MIB,
        "NOSPC after only {} MiB of the second file, with {} KiB free after the first",
        written / MIB,
        free_after_first / KIB
    );

    // Still alive, still answering, the committed file intact.
    rig.server().assert_alive("after NOSPC on the staging disk");
    c.null().expect("NULL after NOSPC");
    assert_reads_back(&mut c, &root, "first.bin", &first, "after NOSPC");
    let (mut c2, root2) = rig.connect();
    assert_reads_back(
        &mut c2,
        &root2,
        "first.bin",
        &first,
        "new connection after NOSPC",
    );
    // What was accepted of the second file reads back too.
    let fh = c.lookup_path(&root, "second.bin").unwrap();
    let got = c.read(&fh, written - CHUNK as u64, CHUNK as u32).unwrap();
    let got = got.unwrap_or_else(|s| panic!("READ of the second file failed with {s}"));
    assert_same(
        "second.bin (last accepted write)",
        &got.data,
        &piece,
        "after NOSPC",
    );
    let s = rig.stats();
    eprintln!("disk full: {}", upload_brief(&s));

    // REMOVE frees the space; writes go through again.
    c.remove(&root, b"second.bin", false)
        .expect("REMOVE second.bin")
        .unwrap_or_else(|s| {
            panic!(
                "REMOVE of the second file on a full staging disk failed with nfsstat3 {s}; \
                 gateway stderr:\n{}",
                tail(&rig.stderr(), 40)
            )
        });
    let free_after_remove = tmpfs.free_bytes();
    eprintln!(
        "after REMOVE: {} KiB free (was {} KiB)",
        free_after_remove / KIB,
        free_when_full / KIB
    );
    assert!(
        free_after_remove >= free_when_full + written - MIB,
        "REMOVE of the {} MiB second file freed only {} KiB of the staging disk",
        written / MIB,
        (free_after_remove.saturating_sub(free_when_full)) / KIB
    );
    let third = rng.bytes(6 * MIB as usize + 99);
    let fh3 = create(&mut c, &root, "third.bin");
    write_all(
        &mut c,
        &fh3,
        &third[..4 * MIB as usize],
        UNSTABLE,
        "third.bin",
    );
    // The rest as FILE_SYNC writes: stable without a COMMIT.
    for (i, piece) in third[4 * MIB as usize..].chunks(CHUNK).enumerate() {
        let off = 4 * MIB + (i * CHUNK) as u64;
        if let Err(s) = write_at(&mut c, &fh3, off, piece, FILE_SYNC) {
            panic!("third.bin: FILE_SYNC WRITE at {off} failed with nfsstat3 {s}");
        }
    }
    commit(&mut c, &fh3, "third.bin");
    assert_reads_back(
        &mut c,
        &root,
        "third.bin",
        &third,
        "after the space was freed",
    );
    let s = rig.stats();
    eprintln!("after the third file: {}", upload_brief(&s));
    let want_staged = (first.len() + third.len()) as u64;
    assert_eq!(
        s.get("staged_bytes"),
        want_staged,
        "staged bytes after the second file was removed: {}",
        upload_brief(&s)
    );
    assert_eq!(s.get("upload_pending_files"), 2, "{}", upload_brief(&s));
    assert_eq!(
        s.get("upload_objects_total"),
        0,
        "uploads are held back for an hour: {}",
        upload_brief(&s)
    );
    assert!(
        s_object_absent(&rig, "first.bin"),
        "first.bin reached SeaweedFS with a 1h upload delay"
    );
    drop(c);
    drop(c2);

    // Restart with a short upload delay: both files go up whole.
    rig.stop();
    set_arg(&mut rig, "--upload-delay", "200ms");
    rig.start();
    let (s, took) = wait_stats(
        &rig,
        "the staged files uploaded after the restart",
        DRAIN_BOUND,
        |s| s.get("upload_pending_keys") == 0,
    );
    eprintln!(
        "after the restart: drained in {:.1} s; {}",
        took.as_secs_f64(),
        upload_brief(&s)
    );
    assert_in_s3(&rig, "first.bin", &first, "after the restart");
    assert_in_s3(&rig, "third.bin", &third, "after the restart");
    assert!(
        s_object_absent(&rig, "second.bin"),
        "the removed second file reached SeaweedFS"
    );
    assert_eq!(s.get("staged_bytes"), 0, "{}", upload_brief(&s));
    let (mut c, root) = rig.connect();
    assert_reads_back(&mut c, &root, "first.bin", &first, "after the upload");
    drop(c);
    rig.stop();
    drop(rig);
    drop(tmpfs);
}

/// As a client that closes a file after NOSPC does: COMMIT it on the
/// full staging disk. The COMMIT may answer NOSPC, but the gateway must
/// stay usable: REMOVE of that file then frees its space, new files can
/// be written, and the committed first file is uploaded once (not over
/// and over).
///
/// What it catches: a journal transaction failing with ENOSPC must not
/// answer IO, nor leave the journal (redb refuses every transaction after
/// a failed commit until it is reopened) dead, which makes REMOVE and
/// CREATE answer IO and the uploader PUT pending files in a loop because
/// it cannot record that they are up.
#[test]
fn commit_on_a_full_staging_disk_keeps_the_gateway_usable() {
    require_root(
        "commit_on_a_full_staging_disk_keeps_the_gateway_usable",
        "it mounts a tmpfs",
    );
    let tmpfs = Tmpfs::mount("24m");
    let mut rig = Rig::s3();
    let staging = tmpfs.path().join("staging");
    rig.extra_args = ["--staging-dir", &staging.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    set_arg(&mut rig, "--staging-size", "1GiB");
    set_arg(&mut rig, "--upload-delay", "2s");
    rig.start();
    let mut rng = SplitMix64::new(fresh_seed());
    let first = rng.bytes(MIB as usize + 777);
    let (mut c, root) = rig.connect();
    put_file(&mut c, &root, "first.bin", &first);
    let fh2 = create(&mut c, &root, "second.bin");
    let piece = rng.bytes(CHUNK);
    let mut written = 0u64;
    let mut failed = None;
    for i in 0..64u64 {
        match write_at(&mut c, &fh2, i * CHUNK as u64, &piece, UNSTABLE) {
            Ok(()) => written += CHUNK as u64,
            Err(s) => {
                failed = Some(s);
                break;
            }
        }
    }
    assert_eq!(failed, Some(NFS3ERR_NOSPC), "{} MiB written", written / MIB);
    let mut problems = Vec::new();
    let committed = c.commit(&fh2).expect("COMMIT of the second file");
    eprintln!("COMMIT of the second file on the full disk: {committed:?}");
    if !matches!(committed, Ok(_) | Err(NFS3ERR_NOSPC)) {
        problems.push(format!(
            "COMMIT of the file that hit NOSPC answered {committed:?} (want OK or NOSPC)"
        ));
    }
    let removed = c.remove(&root, b"second.bin", false).expect("REMOVE");
    let free = tmpfs.free_bytes();
    eprintln!(
        "REMOVE of the second file: {removed:?}; {} KiB free",
        free / KIB
    );
    if removed.is_err() || free < written / 2 {
        problems.push(format!(
            "REMOVE of the second file answered {removed:?}, {} KiB free after it",
            free / KIB
        ));
    }
    let third = rng.bytes(2 * CHUNK);
    match c.create(&root, b"third.bin", false).expect("CREATE") {
        Err(s) => problems.push(format!("CREATE of a new file answered {s}")),
        Ok(fh3) => {
            let w = write_at(&mut c, &fh3, 0, &third[..CHUNK], UNSTABLE)
                .and_then(|()| write_at(&mut c, &fh3, CHUNK as u64, &third[CHUNK..], UNSTABLE))
                .and_then(|()| c.commit(&fh3).expect("COMMIT").map(|_| ()));
            if let Err(s) = w {
                problems.push(format!("writing a new file answered {s}"));
            }
        }
    }
    // The first file comes due 2 s after its COMMIT: it goes up once.
    rig.proxy().reset();
    std::thread::sleep(Duration::from_secs(4));
    let puts = rig
        .proxy()
        .requests()
        .iter()
        .filter(|r| r.key == "first.bin" && (r.method == "PUT" || r.method == "POST"))
        .count();
    let s = rig.stats();
    eprintln!("{puts} uploads of first.bin in 4 s; {}", upload_brief(&s));
    if puts > 3 {
        problems.push(format!(
            "first.bin was uploaded {puts} times in 4 s; {}",
            upload_brief(&s)
        ));
    }
    let warnings = rig
        .stderr()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("journal"))
        .count();
    if warnings > 10 {
        problems.push(format!("{warnings} journal warnings in the log"));
    }
    assert!(
        problems.is_empty(),
        "after NOSPC on the staging disk:\n  {}\ngateway stderr (journal lines):\n{}",
        problems.join("\n  "),
        rig.stderr()
            .lines()
            .filter(|l| l.contains("journal"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_in_s3(&rig, "first.bin", &first, "after NOSPC");
    drop(c);
    drop(rig);
    drop(tmpfs);
}

fn s_object_absent(rig: &Rig, key: &str) -> bool {
    s3_object(rig, key).is_none()
}

/// `--staging-size 64MiB` while S3 takes no uploads (the proxy answers
/// them 503 SlowDown; lookups still go through, so files can be
/// created): writes (committed file by file) are accepted up to the bound
/// and then answer JUKEBOX; staged bytes never pass the bound. Then
/// SeaweedFS goes down altogether: still JUKEBOX, committed files still
/// read back from staging. With SeaweedFS back and uploads taken, the
/// backlog drains, the held-back write is accepted, and every file is in
/// SeaweedFS exactly.
///
/// (With SeaweedFS down from the start, CREATE itself answers JUKEBOX:
/// the gateway asks the store whether the name exists.)
#[test]
fn staged_bytes_bound_answers_jukebox_until_uploads_drain() {
    const BOUND: u64 = 64 * MIB;
    const FILE_BYTES: usize = 6 << 20;
    let mut rig = Rig::s3();
    rig.extra_args = ["--staging-size", "64MiB", "--upload-delay", "200ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    set_arg(&mut rig, "--upload-part-size", "5MiB");
    rig.start();
    rig.proxy().set_upload_fault(Some(UploadFault::slow_down()));
    let down_at = Instant::now();

    let mut rng = SplitMix64::new(fresh_seed());
    let (mut c, root) = rig.connect();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut accepted = 0u64;
    let mut staged_max = 0u64;
    // (file index, offset) of the write that answered JUKEBOX.
    let mut held = None;
    'files: for i in 0..20 {
        let name = format!("bound-{i:02}.bin");
        let data = rng.bytes(FILE_BYTES);
        let fh = create(&mut c, &root, &name);
        for (j, piece) in data.chunks(CHUNK).enumerate() {
            let off = (j * CHUNK) as u64;
            let r = write_at(&mut c, &fh, off, piece, UNSTABLE);
            let staged = rig.stats().get("staged_bytes");
            staged_max = staged_max.max(staged);
            match r {
                Ok(()) => accepted += piece.len() as u64,
                Err(NFS3ERR_JUKEBOX) => {
                    commit(&mut c, &fh, &name);
                    files.push((name, data));
                    held = Some((i, fh, off));
                    break 'files;
                }
                Err(s) => panic!(
                    "{name}: WRITE at {off} failed with nfsstat3 {s} (after {} MiB accepted)",
                    accepted / MIB
                ),
            }
        }
        commit(&mut c, &fh, &name);
        files.push((name, data));
    }
    let s = rig.stats();
    eprintln!(
        "uploads refused: {} MiB accepted in {} files before JUKEBOX, staged max {} bytes (bound {BOUND}); \
         {}",
        accepted / MIB,
        files.len(),
        staged_max,
        upload_brief(&s)
    );
    let Some((held_file, held_fh, held_off)) = held else {
        panic!(
            "{} MiB written with a 64 MiB staging bound and S3 down, and no WRITE answered \
             JUKEBOX; {}",
            accepted / MIB,
            upload_brief(&s)
        );
    };
    assert!(
        staged_max <= BOUND + CHUNK as u64,
        "staged bytes reached {staged_max}, past the bound {BOUND} plus one write"
    );
    assert!(
        accepted <= BOUND && accepted + CHUNK as u64 > BOUND - CHUNK as u64,
        "{accepted} bytes accepted before JUKEBOX with a bound of {BOUND}: the bound should \
         stop writes just there"
    );
    assert!(
        s.get("write_delays_total") > 0,
        "a WRITE answered JUKEBOX and write_delays_total is 0: {}",
        upload_brief(&s)
    );
    assert!(
        s.get("upload_failures_total") > 0,
        "S3 is down and no upload failed (upload delay 200 ms): {}",
        upload_brief(&s)
    );
    assert_eq!(
        s.get("upload_objects_total"),
        0,
        "S3 is down: {}",
        upload_brief(&s)
    );
    assert_eq!(s.get("upload_pending_files"), files.len() as u64);
    assert!(rig.proxy().faulted_count() > 0, "{}", rig.proxy().summary());
    // Now S3 is gone altogether (connections fail, not answers).
    rig.seaweed_mut().stop();
    let failures_before_stop = s.get("upload_failures_total");
    wait_stats(
        &rig,
        "uploads failing with SeaweedFS stopped",
        Duration::from_secs(30),
        |s| s.get("upload_failures_total") > failures_before_stop,
    );
    // Still JUKEBOX while nothing drains; committed files read back.
    let (_, held_data) = &files[held_file];
    let held_piece = &held_data[held_off as usize..(held_off as usize + CHUNK)];
    assert_eq!(
        write_at(&mut c, &held_fh, held_off, held_piece, UNSTABLE),
        Err(NFS3ERR_JUKEBOX),
        "a retry of the held-back write while S3 is still down"
    );
    for (name, data) in files.iter().take(held_file) {
        assert_reads_back(&mut c, &root, name, data, "S3 down, staging full");
    }

    // S3 back: the backlog drains; the client's retries get through.
    let down_for = down_at.elapsed();
    rig.seaweed_mut()
        .restart()
        .unwrap_or_else(|e| panic!("restart SeaweedFS: {e:#}"));
    rig.proxy().set_upload_fault(None);
    let back_at = Instant::now();
    let accepted_after = loop {
        match write_at(&mut c, &held_fh, held_off, held_piece, UNSTABLE) {
            Ok(()) => break back_at.elapsed(),
            Err(NFS3ERR_JUKEBOX) => {}
            Err(s) => panic!("retry of the held-back write: nfsstat3 {s}"),
        }
        assert!(
            back_at.elapsed() < DRAIN_BOUND,
            "the held-back write still answers JUKEBOX {DRAIN_BOUND:?} after S3 came back; {}\n\
             gateway stderr:\n{}",
            upload_brief(&rig.stats()),
            tail(&rig.stderr(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The rest of the held file.
    for (j, piece) in held_data.chunks(CHUNK).enumerate() {
        let off = (j * CHUNK) as u64;
        if off <= held_off {
            continue;
        }
        let t = Instant::now();
        loop {
            match write_at(&mut c, &held_fh, off, piece, UNSTABLE) {
                Ok(()) => break,
                Err(NFS3ERR_JUKEBOX) if t.elapsed() < DRAIN_BOUND => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(s) => panic!("rest of the held file at {off}: nfsstat3 {s}"),
            }
        }
    }
    commit(&mut c, &held_fh, "the held file");
    let (s, _) = wait_stats(&rig, "the backlog drained", DRAIN_BOUND, |s| {
        s.get("upload_pending_keys") == 0
    });
    eprintln!(
        "S3 was down {:.1} s; once it was back the held write was accepted after {:.1} s and \
         everything had drained after {:.1} s; {}",
        down_for.as_secs_f64(),
        accepted_after.as_secs_f64(),
        back_at.elapsed().as_secs_f64(),
        upload_brief(&s)
    );
    assert_eq!(s.get("staged_bytes"), 0, "{}", upload_brief(&s));
    assert!(
        s.get("upload_objects_total") >= files.len() as u64,
        "{}",
        upload_brief(&s)
    );
    for (name, data) in &files {
        assert_in_s3(&rig, name, data, "after the backlog drained");
    }
    // And writes are accepted freely again.
    put_file(&mut c, &root, "after.bin", &rng.bytes(3 * CHUNK));
}

/// S3 refusing uploads (the proxy answers PUT and POST itself): 503
/// SlowDown, 403 InvalidAccessKeyId, 404 NoSuchBucket, and 500 on the
/// parts of multipart uploads only. Each time committed files stay
/// readable through NFS, the failures and the pending files show in
/// `/stats` and `tidegate status`, nothing reaches SeaweedFS; once the
/// proxy forwards again the backlog drains and the objects are exact.
#[test]
fn rejected_uploads_keep_data_and_drain_when_cleared() {
    let mut rig = Rig::s3();
    rig.extra_args = ["--upload-delay", "100ms", "--upload-part-size", "5MiB"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    rig.start();
    let mut rng = SplitMix64::new(fresh_seed());
    let (mut c, root) = rig.connect();
    let cases = [
        ("503-slowdown", UploadFault::slow_down()),
        ("403-bad-key", UploadFault::invalid_access_key()),
        ("404-no-bucket", UploadFault::no_such_bucket()),
        ("500-parts", UploadFault::internal_error().parts_only()),
    ];
    for (case, fault) in cases {
        let s0 = rig.stats();
        rig.proxy().reset();
        rig.proxy().set_upload_fault(Some(fault.clone()));
        let small_name = format!("{case}-small.bin");
        let multi_name = format!("{case}-multi.bin");
        let small = rng.bytes(300 * KIB as usize + 7);
        let multi = rng.bytes(11 * MIB as usize + 4321);
        // One file committed with COMMIT, one with FILE_SYNC writes.
        put_file(&mut c, &root, &multi_name, &multi);
        let fh = create(&mut c, &root, &small_name);
        write_all(&mut c, &fh, &small, FILE_SYNC, &small_name);
        // With only parts refused, the small file (one PUT) goes up.
        let parts_only = fault.scope == FaultScope::Parts;
        let (pending_files, pending_bytes) = if parts_only {
            (1, multi.len() as u64)
        } else {
            (2, (small.len() + multi.len()) as u64)
        };

        let (s, took) = wait_stats(
            &rig,
            &format!("{case}: failed uploads counted and pending"),
            Duration::from_secs(20),
            |s| {
                s.get("upload_failures_total") >= s0.get("upload_failures_total") + 2
                    && s.get("upload_pending_files") >= pending_files
                    && s.get("upload_oldest_pending_seconds") >= 1
            },
        );
        let faulted = rig.proxy().faulted_count();
        eprintln!(
            "{case}: after {:.1} s: {} requests refused by the proxy; {}",
            took.as_secs_f64(),
            faulted,
            upload_brief(&s)
        );
        assert!(faulted >= 2, "{case}: {}", rig.proxy().summary());
        assert_eq!(s.get("upload_pending_files"), pending_files, "{case}");
        assert_eq!(s.get("upload_pending_bytes"), pending_bytes, "{case}");
        assert_eq!(s.get("staged_bytes"), pending_bytes, "{case}");
        if parts_only {
            // Multipart uploads were started, their parts refused, and
            // the uploads abandoned.
            let reqs = rig.proxy().requests();
            let aborts = reqs
                .iter()
                .filter(|r| r.method == "DELETE" && r.query.contains("uploadId"))
                .count();
            assert!(
                aborts >= 1,
                "{case}: a multipart upload whose part failed was not aborted: {reqs:#?}"
            );
        }

        // `tidegate status` says what is owed.
        let table = status(&mut rig, &[]);
        eprintln!("{case}: tidegate status:\n{table}");
        let line = table
            .lines()
            .find(|l| l.trim_start().starts_with("pending files"))
            .unwrap_or_else(|| panic!("{case}: no 'pending files' line in:\n{table}"));
        assert!(
            line.split_whitespace().nth(2) == Some(pending_files.to_string().as_str())
                && line.contains("MiB"),
            "{case}: 'pending files' should say {pending_files} files of about 11 MiB: {line:?}"
        );
        assert!(
            table.contains("not yet in the store"),
            "{case}: status does not say changes are pending:\n{table}"
        );
        let failed_line = table
            .lines()
            .find(|l| l.trim_start().starts_with("failed updates"))
            .unwrap_or_else(|| panic!("{case}: no 'failed updates' line in:\n{table}"));
        assert!(
            !failed_line.trim_end().ends_with(" 0"),
            "{case}: status shows no failed updates: {failed_line:?}"
        );
        let json = status(&mut rig, &["--json"]);
        assert!(
            json.contains(&format!("\"upload_pending_bytes\":{pending_bytes}"))
                || json.contains(&format!("\"upload_pending_bytes\": {pending_bytes}")),
            "{case}: status --json does not show {pending_bytes} pending bytes: {json}"
        );

        // Kept locally: readable through NFS, on a fresh connection too.
        assert_reads_back(&mut c, &root, &small_name, &small, case);
        assert_reads_back(&mut c, &root, &multi_name, &multi, case);
        let (mut c2, root2) = rig.connect();
        assert_reads_back(&mut c2, &root2, &multi_name, &multi, case);
        if !parts_only {
            assert!(
                s_object_absent(&rig, &small_name),
                "{case}: {small_name} reached SeaweedFS"
            );
        }
        assert!(
            s_object_absent(&rig, &multi_name),
            "{case}: {multi_name} reached SeaweedFS"
        );

        // Cleared: the backlog drains, the objects are exact.
        rig.proxy().set_upload_fault(None);
        let (s, took) = wait_stats(
            &rig,
            &format!("{case}: backlog drained once S3 takes uploads"),
            DRAIN_BOUND,
            |s| s.get("upload_pending_keys") == 0,
        );
        eprintln!(
            "{case}: drained {:.1} s after the fault was cleared; {}",
            took.as_secs_f64(),
            upload_brief(&s)
        );
        assert_eq!(s.get("staged_bytes"), 0, "{case}");
        assert_in_s3(&rig, &small_name, &small, case);
        assert_in_s3(&rig, &multi_name, &multi, case);
    }
    let (status, _) = tidegate_tests::cache_rig::admin_get(rig.server().admin_addr(), "/stats")
        .expect("GET /stats");
    assert_eq!(status, 200);
    assert!(
        rig.proxy().errors().is_empty(),
        "proxy errors: {:?}",
        rig.proxy().errors()
    );
}

/// A FILE_SYNC WRITE that is under way when the uploader picks its file
/// (created a little more than the upload delay before): the upload
/// sends the file as it was before the write. Nothing of the write may be
/// lost and the WRITE must succeed: once everything has drained, every
/// file is in SeaweedFS with what was written, reads back so through NFS,
/// and no staged byte is left counted.
///
/// Four connections each create 30 files and write 1 MiB into each with
/// one FILE_SYNC WRITE 90 to 130 ms after its CREATE (upload delay
/// 100 ms), so that some writes are under way when their empty file
/// comes due. What it catches: the uploader picking an entry between a
/// WRITE's generation bump and the write landing, uploading the old
/// content and marking the entry clean, after which the write's size
/// goes onto a record whose data is the old object (SeaweedFS keeps the
/// empty object, READ returns 0 bytes without eof, `staged_bytes` stays
/// counted); and a WRITE answering NFS3ERR_STALE when an upload finishes
/// between the gateway's copy-up check and the write.
#[test]
fn file_sync_write_racing_an_upload_is_not_lost() {
    const CONNECTIONS: usize = 4;
    const FILES_PER_CONNECTION: usize = 30;
    let mut rig = Rig::s3();
    rig.extra_args = ["--upload-delay", "100ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    rig.start();
    let seed = fresh_seed();
    let t0 = Instant::now();
    let rig_ref = &rig;
    let files: Vec<(String, Vec<u8>, Option<u32>)> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..CONNECTIONS)
            .map(|w| {
                scope.spawn(move || {
                    let mut rng = SplitMix64::new(seed ^ (w as u64 + 1));
                    let (mut c, root) = rig_ref.connect();
                    let mut out = Vec::new();
                    for i in 0..FILES_PER_CONNECTION {
                        let name = format!("race-{w}-{i:03}.bin");
                        let data = rng.bytes(CHUNK);
                        let fh = create(&mut c, &root, &name);
                        let pause = 90 + (i as u64 * 7 + w as u64 * 13) % 40;
                        std::thread::sleep(Duration::from_millis(pause));
                        let r = write_at(&mut c, &fh, 0, &data, FILE_SYNC).err();
                        out.push((name, data, r));
                    }
                    out
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer panicked"))
            .collect()
    });
    let (s, took) = wait_stats(&rig, "everything uploaded", DRAIN_BOUND, |s| {
        s.get("upload_pending_keys") == 0
    });
    eprintln!(
        "{} files written in {:.1} s, drained {:.1} s after the last write: {}",
        files.len(),
        (t0.elapsed() - took).as_secs_f64(),
        took.as_secs_f64(),
        upload_brief(&s)
    );
    let (mut c, root) = rig.connect();
    let s3 = S3Reader::new(&rig);
    let mut lost = Vec::new();
    for (name, data, err) in &files {
        if let Some(status) = err {
            lost.push(format!("{name}: the WRITE answered nfsstat3 {status}"));
            continue;
        }
        let in_s3 = s3.get(name).unwrap_or_default();
        let fh = c.lookup_path(&root, name).expect("LOOKUP");
        let via_nfs = c.read_all(&fh, CHUNK as u32, 2 * CHUNK as u64);
        let nfs_ok = via_nfs.as_ref().is_ok_and(|got| got == data);
        if &in_s3 != data || !nfs_ok {
            let s3_says = if in_s3.is_empty() {
                "0 bytes".to_string()
            } else if &in_s3 == data {
                "the data".to_string()
            } else {
                format!("{} wrong bytes", in_s3.len())
            };
            let nfs_says = match &via_nfs {
                Ok(got) if got == data => "the data".to_string(),
                Ok(got) => format!("{} wrong bytes", got.len()),
                Err(e) => format!("{e:#}"),
            };
            lost.push(format!(
                "{name}: SeaweedFS holds {s3_says}; through NFS: {nfs_says}"
            ));
        }
    }
    eprintln!("checked in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        lost.is_empty() && s.get("staged_bytes") == 0,
        "{} of {} FILE_SYNC writes lost or refused, staged_bytes {} after everything \
         drained (should be 0):\n{}",
        lost.len(),
        files.len(),
        s.get("staged_bytes"),
        lost.join("\n")
    );
}
