//! The workloads of the suite, the data they read, and the goals they are
//! judged by.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::fiojob::{FioJob, Target};
use super::results::{Better, Goal, Report, Role, WorkloadInfo};
use super::systems::{self, Access, Running, StartSpec, Sys};
use super::{drop_caches, Cx, Options, Progress, Sizes, META_DIR, SEQ_FILE};
use crate::dataset::{self, DataFile, ImagenetSpec};
use crate::epoch::{self, ReadPath};
use crate::meta;
use crate::sandbox::{self, Sandbox};
use crate::seaweed::Seaweed;

/// Systems of each workload, in report order.
const AB: [Sys; 5] = [
    Sys::Tidegate,
    Sys::Ganesha,
    Sys::RcloneNfs,
    Sys::S3fs,
    Sys::RcloneMount,
];
const C: [Sys; 5] = AB;
const D: [Sys; 4] = [Sys::Tidegate, Sys::RcloneNfs, Sys::S3fs, Sys::RcloneMount];
const E: [Sys; 5] = [
    Sys::Tidegate,
    Sys::TidegateNoPrefetch,
    Sys::RcloneNfs,
    Sys::S3fs,
    Sys::RcloneMount,
];
const F: [Sys; 5] = AB;
const G: [Sys; 4] = D;

/// Readers of (c).
const EPOCH_READERS: usize = 4;
const EPOCHS: u32 = 3;
/// Bounds of single steps; a system that exceeds one fails that workload.
/// An epoch that takes longer is cut short (its rate so far is reported):
/// it bounds the full run's length when a peer crawls.
const EPOCH_BUDGET: Duration = Duration::from_secs(150);
const READ_TIMEOUT: Duration = Duration::from_secs(900);
const META_TIMEOUT: Duration = Duration::from_secs(180);
const CKPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the store is polled for a checkpoint.
const CKPT_POLL: Duration = Duration::from_millis(100);
/// Longest wait for the store to become idle after seeding.
const SETTLE_MAX: Duration = Duration::from_secs(300);
/// Bytes per send of the loopback limit.
const LOOPBACK_CHUNK_BYTES: usize = 1 << 20;

fn sys_list(w: char) -> &'static [Sys] {
    match w {
        'a' | 'b' => &AB,
        'c' => &C,
        'd' => &D,
        'e' => &E,
        'f' => &F,
        _ => &G,
    }
}

/// Progress steps of a run (one per workload and system, plus limits).
pub(super) fn step_count(o: &Options) -> usize {
    let mut n = 0;
    let has = |c: char| o.workloads.contains(&c);
    if has('a') || has('b') {
        n += 1 + AB.iter().filter(|s| o.systems.contains(s)).count();
    }
    for w in ['c', 'd', 'e', 'f', 'g'] {
        if has(w) {
            n += sys_list(w)
                .iter()
                .filter(|s| o.systems.contains(s) || **s == Sys::TidegateNoPrefetch)
                .count();
        }
    }
    n
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b >> 20)
    }
}

fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The report's description of each workload of the run.
pub(super) fn infos(s: &Sizes, o: &Options) -> Vec<WorkloadInfo> {
    let nfs_fio = "NFS servers: fio's nfs engine (libnfs, NFSv3, one TCP connection per stream, 16 requests in flight per stream for sequential reads). FUSE mounts: fio on the mount point (psync for one request in flight; io_uring, buffered, for deeper queues), so the kernel's readahead and page cache work for them and not for the NFS rows";
    let all = [
        (
            'a',
            "Large file, sequential 1 MiB reads",
            format!(
                "A {} file of random bytes. Cold: each system starts fresh with empty caches (page cache dropped) and reads it once, one stream. Warm: then {} s runs (after {} s unmeasured) with 1 stream and with 4 streams, each over its own quarter.",
                mib(s.seq_bytes),
                s.runtime_secs,
                s.ramp_secs
            ),
            nfs_fio.to_owned(),
        ),
        (
            'b',
            "Random 4 KiB reads, iodepth 32",
            format!(
                "Uniform random 4 KiB reads over the {} file, 32 in flight, {} s, right after (a) in the same server life (warm).",
                mib(s.seq_bytes),
                s.runtime_secs
            ),
            nfs_fio.to_owned(),
        ),
        (
            'c',
            "ImageNet-like training epochs",
            format!(
                "{} files of about 110 KiB (log-normal sizes from a fixed seed) in 100 class folders; {EPOCH_READERS} parallel readers take the files of a fresh shuffled order (fixed seed per epoch), read each whole and check every byte; {EPOCHS} epochs, the first cold.",
                thousands(s.imagenet_files)
            ),
            "NFS servers: the harness's NFSv3 reader (one TCP connection per reader; LOOKUP of the name, then READs of up to 1 MiB until EOF; folder handles looked up once), with no client cache. FUSE mounts: open/read/close through the kernel, whose page cache may serve epochs 2 and 3 from this machine's memory".to_owned(),
        ),
        (
            'd',
            "Cyclic sweep over twice the cache",
            format!(
                "Three sequential passes over the {} file with each system's cache limited to {} (tidegate: --cache-size with the memory tier off; rclone: --vfs-cache-max-size; s3fs has no data cache by default). The page cache is dropped before each pass. Hit ratio = 1 - bytes fetched from S3 (counted at the proxy) / bytes read, at least 0. The bytes each system's folder held on disk after each pass are shown beside it: a cache limit that is not kept shows there.",
                mib(s.seq_bytes),
                mib(s.sweep_cache_bytes())
            ),
            nfs_fio.to_owned(),
        ),
        (
            'e',
            "Cold read through a distant S3",
            format!(
                "Every S3 answer's first byte is delayed {} ms at the proxy; each system starts fresh and reads the {} file once, one stream, one request in flight.",
                o.s3_latency_ms,
                mib(s.seq_bytes)
            ),
            "NFS servers: fio's nfs engine at iodepth 1. FUSE mounts: fio psync (the kernel still reads ahead for them)".to_owned(),
        ),
        (
            'f',
            "Metadata: one large directory",
            format!(
                "A folder of {} empty files. Each system starts fresh; the folder is listed once, then every entry is stat'ed by name, one call at a time.",
                thousands(s.meta_files)
            ),
            "NFS servers: the harness's NFSv3 client (listing: READDIRPLUS pages, as the kernel client's first `ls -l`; stat: LOOKUP, whose reply carries the attributes). FUSE mounts: readdir, then lstat".to_owned(),
        ),
        (
            'g',
            "Checkpoint into S3",
            format!(
                "A {} checkpoint is written as ckpt.tmp, made durable, and renamed to ckpt; timed from the first byte until ckpt is whole in S3 (HEAD shows its full size) and ckpt.tmp is gone. Every system uploads when its defaults say: tidegate 2 s after the last COMMIT (--upload-delay), rclone 5 s after the file's last close (--vfs-write-back; `rclone serve nfs` opens and closes the file around every WRITE, so with 0 s it uploads the growing file again and again), s3fs at fsync and close.",
                mib(s.ckpt_bytes)
            ),
            "NFS servers: fio's nfs engine writes (1 MiB UNSTABLE, 16 in flight), then the harness's client sends COMMIT and RENAME. FUSE mounts: dd bs=1M conv=fsync, then rename(2)".to_owned(),
        ),
    ];
    all.into_iter()
        .filter(|(w, ..)| o.workloads.contains(w))
        .map(|(w, title, description, clients)| WorkloadInfo {
            id: w.to_string(),
            title: title.to_owned(),
            description,
            clients,
        })
        .collect()
}

/// Makes the local copy and seeds the store, skipping what an earlier run
/// already put there (recorded in `store_dir/seeded`).
pub(super) fn prepare(
    sb: &mut Sandbox,
    sw: &Seaweed,
    data_dir: &Path,
    store_dir: &Path,
    s: &Sizes,
    o: &Options,
    progress: &Progress,
) -> Result<()> {
    let marker = store_dir.join("seeded");
    let done = fs::read_to_string(&marker).unwrap_or_default();
    let record = |line: &str| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&marker)
            .with_context(|| format!("open {}", marker.display()))?;
        writeln!(f, "{line}")?;
        Ok(())
    };
    let has = |c: char| o.workloads.contains(&c);
    let target = sw.target.clone();

    if has('a') || has('b') || has('d') || has('e') || has('g') {
        let line = format!("seq {}", s.seq_bytes);
        let local = data_dir.join(SEQ_FILE);
        if fs::metadata(&local).map(|m| m.len()).ok() != Some(s.seq_bytes) {
            progress.note(&format!(
                "writing {} of random bytes to {}",
                mib(s.seq_bytes),
                local.display()
            ));
            write_random_file(&local, s.seq_bytes)?;
        }
        if !done.lines().any(|l| l == line) {
            progress.note(&format!("uploading {SEQ_FILE}"));
            let t = target.clone();
            let l = local.clone();
            sb.in_netns(move || {
                crate::s3::S3Client::new(t).put_file(systems::BUCKET, SEQ_FILE, &l)
            })
            .context("upload the sequential file")?;
            record(&line)?;
        }
    }
    if has('c') {
        let spec = imagenet_spec(s);
        let line = format!("imagenet {} {}", spec.files, spec.seed);
        progress.note(&format!("writing the {}-file tree locally", spec.files));
        let mut last = Instant::now();
        dataset::write_local(&spec, data_dir, |d, t| {
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                eprintln!("      {d}/{t} files");
            }
        })?;
        if !done.lines().any(|l| l == line) {
            progress.note("uploading the tree");
            let files = spec.files();
            let t = target.clone();
            let root = data_dir.to_owned();
            sb.in_netns(move || {
                let mut last = Instant::now();
                dataset::upload(
                    &files,
                    &root,
                    &t,
                    systems::BUCKET,
                    super::SEED_CONNECTIONS,
                    |d, n| {
                        if last.elapsed() >= Duration::from_secs(10) {
                            last = Instant::now();
                            eprintln!("      {d}/{n} uploaded");
                        }
                    },
                )
            })?;
            record(&line)?;
        }
    }
    if has('f') {
        let line = format!("meta {}", s.meta_files);
        dataset::write_flat_local(data_dir, META_DIR, s.meta_files)?;
        if !done.lines().any(|l| l == line) {
            progress.note(&format!(
                "putting {} empty objects under {META_DIR}/",
                s.meta_files
            ));
            let t = target.clone();
            let count = s.meta_files;
            sb.in_netns(move || {
                let mut last = Instant::now();
                dataset::seed_flat(
                    META_DIR,
                    count,
                    &t,
                    systems::BUCKET,
                    super::SEED_CONNECTIONS,
                    |d, n| {
                        if last.elapsed() >= Duration::from_secs(10) {
                            last = Instant::now();
                            eprintln!("      {d}/{n} put");
                        }
                    },
                )
            })?;
            record(&line)?;
        }
    }
    settle_store(sb, progress)
}

/// Waits until SeaweedFS is idle (it keeps indexing for a while after a
/// large seeding), so that it does not steal CPU from the first
/// measurements: at most [`SETTLE_MAX`], until it used under 5 % of a core
/// for three seconds in a row.
fn settle_store(sb: &mut Sandbox, progress: &Progress) -> Result<()> {
    let pid = sb
        .service_mut(crate::seaweed::SERVICE)
        .map(|s| s.pid())
        .and_then(|p| crate::servers::find_process(p, "weed"))
        .context("no weed process")?;
    let t0 = Instant::now();
    let mut quiet = 0;
    let mut last = crate::cpu_secs(pid)?;
    while t0.elapsed() < SETTLE_MAX {
        sandbox::sleep_interruptible(Duration::from_secs(1))?;
        let now = crate::cpu_secs(pid)?;
        quiet = if now - last < 0.05 { quiet + 1 } else { 0 };
        last = now;
        if quiet >= 3 {
            progress.note(&format!(
                "SeaweedFS idle after {:.0} s",
                t0.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
    }
    progress.note(&format!(
        "SeaweedFS still busy after {} s; going on",
        SETTLE_MAX.as_secs()
    ));
    Ok(())
}

pub(super) fn imagenet_spec(s: &Sizes) -> ImagenetSpec {
    let mut spec = ImagenetSpec::with_counts(s.imagenet_files, 100);
    spec.seed = super::IMAGENET_SEED;
    spec
}

/// Writes `bytes` of incompressible pseudo-random data to `path`.
fn write_random_file(path: &Path, bytes: u64) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("partial");
    let f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut w = BufWriter::new(f);
    let mut rng = dataset::SplitMix64::new(0x5eed_f11e);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.into_inner()?.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// Runs every selected workload; a system's failure is recorded and the
/// run goes on; an interruption ends it.
pub(super) fn run_all(cx: &mut Cx<'_>) -> Result<()> {
    let has = |cx: &Cx<'_>, c: char| cx.o.workloads.contains(&c);
    if has(cx, 'a') || has(cx, 'b') {
        cx.progress
            .begin("(a)/(b) physical limits: local disk O_DIRECT, loopback TCP");
        if let Err(e) = limits(cx) {
            check_stop(&e)?;
            cx.fail('a', "limits", &e);
        }
        for sys in cx.systems(&AB) {
            cx.progress
                .begin(&format!("(a)/(b) large file — {}", sys.name()));
            if let Err(e) = ab(cx, sys) {
                check_stop(&e)?;
                cx.fail('a', sys.name(), &e);
            }
        }
    }
    type Workload = fn(&mut Cx<'_>, Sys) -> Result<()>;
    let rest: [(char, &str, Workload); 5] = [
        ('c', "ImageNet-like epochs", imagenet),
        ('d', "cyclic sweep", sweep),
        ('e', "cold read through a distant S3", cold_latency),
        ('f', "metadata", metadata),
        ('g', "checkpoint", checkpoint),
    ];
    for (w, title, f) in rest {
        if !has(cx, w) {
            continue;
        }
        for sys in cx.systems(sys_list(w)) {
            cx.progress
                .begin(&format!("({w}) {title} — {}", sys.name()));
            if let Err(e) = f(cx, sys) {
                check_stop(&e)?;
                cx.fail(w, sys.name(), &e);
            }
        }
    }
    Ok(())
}

/// An interruption ends the run; other errors fail one system.
fn check_stop(e: &anyhow::Error) -> Result<()> {
    if sandbox::interrupted() {
        bail!("interrupted ({e:#})");
    }
    Ok(())
}

fn role(sys: Sys) -> Role {
    if sys == Sys::Tidegate {
        Role::Tidegate
    } else {
        Role::Peer
    }
}

/// Starts `sys` fresh with the page cache dropped.
fn start(cx: &mut Cx<'_>, sys: Sys, spec: &StartSpec, tag: &str, probe: &str) -> Result<Running> {
    drop_caches()?;
    let r = systems::start(cx.sb, &cx.world, sys, spec, tag, probe)?;
    cx.progress
        .note(&format!("{} started (pid {})", sys.name(), r.pid));
    Ok(r)
}

/// Stops `r`, recording its cost in workload `w`.
fn finish(cx: &mut Cx<'_>, w: char, r: Running, cpu0: f64, bytes: u64) -> Result<()> {
    let cpu = r.cpu_secs() - cpu0;
    let peak = r.peak_rss_bytes();
    let sys = r.sys;
    cx.cost(w, sys, cpu, bytes, peak);
    systems::stop(cx.sb, r)
}

/// Runs `body` with `r`, then stops `r` (recording the cost) whatever the
/// outcome. `body` returns the bytes served.
fn with_system(
    cx: &mut Cx<'_>,
    w: char,
    mut r: Running,
    body: impl FnOnce(&mut Cx<'_>, &mut Running) -> Result<u64>,
) -> Result<()> {
    let cpu0 = r.cpu_secs();
    let out = body(cx, &mut r);
    let alive = r.check_alive(cx.sb);
    let bytes = *out.as_ref().unwrap_or(&0);
    let stopped = finish(cx, w, r, cpu0, bytes);
    out?;
    alive?;
    stopped
}

fn fio_target(access: &Access) -> Target<'_> {
    match access {
        Access::Nfs { url, .. } => Target::Nfs(url),
        Access::Mount(dir) => Target::Dir { dir, direct: false },
    }
}

/// Requests in flight of a sequential stream: 16 for NFS (the nfs engine
/// is the whole client), 1 on a FUSE mount (the kernel reads ahead).
fn seq_depth(access: &Access) -> u32 {
    match access {
        Access::Nfs { .. } => 16,
        Access::Mount(_) => 1,
    }
}

fn out_path(cx: &Cx<'_>, w: char, sys: Sys, what: &str) -> std::path::PathBuf {
    cx.dir.join(format!("{w}-{}-{what}.json", sys.short()))
}

const CASE_COLD: &str = "sequential 1 MiB, 1 stream, cold";
const CASE_WARM1: &str = "sequential 1 MiB, 1 stream, warm";
const CASE_WARM4: &str = "sequential 1 MiB, 4 streams, warm";
const CASE_RAND: &str = "random 4 KiB, iodepth 32, warm";

fn ab(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let r = start(cx, sys, &StartSpec::default(), "ab", SEQ_FILE)?;
    let (fio, s) = (cx.o.fio.clone(), cx.sizes);
    let want_b = cx.o.workloads.contains(&'b');
    with_system(cx, 'a', r, |cx, r| {
        let target = fio_target(&r.access);
        let depth = seq_depth(&r.access);
        let mut bytes = 0;
        let job = FioJob {
            name: "cold",
            target,
            file: SEQ_FILE,
            size_bytes: s.seq_bytes,
            rw: "read",
            block_bytes: 1 << 20,
            iodepth: depth,
            streams: 1,
            timed: None,
        };
        let st = job.run(&fio, cx.sb, &out_path(cx, 'a', sys, "cold"), READ_TIMEOUT)?;
        bytes += st.io_bytes;
        cx.put(
            'a',
            CASE_COLD,
            sys.name(),
            role(sys),
            "throughput",
            st.mib_per_s(),
            "MiB/s",
            Better::Higher,
        );
        // rclone writes its cache behind the reader; give every system the
        // same short pause before the warm runs.
        super::pause(Duration::from_secs(2))?;
        for (case, streams, name) in [(CASE_WARM1, 1, "warm1"), (CASE_WARM4, 4, "warm4")] {
            let job = FioJob {
                name,
                streams,
                timed: Some((s.runtime_secs, s.ramp_secs)),
                ..job
            };
            let st = job.run(&fio, cx.sb, &out_path(cx, 'a', sys, name), READ_TIMEOUT)?;
            bytes += st.io_bytes;
            cx.put(
                'a',
                case,
                sys.name(),
                role(sys),
                "throughput",
                st.mib_per_s(),
                "MiB/s",
                Better::Higher,
            );
        }
        if want_b {
            let job = FioJob {
                name: "rand4k",
                rw: "randread",
                block_bytes: 4096,
                iodepth: 32,
                streams: 1,
                timed: Some((s.runtime_secs, s.ramp_secs)),
                ..job
            };
            let st = job.run(&fio, cx.sb, &out_path(cx, 'b', sys, "rand4k"), READ_TIMEOUT)?;
            bytes += st.io_bytes;
            cx.put(
                'b',
                CASE_RAND,
                sys.name(),
                role(sys),
                "IOPS",
                st.iops,
                "IOPS",
                Better::Higher,
            );
            cx.put(
                'b',
                CASE_RAND,
                sys.name(),
                role(sys),
                "p99 latency",
                st.clat_us_p99,
                "µs",
                Better::Lower,
            );
        }
        Ok(bytes)
    })?;
    if want_b {
        // The same server life served (b); its cost is (a)'s.
        if let Some(c) = cx.report.costs.last().cloned() {
            cx.report.costs.push(super::results::ServerCost {
                workload: "b".to_owned(),
                ..c
            });
        }
    }
    Ok(())
}

/// The machine's limits: the local disk under O_DIRECT (the file
/// system of the caches) and loopback TCP.
fn limits(cx: &mut Cx<'_>) -> Result<()> {
    let (fio, s) = (cx.o.fio.clone(), cx.sizes);
    let dir = cx.world.local_dir.to_owned();
    let base = FioJob {
        name: "disk",
        target: Target::Dir {
            dir: &dir,
            direct: true,
        },
        file: SEQ_FILE,
        size_bytes: s.seq_bytes,
        rw: "read",
        block_bytes: 1 << 20,
        iodepth: 16,
        streams: 1,
        timed: Some((s.runtime_secs, s.ramp_secs)),
    };
    let lo1 = cx
        .sb
        .in_netns(move || loopback_mib_per_s(1, Duration::from_secs(s.runtime_secs)))?;
    let lo4 = cx
        .sb
        .in_netns(move || loopback_mib_per_s(4, Duration::from_secs(s.runtime_secs)))?;
    let (lo_name, disk_name) = ("loopback TCP", "local disk, O_DIRECT");
    for case in [CASE_COLD, CASE_WARM1] {
        cx.put(
            'a',
            case,
            lo_name,
            Role::Limit,
            "throughput",
            lo1,
            "MiB/s",
            Better::Higher,
        );
    }
    cx.put(
        'a',
        CASE_WARM4,
        lo_name,
        Role::Limit,
        "throughput",
        lo4,
        "MiB/s",
        Better::Higher,
    );
    let one = base.run(
        &fio,
        cx.sb,
        &cx.dir.join("limit-disk-seq1.json"),
        READ_TIMEOUT,
    )?;
    let four = FioJob { streams: 4, ..base }.run(
        &fio,
        cx.sb,
        &cx.dir.join("limit-disk-seq4.json"),
        READ_TIMEOUT,
    )?;
    for case in [CASE_COLD, CASE_WARM1] {
        cx.put(
            'a',
            case,
            disk_name,
            Role::Limit,
            "throughput",
            one.mib_per_s(),
            "MiB/s",
            Better::Higher,
        );
    }
    cx.put(
        'a',
        CASE_WARM4,
        disk_name,
        Role::Limit,
        "throughput",
        four.mib_per_s(),
        "MiB/s",
        Better::Higher,
    );
    if cx.o.workloads.contains(&'b') {
        let rand = FioJob {
            rw: "randread",
            block_bytes: 4096,
            iodepth: 32,
            ..base
        }
        .run(
            &fio,
            cx.sb,
            &cx.dir.join("limit-disk-rand.json"),
            READ_TIMEOUT,
        )?;
        cx.put(
            'b',
            CASE_RAND,
            disk_name,
            Role::Limit,
            "IOPS",
            rand.iops,
            "IOPS",
            Better::Higher,
        );
        cx.put(
            'b',
            CASE_RAND,
            disk_name,
            Role::Limit,
            "p99 latency",
            rand.clat_us_p99,
            "µs",
            Better::Lower,
        );
    }
    Ok(())
}

/// Loopback TCP throughput with `streams` connections for `dur`: each
/// sender writes 1 MiB buffers, each receiver reads and discards. Call
/// from inside the namespace.
fn loopback_mib_per_s(streams: usize, dur: Duration) -> Result<f64> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("bind the loopback limit's listener")?;
    let addr: SocketAddr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..streams {
        let stop_w = stop.clone();
        writers.push(std::thread::spawn(move || -> Result<()> {
            let mut s = TcpStream::connect(addr)?;
            let buf = vec![0x5au8; LOOPBACK_CHUNK_BYTES];
            while !stop_w.load(Ordering::Relaxed) {
                s.write_all(&buf)?;
            }
            Ok(())
        }));
        let (mut conn, _) = listener.accept()?;
        let rx = received.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; LOOPBACK_CHUNK_BYTES];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                rx.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    // Half a second of warm-up, then the measured window.
    std::thread::sleep(Duration::from_millis(500));
    let b0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(dur);
    let bytes = received.load(Ordering::Relaxed) - b0;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    for r in readers {
        let _ = r.join();
    }
    Ok(bytes as f64 / secs / f64::from(1u32 << 20))
}

fn read_path(access: &Access) -> ReadPath {
    match access {
        Access::Nfs { nfs, mount, .. } => ReadPath::Nfs {
            addr: *nfs,
            mount_addr: *mount,
            export: "/".to_owned(),
        },
        Access::Mount(dir) => ReadPath::Posix { root: dir.clone() },
    }
}

fn imagenet(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let spec = imagenet_spec(&cx.sizes);
    let files: Vec<DataFile> = spec.files();
    let probe = files
        .first()
        .map(|f| f.path.clone())
        .context("empty tree")?;
    let r = start(cx, sys, &StartSpec::default(), "c", &probe)?;
    with_system(cx, 'c', r, |cx, r| {
        let path = read_path(&r.access);
        let mut bytes = 0;
        for e in 1..=EPOCHS {
            sandbox::check_interrupted()?;
            let p = path.clone();
            let f = files.clone();
            cx.proxy.reset();
            let done = Arc::new(AtomicU64::new(0));
            let done_in = done.clone();
            let t0 = Instant::now();
            let outcome = cx.sb.in_netns(move || {
                epoch::run_epoch(
                    &p,
                    &f,
                    spec.seed,
                    e,
                    EPOCH_READERS,
                    EPOCH_BUDGET,
                    Some(&done_in),
                )
            });
            let case = if e == 1 {
                "epoch 1 (cold)".to_owned()
            } else {
                format!("epoch {e}")
            };
            let st = match outcome {
                Ok(st) => st,
                // Over budget: the rate so far is still a measurement;
                // the epoch's time is not.
                Err(err) if t0.elapsed() >= EPOCH_BUDGET => {
                    let n = done.load(Ordering::Relaxed);
                    let secs = t0.elapsed().as_secs_f64();
                    cx.put(
                        'c',
                        &case,
                        sys.name(),
                        role(sys),
                        "files/s",
                        n as f64 / secs,
                        "files/s",
                        Better::Higher,
                    );
                    cx.report.failures.push(super::results::Failure {
                        workload: "c".to_owned(),
                        system: sys.name().to_owned(),
                        error: format!(
                            "{case} stopped at its {} s budget after {n} of {} files (files/s is the rate until then; no epoch time): {err:#}",
                            EPOCH_BUDGET.as_secs(),
                            files.len()
                        ),
                    });
                    continue;
                }
                Err(err) => return Err(err),
            };
            ensure!(
                st.files == files.len() as u64,
                "epoch {e} read {} files of {}",
                st.files,
                files.len()
            );
            bytes += st.bytes;
            let requests = cx.proxy.requests();
            let gets = requests.iter().filter(|q| q.is_object_get()).count();
            let lists = requests.iter().filter(|q| q.is_list()).count();
            let heads = requests.iter().filter(|q| q.method == "HEAD").count();
            cx.progress.note(&format!(
                "epoch {e}: S3 requests at the proxy: {gets} object GETs, {heads} HEADs, {lists} LISTs, {} others",
                requests.len() - gets - lists - heads
            ));
            cx.put(
                'c',
                &case,
                sys.name(),
                role(sys),
                "time per epoch",
                st.secs,
                "s",
                Better::Lower,
            );
            cx.put(
                'c',
                &case,
                sys.name(),
                role(sys),
                "files/s",
                st.files as f64 / st.secs,
                "files/s",
                Better::Higher,
            );
            r.check_alive(cx.sb)?;
        }
        Ok(bytes)
    })
}

/// Bytes the object GETs of `key` asked the store for since the last
/// reset of the proxy.
fn fetched_bytes(cx: &Cx<'_>, key: &str, object_bytes: u64) -> Result<u64> {
    let records: Vec<_> = cx
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.contains(key))
        .collect();
    ensure!(
        cx.proxy.records_dropped() == 0,
        "the proxy dropped request records; the fetched bytes are unknown"
    );
    crate::latency::requested_bytes(&records, object_bytes)
}

fn sweep(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let spec = StartSpec {
        cache_bytes: Some(cx.sizes.sweep_cache_bytes()),
        ..StartSpec::default()
    };
    let r = start(cx, sys, &spec, "d", SEQ_FILE)?;
    let (fio, s) = (cx.o.fio.clone(), cx.sizes);
    with_system(cx, 'd', r, |cx, r| {
        let mut bytes = 0;
        for pass in 1..=3u32 {
            sandbox::check_interrupted()?;
            drop_caches()?;
            cx.proxy.reset();
            let job = FioJob {
                name: "sweep",
                target: fio_target(&r.access),
                file: SEQ_FILE,
                size_bytes: s.seq_bytes,
                rw: "read",
                block_bytes: 1 << 20,
                iodepth: seq_depth(&r.access),
                streams: 1,
                timed: None,
            };
            let st = job.run(
                &fio,
                cx.sb,
                &out_path(cx, 'd', sys, &format!("pass{pass}")),
                READ_TIMEOUT,
            )?;
            bytes += st.io_bytes;
            let fetched = fetched_bytes(cx, SEQ_FILE, s.seq_bytes)?;
            let hit = (1.0 - fetched as f64 / st.io_bytes as f64).max(0.0);
            let case = format!("pass {pass}{}", if pass == 1 { " (cold)" } else { "" });
            cx.put(
                'd',
                &case,
                sys.name(),
                role(sys),
                "hit ratio",
                hit,
                "ratio",
                Better::Higher,
            );
            cx.put(
                'd',
                &case,
                sys.name(),
                role(sys),
                "throughput",
                st.mib_per_s(),
                "MiB/s",
                Better::Higher,
            );
            let mib = f64::from(1u32 << 20);
            cx.put(
                'd',
                &case,
                sys.name(),
                role(sys),
                "fetched from S3",
                fetched as f64 / mib,
                "MiB",
                Better::Lower,
            );
            let disk = r.disk_bytes() as f64 / mib;
            cx.put(
                'd',
                &case,
                sys.name(),
                role(sys),
                "cache on disk after the pass",
                disk,
                "MiB",
                Better::Lower,
            );
            r.check_alive(cx.sb)?;
        }
        Ok(bytes)
    })
}

fn cold_latency(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let delay = Duration::from_millis(cx.o.s3_latency_ms);
    cx.proxy.set_first_byte_delay(delay);
    let out = cold_latency_inner(cx, sys);
    cx.proxy.set_first_byte_delay(Duration::ZERO);
    out
}

fn cold_latency_inner(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let r = start(cx, sys, &StartSpec::default(), "e", SEQ_FILE)?;
    let (fio, s) = (cx.o.fio.clone(), cx.sizes);
    let case = format!(
        "cold read, 1 stream, 1 request in flight, S3 first byte +{} ms",
        cx.o.s3_latency_ms
    );
    let role = if sys == Sys::Tidegate {
        Role::Tidegate
    } else {
        Role::Peer
    };
    with_system(cx, 'e', r, |cx, r| {
        cx.proxy.reset();
        let job = FioJob {
            name: "cold-latency",
            target: fio_target(&r.access),
            file: SEQ_FILE,
            size_bytes: s.seq_bytes,
            rw: "read",
            block_bytes: 1 << 20,
            iodepth: 1,
            streams: 1,
            timed: None,
        };
        let st = job.run(&fio, cx.sb, &out_path(cx, 'e', sys, "read"), READ_TIMEOUT)?;
        cx.put(
            'e',
            &case,
            sys.name(),
            role,
            "throughput",
            st.mib_per_s(),
            "MiB/s",
            Better::Higher,
        );
        let gets = cx
            .proxy
            .requests()
            .iter()
            .filter(|q| q.is_object_get() && q.target.contains(SEQ_FILE))
            .count();
        cx.progress
            .note(&format!("{gets} GETs of the file at the proxy"));
        Ok(st.io_bytes)
    })
}

fn metadata(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let n = cx.sizes.meta_files;
    let names = dataset::flat_names(n);
    // The probe is the folder itself, so its listing is not fetched
    // before the measured one.
    let r = start(cx, sys, &StartSpec::default(), "f", META_DIR)?;
    with_system(cx, 'f', r, |cx, r| {
        let path = read_path(&r.access);
        let p = path.clone();
        let listed = cx
            .sb
            .in_netns(move || meta::list_dir(&p, META_DIR, META_TIMEOUT))?;
        ensure!(
            listed.entries == u64::from(n),
            "listed {} entries of {n}",
            listed.entries
        );
        let case_list = format!("listing of a {}-entry folder", thousands(n));
        cx.put(
            'f',
            &case_list,
            sys.name(),
            role(sys),
            "time",
            listed.secs,
            "s",
            Better::Lower,
        );
        let p = path.clone();
        let nm = names.clone();
        let stat = cx
            .sb
            .in_netns(move || meta::stat_all(&p, META_DIR, &nm, META_TIMEOUT))?;
        ensure!(stat.files == u64::from(n), "stat'ed {} of {n}", stat.files);
        let case_stat = format!("stat of {} files, one at a time", thousands(n));
        cx.put(
            'f',
            &case_stat,
            sys.name(),
            role(sys),
            "files/s",
            stat.files as f64 / stat.secs,
            "files/s",
            Better::Higher,
        );
        r.check_alive(cx.sb)?;
        Ok(0)
    })
}

fn checkpoint(cx: &mut Cx<'_>, sys: Sys) -> Result<()> {
    let r = start(cx, sys, &StartSpec::default(), "g", SEQ_FILE)?;
    let s = cx.sizes;
    let stamp = crate::clock::utc_stamp(std::time::SystemTime::now()).replace([':', '-'], "");
    let final_key = format!("ckpt-{}-{stamp}", sys.short());
    let tmp_key = format!("{final_key}.tmp");
    let case = format!("{} checkpoint: write, fsync, rename", mib(s.ckpt_bytes));
    with_system(cx, 'g', r, |cx, r| {
        let t0 = Instant::now();
        let rename_secs = match &r.access {
            Access::Nfs { nfs, mount, url } => {
                let job = FioJob {
                    name: "ckpt",
                    target: Target::Nfs(url),
                    file: &tmp_key,
                    size_bytes: s.ckpt_bytes,
                    rw: "write",
                    block_bytes: 1 << 20,
                    iodepth: 16,
                    streams: 1,
                    timed: None,
                };
                job.run(
                    &cx.o.fio,
                    cx.sb,
                    &out_path(cx, 'g', sys, "write"),
                    CKPT_TIMEOUT,
                )?;
                let (nfs, mount) = (*nfs, *mount);
                let (tk, fk) = (tmp_key.clone(), final_key.clone());
                cx.sb
                    .in_netns(move || commit_and_rename(nfs, mount, &tk, &fk))?;
                t0.elapsed().as_secs_f64()
            }
            Access::Mount(dir) => {
                let src = cx.world.local_dir.join(SEQ_FILE);
                let status = Command::new("dd")
                    .arg(format!("if={}", src.display()))
                    .arg(format!("of={}", dir.join(&tmp_key).display()))
                    .args([
                        "bs=1M",
                        &format!("count={}", s.ckpt_bytes >> 20),
                        "conv=fsync",
                        "status=none",
                    ])
                    .status()
                    .context("run dd")?;
                ensure!(status.success(), "dd into the mount failed ({status})");
                fs::rename(dir.join(&tmp_key), dir.join(&final_key))
                    .context("rename the checkpoint in the mount")?;
                t0.elapsed().as_secs_f64()
            }
        };
        cx.progress.note(&format!(
            "written and renamed after {rename_secs:.2} s; polling S3"
        ));
        let sw = cx.direct.target.clone();
        let (tk, fk, size) = (tmp_key.clone(), final_key.clone(), s.ckpt_bytes);
        let whole_secs = cx.sb.in_netns(move || {
            let mut c = crate::s3::S3Client::new(sw);
            loop {
                let fin = c.head(systems::BUCKET, &fk)?;
                let tmp = c.head(systems::BUCKET, &tk)?;
                if fin == Some(size) && tmp.is_none() {
                    return Ok(t0.elapsed().as_secs_f64());
                }
                if t0.elapsed() >= CKPT_TIMEOUT {
                    bail!(
                        "{fk} not whole in S3 with {tk} gone within {}s (HEAD: {fin:?}, tmp {tmp:?})",
                        CKPT_TIMEOUT.as_secs()
                    );
                }
                sandbox::sleep_interruptible(CKPT_POLL)?;
            }
        })?;
        cx.put(
            'g',
            &case,
            sys.name(),
            role(sys),
            "until whole in S3",
            whole_secs,
            "s",
            Better::Lower,
        );
        cx.put(
            'g',
            &case,
            sys.name(),
            role(sys),
            "until the rename returned",
            rename_secs,
            "s",
            Better::Lower,
        );
        // Remove it through the system, so the store does not grow run
        // after run.
        let _ = remove_checkpoint(cx, r, &final_key);
        Ok(s.ckpt_bytes)
    })
}

fn commit_and_rename(nfs: SocketAddr, mount: SocketAddr, tmp: &str, fin: &str) -> Result<()> {
    use tidegate_tests::rpc::NfsClient;
    let mut m = NfsClient::connect(mount).context("connect for MOUNT")?;
    let root = m.mount_root()?;
    let mut c = NfsClient::connect(nfs).context("connect for NFS")?;
    let fh = match c.lookup(&root, tmp.as_bytes())? {
        Ok(l) => l.fh,
        Err(s) => bail!("LOOKUP {tmp}: nfsstat3 {s}"),
    };
    if let Err(s) = c.commit(&fh)? {
        bail!("COMMIT {tmp}: nfsstat3 {s}");
    }
    if let Err(s) = c.rename(&root, tmp.as_bytes(), &root, fin.as_bytes())? {
        bail!("RENAME {tmp} {fin}: nfsstat3 {s}");
    }
    Ok(())
}

fn remove_checkpoint(cx: &mut Cx<'_>, r: &Running, key: &str) -> Result<()> {
    match &r.access {
        Access::Nfs { nfs, mount, .. } => {
            let (nfs, mount, key) = (*nfs, *mount, key.to_owned());
            cx.sb.in_netns(move || {
                use tidegate_tests::rpc::NfsClient;
                let mut m = NfsClient::connect(mount)?;
                let root = m.mount_root()?;
                let mut c = NfsClient::connect(nfs)?;
                let _ = c.remove(&root, key.as_bytes(), false)?;
                Ok(())
            })?;
            // Give tidegate's uploader a moment to carry the delete out.
            super::pause(Duration::from_secs(1))
        }
        Access::Mount(dir) => fs::remove_file(dir.join(key)).context("remove the checkpoint"),
    }
}

/// The project's goals, judged on this run's numbers.
pub(super) fn goals(r: &Report) -> Vec<Goal> {
    let get = |w: &str, case_prefix: &str, sys: Sys, metric: &str| -> Option<f64> {
        r.measurements
            .iter()
            .find(|m| {
                m.workload == w
                    && m.case.starts_with(case_prefix)
                    && m.system == sys.name()
                    && m.metric == metric
            })
            .map(|m| m.value)
    };
    let mean = |v: [Option<f64>; 2]| -> Option<f64> { Some((v[0]? + v[1]?) / 2.0) };
    let mut goals = Vec::new();
    let epoch23 = |sys: Sys| {
        mean([
            get("c", "epoch 2", sys, "files/s"),
            get("c", "epoch 3", sys, "files/s"),
        ])
    };
    let ratio_goal = |text: &str,
                      ours: Option<f64>,
                      theirs: Option<f64>,
                      want: f64,
                      lower_better: bool,
                      what: &str| {
        match (ours, theirs) {
            (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                let x = if lower_better { b / a } else { a / b };
                Goal {
                    text: text.to_owned(),
                    met: Some(x >= want),
                    detail: format!("{x:.2}× ({what}: tidegate {a:.3}, peer {b:.3})"),
                }
            }
            _ => Goal {
                text: text.to_owned(),
                met: None,
                detail: "not measured in this run".to_owned(),
            },
        }
    };
    goals.push(ratio_goal(
        "(c) epochs 2–3 at least 10× faster than s3fs",
        epoch23(Sys::Tidegate),
        epoch23(Sys::S3fs),
        10.0,
        false,
        "mean files/s",
    ));
    goals.push(ratio_goal(
        "(c) epochs 2–3 at least 3× faster than rclone serve nfs",
        epoch23(Sys::Tidegate),
        epoch23(Sys::RcloneNfs),
        3.0,
        false,
        "mean files/s",
    ));
    let hit = mean([
        get("d", "pass 2", Sys::Tidegate, "hit ratio"),
        get("d", "pass 3", Sys::Tidegate, "hit ratio"),
    ]);
    goals.push(match hit {
        Some(h) => Goal {
            text: "(d) hit ratio at least 0.4 on a cyclic sweep over twice the cache".to_owned(),
            met: Some(h >= 0.4),
            detail: format!("tidegate passes 2–3: {h:.2}"),
        },
        None => Goal {
            text: "(d) hit ratio at least 0.4 on a cyclic sweep over twice the cache".to_owned(),
            met: None,
            detail: "not measured in this run".to_owned(),
        },
    });
    goals.push(ratio_goal(
        "(e) cold single-stream throughput at least 4× rclone serve nfs",
        get("e", "cold read", Sys::Tidegate, "throughput"),
        get("e", "cold read", Sys::RcloneNfs, "throughput"),
        4.0,
        false,
        "MiB/s",
    ));
    for (case, metric, what) in [
        (CASE_WARM1, "throughput", "MiB/s"),
        (CASE_WARM4, "throughput", "MiB/s"),
        (CASE_RAND, "IOPS", "IOPS"),
    ] {
        let w = if case == CASE_RAND { "b" } else { "a" };
        goals.push(ratio_goal(
            &format!("({w}) {case}: at least 1.5× NFS-Ganesha"),
            get(w, case, Sys::Tidegate, metric),
            get(w, case, Sys::Ganesha, metric),
            1.5,
            false,
            what,
        ));
    }
    goals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::results::Measurement;

    fn m(w: &str, case: &str, sys: Sys, metric: &str, value: f64) -> Measurement {
        Measurement {
            workload: w.to_owned(),
            case: case.to_owned(),
            system: sys.name().to_owned(),
            role: role(sys),
            metric: metric.to_owned(),
            value,
            unit: String::new(),
            better: Better::Higher,
        }
    }

    #[test]
    fn goals_follow_the_numbers() {
        let r = Report {
            measurements: vec![
                m("c", "epoch 2", Sys::Tidegate, "files/s", 1000.0),
                m("c", "epoch 3", Sys::Tidegate, "files/s", 1000.0),
                m("c", "epoch 2", Sys::S3fs, "files/s", 50.0),
                m("c", "epoch 3", Sys::S3fs, "files/s", 150.0),
                m("c", "epoch 2", Sys::RcloneNfs, "files/s", 500.0),
                m("c", "epoch 3", Sys::RcloneNfs, "files/s", 500.0),
                m("d", "pass 2", Sys::Tidegate, "hit ratio", 0.5),
                m("d", "pass 3", Sys::Tidegate, "hit ratio", 0.2),
            ],
            ..Report::default()
        };
        let g = goals(&r);
        assert_eq!(g[0].met, Some(true), "{:?}", g[0]); // 1000 vs 100 files/s
        assert_eq!(g[1].met, Some(false), "{:?}", g[1]); // 2×
        assert_eq!(g[2].met, Some(false), "{:?}", g[2]); // 0.35
        assert_eq!(g[3].met, None);
    }

    #[test]
    fn counts_read_nicely() {
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(mib(2 << 30), "2 GiB");
        assert_eq!(mib(512 << 20), "512 MiB");
    }
}
