//! Benchmarks for tidegate.
//!
//! The side-by-side harness (`src/bin/sidebyside.rs`, run by
//! `cargo xtask bench`) measures tidegate against NFS-Ganesha serving the
//! same file from the same machine, with the same client: fio's nfs engine
//! (libnfs, NFSv3 over TCP), using the job files in `fio/`. Both servers run
//! in a private network namespace that holds only `lo`, which also lets
//! Ganesha's rpcbind run without touching the host's.
//!
//! What the numbers mean: both peers serve from the page cache (every run is
//! preceded by one full read through each server), so the comparison is of
//! the request path — RPC handling, copies, scheduling — not of disks. On a
//! 2-core machine the client and server share the cores, which bounds both.
//!
//! The warm-cache section ([`warm`]) repeats the comparison with tidegate's
//! block cache on (`--cache`), warmed before the timed runs, and adds the
//! CPU time each server spends per GiB served and tidegate's cache and
//! zero-copy counters.
//!
//! The harness also measures reads through S3: SeaweedFS ([`seaweed`])
//! runs in the same namespace, and tidegate and `rclone serve nfs` serve the
//! same bucket ([`servers`]); the same servers, and tidegate without
//! prefetch, read it cold through a proxy that delays every S3 answer
//! ([`latency`]); and, with `--listing`, the scale of one huge directory
//! listing ([`listing`]). The write section ([`write`]) measures sequential
//! write throughput against Ganesha and the time to save a checkpoint into
//! S3 (write, rename, until the object is whole) against s3fs.
//!
//! This library holds the parts that are worth unit-testing on their own:
//! a small JSON reader/writer ([`json`]), fio result extraction ([`fio`]),
//! the namespace/process sandbox ([`sandbox`]), a minimal S3 client
//! ([`s3`]) and a minimal NFSv3 client ([`nfs3`]) for the walkers.

pub mod clock;
pub mod dataset;
pub mod epoch;
pub mod fio;
pub mod ganesha;
pub mod json;
pub mod latency;
pub mod listing;
pub mod meta;
pub mod nfs3;
pub mod report;
pub mod s3;
pub mod s3bench;
pub mod sandbox;
pub mod seaweed;
pub mod servers;
pub mod suite;
pub mod tree;
pub mod warm;
pub mod write;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

/// Largest HTTP response [`http_get`] reads.
const HTTP_RESPONSE_BYTES_MAX: u64 = 64 << 20;

/// An executable named `name` on PATH (then `/usr/sbin`, `/sbin`). A
/// pyenv shim is resolved to the program behind it, so that the process
/// started is the program itself (its pid, its memory).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())?;
    if found.components().any(|c| c.as_os_str() == "shims") {
        if let Some(real) = pyenv_which(name) {
            return Some(real);
        }
    }
    Some(found)
}

fn pyenv_which(name: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("pyenv")
        .args(["which", name])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// The workspace root (benches/ sits directly under it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Peak resident memory of a process in bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// CPU time a process has used so far, in seconds: `utime + stime` of
/// `/proc/PID/stat`, which for a process (thread group) sums all its
/// threads, those that exited included; children are not counted.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    cpu_secs_of_stat(&stat).with_context(|| format!("parse {path}: {stat:?}"))
}

fn cpu_secs_of_stat(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name start at field 3
    // (state); utime and stime are fields 14 and 15, in clock ticks.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime_ticks: u64 = rest.next()?.parse().ok()?;
    let stime_ticks: u64 = rest.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks_per_s > 0).then(|| (utime_ticks + stime_ticks) as f64 / ticks_per_s as f64)
}

/// The body of `GET path` from `127.0.0.1:port` (HTTP/1.0, connection
/// closed by the server); fails unless the status is 200. Call from inside
/// the namespace ([`sandbox::Sandbox::in_netns`]).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect for GET {url}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .with_context(|| format!("send GET {url}"))?;
    let mut text = String::new();
    s.take(HTTP_RESPONSE_BYTES_MAX)
        .read_to_string(&mut text)
        .with_context(|| format!("read the response to GET {url}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {url}: response without end of headers"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("GET {url}: {status_line}");
    }
    Ok(body.to_owned())
}

/// `tidegate / peer` as `1.23x`, or `-` when there is no ratio.
pub fn ratio_text(tidegate: f64, peer: f64) -> String {
    if peer > 0.0 && tidegate.is_finite() {
        format!("{:.2}x", tidegate / peer)
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_from_stat() {
        // A command name with spaces and parentheses, as the kernel allows.
        let stat = "4242 (ganesha (x) d) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 150 0 0 20 0 9 0";
        // SAFETY: as in cpu_secs_of_stat.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_secs_of_stat(stat), Some(400.0 / hz));
        assert_eq!(cpu_secs_of_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_secs(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio_text(3.0, 2.0), "1.50x");
        assert_eq!(ratio_text(3.0, 0.0), "-");
    }
}
