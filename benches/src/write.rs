//! Writes: sequential write throughput against NFS-Ganesha, and the time
//! to save a checkpoint into S3 against s3fs.
//!
//! **Sequential write throughput.** Ganesha (FSAL VFS, the main section's
//! configuration with a read-write export of an empty directory) and
//! tidegate (serving an empty local directory as its source, as in the main
//! section, with `--staging-dir` beside Ganesha's export) each take a new
//! file written with fio's nfs engine: 1 MiB WRITEs, 16 in flight on one
//! connection, `--size-mib` (1 GiB) in all. Every run writes a file name
//! that does not exist yet (checked with LOOKUP), and the file is removed
//! afterwards. libnfs sends the WRITEs `UNSTABLE` and, when fio closes the
//! file, a COMMIT (seen here: Ganesha fsyncs right after the last WRITE,
//! tidegate starts its upload without any other COMMIT). fio's MiB/s covers
//! its I/O phase only, the rate at which the server took the data; "start
//! to stable" divides the size by the wall time of the whole fio process
//! (mount, create, writes, the COMMIT at close) plus one more COMMIT from
//! the harness's raw client (which then finds nothing left to flush), after
//! which both servers have the data on disk (Ganesha fsyncs the file;
//! tidegate fdatasyncs its staging file and journals it). Both directories
//! sit on the
//! same file system (its type is reported; the harness refuses to compare
//! different ones), and a plain local write + fsync of the same size on it
//! gives the disk's own rate. Each server's CPU time (utime+stime of its
//! process, `/proc/PID/stat`) is divided by the GiB written; fio's own CPU
//! share and the machine's (`/proc/stat`, all cores) tell whether a run
//! was bound by the client or by the CPUs; a 1 s sample of the machine
//! before each run shows how busy other work kept it (the cores are shared
//! with whatever else runs there). tidegate then uploads the file
//! into its source directory after `--upload-delay` (its default, 2 s);
//! the harness waits for that (`/stats` `upload_pending_keys` = 0) before
//! the next run, so uploads never overlap a measured write, and reports it.
//!
//! **Checkpoint save.** SeaweedFS runs in the namespace with a bucket per
//! peer. tidegate serves its bucket (`s3://ckpt-tidegate`, `--upload-delay`
//! as given, 0 s by default) and fio's nfs engine writes `ckpt-N.tmp` (as
//! above: 1 MiB UNSTABLE WRITEs, 16 in flight, COMMIT at close), then the
//! harness's raw NFS client COMMITs it once more (a no-op by then, kept so
//! that the sequence does not depend on libnfs) and RENAMEs it to `ckpt-N`. s3fs mounts the other
//! bucket (`-o url=http://127.0.0.1:8333 -o use_path_request_style -o
//! passwd_file=...`, run in the namespace's network so it can reach
//! nothing but loopback) and `dd bs=1M conv=fsync` copies the same amount
//! of random bytes into `ckpt-N.tmp`, then `mv` renames it. For both, the
//! clock starts when the writer starts and stops when `ckpt-N` is whole in
//! SeaweedFS (HEAD says the full size) and `ckpt-N.tmp` is gone from the
//! bucket listing (and, for tidegate, `/stats` shows nothing pending).
//! Meanwhile the bucket is listed every 50 ms and every object seen is
//! recorded with its size: a temporary (`.tmp`) or partial (final key with
//! the wrong size) object in the bucket is reported. The clients write
//! incompressible bytes (fio's random buffers; a random file for dd), since
//! SeaweedFS may compress what compresses.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tidegate_tests::rpc::{
    NfsClient, RpcConn, XdrReader, XdrWriter, NFS3ERR_JUKEBOX, NFS3ERR_NOENT,
};

use crate::fio::{Measured, SeqWrite};
use crate::ganesha::{self, Access};
use crate::json::{self, object, Value};
use crate::nfs3;
use crate::s3::{S3Client, S3Target};
use crate::sandbox::{self, Sandbox};
use crate::seaweed::{self, Seaweed};
use crate::servers::{self, TidegateDir, TidegateS3};
use crate::suite::systems::FuseMount;

/// tidegate over a local directory (throughput part).
const TIDEGATE_DIR_PORT: u16 = 20500;
const TIDEGATE_DIR_ADMIN_PORT: u16 = 20501;
/// tidegate over SeaweedFS (checkpoint part).
const TIDEGATE_S3_PORT: u16 = 20502;
const TIDEGATE_S3_ADMIN_PORT: u16 = 20503;
/// Ganesha's NFS port (its MOUNT port is found through rpcbind).
const GANESHA_NFS_PORT: u16 = 2049;
const RPCBIND_PORT: u16 = 111;
const TIDEGATE_BUCKET: &str = "ckpt-tidegate";
const S3FS_BUCKET: &str = "ckpt-s3fs";
/// WRITEs in flight of the fio writer.
pub const IODEPTH: u32 = 16;
/// tidegate's `--upload-delay` in the checkpoint part unless given.
pub const DEFAULT_CKPT_UPLOAD_DELAY: &str = "0s";
/// Upper bound of one fio write or one dd.
const WRITE_TIMEOUT: Duration = Duration::from_secs(600);
/// Socket timeout of the raw NFS client (a COMMIT of a GiB may take a
/// while on a slow disk).
const NFS_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long uploads may take to drain, and a checkpoint to appear whole.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Retries of a call answered NFS3ERR_JUKEBOX, and the pause between.
const JUKEBOX_RETRIES_MAX: u32 = 600;
const JUKEBOX_PAUSE: Duration = Duration::from_millis(100);
/// Interval of the bucket poller and of `/stats` polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the admin port may take to answer once NFS does.
const ADMIN_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages of 1000 keys the poller lists at most.
const LIST_PAGES_MAX: u32 = 10;
const GIB_BYTES: f64 = (1u64 << 30) as f64;
const MIB_BYTES: f64 = (1u64 << 20) as f64;

/// The servers of the throughput part.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteServer {
    Ganesha,
    Tidegate,
}

impl WriteServer {
    pub fn name(self) -> &'static str {
        match self {
            WriteServer::Ganesha => "ganesha",
            WriteServer::Tidegate => "tidegate",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            WriteServer::Ganesha => "Ganesha",
            WriteServer::Tidegate => "tidegate",
        }
    }

    fn service(self) -> &'static str {
        match self {
            WriteServer::Ganesha => "write-ganesha",
            WriteServer::Tidegate => "write-tidegate",
        }
    }

    fn comm(self) -> &'static str {
        match self {
            WriteServer::Ganesha => ganesha::NFSD_COMM,
            WriteServer::Tidegate => "tidegate",
        }
    }

    fn url(self) -> String {
        match self {
            WriteServer::Ganesha => ganesha::export_url(),
            WriteServer::Tidegate => nfs3::libnfs_url(TIDEGATE_DIR_PORT),
        }
    }
}

/// The peers of the checkpoint part.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CkptPeer {
    Tidegate,
    S3fs,
}

impl CkptPeer {
    pub fn name(self) -> &'static str {
        match self {
            CkptPeer::Tidegate => "tidegate",
            CkptPeer::S3fs => "s3fs",
        }
    }
}

pub struct WriteOptions<'a> {
    /// Servers of the throughput part (Ganesha, tidegate or both).
    pub servers: &'a [WriteServer],
    pub fio: &'a Path,
    pub tidegate_bin: &'a Path,
    pub workers: Option<u32>,
    /// Bytes of each written file.
    pub size_bytes: u64,
    /// A local file of `size_bytes` random bytes: what dd copies into the
    /// s3fs mount.
    pub data_file: &'a Path,
    /// Logs, fio output, exports, staging and the SeaweedFS data go to
    /// `run_dir/write`.
    pub run_dir: &'a Path,
    /// Rounds of each part; tables show medians.
    pub rounds: u32,
    /// tidegate's `--upload-delay` in the checkpoint part.
    pub ckpt_upload_delay: &'a str,
    /// s3fs, or `None` to leave out the s3fs side.
    pub s3fs_bin: Option<PathBuf>,
}

impl WriteOptions<'_> {
    fn dir(&self) -> PathBuf {
        self.run_dir.join("write")
    }
}

// ------------------------------------------------------------ samples ----

/// CPU ticks of the whole machine (`/proc/stat`, all cores).
#[derive(Clone, Copy, Debug, Default)]
struct MachineCpu {
    busy: u64,
    iowait: u64,
    total: u64,
}

impl MachineCpu {
    fn sample() -> Result<Self> {
        let text = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        Self::parse(&text).context("parse /proc/stat")
    }

    fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is
        // already in user).
        let total: u64 = v.iter().take(8).sum();
        let idle = *v.get(3)?;
        let iowait = *v.get(4)?;
        Some(Self {
            busy: total - idle - iowait,
            iowait,
            total,
        })
    }

    /// Busy and iowait shares of all cores since `before`.
    fn since(self, before: Self) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        (
            self.busy.saturating_sub(before.busy) as f64 / total,
            self.iowait.saturating_sub(before.iowait) as f64 / total,
        )
    }
}

/// tidegate's write-side counters from `GET /stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    pub pending_keys: u64,
    pub pending_files: u64,
    pub pending_bytes: u64,
    pub staged_bytes: u64,
    pub objects_total: u64,
    pub bytes_total: u64,
    /// `upload_failures_total`, when the gateway counts it.
    pub failures_total: Option<u64>,
}

impl UploadStats {
    pub fn parse(text: &str) -> Result<Self> {
        let doc = json::parse(text.trim()).context("parse tidegate's /stats")?;
        let get = |key: &str| -> Result<u64> {
            doc.get(key)
                .and_then(Value::as_f64)
                .map(|v| v as u64)
                .with_context(|| format!("tidegate's /stats has no number {key:?}"))
        };
        Ok(Self {
            pending_keys: get("upload_pending_keys")?,
            pending_files: get("upload_pending_files")?,
            pending_bytes: get("upload_pending_bytes")?,
            staged_bytes: get("staged_bytes")?,
            objects_total: get("upload_objects_total")?,
            bytes_total: get("upload_bytes_total")?,
            failures_total: get("upload_failures_total").ok(),
        })
    }

    /// Fetches `/stats` from the admin port; call from inside the
    /// namespace.
    fn fetch(port: u16) -> Result<Self> {
        Self::parse(&crate::http_get(port, "/stats")?)
    }
}

fn fetch_stats(sb: &Sandbox, port: u16) -> Result<UploadStats> {
    sb.in_netns(|| UploadStats::fetch(port))
}

/// The first `/stats`, waiting for the admin port to answer.
fn wait_stats(sb: &Sandbox, port: u16) -> Result<UploadStats> {
    let deadline = Instant::now() + ADMIN_READY_TIMEOUT;
    loop {
        match fetch_stats(sb, port) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "tidegate's admin port 127.0.0.1:{port} did not answer GET /stats within {}s",
                    ADMIN_READY_TIMEOUT.as_secs()
                )))
            }
            Err(_) => sandbox::sleep_interruptible(Duration::from_millis(250))?,
        }
    }
}

/// Waits until `/stats` shows nothing pending and at least `objects_min`
/// more objects uploaded than `before`; returns the last sample.
fn wait_drained(
    sb: &Sandbox,
    port: u16,
    before: UploadStats,
    objects_min: u64,
) -> Result<UploadStats> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let s = fetch_stats(sb, port)?;
        if s.pending_keys == 0 && s.objects_total >= before.objects_total + objects_min {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!(
                "tidegate's uploads did not drain within {}s: {s:?}",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        sandbox::sleep_interruptible(POLL_INTERVAL)?;
    }
}

/// The type of the file system that holds `path` (`statfs`), by name.
pub fn fs_type(path: &Path) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path with NUL: {}", path.display()))?;
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(fs_type_name(st.f_type as u64))
}

fn fs_type_name(magic: u64) -> String {
    match magic {
        0xEF53 => "ext4".to_owned(),
        0x5846_5342 => "xfs".to_owned(),
        0x9123_683E => "btrfs".to_owned(),
        0x0102_1994 => "tmpfs".to_owned(),
        0x794C_7630 => "overlayfs".to_owned(),
        0x6573_5546 => "fuse".to_owned(),
        0x2FC1_2FC1 => "zfs".to_owned(),
        other => format!("0x{other:x}"),
    }
}

/// The busy share of all cores over one second: what other work uses.
fn background_busy() -> Result<f64> {
    let a = MachineCpu::sample()?;
    sandbox::sleep_interruptible(Duration::from_secs(1))?;
    Ok(MachineCpu::sample()?.since(a).0)
}

/// Flushes every dirty page of the machine, so that one run's writeback
/// does not land in the next.
fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// fio's own CPU share (usr + sys, in % of one core) from its JSON output.
fn fio_cpu_percent(out: &Path) -> Option<f64> {
    let text = fs::read_to_string(out).ok()?;
    let doc = json::parse(&text[text.find('{')?..]).ok()?;
    let job = doc.get("jobs")?.as_array()?.first()?;
    Some(job.get("usr_cpu")?.as_f64()? + job.get("sys_cpu")?.as_f64()?)
}

// ------------------------------------------------------ raw NFS client ----

/// A raw NFSv3 client (the test suite's) connected to one server, with the
/// export root's handle.
struct Nfs {
    c: NfsClient,
    root: Vec<u8>,
    /// Calls answered NFS3ERR_JUKEBOX and retried.
    jukebox: u32,
}

impl Nfs {
    /// Connects to tidegate on `port` (MOUNT and NFS on one port); call
    /// from inside the namespace.
    fn tidegate(port: u16) -> Result<Self> {
        let mut c = NfsClient::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        set_timeouts(&c.conn)?;
        let root = c.mount_root()?;
        Ok(Self {
            c,
            root,
            jukebox: 0,
        })
    }

    /// Connects to Ganesha: MOUNT on the port rpcbind names, NFS on 2049;
    /// call from inside the namespace.
    fn ganesha() -> Result<Self> {
        let mount_port = rpcbind_getport(tidegate_tests::rpc::MOUNT_PROGRAM, 3)?;
        let mut m = NfsClient::connect(SocketAddr::from(([127, 0, 0, 1], mount_port)))
            .context("connect to Ganesha's MOUNT")?;
        let root = m.mount_root()?;
        let c = NfsClient::connect(SocketAddr::from(([127, 0, 0, 1], GANESHA_NFS_PORT)))?;
        set_timeouts(&c.conn)?;
        Ok(Self {
            c,
            root,
            jukebox: 0,
        })
    }

    fn connect(sb: &Sandbox, server: WriteServer) -> Result<Self> {
        sb.in_netns(|| match server {
            WriteServer::Ganesha => Self::ganesha(),
            WriteServer::Tidegate => Self::tidegate(TIDEGATE_DIR_PORT),
        })
        .with_context(|| format!("raw NFS client for {}", server.title()))
    }

    /// Repeats `call` while it answers NFS3ERR_JUKEBOX (as a kernel client
    /// does), counting the retries.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut NfsClient) -> Result<Result<T, u32>>,
    ) -> Result<T> {
        for _ in 0..=JUKEBOX_RETRIES_MAX {
            match call(&mut self.c)? {
                Ok(v) => return Ok(v),
                Err(NFS3ERR_JUKEBOX) => {
                    self.jukebox += 1;
                    sandbox::sleep_interruptible(JUKEBOX_PAUSE)?;
                }
                Err(status) => bail!("{what} failed with nfsstat3 {status}"),
            }
        }
        bail!("{what}: still NFS3ERR_JUKEBOX after {JUKEBOX_RETRIES_MAX} retries")
    }

    /// The handle of `name` in the root, or `None` when it does not exist.
    fn lookup(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let root = self.root.clone();
        match self.c.lookup(&root, name.as_bytes())? {
            Ok(l) => Ok(Some(l.fh)),
            Err(NFS3ERR_NOENT) => Ok(None),
            Err(s) => bail!("LOOKUP {name} failed with nfsstat3 {s}"),
        }
    }

    fn size_of(&mut self, fh: &[u8]) -> Result<u64> {
        let fh = fh.to_vec();
        let a = self.retrying("GETATTR", |c| c.getattr(&fh))?;
        Ok(a.size)
    }

    fn commit(&mut self, fh: &[u8]) -> Result<()> {
        let fh = fh.to_vec();
        self.retrying("COMMIT", |c| c.commit(&fh)).map(|_| ())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let root = self.root.clone();
        self.retrying(&format!("RENAME {from} {to}"), |c| {
            c.rename(&root, from.as_bytes(), &root, to.as_bytes())
        })
    }

    fn remove(&mut self, name: &str) -> Result<()> {
        let root = self.root.clone();
        self.retrying(&format!("REMOVE {name}"), |c| {
            c.remove(&root, name.as_bytes(), false)
        })
    }
}

fn set_timeouts(conn: &RpcConn) -> Result<()> {
    conn.stream.set_read_timeout(Some(NFS_CALL_TIMEOUT))?;
    conn.stream.set_write_timeout(Some(NFS_CALL_TIMEOUT))?;
    Ok(())
}

/// PMAPPROC_GETPORT (RFC 1833, portmap v2) for `prog`/`vers` over TCP.
pub fn rpcbind_getport(prog: u32, vers: u32) -> Result<u16> {
    let mut conn = RpcConn::connect(SocketAddr::from(([127, 0, 0, 1], RPCBIND_PORT)))
        .context("connect to rpcbind")?;
    let args = XdrWriter::new().u32(prog).u32(vers).u32(6).u32(0).finish();
    let res = conn.call(100_000, 2, 3, &args)?.success()?;
    let port = XdrReader::new(&res).u32()?;
    ensure!(
        port > 0 && port <= u32::from(u16::MAX),
        "rpcbind has no TCP port for program {prog} v{vers}"
    );
    Ok(port as u16)
}

// --------------------------------------------------------- throughput ----

/// One sequential write of a new file through one server.
#[derive(Debug, Clone)]
pub struct SeqWriteRun {
    /// fio's write-side numbers.
    pub m: Measured,
    /// fio's own CPU (usr + sys) in % of one core.
    pub fio_cpu_percent: Option<f64>,
    /// Wall seconds of the fio process: mount, create, the WRITEs and the
    /// COMMIT libnfs sends when fio closes the file.
    pub fio_wall_secs: f64,
    /// Wall seconds of the harness's COMMIT that followed.
    pub commit_secs: f64,
    /// Server CPU seconds during the fio run and during the COMMIT.
    pub cpu_write_secs: f64,
    pub cpu_commit_secs: f64,
    /// Busy and iowait shares of all cores during the fio run.
    pub machine_busy: f64,
    pub machine_iowait: f64,
    /// Busy share of all cores in the second before the run: other work.
    pub background_busy: f64,
    /// Calls answered NFS3ERR_JUKEBOX and retried.
    pub jukebox: u32,
    /// tidegate: the upload after the COMMIT.
    pub upload: Option<UploadDrain>,
}

/// tidegate's upload of a committed file.
#[derive(Debug, Clone, Copy)]
pub struct UploadDrain {
    /// From the COMMIT's reply until `/stats` shows nothing pending.
    pub secs: f64,
    pub objects: u64,
    pub bytes: u64,
    pub cpu_secs: f64,
}

impl SeqWriteRun {
    fn size_bytes(&self) -> f64 {
        self.m.stats.io_bytes as f64
    }

    /// The rate from fio's start until the data is on stable storage: the
    /// fio process (its COMMIT at close included) plus the harness's
    /// COMMIT.
    pub fn stable_mib_per_s(&self) -> f64 {
        let secs = self.fio_wall_secs + self.commit_secs;
        self.size_bytes() / MIB_BYTES / secs.max(1e-9)
    }

    /// Server CPU seconds (write + COMMIT) per GiB.
    pub fn cpu_secs_per_gib(&self) -> f64 {
        (self.cpu_write_secs + self.cpu_commit_secs) / (self.size_bytes() / GIB_BYTES)
    }
}

pub struct ThroughputCell {
    pub server: WriteServer,
    pub round: u32,
    pub outcome: Result<SeqWriteRun, String>,
}

/// Local write + fsync of the same size on the same file system.
#[derive(Debug, Clone, Copy)]
pub struct DiskRun {
    pub secs: f64,
    pub mib_per_s: f64,
}

/// Setup facts for the report.
#[derive(Debug, Clone, Default)]
pub struct WriteSetup {
    pub fio_version: String,
    pub ganesha_export: String,
    pub ganesha_export_fs: String,
    pub tidegate_staging: String,
    pub tidegate_staging_fs: String,
    pub disk: Vec<Result<DiskRun, String>>,
    pub s3fs_version: String,
    pub s3fs_tmpdir_fs: String,
    pub ckpt_staging_fs: String,
    pub seaweed_fs: String,
}

/// Everything the section measured; each part fails on its own.
pub struct WriteResults {
    pub setup: WriteSetup,
    pub throughput: Result<Vec<ThroughputCell>, String>,
    pub checkpoint: Result<Vec<CkptCell>, String>,
}

impl WriteResults {
    pub fn all_ok(&self) -> bool {
        self.throughput
            .as_ref()
            .is_ok_and(|c| c.iter().all(|c| c.outcome.is_ok()))
            && self
                .checkpoint
                .as_ref()
                .is_ok_and(|c| c.iter().all(|c| c.outcome.is_ok()))
    }
}

/// Runs the section in `sb`; its servers, mounts and data are gone when
/// it returns.
pub fn run(sb: &mut Sandbox, o: &WriteOptions<'_>) -> Result<WriteResults> {
    if let Some(work_dir) = o.run_dir.parent() {
        remove_stale_mounts(work_dir);
    }
    let dir = o.dir();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut setup = WriteSetup {
        s3fs_version: o.s3fs_bin.as_deref().map(s3fs_version).unwrap_or_default(),
        ..WriteSetup::default()
    };
    let throughput = if o.servers.is_empty() {
        Ok(Vec::new())
    } else {
        let r = run_throughput(sb, o, &dir, &mut setup);
        for &s in o.servers {
            let _ = sb.stop_service(s.service());
        }
        let _ = fs::remove_dir_all(dir.join("ganesha-export"));
        let _ = fs::remove_dir_all(dir.join("tidegate-src"));
        let _ = fs::remove_dir_all(dir.join("tidegate-state"));
        let _ = fs::remove_dir_all(dir.join("tidegate-staging"));
        sandbox::check_interrupted()?;
        if let Err(e) = &r {
            println!("write: throughput part FAILED: {e:#}");
        }
        r.map_err(|e| format!("{e:#}"))
    };
    let checkpoint = {
        let r = run_checkpoint(sb, o, &dir, &mut setup);
        let _ = sb.stop_service("write-tidegate-s3");
        let _ = sb.stop_service(seaweed::SERVICE);
        let _ = fs::remove_dir_all(dir.join("seaweedfs").join("data"));
        let _ = fs::remove_dir_all(dir.join("tidegate-s3-state"));
        let _ = fs::remove_dir_all(dir.join("s3fs-tmp"));
        let _ = fs::remove_file(dir.join("s3fs.passwd"));
        sandbox::check_interrupted()?;
        if let Err(e) = &r {
            println!("write: checkpoint part FAILED: {e:#}");
        }
        r.map_err(|e| format!("{e:#}"))
    };
    Ok(WriteResults {
        setup,
        throughput,
        checkpoint,
    })
}

fn run_throughput(
    sb: &mut Sandbox,
    o: &WriteOptions<'_>,
    dir: &Path,
    setup: &mut WriteSetup,
) -> Result<Vec<ThroughputCell>> {
    let export = dir.join("ganesha-export");
    let source = dir.join("tidegate-src");
    let staging = dir.join("tidegate-staging");
    for d in [&export, &source, &staging] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    setup.ganesha_export = export.display().to_string();
    setup.ganesha_export_fs = fs_type(&export)?;
    setup.tidegate_staging = staging.display().to_string();
    setup.tidegate_staging_fs = fs_type(&staging)?;
    if setup.ganesha_export_fs != setup.tidegate_staging_fs {
        bail!(
            "Ganesha's export {} is on {} but tidegate's staging {} is on {}: not comparable",
            export.display(),
            setup.ganesha_export_fs,
            staging.display(),
            setup.tidegate_staging_fs
        );
    }

    let mut pids = Vec::new();
    for &server in o.servers {
        let log = dir.join(format!("{}.log", server.service()));
        match server {
            WriteServer::Ganesha => ganesha::start_with_access(
                sb,
                server.service(),
                &dir.join("ganesha"),
                &export,
                Access::ReadWrite,
            )?,
            WriteServer::Tidegate => {
                let extra_args = [
                    "--admin".to_owned(),
                    format!("127.0.0.1:{TIDEGATE_DIR_ADMIN_PORT}"),
                    "--staging-dir".to_owned(),
                    staging.display().to_string(),
                ];
                let t = TidegateDir {
                    bin: o.tidegate_bin,
                    source_dir: &source,
                    port: TIDEGATE_DIR_PORT,
                    state_dir: &dir.join("tidegate-state"),
                    workers: o.workers,
                    extra_args: &extra_args,
                };
                servers::start_tidegate_dir(sb, server.service(), &t, &log)?;
            }
        }
        let ready_log = match server {
            WriteServer::Ganesha => ganesha::log_path(&dir.join("ganesha")),
            WriteServer::Tidegate => log,
        };
        wait_ready(sb, server, &ready_log)?;
        if server == WriteServer::Tidegate {
            wait_stats(sb, TIDEGATE_DIR_ADMIN_PORT)?;
        }
        let pid = sb
            .service_mut(server.service())
            .context("service not started")?
            .pid();
        let pid = servers::find_process(pid, server.comm())
            .with_context(|| format!("no process named {} under pid {pid}", server.comm()))?;
        println!(
            "write: {} (pid {pid}) serving {} ({})",
            server.title(),
            match server {
                WriteServer::Ganesha => export.display().to_string(),
                WriteServer::Tidegate =>
                    format!("{}, staging in {}", source.display(), staging.display()),
            },
            setup.ganesha_export_fs
        );
        pids.push((server, pid));
    }

    let mut cells = Vec::new();
    for round in 1..=o.rounds.max(1) {
        sandbox::check_interrupted()?;
        let disk = disk_baseline(&dir.join("disk-baseline.bin"), o.size_bytes);
        match &disk {
            Ok(d) => println!(
                "write: local disk, {} MiB write + fsync on {}: {:.0} MiB/s ({:.2}s)",
                o.size_bytes >> 20,
                setup.ganesha_export_fs,
                d.mib_per_s,
                d.secs
            ),
            Err(e) => println!("write: local disk baseline FAILED: {e:#}"),
        }
        setup.disk.push(disk.map_err(|e| format!("{e:#}")));
        let mut order = pids.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for (server, pid) in order {
            sandbox::check_interrupted()?;
            print!(
                "write: round {round}: {} MiB sequential write through {} ... ",
                o.size_bytes >> 20,
                server.title()
            );
            let _ = std::io::stdout().flush();
            let outcome = seq_write_run(sb, o, server, pid, round, dir, setup);
            match &outcome {
                Ok(r) => println!(
                    "{:.0} MiB/s (fio I/O phase), fio {:.2}s in all, COMMIT after it {:.3}s, {:.0} MiB/s start to stable, {:.2} CPU s/GiB; cores {:.0}% busy before{}",
                    r.m.stats.mib_per_s(),
                    r.fio_wall_secs,
                    r.commit_secs,
                    r.stable_mib_per_s(),
                    r.cpu_secs_per_gib(),
                    r.background_busy * 100.0,
                    r.upload.map_or(String::new(), |u| format!(
                        "; upload {:.2}s after COMMIT",
                        u.secs
                    ))
                ),
                Err(e) => {
                    sandbox::check_interrupted()?;
                    println!("FAILED: {e:#}");
                }
            }
            cells.push(ThroughputCell {
                server,
                round,
                outcome: outcome.map_err(|e| format!("{e:#}")),
            });
            sync_all();
        }
    }
    Ok(cells)
}

fn wait_ready(sb: &mut Sandbox, server: WriteServer, log: &Path) -> Result<()> {
    // The export is empty: wait until the root can be listed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sb.service_mut(server.service())
            .context("service not started")?
            .check_alive()
            .map_err(|e| {
                anyhow!(
                    "{e:#}; last lines of {}:\n{}",
                    log.display(),
                    sandbox::log_tail(log, 20)
                )
            })?;
        match Nfs::connect(sb, server) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "{} not ready within 60s; last lines of {}:\n{}",
                    server.title(),
                    log.display(),
                    sandbox::log_tail(log, 20)
                )))
            }
            Err(_) => sandbox::sleep_interruptible(Duration::from_millis(250))?,
        }
    }
}

/// Writes `size` bytes to `path` and fsyncs it; the file is removed.
fn disk_baseline(path: &Path, size: u64) -> Result<DiskRun> {
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    let _ = fs::remove_file(path);
    sync_all();
    Ok(DiskRun {
        secs,
        mib_per_s: size as f64 / MIB_BYTES / secs,
    })
}

fn seq_write_run(
    sb: &mut Sandbox,
    o: &WriteOptions<'_>,
    server: WriteServer,
    pid: u32,
    round: u32,
    dir: &Path,
    setup: &mut WriteSetup,
) -> Result<SeqWriteRun> {
    let alive = |sb: &mut Sandbox| {
        sb.service_mut(server.service())
            .context("service not started")?
            .check_alive()
    };
    alive(sb)?;
    let name = format!("seq-write-{round}.bin");
    let mut nfs = Nfs::connect(sb, server)?;
    if nfs.lookup(&name)?.is_some() {
        bail!("{name} exists before the run: the write would not be to a new file");
    }
    let stats_before = match server {
        WriteServer::Tidegate => Some(fetch_stats(sb, TIDEGATE_DIR_ADMIN_PORT)?),
        WriteServer::Ganesha => None,
    };
    let out = dir.join(format!("fio-seq-write-{}-{round}.json", server.name()));
    let url = server.url();
    let w = SeqWrite {
        fio: o.fio,
        url: &url,
        file_name: &name,
        size_bytes: o.size_bytes,
        iodepth: IODEPTH,
    };
    let background_busy = background_busy()?;
    let cpu0 = crate::cpu_secs(pid)?;
    let m0 = MachineCpu::sample()?;
    let t_fio = Instant::now();
    let (m, version) = w.run(sb, &out, WRITE_TIMEOUT)?;
    let fio_wall_secs = t_fio.elapsed().as_secs_f64();
    let m1 = MachineCpu::sample()?;
    let cpu1 = crate::cpu_secs(pid)?;
    setup.fio_version = version;
    let fh = nfs
        .lookup(&name)?
        .with_context(|| format!("{name} missing after fio wrote it"))?;
    let t = Instant::now();
    nfs.commit(&fh)?;
    let commit_secs = t.elapsed().as_secs_f64();
    let cpu2 = crate::cpu_secs(pid)?;
    let size = nfs.size_of(&fh)?;
    ensure!(
        size == o.size_bytes,
        "{name} has {size} bytes after the COMMIT, expected {}",
        o.size_bytes
    );
    let upload = match stats_before {
        Some(before) => {
            let s = wait_drained(sb, TIDEGATE_DIR_ADMIN_PORT, before, 1)?;
            let secs = t.elapsed().as_secs_f64() - commit_secs;
            Some(UploadDrain {
                secs,
                objects: s.objects_total - before.objects_total,
                bytes: s.bytes_total - before.bytes_total,
                cpu_secs: crate::cpu_secs(pid)? - cpu2,
            })
        }
        None => None,
    };
    nfs.remove(&name)?;
    if let Some(before) = stats_before {
        wait_drained(sb, TIDEGATE_DIR_ADMIN_PORT, before, 0)?;
    }
    alive(sb)?;
    let (machine_busy, machine_iowait) = m1.since(m0);
    Ok(SeqWriteRun {
        fio_cpu_percent: fio_cpu_percent(&out),
        m,
        fio_wall_secs,
        commit_secs,
        cpu_write_secs: cpu1 - cpu0,
        cpu_commit_secs: cpu2 - cpu1,
        machine_busy,
        machine_iowait,
        background_busy,
        jukebox: nfs.jukebox,
        upload,
    })
}

// --------------------------------------------------------- checkpoint ----

/// An object the poller saw in the bucket, with the same size throughout
/// `first_secs..=last_secs` (seconds since the writer started).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub key: String,
    pub size: u64,
    pub first_secs: f64,
    pub last_secs: f64,
}

/// One checkpoint save.
#[derive(Debug, Clone)]
pub struct CkptRun {
    pub tmp_key: String,
    pub final_key: String,
    /// Seconds since the writer started: the writer (fio; dd including
    /// its fsync) done, the COMMIT answered (tidegate), the rename done.
    pub write_secs: f64,
    pub commit_secs: Option<f64>,
    pub rename_secs: f64,
    /// The final object whole (HEAD): first poll that saw it.
    pub whole_secs: f64,
    /// Whole, the temporary gone from the listing, nothing pending, and
    /// the rename returned to the writer.
    pub done_secs: f64,
    pub seen: Vec<Seen>,
    pub polls: u32,
    /// fio's write-side numbers (tidegate).
    pub fio: Option<Measured>,
    pub fio_cpu_percent: Option<f64>,
    /// CPU seconds of the NFS server or FUSE daemon, and of SeaweedFS,
    /// from the writer's start to done.
    pub server_cpu_secs: f64,
    pub store_cpu_secs: f64,
    /// Busy and iowait shares of all cores over the same time.
    pub machine_busy: f64,
    pub machine_iowait: f64,
    /// Busy share of all cores in the second before the run: other work.
    pub background_busy: f64,
    /// S3 requests SeaweedFS counted meanwhile, by type.
    pub s3_requests: Vec<(String, u64)>,
    /// tidegate's uploaded objects and bytes meanwhile.
    pub uploaded: Option<(u64, u64)>,
    pub jukebox: u32,
}

impl CkptRun {
    /// A temporary object was visible in the bucket.
    pub fn tmp_seen(&self) -> bool {
        self.seen.iter().any(|s| s.key == self.tmp_key)
    }

    /// The final key was visible with a size other than the whole.
    pub fn partial_seen(&self, size: u64) -> bool {
        self.seen
            .iter()
            .any(|s| s.key == self.final_key && s.size != size)
    }

    /// What the bucket showed, e.g. `ckpt-1.tmp 0 B 0.0-2.1s; ...`.
    pub fn seen_text(&self) -> String {
        if self.seen.is_empty() {
            return "nothing".to_owned();
        }
        self.seen
            .iter()
            .map(|s| {
                format!(
                    "{} {} at {:.2}-{:.2}s",
                    s.key,
                    size_text(s.size),
                    s.first_secs,
                    s.last_secs
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

pub struct CkptCell {
    pub peer: CkptPeer,
    pub round: u32,
    pub outcome: Result<CkptRun, String>,
}

/// What the bucket poller returns.
#[derive(Default)]
struct Polled {
    seen: Vec<Seen>,
    whole_secs: Option<f64>,
    done_secs: Option<f64>,
    polls: u32,
    last_error: Option<String>,
    last_stats: Option<UploadStats>,
}

struct PollSpec<'a> {
    target: S3Target,
    bucket: &'a str,
    tmp_key: &'a str,
    final_key: &'a str,
    size: u64,
    admin_port: Option<u16>,
    t0: Instant,
    deadline: Instant,
}

/// Lists the bucket and HEADs the final key every [`POLL_INTERVAL`] until
/// the checkpoint is done or `stop` is set or the deadline passes. Runs
/// inside the namespace.
fn poll_bucket(spec: &PollSpec<'_>, stop: &AtomicBool) -> Polled {
    let mut p = Polled::default();
    let mut c = S3Client::new(spec.target.clone());
    loop {
        let at = spec.t0.elapsed().as_secs_f64();
        p.polls += 1;
        let step = (|| -> Result<bool> {
            let objects = c.list_objects(spec.bucket, "", LIST_PAGES_MAX)?;
            for (key, size) in &objects {
                if key == seaweed::Seaweed::probe_key() {
                    continue;
                }
                match p
                    .seen
                    .iter_mut()
                    .rev()
                    .find(|s| &s.key == key && s.size == *size)
                {
                    Some(s) => s.last_secs = at,
                    None => p.seen.push(Seen {
                        key: key.clone(),
                        size: *size,
                        first_secs: at,
                        last_secs: at,
                    }),
                }
            }
            let head = c.head(spec.bucket, spec.final_key)?;
            if head == Some(spec.size) && p.whole_secs.is_none() {
                p.whole_secs = Some(spec.t0.elapsed().as_secs_f64());
            }
            let tmp_listed = objects.iter().any(|(k, _)| k == spec.tmp_key);
            let final_listed = objects
                .iter()
                .any(|(k, s)| k == spec.final_key && *s == spec.size);
            let idle = match spec.admin_port {
                Some(port) => {
                    let s = UploadStats::fetch(port)?;
                    p.last_stats = Some(s);
                    s.pending_keys == 0
                }
                None => true,
            };
            Ok(p.whole_secs.is_some() && final_listed && !tmp_listed && idle)
        })();
        match step {
            Ok(true) => {
                p.done_secs = Some(spec.t0.elapsed().as_secs_f64());
                return p;
            }
            Ok(false) => {}
            Err(e) => p.last_error = Some(format!("{e:#}")),
        }
        if stop.load(Ordering::SeqCst) || sandbox::interrupted() || Instant::now() >= spec.deadline
        {
            return p;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// s3fs mounted on a folder, run as a child in the namespace's network;
/// unmounted and stopped on drop (the suite's [`FuseMount`]).
struct S3fsMount(FuseMount);

impl S3fsMount {
    #[allow(clippy::too_many_arguments)]
    fn start(
        sb: &Sandbox,
        bin: &Path,
        bucket: &str,
        mnt: &Path,
        passwd: &Path,
        tmpdir: &Path,
        sw: &Seaweed,
        log: &Path,
    ) -> Result<Self> {
        fs::create_dir_all(mnt).with_context(|| format!("create {}", mnt.display()))?;
        let mnt = fs::canonicalize(mnt)?;
        let mut cmd = sb.command_net_only(bin);
        cmd.arg(bucket)
            .arg(&mnt)
            .arg("-f")
            .args(["-o", &format!("url={}", sw.target.endpoint())])
            .args(["-o", "use_path_request_style"])
            .args(["-o", &format!("passwd_file={}", passwd.display())])
            .args(["-o", &format!("tmpdir={}", tmpdir.display())])
            .args(["-o", &format!("endpoint={}", sw.target.region)])
            .args(["-o", "dbglevel=warn"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWSACCESSKEYID")
            .env_remove("AWSSECRETACCESSKEY");
        FuseMount::start(cmd, &mnt, log, "s3fs").map(S3fsMount)
    }

    fn pid(&self) -> Option<u32> {
        Some(self.0.pid)
    }

    fn check_alive(&mut self) -> Result<()> {
        self.0.check_alive()
    }

    /// Unmounts cleanly (`fusermount -u`) and waits for s3fs to exit.
    fn unmount(self) -> Result<()> {
        self.0.unmount()
    }
}

/// Detaches s3fs mounts that an earlier run under `work_dir` left behind
/// (a harness killed with SIGKILL cannot unmount).
fn remove_stale_mounts(work_dir: &Path) {
    let Ok(work_dir) = fs::canonicalize(work_dir) else {
        return;
    };
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mnt), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else {
            continue;
        };
        let mnt = Path::new(mnt);
        if *fstype == "fuse.s3fs" && mnt.starts_with(&work_dir) && mnt.ends_with("write/s3fs-mnt") {
            eprintln!("write: detaching stale s3fs mount {}", mnt.display());
            let _ = Command::new("umount")
                .arg("-l")
                .arg(mnt)
                .stdin(Stdio::null())
                .status();
        }
    }
}

fn s3fs_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Runs `cmd` (its own process group) to completion within `timeout`.
fn run_bounded(mut cmd: Command, what: &str, timeout: Duration) -> Result<()> {
    cmd.stdin(Stdio::null()).process_group(0);
    let shown = sandbox::describe(&cmd);
    let mut child = cmd.spawn().with_context(|| format!("start {shown}"))?;
    let status = sandbox::wait_child(&mut child, what, timeout)?;
    ensure!(status.success(), "{shown} failed ({status})");
    Ok(())
}

fn run_checkpoint(
    sb: &mut Sandbox,
    o: &WriteOptions<'_>,
    dir: &Path,
    setup: &mut WriteSetup,
) -> Result<Vec<CkptCell>> {
    let store_dir = dir.join("seaweedfs");
    let weed = seaweed::weed_bin()?;
    let t = Instant::now();
    let sw = Seaweed::start(sb, &weed, &store_dir, TIDEGATE_BUCKET)?;
    let target = sw.target.clone();
    sb.in_netns(|| S3Client::new(target.clone()).create_bucket(S3FS_BUCKET))
        .context("create the s3fs bucket")?;
    setup.seaweed_fs = fs_type(&store_dir)?;
    println!(
        "write: SeaweedFS ready in {:.1}s (S3 on 127.0.0.1:{}, data on {}); buckets {TIDEGATE_BUCKET}, {S3FS_BUCKET}",
        t.elapsed().as_secs_f64(),
        seaweed::S3_PORT,
        setup.seaweed_fs
    );
    let weed_pid = sb
        .service_mut(seaweed::SERVICE)
        .map(|s| s.pid())
        .and_then(|p| servers::find_process(p, "weed"))
        .context("no weed process")?;

    // tidegate over its bucket.
    let state = dir.join("tidegate-s3-state");
    let extra_args = [
        "--admin".to_owned(),
        format!("127.0.0.1:{TIDEGATE_S3_ADMIN_PORT}"),
        "--upload-delay".to_owned(),
        o.ckpt_upload_delay.to_owned(),
    ];
    let t = TidegateS3 {
        bin: o.tidegate_bin,
        bucket: TIDEGATE_BUCKET,
        port: TIDEGATE_S3_PORT,
        state_dir: &state,
        workers: o.workers,
        extra_args: &extra_args,
        wrapper: &[],
        env: &[],
    };
    let tg_log = dir.join("write-tidegate-s3.log");
    servers::start_tidegate_s3(sb, "write-tidegate-s3", &t, &sw, &tg_log)?;
    servers::wait_nfs_ready(sb, "write-tidegate-s3", TIDEGATE_S3_PORT, "", &tg_log)?;
    wait_stats(sb, TIDEGATE_S3_ADMIN_PORT)?;
    let tg_pid = sb
        .service_mut("write-tidegate-s3")
        .map(|s| s.pid())
        .and_then(|p| servers::find_process(p, "tidegate"))
        .context("no tidegate process")?;
    // Its staging is the default, STATE_DIR/staging.
    setup.ckpt_staging_fs = fs_type(&state)?;
    println!(
        "write: tidegate (pid {tg_pid}) serving s3://{TIDEGATE_BUCKET} with --upload-delay {}, staging in {} ({})",
        o.ckpt_upload_delay,
        state.join("staging").display(),
        setup.ckpt_staging_fs
    );

    // s3fs over the other bucket.
    let mut s3fs = match &o.s3fs_bin {
        Some(bin) => {
            let passwd = dir.join("s3fs.passwd");
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&passwd)
                    .with_context(|| format!("create {}", passwd.display()))?;
                writeln!(
                    f,
                    "{}:{}",
                    sw.target.access_key_id, sw.target.secret_access_key
                )?;
            }
            let tmpdir = dir.join("s3fs-tmp");
            fs::create_dir_all(&tmpdir)?;
            setup.s3fs_tmpdir_fs = fs_type(&tmpdir)?;
            let m = S3fsMount::start(
                sb,
                bin,
                S3FS_BUCKET,
                &dir.join("s3fs-mnt"),
                &passwd,
                &tmpdir,
                &sw,
                &dir.join("s3fs.log"),
            )?;
            println!(
                "write: s3fs (pid {}) mounted s3://{S3FS_BUCKET} on {} (temporary files in {}, {})",
                m.pid().unwrap_or(0),
                m.0.mnt.display(),
                tmpdir.display(),
                setup.s3fs_tmpdir_fs
            );
            Some(m)
        }
        None => None,
    };

    let mut cells = Vec::new();
    let mut peers = vec![CkptPeer::Tidegate];
    if s3fs.is_some() {
        peers.push(CkptPeer::S3fs);
    }
    let mut n = 0;
    for round in 1..=o.rounds.max(1) {
        let mut order = peers.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for peer in order {
            sandbox::check_interrupted()?;
            n += 1;
            let tmp_key = format!("ckpt-{n}.tmp");
            let final_key = format!("ckpt-{n}");
            print!(
                "write: round {round}: {} saves a {} MiB checkpoint ({tmp_key} -> {final_key}) ... ",
                peer.name(),
                o.size_bytes >> 20
            );
            let _ = std::io::stdout().flush();
            let ctx = CkptCtx {
                sw: &sw,
                weed_pid,
                tidegate_pid: tg_pid,
                tmp_key: &tmp_key,
                final_key: &final_key,
                dir,
                n,
            };
            let outcome = match peer {
                CkptPeer::Tidegate => ckpt_tidegate(sb, o, &ctx),
                CkptPeer::S3fs => match s3fs.as_mut() {
                    Some(m) => ckpt_s3fs(sb, o, &ctx, m),
                    None => Err(anyhow!("s3fs not mounted")),
                },
            };
            match &outcome {
                Ok(r) => println!(
                    "whole in S3 at {:.2}s, done at {:.2}s (written {:.2}s, renamed {:.2}s); bucket showed: {}",
                    r.whole_secs,
                    r.done_secs,
                    r.write_secs,
                    r.rename_secs,
                    r.seen_text()
                ),
                Err(e) => {
                    sandbox::check_interrupted()?;
                    println!("FAILED: {e:#}");
                }
            }
            cells.push(CkptCell {
                peer,
                round,
                outcome: outcome.map_err(|e| format!("{e:#}")),
            });
            // Free the store between runs; the next run's names are new.
            let cleanup = match peer {
                CkptPeer::Tidegate => ckpt_cleanup_tidegate(sb, &final_key, &tmp_key),
                CkptPeer::S3fs => {
                    let mnt = s3fs.as_ref().map(|m| m.0.mnt.clone());
                    match mnt {
                        Some(mnt) => {
                            let _ = fs::remove_file(mnt.join(&tmp_key));
                            fs::remove_file(mnt.join(&final_key))
                                .or_else(|e| {
                                    if e.kind() == std::io::ErrorKind::NotFound {
                                        Ok(())
                                    } else {
                                        Err(e)
                                    }
                                })
                                .context("remove the checkpoint through s3fs")
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = cleanup {
                println!("write: cleanup after {} FAILED: {e:#}", peer.name());
            }
            sync_all();
        }
    }
    if let Some(m) = s3fs.take() {
        m.unmount().context("unmount s3fs")?;
    }
    Ok(cells)
}

struct CkptCtx<'a> {
    sw: &'a Seaweed,
    weed_pid: u32,
    tidegate_pid: u32,
    tmp_key: &'a str,
    final_key: &'a str,
    dir: &'a Path,
    n: u32,
}

/// What every checkpoint run samples before and after.
struct Before {
    background_busy: f64,
    server_cpu: f64,
    store_cpu: f64,
    machine: MachineCpu,
    requests: Vec<(String, u64)>,
}

impl Before {
    fn take(sb: &Sandbox, server_pid: u32, store_pid: u32) -> Result<Self> {
        Ok(Self {
            background_busy: background_busy()?,
            server_cpu: crate::cpu_secs(server_pid)?,
            store_cpu: crate::cpu_secs(store_pid)?,
            machine: MachineCpu::sample()?,
            requests: sb.in_netns(seaweed::s3_request_counts)?,
        })
    }
}

fn request_delta(a: &[(String, u64)], b: &[(String, u64)]) -> Vec<(String, u64)> {
    b.iter()
        .map(|(k, n)| (k.clone(), n.saturating_sub(seaweed::count_of(a, k))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The writer's moments, in seconds since it started.
#[derive(Debug, Clone, Copy)]
struct Marks {
    /// The writer done (fio; dd with its fsync).
    write_secs: f64,
    /// The COMMIT answered (tidegate).
    commit_secs: Option<f64>,
    rename_secs: f64,
}

/// Runs `writer` while the bucket poller watches; returns the writer's
/// marks and the poller's view.
fn with_poller(
    sb: &Sandbox,
    spec: PollSpec<'_>,
    writer: impl FnOnce() -> Result<Marks>,
) -> Result<(Marks, Polled)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let poller = scope.spawn(|| sb.in_netns(|| Ok(poll_bucket(&spec, &stop))));
        let marks = writer();
        if marks.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        let polled = poller
            .join()
            .map_err(|_| anyhow!("bucket poller panicked"))??;
        Ok((marks?, polled))
    })
}

fn ckpt_tidegate(sb: &mut Sandbox, o: &WriteOptions<'_>, c: &CkptCtx<'_>) -> Result<CkptRun> {
    sb.service_mut("write-tidegate-s3")
        .context("tidegate not started")?
        .check_alive()?;
    let mut nfs = sb.in_netns(|| Nfs::tidegate(TIDEGATE_S3_PORT))?;
    for name in [c.tmp_key, c.final_key] {
        ensure!(nfs.lookup(name)?.is_none(), "{name} exists before the run");
    }
    let stats0 = fetch_stats(sb, TIDEGATE_S3_ADMIN_PORT)?;
    ensure!(
        stats0.pending_keys == 0,
        "tidegate has uploads pending before the run: {stats0:?}"
    );
    let before = Before::take(sb, c.tidegate_pid, c.weed_pid)?;
    let url = format!(
        "{}&auto-traverse-mounts=0",
        nfs3::libnfs_url(TIDEGATE_S3_PORT)
    );
    let out = c.dir.join(format!("fio-ckpt-tidegate-{}.json", c.n));
    let t0 = Instant::now();
    let spec = PollSpec {
        target: c.sw.target.clone(),
        bucket: TIDEGATE_BUCKET,
        tmp_key: c.tmp_key,
        final_key: c.final_key,
        size: o.size_bytes,
        admin_port: Some(TIDEGATE_S3_ADMIN_PORT),
        t0,
        deadline: t0 + WRITE_TIMEOUT + DRAIN_TIMEOUT,
    };
    let shared: &Sandbox = sb;
    let mut fio_m = None;
    let (marks, polled) = with_poller(shared, spec, || {
        let w = SeqWrite {
            fio: o.fio,
            url: &url,
            file_name: c.tmp_key,
            size_bytes: o.size_bytes,
            iodepth: IODEPTH,
        };
        let (m, _) = w.run(shared, &out, WRITE_TIMEOUT)?;
        fio_m = Some(m);
        let write_secs = t0.elapsed().as_secs_f64();
        let fh = nfs
            .lookup(c.tmp_key)?
            .with_context(|| format!("{} missing after fio wrote it", c.tmp_key))?;
        nfs.commit(&fh)?;
        let commit_secs = t0.elapsed().as_secs_f64();
        nfs.rename(c.tmp_key, c.final_key)?;
        let rename_secs = t0.elapsed().as_secs_f64();
        Ok(Marks {
            write_secs,
            commit_secs: Some(commit_secs),
            rename_secs,
        })
    })?;
    let server_cpu = crate::cpu_secs(c.tidegate_pid)? - before.server_cpu;
    finish_common(
        sb,
        c,
        before,
        polled,
        marks,
        fio_m,
        fio_cpu_percent(&out),
        nfs.jukebox,
        Some(stats0),
        server_cpu,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish_common(
    sb: &mut Sandbox,
    c: &CkptCtx<'_>,
    before: Before,
    polled: Polled,
    marks: Marks,
    fio: Option<Measured>,
    fio_cpu_percent: Option<f64>,
    jukebox: u32,
    stats0: Option<UploadStats>,
    server_cpu_secs: f64,
) -> Result<CkptRun> {
    let Marks {
        write_secs,
        commit_secs,
        rename_secs,
    } = marks;
    // Done means the writer is done too: s3fs's mv may return a moment
    // after the poller saw the copy and the delete.
    let polled_done = polled.done_secs.map(|d| d.max(rename_secs));
    let machine = MachineCpu::sample()?;
    let store_cpu_secs = crate::cpu_secs(c.weed_pid)? - before.store_cpu;
    let requests = sb.in_netns(seaweed::s3_request_counts)?;
    let (Some(whole_secs), Some(done_secs)) = (polled.whole_secs, polled_done) else {
        bail!(
            "{} not whole in S3 with {} gone within {}s after the rename (whole: {:?}; \
             last poll error: {}; last /stats: {:?}; bucket showed: {})",
            c.final_key,
            c.tmp_key,
            DRAIN_TIMEOUT.as_secs(),
            polled.whole_secs,
            polled.last_error.as_deref().unwrap_or("none"),
            polled.last_stats,
            CkptRun {
                tmp_key: c.tmp_key.to_owned(),
                final_key: c.final_key.to_owned(),
                write_secs,
                commit_secs,
                rename_secs,
                whole_secs: 0.0,
                done_secs: 0.0,
                seen: polled.seen.clone(),
                polls: polled.polls,
                fio: None,
                fio_cpu_percent: None,
                server_cpu_secs: 0.0,
                store_cpu_secs: 0.0,
                machine_busy: 0.0,
                machine_iowait: 0.0,
                background_busy: 0.0,
                s3_requests: Vec::new(),
                uploaded: None,
                jukebox,
            }
            .seen_text()
        );
    };
    let uploaded = match stats0 {
        Some(s0) => {
            let s = fetch_stats(sb, TIDEGATE_S3_ADMIN_PORT)?;
            Some((
                s.objects_total - s0.objects_total,
                s.bytes_total - s0.bytes_total,
            ))
        }
        None => None,
    };
    let (machine_busy, machine_iowait) = machine.since(before.machine);
    Ok(CkptRun {
        tmp_key: c.tmp_key.to_owned(),
        final_key: c.final_key.to_owned(),
        write_secs,
        commit_secs,
        rename_secs,
        whole_secs,
        done_secs,
        seen: polled.seen,
        polls: polled.polls,
        fio,
        fio_cpu_percent,
        server_cpu_secs,
        store_cpu_secs,
        machine_busy,
        machine_iowait,
        background_busy: before.background_busy,
        s3_requests: request_delta(&before.requests, &requests),
        uploaded,
        jukebox,
    })
}

fn ckpt_s3fs(
    sb: &mut Sandbox,
    o: &WriteOptions<'_>,
    c: &CkptCtx<'_>,
    m: &mut S3fsMount,
) -> Result<CkptRun> {
    m.check_alive()?;
    let pid = m.pid().context("s3fs not running")?;
    let tmp = m.0.mnt.join(c.tmp_key);
    let fin = m.0.mnt.join(c.final_key);
    for p in [&tmp, &fin] {
        ensure!(!p.exists(), "{} exists before the run", p.display());
    }
    let size_mib = o.size_bytes >> 20;
    ensure!(
        size_mib << 20 == o.size_bytes,
        "the checkpoint size must be whole MiB"
    );
    let before = Before::take(sb, pid, c.weed_pid)?;
    let t0 = Instant::now();
    let spec = PollSpec {
        target: c.sw.target.clone(),
        bucket: S3FS_BUCKET,
        tmp_key: c.tmp_key,
        final_key: c.final_key,
        size: o.size_bytes,
        admin_port: None,
        t0,
        deadline: t0 + WRITE_TIMEOUT + DRAIN_TIMEOUT,
    };
    let shared: &Sandbox = sb;
    let (marks, polled) = with_poller(shared, spec, || {
        let mut dd = Command::new("dd");
        dd.arg(format!("if={}", o.data_file.display()))
            .arg(format!("of={}", tmp.display()))
            .args([
                "bs=1M",
                &format!("count={size_mib}"),
                "conv=fsync",
                "status=none",
            ]);
        run_bounded(dd, "dd into the s3fs mount", WRITE_TIMEOUT)?;
        let write_secs = t0.elapsed().as_secs_f64();
        let mut mv = Command::new("mv");
        mv.arg(&tmp).arg(&fin);
        run_bounded(mv, "mv in the s3fs mount", WRITE_TIMEOUT)?;
        let rename_secs = t0.elapsed().as_secs_f64();
        Ok(Marks {
            write_secs,
            commit_secs: None,
            rename_secs,
        })
    })?;
    let server_cpu = crate::cpu_secs(pid)? - before.server_cpu;
    m.check_alive()?;
    finish_common(
        sb, c, before, polled, marks, None, None, 0, None, server_cpu,
    )
}

/// Removes the checkpoint through tidegate and waits until the deletes
/// are done in S3.
fn ckpt_cleanup_tidegate(sb: &Sandbox, final_key: &str, tmp_key: &str) -> Result<()> {
    let mut nfs = sb.in_netns(|| Nfs::tidegate(TIDEGATE_S3_PORT))?;
    for name in [final_key, tmp_key] {
        if nfs.lookup(name)?.is_some() {
            nfs.remove(name)?;
        }
    }
    let s = fetch_stats(sb, TIDEGATE_S3_ADMIN_PORT)?;
    wait_drained(sb, TIDEGATE_S3_ADMIN_PORT, s, 0).map(|_| ())
}

// ------------------------------------------------------------ reports ----

type TpGet = fn(&SeqWriteRun) -> Option<f64>;
type TpMetric = (&'static str, TpGet, usize);

const TP_METRICS: [TpMetric; 10] = [
    ("fio MiB/s (I/O phase)", |r| Some(r.m.stats.mib_per_s()), 1),
    ("  clat p50 (us)", |r| Some(r.m.stats.clat_us_p50), 0),
    ("  clat p99 (us)", |r| Some(r.m.stats.clat_us_p99), 0),
    ("fio in all, COMMIT incl (s)", |r| Some(r.fio_wall_secs), 2),
    ("COMMIT after it (s)", |r| Some(r.commit_secs), 3),
    ("MiB/s start to stable", |r| Some(r.stable_mib_per_s()), 1),
    ("server CPU s/GiB", |r| Some(r.cpu_secs_per_gib()), 2),
    ("fio CPU (% of a core)", |r| r.fio_cpu_percent, 0),
    ("all cores busy (%)", |r| Some(r.machine_busy * 100.0), 0),
    (
        "  busy before the run (%)",
        |r| Some(r.background_busy * 100.0),
        0,
    ),
];

fn tp_median(
    cells: &[ThroughputCell],
    server: WriteServer,
    get: fn(&SeqWriteRun) -> Option<f64>,
) -> Option<f64> {
    median(
        cells
            .iter()
            .filter(|c| c.server == server)
            .filter_map(|c| c.outcome.as_ref().ok())
            .filter_map(get)
            .collect(),
    )
}

type CkMetric = (&'static str, fn(&CkptRun) -> Option<f64>, usize);

const CK_METRICS: [CkMetric; 10] = [
    ("writer done (s)", |r| Some(r.write_secs), 2),
    ("COMMIT answered (s)", |r| r.commit_secs, 2),
    ("rename done (s)", |r| Some(r.rename_secs), 2),
    ("ckpt whole in S3 (s)", |r| Some(r.whole_secs), 2),
    ("all done (s)", |r| Some(r.done_secs), 2),
    (
        "  after the rename (s)",
        |r| Some(r.done_secs - r.rename_secs),
        2,
    ),
    ("server/daemon CPU (s)", |r| Some(r.server_cpu_secs), 2),
    ("SeaweedFS CPU (s)", |r| Some(r.store_cpu_secs), 2),
    ("all cores busy (%)", |r| Some(r.machine_busy * 100.0), 0),
    (
        "  busy before the run (%)",
        |r| Some(r.background_busy * 100.0),
        0,
    ),
];

fn ck_median(cells: &[CkptCell], peer: CkptPeer, get: fn(&CkptRun) -> Option<f64>) -> Option<f64> {
    median(
        cells
            .iter()
            .filter(|c| c.peer == peer)
            .filter_map(|c| c.outcome.as_ref().ok())
            .filter_map(get)
            .collect(),
    )
}

fn disk_median(setup: &WriteSetup) -> Option<f64> {
    median(
        setup
            .disk
            .iter()
            .filter_map(|d| d.as_ref().ok().map(|d| d.mib_per_s))
            .collect(),
    )
}

/// What bounds a throughput run, judged from medians: the client, the
/// CPUs, the disk, or none of these visibly.
fn tp_bound(cells: &[ThroughputCell], server: WriteServer, disk_mib_per_s: Option<f64>) -> String {
    let mut notes = Vec::new();
    if let Some(f) = tp_median(cells, server, |r| r.fio_cpu_percent) {
        if f >= 85.0 {
            notes.push(format!("client-bound (fio at {f:.0}% of a core)"));
        }
    }
    if let Some(b) = tp_median(cells, server, |r| Some(r.machine_busy)) {
        if b >= 0.85 {
            notes.push(format!(
                "CPU-bound (all cores {:.0}% busy; client and server share them)",
                b * 100.0
            ));
        }
    }
    if let (Some(s), Some(d)) = (
        tp_median(cells, server, |r| Some(r.stable_mib_per_s())),
        disk_mib_per_s,
    ) {
        if s >= 0.8 * d {
            notes.push(format!(
                "disk-bound to stable storage ({:.0}% of the local disk's write + fsync)",
                s / d * 100.0
            ));
        }
    }
    if notes.is_empty() {
        "not visibly client-, CPU- or disk-bound".to_owned()
    } else {
        notes.join("; ")
    }
}

pub fn print_table(o: &WriteOptions<'_>, r: &WriteResults) {
    let s = &r.setup;
    let rounds = o.rounds.max(1);
    println!(
        "Writes: sequential write throughput (NFSv3 in the namespace), then a {} MiB checkpoint saved into S3",
        o.size_bytes >> 20
    );
    match &r.throughput {
        Err(e) => println!("\nthroughput part FAILED: {e}"),
        Ok(cells) if !cells.is_empty() => {
            let fio = if s.fio_version.is_empty() {
                "fio"
            } else {
                &s.fio_version
            };
            println!();
            println!(
                "Sequential write: {fio} nfs engine (libnfs), 1 MiB WRITE UNSTABLE, iodepth {IODEPTH}, one connection, a new {} MiB file per run, COMMIT at close (libnfs) and once more from a raw client; median of {rounds} rounds",
                o.size_bytes >> 20
            );
            println!(
                "Ganesha: FSAL VFS, read-write export {} ({}); tidegate: local directory source, --staging-dir {} ({}), default --upload-delay",
                s.ganesha_export, s.ganesha_export_fs, s.tidegate_staging, s.tidegate_staging_fs
            );
            let disk = disk_median(s);
            if let Some(d) = disk {
                println!(
                    "local disk, same file system: {} MiB write + fsync at {d:.0} MiB/s (median)",
                    o.size_bytes >> 20
                );
            }
            println!();
            let servers: Vec<WriteServer> = o.servers.to_vec();
            let both = servers.len() == 2;
            let mut header = format!("{:<28}", "metric");
            for sv in &servers {
                header.push_str(&format!(" {:>12}", sv.title()));
            }
            if both {
                header.push_str(&format!(" {:>18}", "tidegate/Ganesha"));
            }
            println!("{header}");
            println!("{}", "-".repeat(header.len()));
            for (label, get, decimals) in TP_METRICS {
                let mut line = format!("{label:<28}");
                let mut values = Vec::new();
                for &sv in &servers {
                    let v = tp_median(cells, sv, get);
                    match v {
                        Some(v) => line.push_str(&format!(" {v:>12.decimals$}")),
                        None => line.push_str(&format!(" {:>12}", "-")),
                    }
                    values.push(v);
                }
                if both {
                    let rt = match (values[0], values[1]) {
                        (Some(g), Some(t)) => crate::ratio_text(t, g),
                        _ => "-".to_owned(),
                    };
                    line.push_str(&format!(" {rt:>18}"));
                }
                println!("{line}");
            }
            if servers.contains(&WriteServer::Tidegate) {
                if let Some(u) =
                    tp_median(cells, WriteServer::Tidegate, |r| r.upload.map(|u| u.secs))
                {
                    println!(
                        "tidegate then uploaded each file into its source directory in {u:.2}s after the COMMIT (median; includes --upload-delay 2s), outside the measured write"
                    );
                }
                let jk: u32 = cells
                    .iter()
                    .filter_map(|c| c.outcome.as_ref().ok())
                    .map(|r| r.jukebox)
                    .sum();
                if jk > 0 {
                    println!("NFS3ERR_JUKEBOX answers retried by the raw client: {jk}");
                }
            }
            for &sv in &servers {
                println!("{}: {}", sv.title(), tp_bound(cells, sv, disk));
            }
            if both {
                println!(
                    "ratio > 1 means tidegate is higher: better for MiB/s, worse for latency, COMMIT time and CPU"
                );
            }
            for c in cells {
                if let Err(e) = &c.outcome {
                    println!("{} (round {}): {e}", c.server.title(), c.round);
                }
            }
        }
        Ok(_) => {}
    }
    match &r.checkpoint {
        Err(e) => println!("\ncheckpoint part FAILED: {e}"),
        Ok(cells) => {
            println!();
            println!(
                "Checkpoint save into S3 (SeaweedFS in the namespace): write ckpt-N.tmp, rename to ckpt-N, until ckpt-N is whole in the bucket and ckpt-N.tmp gone; median of {rounds} rounds"
            );
            println!(
                "tidegate: {} nfs engine, 1 MiB WRITE UNSTABLE, iodepth {IODEPTH}, COMMIT at close; then COMMIT and RENAME (raw client); --upload-delay {}; staging on {}",
                if s.fio_version.is_empty() { "fio" } else { &s.fio_version },
                o.ckpt_upload_delay,
                s.ckpt_staging_fs
            );
            println!(
                "s3fs: {}; dd bs=1M conv=fsync from a random file, then mv; temporary files on {}",
                if s.s3fs_version.is_empty() {
                    "?"
                } else {
                    &s.s3fs_version
                },
                s.s3fs_tmpdir_fs
            );
            println!(
                "times are seconds since the writer started; the bucket was listed (and ckpt-N HEADed) every {} ms",
                POLL_INTERVAL.as_millis()
            );
            println!();
            let peers = [CkptPeer::Tidegate, CkptPeer::S3fs];
            let mut header = format!("{:<28}", "metric");
            for p in peers {
                header.push_str(&format!(" {:>12}", p.name()));
            }
            header.push_str(&format!(" {:>16}", "s3fs/tidegate"));
            println!("{header}");
            println!("{}", "-".repeat(header.len()));
            for (label, get, decimals) in CK_METRICS {
                let mut line = format!("{label:<28}");
                let t = ck_median(cells, CkptPeer::Tidegate, get);
                let f = ck_median(cells, CkptPeer::S3fs, get);
                for v in [t, f] {
                    match v {
                        Some(v) => line.push_str(&format!(" {v:>12.decimals$}")),
                        None => line.push_str(&format!(" {:>12}", "-")),
                    }
                }
                let rt = match (t, f) {
                    (Some(t), Some(f)) if t > 0.0 => format!("{:.2}x", f / t),
                    _ => "-".to_owned(),
                };
                line.push_str(&format!(" {rt:>16}"));
                println!("{line}");
            }
            let done = |p| ck_median(cells, p, |r| Some(r.done_secs));
            if let (Some(t), Some(f)) = (done(CkptPeer::Tidegate), done(CkptPeer::S3fs)) {
                println!(
                    "checkpoint whole in S3: tidegate {t:.2}s, s3fs {f:.2}s: s3fs/tidegate = {:.2}x (> 1: tidegate faster)",
                    f / t
                );
            }
            for p in peers {
                let runs: Vec<&CkptRun> = cells
                    .iter()
                    .filter(|c| c.peer == p)
                    .filter_map(|c| c.outcome.as_ref().ok())
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let tmp = runs.iter().filter(|r| r.tmp_seen()).count();
                let partial = runs.iter().filter(|r| r.partial_seen(o.size_bytes)).count();
                println!(
                    "{}: temporary object in the bucket in {tmp} of {} runs, partial final object in {partial}; {}",
                    p.name(),
                    runs.len(),
                    ck_bound(p, &runs, o.size_bytes)
                );
                for r in &runs {
                    println!("  {}: {}", r.final_key, r.seen_text());
                }
                if p == CkptPeer::Tidegate {
                    let up: Vec<String> = runs
                        .iter()
                        .filter_map(|r| r.uploaded)
                        .map(|(n, b)| format!("{n} objects/{} MiB", b >> 20))
                        .collect();
                    println!("  tidegate uploaded per run (/stats): {}", up.join(", "));
                }
                let req: Vec<String> = runs
                    .iter()
                    .map(|r| {
                        r.s3_requests
                            .iter()
                            .map(|(k, n)| format!("{k} {n}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect();
                println!("  S3 requests at SeaweedFS per run: {}", req.join(" | "));
                let jk: u32 = runs.iter().map(|r| r.jukebox).sum();
                if jk > 0 {
                    println!("  NFS3ERR_JUKEBOX answers retried: {jk}");
                }
            }
            for c in cells {
                if let Err(e) = &c.outcome {
                    println!("{} (round {}): {e}", c.peer.name(), c.round);
                }
            }
        }
    }
}

/// What the checkpoint time of `peer` is made of, from medians.
fn ck_bound(peer: CkptPeer, runs: &[&CkptRun], size: u64) -> String {
    let m = |get: fn(&CkptRun) -> f64| median(runs.iter().map(|r| get(r)).collect());
    let (Some(write), Some(done)) = (m(|r| r.write_secs), m(|r| r.done_secs)) else {
        return String::new();
    };
    let mib = size as f64 / MIB_BYTES;
    let mut text = format!(
        "writer {:.0}% of the time ({:.0} MiB/s into the {}), after it {:.2}s",
        write / done * 100.0,
        mib / write.max(1e-9),
        match peer {
            CkptPeer::Tidegate => "staging file",
            CkptPeer::S3fs => "mount, fsync included (s3fs uploads on fsync)",
        },
        done - write
    );
    if let Some(f) = median(runs.iter().filter_map(|r| r.fio_cpu_percent).collect()) {
        text.push_str(&format!("; fio at {f:.0}% of a core"));
        if f >= 85.0 {
            text.push_str(" (client-bound while writing)");
        }
    }
    if let Some(store_cores) = m(|r| r.store_cpu_secs / r.done_secs.max(1e-9)) {
        text.push_str(&format!(
            "; SeaweedFS used {store_cores:.2} cores on average{}",
            if store_cores >= 0.7 {
                " (store-bound: the S3 server's ingest is the limit)"
            } else {
                ""
            }
        ));
    }
    if let Some(b) = m(|r| r.machine_busy) {
        if b >= 0.85 {
            text.push_str(&format!("; CPU-bound (all cores {:.0}% busy)", b * 100.0));
        }
    }
    text
}

pub fn to_json(o: &WriteOptions<'_>, r: &WriteResults) -> Value {
    let s = &r.setup;
    let tp = match &r.throughput {
        Err(e) => object([
            ("ok", Value::Bool(false)),
            ("error", Value::from(e.as_str())),
        ]),
        Ok(cells) => {
            let results = cells
                .iter()
                .map(|c| {
                    let mut m = vec![
                        ("server", Value::from(c.server.name())),
                        ("round", Value::from(u64::from(c.round))),
                    ];
                    match &c.outcome {
                        Ok(w) => {
                            m.push(("ok", Value::Bool(true)));
                            m.extend(w.m.json_members());
                            m.extend([
                                (
                                    "fio_cpu_percent",
                                    w.fio_cpu_percent.map_or(Value::Null, Value::from),
                                ),
                                ("fio_wall_secs", Value::from(w.fio_wall_secs)),
                                ("commit_secs", Value::from(w.commit_secs)),
                                ("stable_mib_per_s", Value::from(w.stable_mib_per_s())),
                                ("background_busy", Value::from(w.background_busy)),
                                ("cpu_write_secs", Value::from(w.cpu_write_secs)),
                                ("cpu_commit_secs", Value::from(w.cpu_commit_secs)),
                                ("cpu_secs_per_gib", Value::from(w.cpu_secs_per_gib())),
                                ("machine_busy", Value::from(w.machine_busy)),
                                ("machine_iowait", Value::from(w.machine_iowait)),
                                ("jukebox", Value::from(u64::from(w.jukebox))),
                            ]);
                            if let Some(u) = w.upload {
                                m.push((
                                    "upload",
                                    object([
                                        ("secs_after_commit", Value::from(u.secs)),
                                        ("objects", Value::from(u.objects)),
                                        ("bytes", Value::from(u.bytes)),
                                        ("cpu_secs", Value::from(u.cpu_secs)),
                                    ]),
                                ));
                            }
                        }
                        Err(e) => m.extend([
                            ("ok", Value::Bool(false)),
                            ("error", Value::from(e.as_str())),
                        ]),
                    }
                    object(m)
                })
                .collect();
            let med = |sv: WriteServer| {
                let metrics: [(&str, TpGet); 8] = [
                    ("mib_per_s", |r: &SeqWriteRun| Some(r.m.stats.mib_per_s())),
                    ("fio_wall_secs", |r: &SeqWriteRun| Some(r.fio_wall_secs)),
                    ("background_busy", |r: &SeqWriteRun| Some(r.background_busy)),
                    ("commit_secs", |r: &SeqWriteRun| Some(r.commit_secs)),
                    ("stable_mib_per_s", |r: &SeqWriteRun| {
                        Some(r.stable_mib_per_s())
                    }),
                    ("cpu_secs_per_gib", |r: &SeqWriteRun| {
                        Some(r.cpu_secs_per_gib())
                    }),
                    ("fio_cpu_percent", |r: &SeqWriteRun| r.fio_cpu_percent),
                    ("machine_busy", |r: &SeqWriteRun| Some(r.machine_busy)),
                ];
                object(metrics.map(|(k, get)| {
                    (
                        k,
                        tp_median(cells, sv, get).map_or(Value::Null, Value::from),
                    )
                }))
            };
            let ratio = |get: fn(&SeqWriteRun) -> Option<f64>| match (
                tp_median(cells, WriteServer::Tidegate, get),
                tp_median(cells, WriteServer::Ganesha, get),
            ) {
                (Some(t), Some(g)) if g > 0.0 => Value::from(t / g),
                _ => Value::Null,
            };
            let disk = disk_median(s);
            object([
                (
                    "params",
                    object([
                        ("size_bytes", Value::from(o.size_bytes)),
                        ("block_bytes", Value::from(1u64 << 20)),
                        ("iodepth", Value::from(u64::from(IODEPTH))),
                        ("rounds", Value::from(u64::from(o.rounds))),
                        ("ganesha_export", Value::from(s.ganesha_export.as_str())),
                        (
                            "ganesha_export_fs",
                            Value::from(s.ganesha_export_fs.as_str()),
                        ),
                        ("tidegate_staging", Value::from(s.tidegate_staging.as_str())),
                        (
                            "tidegate_staging_fs",
                            Value::from(s.tidegate_staging_fs.as_str()),
                        ),
                        ("tidegate_source", Value::from("local directory")),
                    ]),
                ),
                (
                    "disk_write_fsync",
                    Value::Array(
                        s.disk
                            .iter()
                            .map(|d| match d {
                                Ok(d) => object([
                                    ("secs", Value::from(d.secs)),
                                    ("mib_per_s", Value::from(d.mib_per_s)),
                                ]),
                                Err(e) => object([("error", Value::from(e.as_str()))]),
                            })
                            .collect(),
                    ),
                ),
                (
                    "disk_mib_per_s_median",
                    disk.map_or(Value::Null, Value::from),
                ),
                ("results", Value::Array(results)),
                (
                    "medians",
                    object(o.servers.iter().map(|&sv| (sv.name(), med(sv)))),
                ),
                (
                    "ratios_tidegate_over_ganesha",
                    object([
                        ("mib_per_s", ratio(|r| Some(r.m.stats.mib_per_s()))),
                        ("stable_mib_per_s", ratio(|r| Some(r.stable_mib_per_s()))),
                        ("commit_secs", ratio(|r| Some(r.commit_secs))),
                        ("cpu_secs_per_gib", ratio(|r| Some(r.cpu_secs_per_gib()))),
                    ]),
                ),
                (
                    "bound",
                    object(
                        o.servers
                            .iter()
                            .map(|&sv| (sv.name(), Value::from(tp_bound(cells, sv, disk)))),
                    ),
                ),
            ])
        }
    };
    let ck = match &r.checkpoint {
        Err(e) => object([
            ("ok", Value::Bool(false)),
            ("error", Value::from(e.as_str())),
        ]),
        Ok(cells) => {
            let results = cells
                .iter()
                .map(|c| {
                    let mut m = vec![
                        ("peer", Value::from(c.peer.name())),
                        ("round", Value::from(u64::from(c.round))),
                    ];
                    match &c.outcome {
                        Ok(k) => {
                            m.push(("ok", Value::Bool(true)));
                            m.extend([
                                ("tmp_key", Value::from(k.tmp_key.as_str())),
                                ("final_key", Value::from(k.final_key.as_str())),
                                ("write_secs", Value::from(k.write_secs)),
                                (
                                    "commit_secs",
                                    k.commit_secs.map_or(Value::Null, Value::from),
                                ),
                                ("rename_secs", Value::from(k.rename_secs)),
                                ("whole_secs", Value::from(k.whole_secs)),
                                ("done_secs", Value::from(k.done_secs)),
                                ("tmp_seen", Value::Bool(k.tmp_seen())),
                                ("partial_seen", Value::Bool(k.partial_seen(o.size_bytes))),
                                (
                                    "seen",
                                    Value::Array(
                                        k.seen
                                            .iter()
                                            .map(|s| {
                                                object([
                                                    ("key", Value::from(s.key.as_str())),
                                                    ("size", Value::from(s.size)),
                                                    ("first_secs", Value::from(s.first_secs)),
                                                    ("last_secs", Value::from(s.last_secs)),
                                                ])
                                            })
                                            .collect(),
                                    ),
                                ),
                                ("polls", Value::from(u64::from(k.polls))),
                                (
                                    "fio_mib_per_s",
                                    k.fio
                                        .as_ref()
                                        .map_or(Value::Null, |m| Value::from(m.stats.mib_per_s())),
                                ),
                                (
                                    "fio_cpu_percent",
                                    k.fio_cpu_percent.map_or(Value::Null, Value::from),
                                ),
                                ("server_cpu_secs", Value::from(k.server_cpu_secs)),
                                ("store_cpu_secs", Value::from(k.store_cpu_secs)),
                                ("machine_busy", Value::from(k.machine_busy)),
                                ("machine_iowait", Value::from(k.machine_iowait)),
                                ("background_busy", Value::from(k.background_busy)),
                                (
                                    "s3_requests",
                                    object(
                                        k.s3_requests
                                            .iter()
                                            .map(|(t, n)| (t.clone(), Value::from(*n))),
                                    ),
                                ),
                                (
                                    "tidegate_uploaded",
                                    k.uploaded.map_or(Value::Null, |(n, b)| {
                                        object([
                                            ("objects", Value::from(n)),
                                            ("bytes", Value::from(b)),
                                        ])
                                    }),
                                ),
                                ("jukebox", Value::from(u64::from(k.jukebox))),
                            ]);
                        }
                        Err(e) => m.extend([
                            ("ok", Value::Bool(false)),
                            ("error", Value::from(e.as_str())),
                        ]),
                    }
                    object(m)
                })
                .collect();
            let done = |p| ck_median(cells, p, |r| Some(r.done_secs));
            object([
                (
                    "params",
                    object([
                        ("size_bytes", Value::from(o.size_bytes)),
                        ("rounds", Value::from(u64::from(o.rounds))),
                        ("tidegate_upload_delay", Value::from(o.ckpt_upload_delay)),
                        (
                            "tidegate_writer",
                            Value::from(
                                "fio nfs engine, 1 MiB UNSTABLE, iodepth 16, COMMIT at close; raw COMMIT + RENAME",
                            ),
                        ),
                        (
                            "s3fs_writer",
                            Value::from("dd bs=1M conv=fsync from a random file; mv"),
                        ),
                        ("s3fs_version", Value::from(s.s3fs_version.as_str())),
                        (
                            "tidegate_staging_fs",
                            Value::from(s.ckpt_staging_fs.as_str()),
                        ),
                        ("s3fs_tmpdir_fs", Value::from(s.s3fs_tmpdir_fs.as_str())),
                        ("seaweedfs_data_fs", Value::from(s.seaweed_fs.as_str())),
                        (
                            "poll_interval_ms",
                            Value::from(POLL_INTERVAL.as_millis() as u64),
                        ),
                    ]),
                ),
                ("results", Value::Array(results)),
                (
                    "done_secs_median",
                    object(
                        [CkptPeer::Tidegate, CkptPeer::S3fs]
                            .map(|p| (p.name(), done(p).map_or(Value::Null, Value::from))),
                    ),
                ),
                (
                    "ratio_s3fs_over_tidegate_done_secs",
                    match (done(CkptPeer::Tidegate), done(CkptPeer::S3fs)) {
                        (Some(t), Some(f)) if t > 0.0 => Value::from(f / t),
                        _ => Value::Null,
                    },
                ),
            ])
        }
    };
    object([("throughput", tp), ("checkpoint", ck)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_stats_from_stats() {
        let text = r#"{"upload_objects_total": 3, "upload_bytes_total": 1024,
            "upload_failures_total": 0, "upload_pending_files": 1,
            "upload_pending_bytes": 10, "upload_pending_keys": 2,
            "upload_oldest_pending_seconds": 4, "staged_bytes": 10}"#;
        let s = UploadStats::parse(text).unwrap();
        assert_eq!(
            s,
            UploadStats {
                pending_keys: 2,
                pending_files: 1,
                pending_bytes: 10,
                staged_bytes: 10,
                objects_total: 3,
                bytes_total: 1024,
                failures_total: Some(0),
            }
        );
        assert!(UploadStats::parse(r#"{"upload_pending_keys": 1}"#).is_err());
    }

    #[test]
    fn machine_cpu_shares() {
        let a = MachineCpu::parse("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1\n").unwrap();
        let b = MachineCpu::parse("cpu  200 0 200 800 200 0 0 0 0 0\n").unwrap();
        let (busy, iowait) = b.since(a);
        assert!((busy - 0.5).abs() < 1e-9);
        assert!((iowait - 0.25).abs() < 1e-9);
    }

    #[test]
    fn medians_and_names() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        assert_eq!(fs_type_name(0xEF53), "ext4");
        assert_eq!(fs_type_name(0x0102_1994), "tmpfs");
        assert_eq!(fs_type_name(0x1234), "0x1234");
        assert!(!fs_type(Path::new("/")).unwrap().is_empty());
    }

    #[test]
    fn seen_objects() {
        let run = CkptRun {
            tmp_key: "ckpt-1.tmp".into(),
            final_key: "ckpt-1".into(),
            write_secs: 1.0,
            commit_secs: None,
            rename_secs: 2.0,
            whole_secs: 3.0,
            done_secs: 3.0,
            seen: vec![
                Seen {
                    key: "ckpt-1.tmp".into(),
                    size: 0,
                    first_secs: 0.05,
                    last_secs: 1.0,
                },
                Seen {
                    key: "ckpt-1".into(),
                    size: 2 << 20,
                    first_secs: 2.5,
                    last_secs: 3.0,
                },
            ],
            polls: 60,
            fio: None,
            fio_cpu_percent: None,
            server_cpu_secs: 0.0,
            store_cpu_secs: 0.0,
            machine_busy: 0.0,
            machine_iowait: 0.0,
            background_busy: 0.0,
            s3_requests: Vec::new(),
            uploaded: None,
            jukebox: 0,
        };
        assert!(run.tmp_seen());
        assert!(!run.partial_seen(2 << 20));
        assert!(run.partial_seen(1 << 30));
        assert_eq!(
            run.seen_text(),
            "ckpt-1.tmp 0 B at 0.05-1.00s; ckpt-1 2 MiB at 2.50-3.00s"
        );
    }
}
