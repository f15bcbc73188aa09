//! fio as the suite runs it: the nfs engine (libnfs, one TCP connection per
//! job) for NFS servers, and the kernel's file API for FUSE mounts and the
//! local disk.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::fio::{self, ReadStats};
use crate::sandbox::{self, Sandbox};

/// Where fio reads.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The libnfs URL of an NFS export root (run inside the namespace).
    Nfs(&'a str),
    /// A folder of the harness's mount namespace: a FUSE mount (buffered
    /// I/O, the kernel's readahead) or the local disk (`direct`).
    Dir { dir: &'a Path, direct: bool },
}

/// One fio job.
#[derive(Debug, Clone, Copy)]
pub struct FioJob<'a> {
    pub name: &'a str,
    pub target: Target<'a>,
    /// File name relative to the export root or the folder.
    pub file: &'a str,
    /// Bytes of the file covered (split between the streams).
    pub size_bytes: u64,
    /// `read`, `randread` or `write`.
    pub rw: &'a str,
    pub block_bytes: u64,
    /// Requests in flight per stream.
    pub iodepth: u32,
    /// Parallel streams, each over its own share of the file (and, for
    /// NFS, its own connection).
    pub streams: u32,
    /// Measured and unmeasured (ramp) seconds; `None` covers the size
    /// once.
    pub timed: Option<(u64, u64)>,
}

/// Extra time allowed beyond a timed job's runtime and ramp.
const JOB_SLACK: Duration = Duration::from_secs(120);

impl FioJob<'_> {
    /// The fio command; NFS jobs run in the namespace of `sb`.
    fn command(&self, fio: &Path, sb: Option<&Sandbox>) -> Result<Command> {
        let mut cmd = match self.target {
            Target::Nfs(_) => sb.context("an NFS job runs in the sandbox")?.command(fio),
            Target::Dir { .. } => {
                let mut c = Command::new(fio);
                c.stdin(Stdio::null()).process_group(0);
                c
            }
        };
        cmd.arg(format!("--name={}", self.name));
        match self.target {
            Target::Nfs(url) => {
                cmd.arg("--ioengine=nfs")
                    .arg(format!("--nfs_url={url}"))
                    .arg(format!("--iodepth={}", self.iodepth));
            }
            Target::Dir { dir, direct } => {
                cmd.arg(format!("--directory={}", dir.display()));
                if self.iodepth > 1 {
                    // Buffered io_uring reads are handed to kernel workers,
                    // so `iodepth` of them really are in flight.
                    cmd.arg("--ioengine=io_uring")
                        .arg(format!("--iodepth={}", self.iodepth));
                } else {
                    cmd.arg("--ioengine=psync");
                }
                if direct {
                    cmd.arg("--direct=1");
                }
            }
        }
        let streams = u64::from(self.streams.max(1));
        let share = (self.size_bytes / streams) / self.block_bytes * self.block_bytes;
        cmd.arg(format!("--filename={}", self.file))
            .arg(format!("--rw={}", self.rw))
            .arg(format!("--bs={}", self.block_bytes))
            .arg(format!("--size={share}"))
            .arg("--percentile_list=50:99:99.9")
            .arg("--norandommap=1");
        if streams > 1 {
            cmd.arg(format!("--numjobs={streams}"))
                .arg(format!("--offset_increment={share}"))
                .arg("--group_reporting=1");
        }
        if let Some((runtime, ramp)) = self.timed {
            cmd.arg("--time_based=1")
                .arg(format!("--runtime={runtime}"))
                .arg(format!("--ramp_time={ramp}"));
        }
        Ok(cmd)
    }

    /// Runs the job with JSON output to `out`; fails when fio fails, reads
    /// nothing, or (untimed) reads less than the whole size.
    pub fn run(
        &self,
        fio: &Path,
        sb: &Sandbox,
        out: &Path,
        timeout: Duration,
    ) -> Result<ReadStats> {
        let mut cmd = self.command(fio, Some(sb))?;
        let stderr_path = out.with_extension("stderr");
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        cmd.arg("--output-format=json")
            .arg(format!("--output={}", out.display()))
            .stdout(Stdio::null())
            .stderr(stderr);
        let shown = sandbox::describe(&cmd);
        let timeout = match self.timed {
            Some((runtime, ramp)) => Duration::from_secs(runtime + ramp) + JOB_SLACK,
            None => timeout,
        };
        let mut child = cmd.spawn().with_context(|| format!("start {shown}"))?;
        let status = sandbox::wait_child(&mut child, "fio", timeout)?;
        let errors = sandbox::log_tail(&stderr_path, 5);
        if !status.success() {
            bail!("fio failed ({status}): {errors}");
        }
        let text = fs::read_to_string(out).with_context(|| format!("read {}", out.display()))?;
        let mut stats = if self.rw == "write" {
            fio::parse_write_stats(&text)?
        } else {
            fio::parse_read_stats(&text)?
        };
        let s = stats.remove(0);
        if s.error != 0 {
            bail!("fio job {} ended with error {}: {errors}", s.job, s.error);
        }
        if s.io_bytes == 0 {
            bail!("fio job {} moved no data: {errors}", s.job);
        }
        if self.timed.is_none() {
            let streams = u64::from(self.streams.max(1));
            let want = (self.size_bytes / streams) / self.block_bytes * self.block_bytes * streams;
            if s.io_bytes != want {
                bail!(
                    "fio job {} moved {} bytes, expected {want}",
                    s.job,
                    s.io_bytes
                );
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_split_the_file_in_whole_blocks() {
        let job = FioJob {
            name: "x",
            target: Target::Dir {
                dir: Path::new("/d"),
                direct: true,
            },
            file: "f",
            size_bytes: (10 << 20) + 5,
            rw: "read",
            block_bytes: 1 << 20,
            iodepth: 16,
            streams: 4,
            timed: Some((5, 1)),
        };
        let cmd = job.command(Path::new("/bin/fio"), None).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--size=2097152",
            "--offset_increment=2097152",
            "--numjobs=4",
            "--ioengine=io_uring",
            "--direct=1",
            "--time_based=1",
            "--directory=/d",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        let nfs = FioJob {
            target: Target::Nfs("nfs://x/"),
            ..job
        };
        assert!(nfs.command(Path::new("/bin/fio"), None).is_err());
    }
}
