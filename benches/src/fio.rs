//! Reading fio's JSON output into the numbers the harness reports.
//!
//! fio writes one object per job under `jobs`; for read jobs the numbers
//! live under `read`: `io_bytes`, `bw_bytes` (bytes/s), `iops`, and the
//! completion latency `clat_ns` with its `percentile` map keyed by strings
//! such as `"99.000000"`. Completion latency is submit-to-completion as seen
//! by the client, which for the nfs engine is one RPC round trip plus the
//! queueing behind the other requests in flight.

use anyhow::{bail, Context, Result};

use crate::json::{self, Value};

/// The read-side metrics of one fio job.
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
    let start = text.find('{').context("no JSON object in fio output")?;
    let doc = json::parse(&text[start..]).context("parse fio JSON")?;
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .context("fio JSON has no jobs array")?;
    if jobs.is_empty() {
        bail!("fio JSON has an empty jobs array");
    }
    jobs.iter().map(job_stats).collect()
}

/// The fio version string from its JSON output, when present.
pub fn version(text: &str) -> Option<String> {
    let start = text.find('{')?;
    let doc = json::parse(&text[start..]).ok()?;
    doc.get("fio version")?.as_str().map(str::to_owned)
}

fn job_stats(job: &Value) -> Result<ReadStats> {
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
        let ns = num(&["read", "clat_ns", "percentile", p])?;
        Ok(ns / 1000.0)
    };
    let io_bytes = num(&["read", "io_bytes"])?;
    // With no completed I/O fio leaves the percentile map out.
    let (p50, p99) = if io_bytes > 0.0 {
        (percentile("50.000000")?, percentile("99.000000")?)
    } else {
        (0.0, 0.0)
    };
    Ok(ReadStats {
        error: num(&["error"])? as i64,
        io_bytes: io_bytes as u64,
        runtime_ms: num(&["read", "runtime"])? as u64,
        bw_bytes_per_s: num(&["read", "bw_bytes"])?,
        iops: num(&["read", "iops"])?,
        clat_us_mean: num(&["read", "clat_ns", "mean"])? / 1000.0,
        clat_us_p50: p50,
        clat_us_p99: p99,
        job: name,
    })
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
    fn rejects_output_without_jobs() {
        assert!(parse_read_stats("fio: engine nfs not loadable").is_err());
        assert!(parse_read_stats(r#"{"jobs": []}"#).is_err());
        assert!(parse_read_stats(r#"{"jobs": [{"jobname": "x", "error": 0}]}"#).is_err());
    }
}
