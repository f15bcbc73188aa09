//! Cold reads through S3: tidegate and `rclone serve nfs` over the same
//! SeaweedFS bucket, in the benchmark's namespace.
//!
//! SeaweedFS gets a fresh data directory per run and holds the benchmark's
//! random test file (`random.bin`, 1 GiB by default) and a small-file tree
//! (`tree/dNN/fNNN.bin`, 1000 files of 4 KiB by default). Then, for each
//! server in turn:
//!
//! - **sequential 1 MiB read, cold**: the server starts with an empty
//!   state or cache directory and the file is read once, front to back,
//!   with fio's nfs engine (1 MiB requests, 16 in flight); then a second
//!   pass through the same running server (rclone serves it from its disk
//!   cache, tidegate from its block cache, which lives in its fresh state
//!   directory).
//! - **stat walk, cold**: the server starts fresh again and a raw walker
//!   does what `ls -lR` makes a client do, one call at a time: READDIR each
//!   directory, LOOKUP and GETATTR every file; then the same walk again on
//!   the running server (each with its default metadata caching: tidegate
//!   revalidates attributes after `--meta-ttl`, 3 s; rclone keeps its
//!   directory cache for 5 minutes).
//!
//! The sequence runs `rounds` times (3 by default, alternating which server
//! goes first); the tables show medians, the JSON every round.
//! SeaweedFS's own request counters give the S3 requests each step made.
//! Both servers see the same store in the same state; the OS page cache
//! holds SeaweedFS's volume files for both, so "cold" is about the NFS
//! server's own caches, not the store's disks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fio::{self, Measured};
use crate::json::{object, Value};
use crate::nfs3;
use crate::s3::S3Client;
use crate::sandbox::{self, Sandbox};
use crate::seaweed::{self, Seaweed};
use crate::servers::{self, Rclone, TidegateS3};
use crate::tree::{self, StatWalk, TreeShape};

pub const BUCKET: &str = "bench";
const TIDEGATE_PORT: u16 = 20491;
const RCLONE_PORT: u16 = 20492;
const TIDEGATE_NO_PREFETCH_PORT: u16 = 20495;
/// Upper bound of one read pass.
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections used to upload the tree.
const UPLOAD_THREADS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum S3Server {
    Tidegate,
    /// tidegate with `--prefetch off` (the cold-read-with-latency section).
    TidegateNoPrefetch,
    Rclone,
}

impl S3Server {
    pub fn name(self) -> &'static str {
        match self {
            S3Server::Tidegate => "tidegate",
            S3Server::TidegateNoPrefetch => "tidegate-no-prefetch",
            S3Server::Rclone => "rclone",
        }
    }

    pub(crate) fn service(self) -> &'static str {
        match self {
            S3Server::Tidegate => "tidegate-s3",
            S3Server::TidegateNoPrefetch => "tidegate-s3-no-prefetch",
            S3Server::Rclone => "rclone-nfs",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            S3Server::Tidegate => TIDEGATE_PORT,
            S3Server::TidegateNoPrefetch => TIDEGATE_NO_PREFETCH_PORT,
            S3Server::Rclone => RCLONE_PORT,
        }
    }

    /// libnfs URL of the export root. `auto-traverse-mounts=0`: after MNT,
    /// libnfs otherwise asks for the export list (MOUNT EXPORT) to find
    /// nested exports; `rclone serve nfs` has no EXPORT procedure and
    /// libnfs cannot parse its error reply, so the mount fails. Neither
    /// server has nested exports; both get the same URL.
    pub fn url(self) -> String {
        format!("{}&auto-traverse-mounts=0", nfs3::libnfs_url(self.port()))
    }
}

pub struct S3BenchOptions<'a> {
    pub servers: &'a [S3Server],
    pub fio: &'a Path,
    pub tidegate_bin: &'a Path,
    pub rclone_bin: Option<PathBuf>,
    pub workers: Option<u32>,
    /// The local test file uploaded as `file_name`.
    pub data_file: &'a Path,
    pub file_name: &'a str,
    pub size_bytes: u64,
    pub tree: TreeShape,
    pub run_dir: &'a Path,
    /// Rounds of the whole sequence; tables show the median.
    pub rounds: u32,
}

/// One read pass: fio's numbers and the S3 GETs it caused.
#[derive(Debug, Clone)]
pub struct ReadPass {
    pub m: Measured,
    pub secs: f64,
    pub s3_gets: u64,
}

/// A stat walk and the S3 requests it caused.
#[derive(Debug, Clone, Copy)]
pub struct WalkPass {
    pub w: StatWalk,
    pub s3_requests: u64,
}

/// Everything measured for one server; each step fails on its own.
pub struct S3Cell {
    pub server: S3Server,
    /// 1-based round; every round restarts each server for its cold runs.
    pub round: u32,
    pub cold_read: Result<ReadPass, String>,
    pub second_read: Result<ReadPass, String>,
    pub cold_walk: Result<WalkPass, String>,
    pub warm_walk: Result<WalkPass, String>,
}

/// Setup facts for the report.
pub struct S3Setup {
    pub upload_file_secs: f64,
    pub upload_tree_secs: f64,
    pub rclone_version: String,
}

fn requests(sb: &Sandbox) -> Result<Vec<(String, u64)>> {
    sb.in_netns(seaweed::s3_request_counts)
}

fn delta(a: &[(String, u64)], b: &[(String, u64)], kind: Option<&str>) -> u64 {
    match kind {
        Some(k) => seaweed::count_of(b, k).saturating_sub(seaweed::count_of(a, k)),
        None => {
            let sum = |x: &[(String, u64)]| x.iter().map(|(_, n)| n).sum::<u64>();
            sum(b).saturating_sub(sum(a))
        }
    }
}

/// Starts `server` afresh (new state or cache directory) and waits until
/// it serves `probe`. `tidegate_args` go to tidegate only.
pub(crate) fn start_fresh(
    sb: &mut Sandbox,
    o: &S3BenchOptions<'_>,
    sw: &Seaweed,
    server: S3Server,
    round: &str,
    probe: &str,
    tidegate_args: &[String],
) -> Result<()> {
    let _ = sb.stop_service(server.service());
    let log = o.run_dir.join(format!("{}-{round}.log", server.service()));
    match server {
        S3Server::Tidegate | S3Server::TidegateNoPrefetch => {
            let state = o.run_dir.join("tidegate-s3-state");
            let mut extra_args = tidegate_args.to_vec();
            if server == S3Server::TidegateNoPrefetch {
                extra_args.extend(["--prefetch".to_owned(), "off".to_owned()]);
            }
            let t = TidegateS3 {
                bin: o.tidegate_bin,
                bucket: BUCKET,
                port: server.port(),
                state_dir: &state,
                workers: o.workers,
                extra_args: &extra_args,
                wrapper: &[],
                env: &[],
            };
            servers::start_tidegate_s3(sb, server.service(), &t, sw, &log)?;
        }
        S3Server::Rclone => {
            let bin = o.rclone_bin.as_deref().context("rclone not found")?;
            let cache = o.run_dir.join("rclone-cache");
            let config = o.run_dir.join("rclone.conf");
            let r = Rclone {
                bin,
                bucket: BUCKET,
                port: server.port(),
                cache_dir: &cache,
                config: &config,
            };
            servers::start_rclone(sb, server.service(), &r, sw, &log)?;
        }
    }
    servers::wait_nfs_ready(sb, server.service(), server.port(), probe, &log)?;
    Ok(())
}

fn read_pass(
    sb: &mut Sandbox,
    o: &S3BenchOptions<'_>,
    server: S3Server,
    label: &str,
) -> Result<ReadPass> {
    let before = requests(sb)?;
    let out = o
        .run_dir
        .join(format!("fio-s3-{label}-{}.json", server.name()));
    let t = Instant::now();
    let (m, _) = fio::read_once(
        sb,
        o.fio,
        &server.url(),
        o.file_name,
        o.size_bytes,
        &out,
        READ_TIMEOUT,
    )?;
    let secs = t.elapsed().as_secs_f64();
    let after = requests(sb)?;
    sb.service_mut(server.service())
        .context("server not started")?
        .check_alive()?;
    Ok(ReadPass {
        m,
        secs,
        s3_gets: delta(&before, &after, Some("GET")),
    })
}

fn walk_pass(sb: &mut Sandbox, o: &S3BenchOptions<'_>, server: S3Server) -> Result<WalkPass> {
    let before = requests(sb)?;
    let port = server.port();
    let shape = o.tree;
    let w = sb.in_netns(move || tree::stat_walk_server(port, shape))?;
    let after = requests(sb)?;
    Ok(WalkPass {
        w,
        s3_requests: delta(&before, &after, None),
    })
}

pub(crate) fn stringify<T>(r: Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{e:#}"))
}

/// Starts SeaweedFS with its data in `store_dir` and uploads the test
/// file into [`BUCKET`]; returns the store and the upload's seconds.
pub(crate) fn start_store(
    sb: &mut Sandbox,
    o: &S3BenchOptions<'_>,
    store_dir: &Path,
) -> Result<(Seaweed, f64)> {
    let weed = seaweed::weed_bin()?;
    let t = Instant::now();
    let sw = Seaweed::start(sb, &weed, store_dir, BUCKET)?;
    println!(
        "SeaweedFS ready in {:.1}s (S3 on 127.0.0.1:{} in the namespace)",
        t.elapsed().as_secs_f64(),
        seaweed::S3_PORT
    );
    let target = sw.target.clone();
    let (data_file, file_name) = (o.data_file, o.file_name);
    let t = Instant::now();
    sb.in_netns(|| {
        let mut c = S3Client::new(target.clone());
        c.put_file(BUCKET, file_name, data_file)
    })
    .context("uploading the test file")?;
    let upload_file_secs = t.elapsed().as_secs_f64();
    println!(
        "uploaded {file_name} ({} MiB) in {upload_file_secs:.1}s",
        o.size_bytes >> 20
    );
    Ok((sw, upload_file_secs))
}

/// Stops SeaweedFS and removes its data (the store's copy of the test
/// file is not worth keeping) and the servers' state and cache folders.
pub(crate) fn stop_store(sb: &mut Sandbox, o: &S3BenchOptions<'_>, store_dir: &Path) {
    let _ = sb.stop_service(seaweed::SERVICE);
    let _ = std::fs::remove_dir_all(store_dir.join("data"));
    let _ = std::fs::remove_dir_all(o.run_dir.join("rclone-cache"));
    let _ = std::fs::remove_dir_all(o.run_dir.join("tidegate-s3-state"));
}

/// The first line of `rclone version`; empty when it cannot be run.
pub(crate) fn rclone_version(o: &S3BenchOptions<'_>) -> String {
    o.rclone_bin
        .as_deref()
        .and_then(|b| {
            std::process::Command::new(b)
                .arg("version")
                .output()
                .ok()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
        })
        .unwrap_or_default()
}

/// Runs the S3 section; the sandbox is shared with the rest of the run.
pub fn run(sb: &mut Sandbox, o: &S3BenchOptions<'_>) -> Result<(S3Setup, Vec<S3Cell>)> {
    let store_dir = o.run_dir.join("seaweedfs");
    let (sw, upload_file_secs) = start_store(sb, o, &store_dir)?;
    let target = sw.target.clone();
    let shape = o.tree;
    let t = Instant::now();
    sb.in_netns(|| tree::upload(&target, BUCKET, shape, UPLOAD_THREADS))
        .context("uploading the tree")?;
    let upload_tree_secs = t.elapsed().as_secs_f64();
    println!(
        "uploaded {}/ ({} files of {} bytes in {} directories) in {upload_tree_secs:.1}s",
        tree::TREE_ROOT,
        shape.files(),
        shape.file_bytes,
        shape.dirs
    );
    let rclone_version = rclone_version(o);

    let mut cells = Vec::new();
    for round in 1..=o.rounds.max(1) {
        // Alternate the order, so that neither server always goes first.
        let mut order = o.servers.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        if o.rounds > 1 {
            println!("round {round} of {}", o.rounds);
        }
        for server in order {
            cells.push(run_server(sb, o, &sw, server, round)?);
        }
    }
    stop_store(sb, o, &store_dir);
    Ok((
        S3Setup {
            upload_file_secs,
            upload_tree_secs,
            rclone_version,
        },
        cells,
    ))
}

/// One round of one server: fresh start, cold read, second read; fresh
/// start, cold stat walk, second stat walk.
fn run_server(
    sb: &mut Sandbox,
    o: &S3BenchOptions<'_>,
    sw: &Seaweed,
    server: S3Server,
    round: u32,
) -> Result<S3Cell> {
    let (file_name, shape) = (o.file_name, o.tree);
    sandbox::check_interrupted()?;
    let mut cell = S3Cell {
        server,
        round,
        cold_read: Err("not run".into()),
        second_read: Err("not run".into()),
        cold_walk: Err("not run".into()),
        warm_walk: Err("not run".into()),
    };
    match start_fresh(sb, o, sw, server, &format!("read-{round}"), file_name, &[]) {
        Ok(()) => {
            print!(
                "{}: cold sequential read of {file_name} ... ",
                server.name()
            );
            flush();
            cell.cold_read = stringify(read_pass(sb, o, server, &format!("cold-{round}")));
            report_read(&cell.cold_read);
            if cell.cold_read.is_ok() {
                print!("{}: second read (same server) ... ", server.name());
                flush();
                cell.second_read = stringify(read_pass(sb, o, server, &format!("second-{round}")));
                report_read(&cell.second_read);
            }
        }
        Err(e) => {
            sandbox::check_interrupted()?;
            let msg = format!("start: {e:#}");
            println!("{}: FAILED to start: {msg}", server.name());
            cell.cold_read = Err(msg);
        }
    }
    sandbox::check_interrupted()?;
    match start_fresh(
        sb,
        o,
        sw,
        server,
        &format!("walk-{round}"),
        tree::TREE_ROOT,
        &[],
    ) {
        Ok(()) => {
            print!(
                "{}: cold stat walk of {} files ... ",
                server.name(),
                shape.files()
            );
            flush();
            cell.cold_walk = stringify(walk_pass(sb, o, server));
            report_walk(&cell.cold_walk);
            if cell.cold_walk.is_ok() {
                print!("{}: second stat walk (same server) ... ", server.name());
                flush();
                cell.warm_walk = stringify(walk_pass(sb, o, server));
                report_walk(&cell.warm_walk);
            }
        }
        Err(e) => {
            sandbox::check_interrupted()?;
            let msg = format!("start: {e:#}");
            println!("{}: FAILED to start: {msg}", server.name());
            cell.cold_walk = Err(msg);
        }
    }
    let _ = sb.stop_service(server.service());
    Ok(cell)
}

pub(crate) fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn report_read(r: &Result<ReadPass, String>) {
    match r {
        Ok(p) => println!(
            "{:.1} MiB/s ({:.1}s, {} S3 GETs)",
            p.m.stats.mib_per_s(),
            p.secs,
            p.s3_gets
        ),
        Err(e) => println!("FAILED: {e}"),
    }
}

fn report_walk(r: &Result<WalkPass, String>) {
    match r {
        Ok(p) => println!(
            "{:.2}s ({} NFS calls, {} S3 requests)",
            p.w.total.as_secs_f64(),
            p.w.calls,
            p.s3_requests
        ),
        Err(e) => println!("FAILED: {e}"),
    }
}

type Metric = (&'static str, fn(&S3Cell) -> Option<f64>, usize);

/// (label, value, decimals)
const METRICS: [Metric; 8] = [
    (
        "seq 1 MiB cold (MiB/s)",
        |c| c.cold_read.as_ref().ok().map(|p| p.m.stats.mib_per_s()),
        1,
    ),
    (
        "  clat p50 (us)",
        |c| c.cold_read.as_ref().ok().map(|p| p.m.stats.clat_us_p50),
        0,
    ),
    (
        "  clat p99 (us)",
        |c| c.cold_read.as_ref().ok().map(|p| p.m.stats.clat_us_p99),
        0,
    ),
    (
        "seq 1 MiB second (MiB/s)",
        |c| c.second_read.as_ref().ok().map(|p| p.m.stats.mib_per_s()),
        1,
    ),
    (
        "stat walk cold (s)",
        |c| c.cold_walk.as_ref().ok().map(|p| p.w.total.as_secs_f64()),
        2,
    ),
    (
        "  per file (us)",
        |c| {
            c.cold_walk
                .as_ref()
                .ok()
                .map(|p| p.w.total.as_secs_f64() * 1e6 / p.w.files.max(1) as f64)
        },
        0,
    ),
    (
        "  S3 requests",
        |c| c.cold_walk.as_ref().ok().map(|p| p.s3_requests as f64),
        0,
    ),
    (
        "stat walk second (s)",
        |c| c.warm_walk.as_ref().ok().map(|p| p.w.total.as_secs_f64()),
        2,
    ),
];

/// The median of a metric over the rounds of `server` that measured it.
fn median_of(cells: &[S3Cell], server: S3Server, get: fn(&S3Cell) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = cells
        .iter()
        .filter(|c| c.server == server)
        .filter_map(get)
        .collect();
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

fn ratio_of(cells: &[S3Cell], get: fn(&S3Cell) -> Option<f64>) -> Option<f64> {
    match (
        median_of(cells, S3Server::Tidegate, get),
        median_of(cells, S3Server::Rclone, get),
    ) {
        (Some(t), Some(r)) if r > 0.0 => Some(t / r),
        _ => None,
    }
}

/// The servers in the order they were given.
fn servers_of(cells: &[S3Cell]) -> Vec<S3Server> {
    let mut out = Vec::new();
    for c in cells {
        if !out.contains(&c.server) {
            out.push(c.server);
        }
    }
    out
}

pub fn print_table(o: &S3BenchOptions<'_>, setup: &S3Setup, cells: &[S3Cell]) {
    println!(
        "Cold reads through S3 (SeaweedFS in the namespace): {} MiB file, {} files of {} bytes; rclone: {}",
        o.size_bytes >> 20,
        o.tree.files(),
        o.tree.file_bytes,
        if setup.rclone_version.is_empty() {
            "?"
        } else {
            &setup.rclone_version
        }
    );
    let rounds = cells.iter().map(|c| c.round).max().unwrap_or(0);
    if rounds > 1 {
        println!(
            "median of {rounds} rounds; each round starts every server afresh for each cold run"
        );
    }
    println!();
    let servers = servers_of(cells);
    let both = servers.len() == 2;
    let mut header = format!("{:<26}", "metric");
    for s in &servers {
        header.push_str(&format!(" {:>12}", s.name()));
    }
    if both {
        header.push_str(&format!(" {:>16}", "tidegate/rclone"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (label, get, decimals) in METRICS {
        let mut line = format!("{label:<26}");
        for &s in &servers {
            match median_of(cells, s, get) {
                Some(v) => line.push_str(&format!(" {v:>12.decimals$}")),
                None => line.push_str(&format!(" {:>12}", "failed")),
            }
        }
        if both {
            let r = ratio_of(cells, get).map_or("-".to_owned(), |r| format!("{r:.2}x"));
            line.push_str(&format!(" {r:>16}"));
        }
        println!("{line}");
    }
    if both {
        println!();
        println!(
            "ratio > 1 means tidegate is higher: better for MiB/s, worse for times and latency"
        );
    }
    for c in cells {
        for (what, r) in [
            ("cold read", c.cold_read.as_ref().err()),
            ("second read", c.second_read.as_ref().err()),
            ("cold stat walk", c.cold_walk.as_ref().err()),
            ("second stat walk", c.warm_walk.as_ref().err()),
        ] {
            if let Some(e) = r {
                if e != "not run" {
                    println!("{what} / {} (round {}): {e}", c.server.name(), c.round);
                }
            }
        }
    }
}

pub fn to_json(o: &S3BenchOptions<'_>, setup: &S3Setup, cells: &[S3Cell]) -> Value {
    let read = |r: &Result<ReadPass, String>| match r {
        Ok(p) => object([
            ("ok", Value::Bool(true)),
            ("mib_per_s", Value::from(p.m.stats.mib_per_s())),
            ("secs", Value::from(p.secs)),
            ("clat_us_p50", Value::from(p.m.stats.clat_us_p50)),
            ("clat_us_p99", Value::from(p.m.stats.clat_us_p99)),
            ("io_bytes", Value::from(p.m.stats.io_bytes)),
            ("lo_bytes", Value::from(p.m.lo_bytes)),
            ("s3_gets", Value::from(p.s3_gets)),
        ]),
        Err(e) => object([
            ("ok", Value::Bool(false)),
            ("error", Value::from(e.as_str())),
        ]),
    };
    let walk = |r: &Result<WalkPass, String>| match r {
        Ok(p) => object([
            ("ok", Value::Bool(true)),
            ("secs", Value::from(p.w.total.as_secs_f64())),
            ("files", Value::from(p.w.files)),
            ("dirs", Value::from(p.w.dirs)),
            ("nfs_calls", Value::from(p.w.calls)),
            ("s3_requests", Value::from(p.s3_requests)),
        ]),
        Err(e) => object([
            ("ok", Value::Bool(false)),
            ("error", Value::from(e.as_str())),
        ]),
    };
    let results = cells
        .iter()
        .map(|c| {
            object([
                ("server", Value::from(c.server.name())),
                ("round", Value::from(u64::from(c.round))),
                ("seq_read_1m_cold", read(&c.cold_read)),
                ("seq_read_1m_second", read(&c.second_read)),
                ("stat_walk_cold", walk(&c.cold_walk)),
                ("stat_walk_second", walk(&c.warm_walk)),
            ])
        })
        .collect();
    let medians = servers_of(cells)
        .into_iter()
        .map(|server| {
            let m = METRICS
                .iter()
                .filter_map(|(label, get, _)| {
                    median_of(cells, server, *get)
                        .map(|v| (label.trim().to_owned(), Value::from(v)))
                })
                .collect::<Vec<_>>();
            (server.name(), object(m))
        })
        .collect::<Vec<_>>();
    let ratios = METRICS
        .iter()
        .filter_map(|(label, get, _)| {
            ratio_of(cells, *get).map(|r| (label.trim().to_owned(), Value::from(r)))
        })
        .collect::<Vec<_>>();
    object([
        (
            "store",
            Value::from("SeaweedFS (weed mini) in the namespace"),
        ),
        ("rclone_version", Value::from(setup.rclone_version.as_str())),
        ("file_mib", Value::from(o.size_bytes >> 20)),
        ("tree_files", Value::from(o.tree.files())),
        ("tree_file_bytes", Value::from(o.tree.file_bytes as u64)),
        ("upload_file_secs", Value::from(setup.upload_file_secs)),
        ("upload_tree_secs", Value::from(setup.upload_tree_secs)),
        ("rounds", Value::from(u64::from(o.rounds))),
        ("results", Value::Array(results)),
        ("medians", object(medians)),
        ("ratios_tidegate_over_rclone", object(ratios)),
    ])
}
