//! The metadata workload's clients: listing one big directory, and a
//! `stat` of each of its names, one call in flight.
//!
//! Through NFS, listing is what the kernel client sends for a first
//! `ls -l`: READDIRPLUS pages until eof on one connection; a stat is a
//! LOOKUP, whose reply carries the attributes (with a GETATTR when it does
//! not). Through the file system, they are `read_dir` and
//! `symlink_metadata`. The times cover only those calls, not connecting,
//! mounting or finding the directory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::epoch::{nfs_session, with_deadline, ReadPath};
use crate::nfs3::Status;

/// READDIRPLUS dircount and maxcount: 128 KiB, what the Linux client asks
/// for once its directory reads have grown to the usual rsize.
pub const LIST_PAGE_BYTES: u32 = 128 << 10;
/// Most READDIRPLUS pages of one listing (far more than 10 million entries
/// need).
const LIST_PAGES_MAX: u64 = 1 << 20;

/// One listing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListStats {
    pub secs: f64,
    /// Entries other than `.` and `..`.
    pub entries: u64,
    /// READDIRPLUS calls (0 through the file system).
    pub calls: u64,
}

/// One stat of every name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatStats {
    pub secs: f64,
    pub files: u64,
}

/// Fails once `deadline` (`timeout` after the start) has passed.
fn check_deadline(deadline: Instant, timeout: Duration) -> Result<()> {
    ensure!(
        Instant::now() < deadline,
        "timed out after {}s",
        timeout.as_secs_f64()
    );
    Ok(())
}

/// Lists `dir` (relative to the export or root) once; the number of
/// entries is returned for the caller to check. Fails at `timeout`.
pub fn list_dir(path: &ReadPath, dir: &str, timeout: Duration) -> Result<ListStats> {
    let (path, dir) = (path.clone(), dir.to_owned());
    let what = format!("list {dir}");
    let context = what.clone();
    with_deadline(timeout, &what, move || {
        let deadline = Instant::now() + timeout;
        match path {
            ReadPath::Nfs {
                addr,
                mount_addr,
                export,
            } => list_nfs((addr, mount_addr), &export, &dir, deadline, timeout),
            ReadPath::Posix { root } => list_posix(&root.join(&dir), deadline, timeout),
        }
        .context(context)
    })
}

/// `addrs` is (NFS, MOUNT).
fn list_nfs(
    addrs: (SocketAddr, SocketAddr),
    export: &str,
    dir: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<ListStats> {
    let (mut c, root) = nfs_session(addrs.0, addrs.1, export, timeout)?;
    let dfh = c.lookup_path(&root, dir)?;
    let start = Instant::now();
    let mut entries = 0u64;
    let calls = c.readdir_all(&dfh, true, LIST_PAGE_BYTES, LIST_PAGES_MAX, |e| {
        if e.name != b"." && e.name != b".." {
            entries += 1;
        }
        check_deadline(deadline, timeout)
    })?;
    Ok(ListStats {
        secs: start.elapsed().as_secs_f64(),
        entries,
        calls,
    })
}

fn list_posix(dir: &Path, deadline: Instant, timeout: Duration) -> Result<ListStats> {
    let start = Instant::now();
    let mut entries = 0u64;
    for e in std::fs::read_dir(dir).with_context(|| format!("open {}", dir.display()))? {
        e.with_context(|| format!("read {}", dir.display()))?;
        entries += 1;
        check_deadline(deadline, timeout)?;
    }
    Ok(ListStats {
        secs: start.elapsed().as_secs_f64(),
        entries,
        calls: 0,
    })
}

/// Stats every name of `names` in `dir`, one call at a time; fails on the
/// first missing name, or at `timeout`.
pub fn stat_all(
    path: &ReadPath,
    dir: &str,
    names: &[String],
    timeout: Duration,
) -> Result<StatStats> {
    let (path, dir, names) = (path.clone(), dir.to_owned(), names.to_vec());
    let what = format!("stat the entries of {dir}");
    let context = what.clone();
    with_deadline(timeout, &what, move || {
        let deadline = Instant::now() + timeout;
        match path {
            ReadPath::Nfs {
                addr,
                mount_addr,
                export,
            } => stat_nfs((addr, mount_addr), &export, &dir, &names, deadline, timeout),
            ReadPath::Posix { root } => stat_posix(&root.join(&dir), &names, deadline, timeout),
        }
        .context(context)
    })
}

/// `addrs` is (NFS, MOUNT).
fn stat_nfs(
    addrs: (SocketAddr, SocketAddr),
    export: &str,
    dir: &str,
    names: &[String],
    deadline: Instant,
    timeout: Duration,
) -> Result<StatStats> {
    let (mut c, root) = nfs_session(addrs.0, addrs.1, export, timeout)?;
    let dfh = c.lookup_path(&root, dir)?;
    let start = Instant::now();
    for name in names {
        match c.lookup(&dfh, name.as_bytes())? {
            Ok((_, Some(_))) => {}
            Ok((fh, None)) => {
                if let Err(Status(s)) = c.getattr(&fh)? {
                    bail!("GETATTR {dir}/{name} failed with nfsstat3 {s}");
                }
            }
            Err(Status(s)) => bail!("LOOKUP {dir}/{name} failed with nfsstat3 {s}"),
        }
        check_deadline(deadline, timeout)?;
    }
    Ok(StatStats {
        secs: start.elapsed().as_secs_f64(),
        files: names.len() as u64,
    })
}

fn stat_posix(
    dir: &Path,
    names: &[String],
    deadline: Instant,
    timeout: Duration,
) -> Result<StatStats> {
    let start = Instant::now();
    for name in names {
        let p = dir.join(name);
        std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        check_deadline(deadline, timeout)?;
    }
    Ok(StatStats {
        secs: start.elapsed().as_secs_f64(),
        files: names.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::dataset::{self, ImagenetSpec};
    use crate::epoch::run_epoch;

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// A fresh directory under the system's temporary directory, removed
    /// on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("tg-bench-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn posix_workloads_end_to_end() {
        let tmp = TempDir::new("posix-e2e");
        let spec = ImagenetSpec::with_counts(50, 5);
        let files = spec.files();
        let mut calls = 0u64;
        dataset::write_local(&spec, tmp.path(), |done, total| {
            calls += 1;
            assert!(done <= total && total == 50);
        })
        .unwrap();
        assert_eq!(calls, 50);
        // A rerun finds every file in place.
        let before = std::fs::metadata(tmp.path().join(&files[0].path))
            .unwrap()
            .modified()
            .unwrap();
        dataset::write_local(&spec, tmp.path(), |_, _| {}).unwrap();
        let after = std::fs::metadata(tmp.path().join(&files[0].path))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after, "rerun rewrote a file");

        let path = ReadPath::Posix {
            root: tmp.path().to_owned(),
        };
        let total_bytes: u64 = files.iter().map(|f| f.size_bytes).sum();
        let done = AtomicU64::new(0);
        for epoch in 0..2 {
            let s = run_epoch(&path, &files, spec.seed, epoch, 4, TIMEOUT, Some(&done)).unwrap();
            assert_eq!((s.files, s.bytes), (50, total_bytes));
            assert!(s.secs > 0.0);
            assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 50);
        }

        let class = &spec.class_dirs()[3];
        let l = list_dir(&path, class, TIMEOUT).unwrap();
        assert_eq!((l.entries, l.calls), (10, 0));

        dataset::write_flat_local(tmp.path(), "meta", 100).unwrap();
        dataset::write_flat_local(tmp.path(), "meta", 100).unwrap();
        assert_eq!(list_dir(&path, "meta", TIMEOUT).unwrap().entries, 100);
        let names = dataset::flat_names(100);
        assert_eq!(stat_all(&path, "meta", &names, TIMEOUT).unwrap().files, 100);
        let missing = dataset::flat_names(101);
        let e = stat_all(&path, "meta", &missing, TIMEOUT).unwrap_err();
        assert!(format!("{e:#}").contains("f0000100"), "{e:#}");

        // One flipped byte fails the epoch, naming the file.
        let victim = &files[17];
        let p = tmp.path().join(&victim.path);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let e = run_epoch(&path, &files, spec.seed, 0, 4, TIMEOUT, None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&victim.path) && msg.contains("offset 1000"),
            "{msg}"
        );

        // So does a short file; and write_local puts it right.
        bytes[1000] ^= 1;
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&p, &bytes).unwrap();
        let e = run_epoch(&path, &files, spec.seed, 1, 2, TIMEOUT, None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&victim.path) && msg.contains("expected"),
            "{msg}"
        );
        dataset::write_local(&spec, tmp.path(), |_, _| {}).unwrap();
        run_epoch(&path, &files, spec.seed, 2, 3, TIMEOUT, None).unwrap();

        // A missing directory.
        assert!(list_dir(&path, "nowhere", TIMEOUT).is_err());
    }
}
