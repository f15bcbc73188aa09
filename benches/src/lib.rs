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
//! The harness also measures reads through S3: SeaweedFS ([`seaweed`])
//! runs in the same namespace, and tidegate and `rclone serve nfs` serve the
//! same bucket ([`servers`]); and, with `--listing`, the scale of one huge
//! directory listing ([`listing`]).
//!
//! This library holds the parts that are worth unit-testing on their own:
//! a small JSON reader/writer ([`json`]), fio result extraction ([`fio`]),
//! the namespace/process sandbox ([`sandbox`]), a minimal S3 client
//! ([`s3`]) and a minimal NFSv3 client ([`nfs3`]) for the walkers.

pub mod clock;
pub mod fio;
pub mod json;
pub mod listing;
pub mod nfs3;
pub mod s3;
pub mod s3bench;
pub mod sandbox;
pub mod seaweed;
pub mod servers;
pub mod tree;

use std::path::{Path, PathBuf};

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
    use anyhow::Context;
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
