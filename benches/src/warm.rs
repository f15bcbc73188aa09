//! Warm cache: tidegate with its block cache on, against NFS-Ganesha, both
//! serving the same file from a local directory after it has been read
//! through each.
//!
//! tidegate serves the directory with `--cache <run>/warm/cache.img
//! --cache-size 2GiB --cache-block-size 1MiB` and an admin port. An untimed
//! full sequential read fills its cache; further reads follow until one adds
//! no cache misses (its `GET /stats` says so), so that the timed runs are
//! served from the cache. Ganesha (FSAL VFS) reads through the kernel's page
//! cache, which after one read holds the whole file: Ganesha's best case.
//!
//! Then the timed jobs of the first section ([`fio::JOBS`], the same
//! parameters) run against each server. Besides fio's numbers, each run
//! samples the server when fio's ramp should end and when fio has exited.
//! That window is a little longer than fio's measured one (it opens before
//! fio has started up, forked its job and mounted, about 0.2 s), so rates
//! are taken over the window and applied to fio's measured runtime:
//!
//! - **CPU seconds per GiB**: utime+stime of the server process and all its
//!   threads (`/proc/PID/stat`; for Ganesha `ganesha.nfsd`) per second of
//!   the window, times fio's runtime, divided by the GiB fio read;
//! - for tidegate, the deltas of its `/stats` counters: cache hits and
//!   misses (the hit ratio of the timed runs), the hits its DRAM tier served
//!   without device I/O (`cache_memory_hits_total`), `send_zc_total` and
//!   `send_zc_copied_total` (loopback never does real zero-copy: the kernel
//!   copies and says so, so copied ≈ total is expected here).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::fio::{self, Job, JobParams, Measured, JOBS};
use crate::ganesha;
use crate::json::{self, object, Value};
use crate::nfs3;
use crate::sandbox::{self, Sandbox};
use crate::servers::{self, TidegateDir};

/// tidegate's NFS port in this section (MOUNT and NFS share it).
const TIDEGATE_PORT: u16 = 20493;
/// tidegate's admin port (`GET /stats`).
const ADMIN_PORT: u16 = 20494;
pub const CACHE_SIZE: &str = "2GiB";
pub const CACHE_BLOCK_SIZE: &str = "1MiB";
/// Untimed full reads through tidegate before the cache counts as not
/// holding the file.
const WARM_PASSES_MAX: u32 = 3;
/// Upper bound of one untimed full read.
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// How long tidegate's admin port may take to answer once NFS does.
const ADMIN_READY_TIMEOUT: Duration = Duration::from_secs(30);
const GIB_BYTES: f64 = (1u64 << 30) as f64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WarmServer {
    Ganesha,
    Tidegate,
}

impl WarmServer {
    pub fn name(self) -> &'static str {
        match self {
            WarmServer::Ganesha => "ganesha",
            WarmServer::Tidegate => "tidegate",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            WarmServer::Ganesha => "Ganesha",
            WarmServer::Tidegate => "tidegate",
        }
    }

    fn service(self) -> &'static str {
        match self {
            WarmServer::Ganesha => "warm-ganesha",
            WarmServer::Tidegate => "warm-tidegate",
        }
    }

    /// The process whose CPU time is counted.
    fn comm(self) -> &'static str {
        match self {
            WarmServer::Ganesha => ganesha::NFSD_COMM,
            WarmServer::Tidegate => "tidegate",
        }
    }

    fn url(self) -> String {
        match self {
            WarmServer::Ganesha => ganesha::export_url(),
            WarmServer::Tidegate => nfs3::libnfs_url(TIDEGATE_PORT),
        }
    }

    fn log(self, dir: &Path) -> PathBuf {
        match self {
            WarmServer::Ganesha => ganesha::log_path(dir),
            WarmServer::Tidegate => dir.join("tidegate.log"),
        }
    }
}

pub struct WarmOptions<'a> {
    pub servers: &'a [WarmServer],
    /// The timed jobs' parameters, as in the first section.
    pub jobs: JobParams<'a>,
    pub tidegate_bin: &'a Path,
    pub workers: Option<u32>,
    /// The local directory that holds the test file; both servers export it.
    pub data_dir: &'a Path,
    /// Logs, fio output and the cache file go to `run_dir/warm`.
    pub run_dir: &'a Path,
}

impl WarmOptions<'_> {
    fn dir(&self) -> PathBuf {
        self.run_dir.join("warm")
    }

    pub fn cache_path(&self) -> PathBuf {
        self.dir().join("cache.img")
    }
}

/// tidegate's counters from `GET /stats` that the section reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    pub hits: u64,
    /// Hits served from the DRAM tier without device I/O, when the
    /// gateway counts them (`cache_memory_hits_total`).
    pub memory_hits: Option<u64>,
    pub misses: u64,
    pub send_zc: u64,
    pub send_zc_copied: u64,
}

impl CacheCounters {
    /// Reads the counters from the flat JSON object `/stats` returns.
    pub fn parse(text: &str) -> Result<Self> {
        let doc = json::parse(text.trim()).context("parse tidegate's /stats")?;
        let get = |key: &str| -> Result<u64> {
            doc.get(key)
                .and_then(Value::as_f64)
                .map(|v| v as u64)
                .with_context(|| format!("tidegate's /stats has no number {key:?}"))
        };
        Ok(Self {
            hits: get("cache_hits_total")?,
            memory_hits: get("cache_memory_hits_total").ok(),
            misses: get("cache_misses_total")?,
            send_zc: get("send_zc_total")?,
            send_zc_copied: get("send_zc_copied_total")?,
        })
    }

    /// The counts since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            hits: self.hits.saturating_sub(before.hits),
            memory_hits: zip_with(self.memory_hits, before.memory_hits, u64::saturating_sub),
            misses: self.misses.saturating_sub(before.misses),
            send_zc: self.send_zc.saturating_sub(before.send_zc),
            send_zc_copied: self.send_zc_copied.saturating_sub(before.send_zc_copied),
        }
    }

    /// These counts and `other`'s together.
    pub fn plus(self, other: Self) -> Self {
        Self {
            hits: self.hits + other.hits,
            memory_hits: zip_with(self.memory_hits, other.memory_hits, |a, b| a + b),
            misses: self.misses + other.misses,
            send_zc: self.send_zc + other.send_zc,
            send_zc_copied: self.send_zc_copied + other.send_zc_copied,
        }
    }

    /// Hits over lookups; `None` without lookups.
    pub fn hit_ratio(self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }

    fn fetch(sb: &Sandbox) -> Result<Self> {
        let text = sb.in_netns(|| crate::http_get(ADMIN_PORT, "/stats"))?;
        Self::parse(&text)
    }

    fn to_json(self) -> Value {
        object([
            ("cache_hits", Value::from(self.hits)),
            (
                "cache_memory_hits",
                self.memory_hits.map_or(Value::Null, Value::from),
            ),
            ("cache_misses", Value::from(self.misses)),
            (
                "cache_hit_ratio",
                self.hit_ratio().map_or(Value::Null, Value::from),
            ),
            ("send_zc", Value::from(self.send_zc)),
            ("send_zc_copied", Value::from(self.send_zc_copied)),
        ])
    }
}

fn zip_with(a: Option<u64>, b: Option<u64>, f: fn(u64, u64) -> u64) -> Option<u64> {
    Some(f(a?, b?))
}

/// One timed run of one job against one server.
#[derive(Debug, Clone)]
pub struct WarmRun {
    pub m: Measured,
    /// The server's CPU time (user + system, all threads) between the
    /// samples.
    pub cpu_secs: f64,
    /// Wall time between the samples.
    pub window_secs: f64,
    /// tidegate's counters over the measured window; `None` for Ganesha.
    pub counters: Option<CacheCounters>,
}

impl WarmRun {
    /// CPU seconds the server spent per GiB fio read: its CPU rate over
    /// the sampling window, over fio's measured runtime.
    pub fn cpu_secs_per_gib(&self) -> f64 {
        let runtime_secs = self.m.stats.runtime_ms as f64 / 1000.0;
        let cpu_secs_in_runtime = self.cpu_secs / self.window_secs * runtime_secs;
        cpu_secs_in_runtime / (self.m.stats.io_bytes as f64 / GIB_BYTES)
    }
}

pub struct WarmCell {
    pub job: Job,
    pub server: WarmServer,
    pub outcome: Result<WarmRun, String>,
}

/// What the untimed reads showed.
#[derive(Debug, Clone, Default)]
pub struct WarmSetup {
    /// tidegate's counters over each untimed full read; the last one added
    /// no cache misses.
    pub tidegate_passes: Vec<CacheCounters>,
    pub fio_version: String,
}

/// Runs the section in `sb`. Its servers are stopped, and the cache file
/// removed, before it returns.
pub fn run(sb: &mut Sandbox, o: &WarmOptions<'_>) -> Result<(WarmSetup, Vec<WarmCell>)> {
    let dir = o.dir();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = run_servers(sb, o, &dir);
    for &server in o.servers {
        let _ = sb.stop_service(server.service());
    }
    let _ = fs::remove_file(o.cache_path());
    let _ = fs::remove_dir_all(dir.join("tidegate-state"));
    result
}

fn run_servers(
    sb: &mut Sandbox,
    o: &WarmOptions<'_>,
    dir: &Path,
) -> Result<(WarmSetup, Vec<WarmCell>)> {
    let mut pids = Vec::new();
    for &server in o.servers {
        start(sb, o, server, dir)?;
        let log = server.log(dir);
        servers::wait_listed(sb, server.service(), &server.url(), o.jobs.file_name, &log)?;
        let pid = server_pid(sb, server)?;
        println!(
            "warm: {} (pid {pid}) serving {}",
            server.title(),
            o.data_dir.display()
        );
        pids.push((server, pid));
    }

    let mut setup = WarmSetup::default();
    for &server in o.servers {
        match server {
            WarmServer::Ganesha => {
                let m = read_once(sb, o, server, 1, dir)?;
                println!(
                    "warm: Ganesha untimed read: {} MiB at {:.0} MiB/s (the file is now in the page cache)",
                    m.stats.io_bytes >> 20,
                    m.stats.mib_per_s()
                );
            }
            WarmServer::Tidegate => setup.tidegate_passes = warm_tidegate(sb, o, dir)?,
        }
    }

    let mut cells = Vec::new();
    for &job in JOBS {
        for &(server, pid) in &pids {
            sandbox::check_interrupted()?;
            print!(
                "warm: running {} against {} ({}s + {}s ramp) ... ",
                job.name,
                server.title(),
                o.jobs.runtime_secs,
                o.jobs.ramp_secs
            );
            let _ = std::io::stdout().flush();
            let outcome = timed_run(sb, o, server, pid, job, dir);
            match &outcome {
                Ok((r, version)) => {
                    setup.fio_version.clone_from(version);
                    println!(
                        "{:.1} MiB/s, {:.0} IOPS, {:.2} CPU s/GiB",
                        r.m.stats.mib_per_s(),
                        r.m.stats.iops,
                        r.cpu_secs_per_gib()
                    );
                }
                Err(err) => {
                    sandbox::check_interrupted()?;
                    println!("FAILED: {err:#}");
                }
            }
            cells.push(WarmCell {
                job,
                server,
                outcome: outcome.map(|(r, _)| r).map_err(|e| format!("{e:#}")),
            });
        }
    }
    Ok((setup, cells))
}

fn start(sb: &mut Sandbox, o: &WarmOptions<'_>, server: WarmServer, dir: &Path) -> Result<()> {
    match server {
        WarmServer::Ganesha => ganesha::start(sb, server.service(), dir, o.data_dir),
        WarmServer::Tidegate => {
            let extra_args = [
                "--cache".to_owned(),
                o.cache_path().display().to_string(),
                "--cache-size".to_owned(),
                CACHE_SIZE.to_owned(),
                "--cache-block-size".to_owned(),
                CACHE_BLOCK_SIZE.to_owned(),
                "--admin".to_owned(),
                format!("127.0.0.1:{ADMIN_PORT}"),
            ];
            let t = TidegateDir {
                bin: o.tidegate_bin,
                source_dir: o.data_dir,
                port: TIDEGATE_PORT,
                state_dir: &dir.join("tidegate-state"),
                workers: o.workers,
                extra_args: &extra_args,
            };
            servers::start_tidegate_dir(sb, server.service(), &t, &server.log(dir))
        }
    }
}

fn server_pid(sb: &mut Sandbox, server: WarmServer) -> Result<u32> {
    let pid = sb
        .service_mut(server.service())
        .context("service not started")?
        .pid();
    servers::find_process(pid, server.comm())
        .with_context(|| format!("no process named {} at or under pid {pid}", server.comm()))
}

fn check_alive(sb: &mut Sandbox, server: WarmServer) -> Result<()> {
    sb.service_mut(server.service())
        .context("service not started")?
        .check_alive()
}

/// One untimed full sequential read of the file through `server`.
fn read_once(
    sb: &Sandbox,
    o: &WarmOptions<'_>,
    server: WarmServer,
    pass: u32,
    dir: &Path,
) -> Result<Measured> {
    let out = dir.join(format!("fio-untimed-{}-{pass}.json", server.name()));
    let (m, _) = fio::read_once(
        sb,
        o.jobs.fio,
        &server.url(),
        o.jobs.file_name,
        o.jobs.size_bytes,
        &out,
        READ_TIMEOUT,
    )
    .with_context(|| format!("untimed read {pass} through {}", server.title()))?;
    Ok(m)
}

/// Reads the file through tidegate until a read adds no cache misses;
/// returns the counters of each read.
fn warm_tidegate(sb: &Sandbox, o: &WarmOptions<'_>, dir: &Path) -> Result<Vec<CacheCounters>> {
    let log = WarmServer::Tidegate.log(dir);
    let mut before = wait_stats(sb)?;
    let mut passes = Vec::new();
    for pass in 1..=WARM_PASSES_MAX {
        let m = read_once(sb, o, WarmServer::Tidegate, pass, dir)?;
        let after = CacheCounters::fetch(sb)?;
        let d = after.since(before);
        before = after;
        println!(
            "warm: tidegate untimed read {pass}: {} MiB at {:.0} MiB/s; cache hits {}, misses {}",
            m.stats.io_bytes >> 20,
            m.stats.mib_per_s(),
            d.hits,
            d.misses
        );
        if d.hits + d.misses == 0 {
            bail!(
                "tidegate's /stats counted no cache lookups during a full read of the file: \
                 is --cache in effect? (log: {})",
                log.display()
            );
        }
        passes.push(d);
        if pass > 1 && d.misses == 0 {
            return Ok(passes);
        }
    }
    bail!(
        "tidegate's cache misses still rose on untimed read {WARM_PASSES_MAX} of the {} MiB file \
         ({} misses) with a {CACHE_SIZE} cache: the cache does not keep it (log: {})",
        o.jobs.size_bytes >> 20,
        passes.last().map_or(0, |d| d.misses),
        log.display()
    )
}

/// The first `/stats`, waiting for the admin port to answer.
fn wait_stats(sb: &Sandbox) -> Result<CacheCounters> {
    let deadline = Instant::now() + ADMIN_READY_TIMEOUT;
    loop {
        match CacheCounters::fetch(sb) {
            Ok(c) => return Ok(c),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!(
                "tidegate's admin port 127.0.0.1:{ADMIN_PORT} did not answer GET /stats within {}s",
                ADMIN_READY_TIMEOUT.as_secs()
            )))
            }
            Err(_) => sandbox::sleep_interruptible(Duration::from_millis(250))?,
        }
    }
}

/// CPU time and counters at one instant.
struct Sample {
    at: Instant,
    cpu_secs: f64,
    counters: Option<CacheCounters>,
}

fn sample(sb: &Sandbox, server: WarmServer, pid: u32) -> Result<Sample> {
    let at = Instant::now();
    let cpu_secs = crate::cpu_secs(pid)?;
    let counters = match server {
        WarmServer::Tidegate => Some(CacheCounters::fetch(sb)?),
        WarmServer::Ganesha => None,
    };
    Ok(Sample {
        at,
        cpu_secs,
        counters,
    })
}

/// Runs `job` against `server`, sampling the server's CPU time and counters
/// when the ramp ends and after fio exits.
fn timed_run(
    sb: &mut Sandbox,
    o: &WarmOptions<'_>,
    server: WarmServer,
    pid: u32,
    job: Job,
    dir: &Path,
) -> Result<(WarmRun, String)> {
    check_alive(sb, server)?;
    let out = dir.join(format!("fio-{}-{}.json", job.name, server.name()));
    let ramp = Duration::from_secs(o.jobs.ramp_secs);
    let shared: &Sandbox = sb;
    let (start, fio_result) = std::thread::scope(|scope| {
        let start = scope.spawn(|| {
            sandbox::sleep_interruptible(ramp)?;
            sample(shared, server, pid)
        });
        let fio_result = fio::run_job(shared, &o.jobs, job, &server.url(), &out);
        (start.join(), fio_result)
    });
    let (m, version) = fio_result?;
    let end = sample(sb, server, pid)?;
    let start = start.map_err(|_| anyhow!("sampling thread panicked"))??;
    check_alive(sb, server)?;
    let counters = match (start.counters, end.counters) {
        (Some(a), Some(b)) => Some(b.since(a)),
        _ => None,
    };
    let run = WarmRun {
        m,
        cpu_secs: end.cpu_secs - start.cpu_secs,
        window_secs: (end.at - start.at).as_secs_f64(),
        counters,
    };
    Ok((run, version))
}

type Metric = (&'static str, fn(&WarmRun) -> Option<f64>, usize);

/// Figures both servers have, with a tidegate/Ganesha ratio.
const COMPARED: [Metric; 5] = [
    ("MiB/s", |r| Some(r.m.stats.mib_per_s()), 1),
    ("IOPS", |r| Some(r.m.stats.iops), 0),
    ("clat p50 (us)", |r| Some(r.m.stats.clat_us_p50), 0),
    ("clat p99 (us)", |r| Some(r.m.stats.clat_us_p99), 0),
    ("CPU s/GiB", |r| Some(r.cpu_secs_per_gib()), 2),
];

/// tidegate's own counters over the measured window.
const TIDEGATE_ONLY: [Metric; 4] = [
    ("cache hit ratio", |r| r.counters?.hit_ratio(), 4),
    (
        "hits from DRAM",
        |r| Some(r.counters?.memory_hits? as f64),
        0,
    ),
    ("send_zc", |r| Some(r.counters?.send_zc as f64), 0),
    (
        "send_zc copied",
        |r| Some(r.counters?.send_zc_copied as f64),
        0,
    ),
];

fn find(cells: &[WarmCell], job: Job, server: WarmServer) -> Option<&WarmRun> {
    cells
        .iter()
        .find(|c| c.job == job && c.server == server)
        .and_then(|c| c.outcome.as_ref().ok())
}

/// tidegate's counters summed over every timed run that succeeded.
fn timed_counters(cells: &[WarmCell]) -> Option<CacheCounters> {
    cells
        .iter()
        .filter_map(|c| c.outcome.as_ref().ok()?.counters)
        .reduce(CacheCounters::plus)
}

pub fn print_table(o: &WarmOptions<'_>, setup: &WarmSetup, cells: &[WarmCell]) {
    let fio = if setup.fio_version.is_empty() {
        "fio"
    } else {
        &setup.fio_version
    };
    println!(
        "Warm cache, NFSv3 over loopback in the namespace; client: {fio} nfs engine (libnfs), one connection per job"
    );
    println!(
        "file: {} MiB of random bytes on local disk ({}); {}s measured after {}s ramp per job and server",
        o.jobs.size_bytes >> 20,
        o.data_dir.display(),
        o.jobs.runtime_secs,
        o.jobs.ramp_secs
    );
    if o.servers.contains(&WarmServer::Tidegate) {
        println!(
            "tidegate: --cache {} --cache-size {CACHE_SIZE} --cache-block-size {CACHE_BLOCK_SIZE}; \
             {} untimed full reads before the timed runs, the last with no cache misses",
            o.cache_path().display(),
            setup.tidegate_passes.len()
        );
    }
    if o.servers.contains(&WarmServer::Ganesha) {
        println!(
            "Ganesha: FSAL VFS; after one untimed read it serves the file from the page cache (its best case)"
        );
    }
    println!(
        "CPU s/GiB: utime+stime of the server process, all threads (/proc/PID/stat), over the measured window, per GiB read;"
    );
    println!(
        "tidegate's counters (hit ratio, DRAM hits, send_zc) are deltas of its /stats over the same window"
    );
    println!();
    let both = o.servers.len() == 2;
    let mut header = format!("{:<14} {:<16}", "job", "metric");
    for s in o.servers {
        header.push_str(&format!(" {:>12}", s.title()));
    }
    if both {
        header.push_str(&format!(" {:>18}", "tidegate/Ganesha"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for &job in JOBS {
        let rows = COMPARED
            .iter()
            .map(|m| (m, true))
            .chain(TIDEGATE_ONLY.iter().map(|m| (m, false)));
        for (i, ((label, get, decimals), compared)) in rows.enumerate() {
            if !compared && !o.servers.contains(&WarmServer::Tidegate) {
                continue;
            }
            let mut line = format!("{:<14} {label:<16}", if i == 0 { job.name } else { "" });
            let mut values = Vec::new();
            for &server in o.servers {
                let run = find(cells, job, server);
                let text = match run.map(get) {
                    Some(Some(v)) => format!("{v:.decimals$}"),
                    Some(None) => "-".to_owned(),
                    None => "failed".to_owned(),
                };
                line.push_str(&format!(" {text:>12}"));
                values.push(run.and_then(get));
            }
            if both && compared {
                let r = match (values[0], values[1]) {
                    (Some(g), Some(t)) => crate::ratio_text(t, g),
                    _ => "-".to_owned(),
                };
                line.push_str(&format!(" {r:>18}"));
            }
            println!("{line}");
        }
    }
    println!();
    if let Some(c) = timed_counters(cells) {
        println!(
            "tidegate over all timed runs: cache hit ratio {} ({} hits, {} of them from DRAM; \
             {} misses); send_zc {} sends, {} copied by the kernel",
            c.hit_ratio()
                .map_or("-".to_owned(), |r| format!("{:.2}%", r * 100.0)),
            c.hits,
            c.memory_hits.map_or("?".to_owned(), |n| n.to_string()),
            c.misses,
            c.send_zc,
            c.send_zc_copied
        );
    }
    if both {
        println!(
            "ratio > 1 means tidegate is higher: better for MiB/s and IOPS, worse for latency and CPU s/GiB"
        );
    }
    for c in cells {
        if let Err(err) = &c.outcome {
            println!("{} / {}: {err}", c.job.name, c.server.title());
        }
    }
}

pub fn to_json(o: &WarmOptions<'_>, setup: &WarmSetup, cells: &[WarmCell]) -> Value {
    let results = cells
        .iter()
        .map(|c| {
            let mut members = vec![
                ("job", Value::from(c.job.name)),
                ("server", Value::from(c.server.name())),
            ];
            match &c.outcome {
                Ok(r) => {
                    members.push(("ok", Value::Bool(true)));
                    members.extend(r.m.json_members());
                    members.extend([
                        ("cpu_secs", Value::from(r.cpu_secs)),
                        ("cpu_window_secs", Value::from(r.window_secs)),
                        ("cpu_secs_per_gib", Value::from(r.cpu_secs_per_gib())),
                    ]);
                    if let Some(counters) = r.counters {
                        members.push(("tidegate_counters", counters.to_json()));
                    }
                }
                Err(err) => members.extend([
                    ("ok", Value::Bool(false)),
                    ("error", Value::from(err.as_str())),
                ]),
            }
            object(members)
        })
        .collect();
    let mut ratios = Vec::new();
    for &job in JOBS {
        let (Some(g), Some(t)) = (
            find(cells, job, WarmServer::Ganesha),
            find(cells, job, WarmServer::Tidegate),
        ) else {
            continue;
        };
        let mut members = vec![("job", Value::from(job.name))];
        for (key, (_, get, _)) in [
            "mib_per_s",
            "iops",
            "clat_us_p50",
            "clat_us_p99",
            "cpu_secs_per_gib",
        ]
        .into_iter()
        .zip(COMPARED)
        {
            let r = match (get(t), get(g)) {
                (Some(t), Some(g)) if g > 0.0 => Value::from(t / g),
                _ => Value::Null,
            };
            members.push((key, r));
        }
        ratios.push(object(members));
    }
    object([
        (
            "params",
            object([
                ("data_dir", Value::from(o.data_dir.display().to_string())),
                ("size_bytes", Value::from(o.jobs.size_bytes)),
                ("runtime_secs", Value::from(o.jobs.runtime_secs)),
                ("ramp_secs", Value::from(o.jobs.ramp_secs)),
                (
                    "cache_path",
                    Value::from(o.cache_path().display().to_string()),
                ),
                ("cache_size", Value::from(CACHE_SIZE)),
                ("cache_block_size", Value::from(CACHE_BLOCK_SIZE)),
                (
                    "servers",
                    Value::Array(o.servers.iter().map(|s| Value::from(s.name())).collect()),
                ),
            ]),
        ),
        ("fio_version", Value::from(setup.fio_version.as_str())),
        (
            "tidegate_untimed_reads",
            Value::Array(setup.tidegate_passes.iter().map(|c| c.to_json()).collect()),
        ),
        (
            "tidegate_timed_counters",
            timed_counters(cells).map_or(Value::Null, CacheCounters::to_json),
        ),
        ("results", Value::Array(results)),
        ("ratios_tidegate_over_ganesha", Value::Array(ratios)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_stats() {
        let text = r#"{"cache_hits_total": 1000, "cache_misses_total": 24,
            "send_zc_total": 7, "send_zc_copied_total": 7,
            "cache_hit_ratio": 0.9765625, "other_total": 3}"#;
        let c = CacheCounters::parse(text).unwrap();
        assert_eq!(
            c,
            CacheCounters {
                hits: 1000,
                memory_hits: None,
                misses: 24,
                send_zc: 7,
                send_zc_copied: 7
            }
        );
        let before = CacheCounters {
            hits: 900,
            memory_hits: None,
            misses: 24,
            send_zc: 2,
            send_zc_copied: 1,
        };
        let d = c.since(before);
        assert_eq!(
            (d.hits, d.misses, d.send_zc, d.send_zc_copied),
            (100, 0, 5, 6)
        );
        assert_eq!(d.hit_ratio(), Some(1.0));
        assert_eq!(CacheCounters::default().hit_ratio(), None);
        let with_memory = text.replace("\"other_total\"", "\"cache_memory_hits_total\"");
        let m = CacheCounters::parse(&with_memory).unwrap();
        assert_eq!(m.memory_hits, Some(3));
        assert_eq!(m.since(m).memory_hits, Some(0));
        assert_eq!(m.since(c).memory_hits, None);
        let err = CacheCounters::parse(r#"{"cache_hits_total": 1}"#).unwrap_err();
        assert!(format!("{err:#}").contains("cache_misses_total"));
    }
}
