//! The full side-by-side benchmark: every workload against every system
//! that can run it, in one run on one machine, reported as ratios.
//!
//! One SeaweedFS instance in the benchmark's network namespace holds the
//! data sets (kept between runs, seeded once); a local folder holds the
//! same files for NFS-Ganesha. Every S3 client reaches SeaweedFS through
//! a counting, latency-injecting proxy on the namespace's `lo`. For each
//! workload, each system starts fresh (empty state, empty caches, the
//! page cache dropped), runs the workload, and is stopped; its CPU time and
//! peak memory are read from `/proc` on the way.
//!
//! Workloads (sizes of a full run; `--quick` shrinks them):
//! (a) sequential 1 MiB reads of a 2 GiB file: cold, then warm with 1 and
//! 4 streams; (b) random 4 KiB reads at iodepth 32, warm; (c) an
//! ImageNet-like tree of 20,000 files of about 110 KiB, 4 readers, 3
//! epochs in fresh shuffled orders; (d) 3 sequential passes over the file
//! with the systems' caches set to half of it; (e) a cold single-stream
//! read with every S3 answer delayed; (f) a listing of a 100,000-entry
//! directory and a stat of each entry; (g) a 1 GiB checkpoint written,
//! fsynced and renamed, timed until it is whole in S3. The physical limits
//! of the machine (O_DIRECT fio on the disk of the caches, loopback TCP)
//! are measured in the same run.

pub mod fiojob;
pub mod results;
pub mod systems;
mod workloads;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use tidegate_tests::s3proxy::S3Proxy;

use crate::sandbox::{self, Sandbox};
use crate::seaweed::{self, Seaweed};
use results::{Better, Failure, Measurement, Report, Role, ServerCost};
use systems::{Bins, Sys, World};

pub const USAGE: &str = "\
cargo xtask bench [OPTIONS]: the side-by-side benchmark. tidegate, NFS-Ganesha
(local copy), rclone serve nfs, s3fs and rclone mount serve the same data in the
same run; every system starts fresh for every workload; the report gives each
number with its ratio to tidegate, to the machine's physical limit, and each
server's CPU seconds per GiB and peak memory.

Usage: sidebyside [OPTIONS]   (as root: network namespaces, FUSE, drop_caches)

Options:
  --quick               small data sets and short runs (under 10 minutes)
  --workloads LETTERS   run only these workloads, e.g. `ace` [default: abcdefg]
  --systems LIST        only these systems, comma-separated, of: tidegate,
                        ganesha, rclone-nfs, s3fs, rclone-mount [default: all]
  --s3-latency-ms N     first-byte delay of every S3 answer in (e), 0 to 60000
                        [default: 20]
  --results-dir DIR     where the report goes [default: <workspace>/benches/results]
  --work-dir DIR        data, store, logs [default: <workspace>/target/bench/suite]
  --tidegate-bin PATH   [default: $TIDEGATE_BIN, else <workspace>/target/release/tidegate]
  --fio PATH            fio with the nfs engine
                        [default: $TIDEGATE_FIO, else /usr/local/lib/tidegate-tools/bin/fio]
  --rclone PATH         [default: $TIDEGATE_RCLONE, else rclone on PATH]
  --s3fs PATH           [default: s3fs on PATH]
  --workers N           pass --workers N to tidegate
  --tidegate-arg ARG    one more flag for tidegate (repeat for several)
  -h, --help            print this text

Workloads:
  (a) large file, sequential 1 MiB reads: cold (first read, 1 stream), then
      warm with 1 and 4 streams
  (b) random 4 KiB reads, iodepth 32, warm
  (c) ImageNet-like: files of ~110 KiB (fixed-seed sizes) in 100 folders, 4
      parallel readers, a fresh shuffled order per epoch, 3 epochs
  (d) cyclic sweep: 3 sequential passes over a file twice the systems' cache
      size; hit ratio from the bytes each system fetched from S3
  (e) cold first read through S3 with every answer delayed (--s3-latency-ms),
      one stream with one request in flight
  (f) metadata: a listing of one large directory, then a stat of every entry
  (g) checkpoint: write, fsync, rename; timed until whole in S3

Sizes (full / --quick): (a,b,d,e) file 2 GiB / 512 MiB, timed jobs 15 s / 5 s;
(c) 20,000 / 2,000 files; (f) 100,000 / 10,000 entries; (g) 1 GiB / 256 MiB.

Results: <results-dir>/<date>-<hostname>[-quick].md, .json (workload, system,
metric, value, unit) and -<workload>.png plots. Ctrl-C stops cleanly.
";

const DEFAULT_FIO: &str = "/usr/local/lib/tidegate-tools/bin/fio";
/// The large file of (a), (b), (d) and (e), in the bucket and the copy.
pub(crate) const SEQ_FILE: &str = "seq/data.bin";
/// The folder of (f).
pub(crate) const META_DIR: &str = "meta";
/// Seed of the ImageNet-like tree.
pub(crate) const IMAGENET_SEED: u64 = 0x7469_6465_6761_7465;
/// Parallel connections that seed the store.
const SEED_CONNECTIONS: usize = 16;

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub workloads: Vec<char>,
    pub systems: Vec<Sys>,
    pub s3_latency_ms: u64,
    pub results_dir: PathBuf,
    pub work_dir: PathBuf,
    pub tidegate_bin: PathBuf,
    pub fio: PathBuf,
    pub rclone: PathBuf,
    pub s3fs: PathBuf,
    pub workers: Option<u32>,
    pub tidegate_args: Vec<String>,
    pub command: String,
}

/// Data set sizes and durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub seq_bytes: u64,
    pub runtime_secs: u64,
    pub ramp_secs: u64,
    pub imagenet_files: u32,
    pub meta_files: u32,
    pub ckpt_bytes: u64,
}

impl Sizes {
    fn of(quick: bool) -> Self {
        if quick {
            Sizes {
                seq_bytes: 512 << 20,
                runtime_secs: 5,
                ramp_secs: 1,
                imagenet_files: 2_000,
                meta_files: 10_000,
                ckpt_bytes: 256 << 20,
            }
        } else {
            Sizes {
                seq_bytes: 2 << 30,
                runtime_secs: 15,
                ramp_secs: 3,
                imagenet_files: 20_000,
                meta_files: 100_000,
                ckpt_bytes: 1 << 30,
            }
        }
    }

    /// The cache size of (d): half the swept file.
    pub fn sweep_cache_bytes(&self) -> u64 {
        self.seq_bytes / 2
    }
}

/// Parses the command line; `None` after `--help`.
pub fn parse_args(args: &[String]) -> Result<Option<Options>> {
    let root = crate::workspace_root();
    let mut o = Options {
        quick: false,
        workloads: "abcdefg".chars().collect(),
        systems: ALL_SYSTEMS.to_vec(),
        s3_latency_ms: 20,
        results_dir: root.join("benches/results"),
        work_dir: root.join("target/bench/suite"),
        tidegate_bin: std::env::var_os("TIDEGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/tidegate")),
        fio: std::env::var_os("TIDEGATE_FIO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FIO)),
        rclone: PathBuf::new(),
        s3fs: PathBuf::new(),
        workers: None,
        tidegate_args: Vec::new(),
        command: format!("cargo xtask bench {}", args.join(" "))
            .trim_end()
            .to_owned(),
    };
    let mut rclone = None;
    let mut s3fs = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value (see --help)"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--quick" => o.quick = true,
            "--workloads" => {
                let v = value(a)?;
                let w: Vec<char> = v.chars().collect();
                if w.is_empty() || w.iter().any(|c| !"abcdefg".contains(*c)) {
                    bail!("--workloads takes letters a to g, e.g. `ace`, not {v:?}");
                }
                o.workloads = w;
            }
            "--systems" => {
                let v = value(a)?;
                let mut s = Vec::new();
                for name in v.split(',') {
                    let sys = ALL_SYSTEMS
                        .iter()
                        .copied()
                        .find(|x| x.short() == name.trim())
                        .with_context(|| {
                            format!(
                                "unknown system {name:?} (tidegate, ganesha, rclone-nfs, s3fs, rclone-mount)"
                            )
                        })?;
                    s.push(sys);
                }
                if !s.contains(&Sys::Tidegate) {
                    s.insert(0, Sys::Tidegate);
                }
                o.systems = s;
            }
            "--s3-latency-ms" => {
                let v = value(a)?;
                o.s3_latency_ms = v
                    .parse()
                    .ok()
                    .filter(|ms| *ms <= 60_000)
                    .with_context(|| format!("--s3-latency-ms takes 0 to 60000, not {v:?}"))?;
            }
            "--results-dir" => o.results_dir = PathBuf::from(value(a)?),
            "--work-dir" => o.work_dir = PathBuf::from(value(a)?),
            "--tidegate-bin" => o.tidegate_bin = PathBuf::from(value(a)?),
            "--fio" => o.fio = PathBuf::from(value(a)?),
            "--rclone" => rclone = Some(PathBuf::from(value(a)?)),
            "--s3fs" => s3fs = Some(PathBuf::from(value(a)?)),
            "--tidegate-arg" => o.tidegate_args.push(value(a)?),
            "--workers" => {
                let v = value(a)?;
                o.workers = Some(
                    v.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--workers takes a positive count, not {v:?}"))?,
                );
            }
            other => bail!("unknown option {other:?} (see --help)"),
        }
    }
    o.rclone = match rclone {
        Some(p) => p,
        None => crate::servers::rclone_bin()?,
    };
    o.s3fs = match s3fs {
        Some(p) => p,
        None => crate::find_tool("s3fs").context(
            "`s3fs` not found (apt-get install s3fs; xtask/scripts/install-bench-deps.sh does)",
        )?,
    };
    Ok(Some(o))
}

/// Every system, in report order (tidegate without prefetch runs in (e)).
const ALL_SYSTEMS: [Sys; 5] = [
    Sys::Tidegate,
    Sys::Ganesha,
    Sys::RcloneNfs,
    Sys::S3fs,
    Sys::RcloneMount,
];

/// Prints which workload and system run, with elapsed time.
pub(crate) struct Progress {
    t0: Instant,
    step: usize,
    steps: usize,
}

impl Progress {
    pub fn begin(&mut self, what: &str) {
        self.step += 1;
        let s = self.t0.elapsed().as_secs();
        eprintln!(
            "\n[{}/{} {:02}:{:02}] {what}",
            self.step,
            self.steps,
            s / 60,
            s % 60
        );
    }

    pub fn note(&self, text: &str) {
        let s = self.t0.elapsed().as_secs();
        eprintln!("    {:02}:{:02} {text}", s / 60, s % 60);
    }
}

/// Everything a workload needs.
pub(crate) struct Cx<'a> {
    pub sb: &'a mut Sandbox,
    pub world: World<'a>,
    pub proxy: &'a S3Proxy,
    /// SeaweedFS directly (for checks that must not count at the proxy).
    pub direct: &'a Seaweed,
    pub o: &'a Options,
    pub sizes: Sizes,
    pub report: Report,
    pub progress: Progress,
    pub dir: PathBuf,
}

impl Cx<'_> {
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        workload: char,
        case: &str,
        system: &str,
        role: Role,
        metric: &str,
        value: f64,
        unit: &str,
        better: Better,
    ) {
        self.progress
            .note(&format!("{system}: {case}: {metric} {value:.3} {unit}"));
        self.report.measurements.push(Measurement {
            workload: workload.to_string(),
            case: case.to_owned(),
            system: system.to_owned(),
            role,
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            better,
        });
    }

    pub fn cost(&mut self, workload: char, sys: Sys, cpu_secs: f64, bytes: u64, peak: Option<u64>) {
        let per_gib = (bytes > 0 && cpu_secs.is_finite())
            .then(|| cpu_secs / (bytes as f64 / f64::from(1u32 << 30)));
        self.report.costs.push(ServerCost {
            workload: workload.to_string(),
            system: sys.name().to_owned(),
            cpu_secs_per_gib: per_gib,
            peak_rss_bytes: peak,
        });
    }

    pub fn fail(&mut self, workload: char, system: &str, err: &anyhow::Error) {
        eprintln!("    FAILED: {system}: {err:#}");
        self.report.failures.push(Failure {
            workload: workload.to_string(),
            system: system.to_owned(),
            error: format!("{err:#}"),
        });
    }

    /// Systems of this run that take part in a workload.
    pub fn systems(&self, wanted: &[Sys]) -> Vec<Sys> {
        wanted
            .iter()
            .copied()
            .filter(|s| {
                self.o.systems.contains(s)
                    || (*s == Sys::TidegateNoPrefetch && self.o.systems.contains(&Sys::Tidegate))
            })
            .collect()
    }
}

/// Empties the page cache, so that a fresh system is cold everywhere
/// (its local disk and FUSE's caches included).
pub(crate) fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").context("write /proc/sys/vm/drop_caches")
}

/// Runs the suite and writes the report; returns whether tidegate and the
/// limits completed every workload (peers' failures are reported, not
/// fatal).
pub fn run(o: &Options) -> Result<bool> {
    if !sandbox::is_root() {
        bail!("must run as root (network namespaces, FUSE mounts, drop_caches)");
    }
    for (what, p) in [
        ("tidegate", &o.tidegate_bin),
        ("fio", &o.fio),
        ("rclone", &o.rclone),
        ("s3fs", &o.s3fs),
    ] {
        if !p.is_file() {
            bail!(
                "{what} not found at {} (cargo xtask bench installs the peers and builds tidegate)",
                p.display()
            );
        }
    }
    let t0 = Instant::now();
    let started = SystemTime::now();
    let sizes = Sizes::of(o.quick);
    let flavour = if o.quick { "quick" } else { "full" };
    let data_dir = o.work_dir.join(format!("data-{flavour}"));
    let store_dir = o.work_dir.join(format!("store-{flavour}"));
    let dir = o.work_dir.join("run");
    systems::remove_stale_mounts(&o.work_dir);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    fs::create_dir_all(&data_dir)?;

    let mut report = Report {
        started_utc: iso_utc(started),
        hostname: hostname(),
        command: o.command.clone(),
        quick: o.quick,
        ..Report::default()
    };
    report.machine = machine_facts(&o.work_dir);
    report.versions = versions(o);
    report.workloads = workloads::infos(&sizes, o);
    report.notes = setup_notes(o);

    let steps = workloads::step_count(o);
    let mut progress = Progress {
        t0,
        step: 0,
        steps: steps + 1,
    };
    progress.begin("prepare the data sets and the store");
    let mut sb = Sandbox::create()?;
    let weed = seaweed::weed_bin()?;
    let sw = Seaweed::start(&mut sb, &weed, &store_dir, systems::BUCKET)?;
    progress.note(&format!(
        "SeaweedFS on 127.0.0.1:{} in namespace {}",
        seaweed::S3_PORT,
        sb.name()
    ));
    workloads::prepare(&mut sb, &sw, &data_dir, &store_dir, &sizes, o, &progress)?;
    let upstream = sw.target.addr;
    let proxy = sb
        .in_netns(|| S3Proxy::try_start(upstream))
        .context("start the S3 proxy in the namespace")?;
    let via = sw.via(proxy.addr());
    let bins = Bins {
        tidegate: o.tidegate_bin.clone(),
        rclone: o.rclone.clone(),
        s3fs: o.s3fs.clone(),
    };
    let mut cx = Cx {
        sb: &mut sb,
        world: World {
            bins: &bins,
            s3: &via,
            local_dir: &data_dir,
            run_dir: &dir,
            workers: o.workers,
            tidegate_args: &o.tidegate_args,
        },
        proxy: &proxy,
        direct: &sw,
        o,
        sizes,
        report,
        progress,
        dir: dir.clone(),
    };
    let outcome = workloads::run_all(&mut cx);
    let mut report = std::mem::take(&mut cx.report);
    drop(cx);
    let _ = sb.in_netns(move || {
        drop(proxy);
        Ok(())
    });
    let _ = sb.stop_service(seaweed::SERVICE);
    drop(sb);
    if let Err(e) = &outcome {
        report.notes.push(format!(
            "The run stopped early: {e:#}. The tables hold what was measured before."
        ));
    }
    report.duration_secs = t0.elapsed().as_secs_f64();
    report.goals = workloads::goals(&report);
    let day = &report.started_utc[..10.min(report.started_utc.len())];
    let stem = format!(
        "{day}-{}{}",
        report.hostname,
        if o.quick { "-quick" } else { "" }
    );
    fs::create_dir_all(&o.results_dir)
        .with_context(|| format!("create {}", o.results_dir.display()))?;
    let written = crate::report::write(&report, &o.results_dir, &stem)?;
    println!("\n{}", fs::read_to_string(&written.markdown)?);
    println!("report: {}", written.markdown.display());
    println!("json:   {}", written.json.display());
    for p in &written.plots {
        println!("plot:   {}", p.display());
    }
    let _ = std::io::stdout().flush();
    outcome?;
    // A peer that fails is a result (the report says so); tidegate failing,
    // or a limit that could not be measured, fails the run.
    Ok(report
        .failures
        .iter()
        .all(|f| !f.system.starts_with("tidegate") && f.system != "limits"))
}

/// `2026-11-27T21:00:00Z`.
fn iso_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = crate::clock::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// How each system was set up, for the report.
fn setup_notes(o: &Options) -> Vec<String> {
    let mut notes = vec![
        format!(
            "tidegate: `tidegate serve s3://bench` with a block cache file on the run's disk (4 GiB; in (d) the sweep's size with the memory tier off; elsewhere the memory tier at its default, 1/8 of RAM), `--meta-ttl {}` (the peers trust metadata at least that long by default: rclone's --dir-cache-time is 5 min, s3fs's stat cache 15 min; tidegate's own default is 3 s), everything else at its defaults{}.",
            systems::TIDEGATE_META_TTL,
            if o.tidegate_args.is_empty() {
                String::new()
            } else {
                format!(", plus `{}`", o.tidegate_args.join(" "))
            }
        ),
        "rclone serve nfs and rclone mount: `--vfs-cache-mode full` with a fresh cache folder on the same disk, defaults otherwise (in (d) `--vfs-cache-max-size` the sweep's cache size).".to_owned(),
        "s3fs: defaults (path-style requests to the proxy; no `use_cache`, so no data cache of its own beyond the kernel's page cache).".to_owned(),
        "NFS-Ganesha: FSAL VFS exporting a local copy of the same files (NFSv3), with rpcbind, in the namespace; the page cache serves it once the data has been read.".to_owned(),
        "Every S3 client reaches SeaweedFS through the harness's counting proxy on the namespace's loopback, which adds no delay except in (e). SeaweedFS and the proxy share the machine's 2 cores with the servers and the clients; their CPU is not counted in the servers' CPU s/GiB, which covers the server process only (tidegate, ganesha.nfsd, rclone, s3fs).".to_owned(),
        "Each system starts fresh for each workload: new state, empty caches, the page cache dropped (echo 3 > /proc/sys/vm/drop_caches) before it starts.".to_owned(),
    ];
    if o.quick {
        notes.push(
            "Quick run: small data sets and short timed runs; the numbers are indicative only."
                .to_owned(),
        );
    }
    notes
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

fn machine_facts(work_dir: &Path) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / f64::from(1u32 << 20)))
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let fs_type = crate::write::fs_type(work_dir).unwrap_or_default();
    vec![
        ("CPU".to_owned(), format!("{cpu} ({cores} cores)")),
        ("memory".to_owned(), mem),
        ("kernel".to_owned(), kernel),
        (
            "data, caches and store".to_owned(),
            format!("{} ({fs_type})", work_dir.display()),
        ),
    ]
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn versions(o: &Options) -> Vec<(String, String)> {
    let weed = seaweed::weed_bin()
        .map(|b| first_line(Command::new(b).arg("version")))
        .unwrap_or_default();
    vec![
        (
            "tidegate".to_owned(),
            first_line(Command::new(&o.tidegate_bin).arg("--version")),
        ),
        (
            "NFS-Ganesha".to_owned(),
            first_line(Command::new("ganesha.nfsd").arg("-v")),
        ),
        (
            "rclone".to_owned(),
            first_line(Command::new(&o.rclone).arg("version")),
        ),
        (
            "s3fs".to_owned(),
            first_line(Command::new(&o.s3fs).arg("--version")),
        ),
        (
            "fio".to_owned(),
            first_line(Command::new(&o.fio).arg("--version")),
        ),
        ("SeaweedFS".to_owned(), weed),
    ]
}

/// Sleeps, failing when interrupted.
pub(crate) fn pause(d: Duration) -> Result<()> {
    sandbox::sleep_interruptible(d)
}
