//! Reading fio's JSON output into the numbers the harness reports.
//!
//! fio writes one object per job under `jobs`; for read jobs the numbers
//! live under `read`: `io_bytes`, `bw_bytes` (bytes/s), `iops`, and the
//! completion latency `clat_ns` with its `percentile` map keyed by strings
//! such as `"99.000000"`. Completion latency is submit-to-completion as seen
//! by the client, which for the nfs engine is one RPC round trip plus the
//! queueing behind the other requests in flight.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::json::{self, Value};
use crate::sandbox::{self, Sandbox};

/// The metrics of one fio job in one direction: its reads (the name), or
/// its writes when parsed with [`parse_write_stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadStats {
    pub job: String,
    /// fio's per-job error (an errno); 0 when the job ran clean.
    pub error: i64,
    pub io_bytes: u64,
    pub runtime_ms: u64,
    pub bw_bytes_per_s: f64,
    pub iops: f64,
    pub clat_us_mean: f64,
    pub clat_us_p50: f64,
    pub clat_us_p99: f64,
}

impl ReadStats {
    pub fn mib_per_s(&self) -> f64 {
        self.bw_bytes_per_s / (1024.0 * 1024.0)
    }
}

/// Parses fio's `--output-format=json` output and returns every job's read
/// statistics. Text before the first `{` (fio's notes) is skipped.
pub fn parse_read_stats(text: &str) -> Result<Vec<ReadStats>> {
    parse_stats(text, Ddir::Read)
}

/// As [`parse_read_stats`], for the numbers under `write`.
pub fn parse_write_stats(text: &str) -> Result<Vec<ReadStats>> {
    parse_stats(text, Ddir::Write)
}

/// Which side of a job's numbers to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ddir {
    Read,
    Write,
}

impl Ddir {
    fn key(self) -> &'static str {
        match self {
            Ddir::Read => "read",
            Ddir::Write => "write",
        }
    }
}

fn parse_stats(text: &str, ddir: Ddir) -> Result<Vec<ReadStats>> {
    let start = text.find('{').context("no JSON object in fio output")?;
    let doc = json::parse(&text[start..]).context("parse fio JSON")?;
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .context("fio JSON has no jobs array")?;
    if jobs.is_empty() {
        bail!("fio JSON has an empty jobs array");
    }
    jobs.iter().map(|job| job_stats(job, ddir)).collect()
}

/// The fio version string from its JSON output, when present.
pub fn version(text: &str) -> Option<String> {
    let start = text.find('{')?;
    let doc = json::parse(&text[start..]).ok()?;
    doc.get("fio version")?.as_str().map(str::to_owned)
}

fn job_stats(job: &Value, ddir: Ddir) -> Result<ReadStats> {
    let side = ddir.key();
    let name = job
        .get("jobname")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let num = |path: &[&str]| -> Result<f64> {
        job.path(path)
            .and_then(Value::as_f64)
            .with_context(|| format!("fio job {name}: missing {}", path.join(".")))
    };
    let percentile = |p: &str| -> Result<f64> {
        let ns = num(&[side, "clat_ns", "percentile", p])?;
        Ok(ns / 1000.0)
    };
    let io_bytes = num(&[side, "io_bytes"])?;
    // With no completed I/O fio leaves the percentile map out.
    let (p50, p99) = if io_bytes > 0.0 {
        (percentile("50.000000")?, percentile("99.000000")?)
    } else {
        (0.0, 0.0)
    };
    Ok(ReadStats {
        error: num(&["error"])? as i64,
        io_bytes: io_bytes as u64,
        runtime_ms: num(&[side, "runtime"])? as u64,
        bw_bytes_per_s: num(&[side, "bw_bytes"])?,
        iops: num(&[side, "iops"])?,
        clat_us_mean: num(&[side, "clat_ns", "mean"])? / 1000.0,
        clat_us_p50: p50,
        clat_us_p99: p99,
        job: name,
    })
}

/// One fio run's read statistics and the bytes that crossed the
/// namespace's `lo` meanwhile.
#[derive(Debug, Clone)]
pub struct Measured {
    pub stats: ReadStats,
    pub lo_bytes: u64,
}

impl Measured {
    /// The numbers as members of a results JSON object.
    pub fn json_members(&self) -> [(&'static str, Value); 8] {
        let s = &self.stats;
        [
            ("mib_per_s", Value::from(s.mib_per_s())),
            ("iops", Value::from(s.iops)),
            ("clat_us_mean", Value::from(s.clat_us_mean)),
            ("clat_us_p50", Value::from(s.clat_us_p50)),
            ("clat_us_p99", Value::from(s.clat_us_p99)),
            ("io_bytes", Value::from(s.io_bytes)),
            ("runtime_ms", Value::from(s.runtime_ms)),
            ("lo_bytes", Value::from(self.lo_bytes)),
        ]
    }
}

/// Runs fio (`cmd`, already holding the job) with JSON output to `out`,
/// and checks its exit status, its per-job error, and that the bytes on
/// `lo` cover the bytes it read. Returns the first job's numbers and fio's
/// version.
pub fn run(
    sb: &Sandbox,
    cmd: Command,
    out: &Path,
    timeout: Duration,
) -> Result<(Measured, String)> {
    run_ddir(sb, cmd, out, timeout, Ddir::Read)
}

/// As [`run`], for a job whose numbers are those of `ddir` (a write job's
/// bytes cross `lo` too, client to server).
pub fn run_ddir(
    sb: &Sandbox,
    mut cmd: Command,
    out: &Path,
    timeout: Duration,
    ddir: Ddir,
) -> Result<(Measured, String)> {
    let stderr_path = out.with_extension("stderr");
    let stderr =
        File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
    cmd.arg("--output-format=json")
        .arg(format!("--output={}", out.display()))
        .stdout(Stdio::null())
        .stderr(stderr);
    let shown = sandbox::describe(&cmd);
    let lo_before = sb.lo_tx_bytes()?;
    let mut child = cmd.spawn().with_context(|| format!("start {shown}"))?;
    let status = sandbox::wait_child(&mut child, "fio", timeout)?;
    let lo_bytes = sb.lo_tx_bytes()?.saturating_sub(lo_before);
    let errors = sandbox::log_tail(&stderr_path, 5);
    if !status.success() {
        bail!("fio failed ({status}): {errors}");
    }
    let text = fs::read_to_string(out).with_context(|| format!("read {}", out.display()))?;
    let mut stats = parse_stats(&text, ddir)?;
    let stats = stats.remove(0);
    if stats.error != 0 {
        bail!(
            "fio job {} ended with error {}: {errors}",
            stats.job,
            stats.error
        );
    }
    if lo_bytes < stats.io_bytes {
        bail!(
            "fio reports {} bytes {} but only {lo_bytes} bytes crossed lo",
            stats.io_bytes,
            match ddir {
                Ddir::Read => "read",
                Ddir::Write => "written",
            }
        );
    }
    Ok((
        Measured { stats, lo_bytes },
        version(&text).unwrap_or_default(),
    ))
}

/// A timed job of `benches/fio/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The job's section name in its file, and its name in reports.
    pub name: &'static str,
    pub file: &'static str,
}

/// The timed jobs, in the order they run and are reported: sequential
/// 1 MiB reads at iodepth 16, random 4 KiB reads at iodepth 32.
pub const JOBS: &[Job] = &[
    Job {
        name: "seq-read-1m",
        file: "seq-read-1m.fio",
    },
    Job {
        name: "rand-read-4k",
        file: "rand-read-4k.fio",
    },
];

/// Extra time allowed to a timed job beyond its runtime and ramp.
const JOB_SLACK: Duration = Duration::from_secs(120);

/// What every timed job shares, whatever the server: the client, the
/// file, and the durations.
#[derive(Debug, Clone, Copy)]
pub struct JobParams<'a> {
    /// fio built with the nfs engine.
    pub fio: &'a Path,
    pub file_name: &'a str,
    pub size_bytes: u64,
    /// Measured seconds.
    pub runtime_secs: u64,
    /// Unmeasured seconds before the measured window.
    pub ramp_secs: u64,
}

/// Runs `job` against the export root at the libnfs URL `url` (the job
/// file reads its parameters from `TG_*` variables), with JSON output to
/// `out`; fails when fio read nothing. Returns the numbers of the measured
/// window (the ramp excluded) and fio's version.
pub fn run_job(
    sb: &Sandbox,
    p: &JobParams<'_>,
    job: Job,
    url: &str,
    out: &Path,
) -> Result<(Measured, String)> {
    let job_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fio")
        .join(job.file);
    let mut cmd = sb.command(p.fio);
    cmd.arg(&job_path)
        .env("TG_NFS_URL", url)
        .env("TG_FILE", p.file_name)
        .env("TG_SIZE", p.size_bytes.to_string())
        .env("TG_RUNTIME", p.runtime_secs.to_string())
        .env("TG_RAMP", p.ramp_secs.to_string());
    let timeout = Duration::from_secs(p.runtime_secs + p.ramp_secs) + JOB_SLACK;
    let result = run(sb, cmd, out, timeout)?;
    if result.0.stats.io_bytes == 0 {
        bail!("fio job {} read nothing", job.name);
    }
    Ok(result)
}

/// Reads `size_bytes` of `file_name` once, sequentially in 1 MiB requests
/// with 16 in flight (the shape of `fio/seq-read-1m.fio`, not time-based),
/// through the libnfs URL `url`; fails unless every byte was read. The job
/// is named after `out`'s file stem.
pub fn read_once(
    sb: &Sandbox,
    fio: &Path,
    url: &str,
    file_name: &str,
    size_bytes: u64,
    out: &Path,
    timeout: Duration,
) -> Result<(Measured, String)> {
    let read = SeqRead {
        fio,
        url,
        file_name,
        size_bytes,
        iodepth: 16,
    };
    read.run(sb, out, timeout)
}

/// One sequential pass over a whole file in 1 MiB requests, `iodepth` of
/// them in flight on one connection (not time-based).
#[derive(Debug, Clone, Copy)]
pub struct SeqRead<'a> {
    /// fio built with the nfs engine.
    pub fio: &'a Path,
    /// libnfs URL of the export root.
    pub url: &'a str,
    pub file_name: &'a str,
    pub size_bytes: u64,
    pub iodepth: u32,
}

impl SeqRead<'_> {
    /// Runs the pass with JSON output to `out`; fails unless every byte
    /// was read. The job is named after `out`'s file stem. Returns fio's
    /// numbers and its version.
    pub fn run(&self, sb: &Sandbox, out: &Path, timeout: Duration) -> Result<(Measured, String)> {
        let name = out
            .file_stem()
            .map_or("read".into(), |s| s.to_string_lossy());
        let mut cmd = sb.command(self.fio);
        cmd.arg(format!("--name={name}"))
            .arg("--ioengine=nfs")
            .arg(format!("--nfs_url={}", self.url))
            .arg(format!("--filename={}", self.file_name))
            .arg(format!("--size={}", self.size_bytes))
            .args(["--rw=read", "--bs=1M"])
            .arg(format!("--iodepth={}", self.iodepth))
            .arg("--percentile_list=50:99:99.9");
        let (m, version) = run(sb, cmd, out, timeout)?;
        if m.stats.io_bytes != self.size_bytes {
            bail!(
                "read {} bytes of {}, expected {}",
                m.stats.io_bytes,
                self.file_name,
                self.size_bytes
            );
        }
        Ok((m, version))
    }
}

/// One sequential write of a whole new file in 1 MiB requests, `iodepth`
/// of them in flight on one connection (not time-based). fio's nfs engine
/// opens the file with `O_CREAT` (libnfs CREATEs it when missing) and
/// libnfs sends every WRITE `UNSTABLE`; neither fio's close nor libnfs's
/// sends a COMMIT, so the data is on stable storage only once the caller
/// commits it.
#[derive(Debug, Clone, Copy)]
pub struct SeqWrite<'a> {
    /// fio built with the nfs engine.
    pub fio: &'a Path,
    /// libnfs URL of the export root.
    pub url: &'a str,
    pub file_name: &'a str,
    pub size_bytes: u64,
    pub iodepth: u32,
}

impl SeqWrite<'_> {
    /// Runs the write with JSON output to `out`; fails unless every byte
    /// was written. The job is named after `out`'s file stem. Returns
    /// fio's write-side numbers and its version.
    pub fn run(&self, sb: &Sandbox, out: &Path, timeout: Duration) -> Result<(Measured, String)> {
        let name = out
            .file_stem()
            .map_or("write".into(), |s| s.to_string_lossy());
        let mut cmd = sb.command(self.fio);
        cmd.arg(format!("--name={name}"))
            .arg("--ioengine=nfs")
            .arg(format!("--nfs_url={}", self.url))
            .arg(format!("--filename={}", self.file_name))
            .arg(format!("--size={}", self.size_bytes))
            .args(["--rw=write", "--bs=1M"])
            .arg(format!("--iodepth={}", self.iodepth))
            .arg("--percentile_list=50:99:99.9");
        let (m, version) = run_ddir(sb, cmd, out, timeout, Ddir::Write)?;
        if m.stats.io_bytes != self.size_bytes {
            bail!(
                "wrote {} bytes of {}, expected {}",
                m.stats.io_bytes,
                self.file_name,
                self.size_bytes
            );
        }
        Ok((m, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: a line fio sometimes prints first
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "rand-read-4k",
      "error" : 0,
      "read" : {
        "io_bytes" : 2147483648,
        "bw_bytes" : 107374182,
        "iops" : 26214.4,
        "runtime" : 20000,
        "clat_ns" : {
          "mean" : 1200000.5,
          "percentile" : { "50.000000" : 1056768, "99.000000" : 3719168, "99.900000" : 5000000 }
        }
      },
      "write" : { "io_bytes" : 0 }
    }
  ]
}"#;

    #[test]
    fn extracts_read_stats() {
        let stats = parse_read_stats(SAMPLE).unwrap();
        assert_eq!(stats.len(), 1);
        let s = &stats[0];
        assert_eq!(s.job, "rand-read-4k");
        assert_eq!(s.error, 0);
        assert_eq!(s.io_bytes, 2 << 30);
        assert_eq!(s.runtime_ms, 20000);
        assert!((s.mib_per_s() - 102.4).abs() < 0.01);
        assert!((s.iops - 26214.4).abs() < 1e-9);
        assert!((s.clat_us_p50 - 1056.768).abs() < 1e-9);
        assert!((s.clat_us_p99 - 3719.168).abs() < 1e-9);
        assert!((s.clat_us_mean - 1200.0005).abs() < 1e-9);
        assert_eq!(version(SAMPLE).as_deref(), Some("fio-3.33"));
    }

    #[test]
    fn extracts_write_stats() {
        let text = SAMPLE.replace(
            r#""write" : { "io_bytes" : 0 }"#,
            r#""write" : { "io_bytes" : 1048576, "bw_bytes" : 524288, "iops" : 0.5,
                "runtime" : 2000, "clat_ns" : { "mean" : 3000.0,
                "percentile" : { "50.000000" : 2000, "99.000000" : 4000 } } }"#,
        );
        let w = &parse_write_stats(&text).unwrap()[0];
        assert_eq!((w.io_bytes, w.runtime_ms), (1 << 20, 2000));
        assert!((w.mib_per_s() - 0.5).abs() < 1e-9);
        assert!((w.clat_us_p99 - 4.0).abs() < 1e-9);
        assert_eq!(parse_read_stats(&text).unwrap()[0].io_bytes, 2 << 30);
    }

    #[test]
    fn rejects_output_without_jobs() {
        assert!(parse_read_stats("fio: engine nfs not loadable").is_err());
        assert!(parse_read_stats(r#"{"jobs": []}"#).is_err());
        assert!(parse_read_stats(r#"{"jobs": [{"jobname": "x", "error": 0}]}"#).is_err());
    }
}
