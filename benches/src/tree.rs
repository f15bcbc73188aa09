//! The small-file tree of the S3 benchmark and the stat walk over it.
//!
//! The tree is `tree/dNN/fNNN.bin`: `dirs` directories of `files_per_dir`
//! files of `file_bytes` pseudo-random bytes each, uploaded to the bucket
//! with many connections. The stat walk is what `ls -lR` makes a client
//! do, one call at a time: READDIR each directory, then LOOKUP and GETATTR
//! every entry, checking each file's type and size.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::nfs3::{self, NfsClient, Status};
use crate::s3::{S3Client, S3Target};

/// Directory of the tree inside the bucket.
pub const TREE_ROOT: &str = "tree";

#[derive(Debug, Clone, Copy)]
pub struct TreeShape {
    pub dirs: u32,
    pub files_per_dir: u32,
    pub file_bytes: usize,
}

impl TreeShape {
    /// About `files` files in directories of 100.
    pub fn for_files(files: u32, file_bytes: usize) -> Self {
        let files_per_dir = files.clamp(1, 100);
        Self {
            dirs: files.div_ceil(files_per_dir).max(1),
            files_per_dir,
            file_bytes,
        }
    }

    pub fn files(&self) -> u64 {
        u64::from(self.dirs) * u64::from(self.files_per_dir)
    }

    pub fn dir_name(d: u32) -> String {
        format!("d{d:02}")
    }

    pub fn file_name(f: u32) -> String {
        format!("f{f:03}.bin")
    }

    pub fn key(&self, d: u32, f: u32) -> String {
        format!("{TREE_ROOT}/{}/{}", Self::dir_name(d), Self::file_name(f))
    }
}

/// Deterministic pseudo-random contents (xorshift64*), distinct per file.
pub fn file_contents(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Uploads the tree with `threads` connections (call from inside the
/// namespace).
pub fn upload(target: &S3Target, bucket: &str, shape: TreeShape, threads: usize) -> Result<()> {
    let next = std::sync::atomic::AtomicU64::new(0);
    let total = shape.files();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let target = target.clone();
                let next = &next;
                scope.spawn(move || -> Result<()> {
                    let mut c = S3Client::new(target);
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            return Ok(());
                        }
                        let (d, f) = (
                            (i / u64::from(shape.files_per_dir)) as u32,
                            (i % u64::from(shape.files_per_dir)) as u32,
                        );
                        let data = file_contents(i + 1, shape.file_bytes);
                        c.put(bucket, &shape.key(d, f), &data)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .unwrap_or_else(|_| bail!("upload thread panicked"))?;
        }
        Ok(())
    })
}

/// The outcome of one stat walk.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatWalk {
    pub dirs: u64,
    pub files: u64,
    pub calls: u64,
    pub total: Duration,
}

/// READDIR of a whole directory (plain READDIR: names and cookies).
fn list_names(c: &mut NfsClient, dir: &[u8], calls: &mut u64) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut cookie = 0u64;
    let mut verf = [0u8; 8];
    for _ in 0..100_000 {
        let page = match c.readdir_page(dir, false, cookie, verf, 32_768)? {
            Ok(p) => p,
            Err(Status(s)) => bail!("READDIR failed with nfsstat3 {s}"),
        };
        *calls += 1;
        ensure!(
            !page.entries.is_empty() || page.eof,
            "READDIR reply without entries and without eof"
        );
        for e in &page.entries {
            if e.name != b"." && e.name != b".." {
                names.push(e.name.clone());
            }
        }
        if let Some(last) = page.entries.last() {
            cookie = last.cookie;
        }
        verf = page.verf;
        if page.eof {
            return Ok(names);
        }
    }
    bail!("READDIR did not reach eof")
}

fn lookup(c: &mut NfsClient, dir: &[u8], name: &[u8], calls: &mut u64) -> Result<Vec<u8>> {
    *calls += 1;
    match c.lookup(dir, name)? {
        Ok((fh, _)) => Ok(fh),
        Err(Status(s)) => bail!(
            "LOOKUP {:?} failed with nfsstat3 {s}",
            String::from_utf8_lossy(name)
        ),
    }
}

fn getattr(c: &mut NfsClient, fh: &[u8], calls: &mut u64) -> Result<nfs3::Attr> {
    *calls += 1;
    match c.getattr(fh)? {
        Ok(a) => Ok(a),
        Err(Status(s)) => bail!("GETATTR failed with nfsstat3 {s}"),
    }
}

/// Walks `TREE_ROOT` under the export root `root`: READDIR, then LOOKUP +
/// GETATTR of every entry, recursing into directories. Checks the shape.
pub fn stat_walk(c: &mut NfsClient, root: &[u8], shape: TreeShape) -> Result<StatWalk> {
    let mut w = StatWalk::default();
    let start = Instant::now();
    let top = lookup(c, root, TREE_ROOT.as_bytes(), &mut w.calls)?;
    let mut dirs = list_names(c, &top, &mut w.calls)?;
    dirs.sort();
    for d in &dirs {
        let dfh = lookup(c, &top, d, &mut w.calls)?;
        let a = getattr(c, &dfh, &mut w.calls)?;
        ensure!(
            a.ftype == nfs3::NF3DIR,
            "{} is not a directory",
            String::from_utf8_lossy(d)
        );
        w.dirs += 1;
        let names = list_names(c, &dfh, &mut w.calls)?;
        for n in &names {
            let fh = lookup(c, &dfh, n, &mut w.calls)?;
            let a = getattr(c, &fh, &mut w.calls)?;
            ensure!(
                a.ftype == nfs3::NF3REG && a.size == shape.file_bytes as u64,
                "{}/{}: type {} size {}, expected a file of {} bytes",
                String::from_utf8_lossy(d),
                String::from_utf8_lossy(n),
                a.ftype,
                a.size,
                shape.file_bytes
            );
            w.files += 1;
        }
    }
    w.total = start.elapsed();
    ensure!(
        w.dirs == u64::from(shape.dirs) && w.files == shape.files(),
        "walked {} directories and {} files, expected {} and {}",
        w.dirs,
        w.files,
        shape.dirs,
        shape.files()
    );
    Ok(w)
}

/// Connects, mounts `/` and stat-walks the tree (call from inside the
/// namespace).
pub fn stat_walk_server(port: u16, shape: TreeShape) -> Result<StatWalk> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = NfsClient::connect(addr, Duration::from_secs(60))?;
    let root = c.mount("/").context("MNT /")?;
    stat_walk(&mut c, &root, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_names() {
        let s = TreeShape::for_files(1000, 4096);
        assert_eq!((s.dirs, s.files_per_dir, s.files()), (10, 100, 1000));
        assert_eq!(s.key(3, 7), "tree/d03/f007.bin");
        let s = TreeShape::for_files(50, 1);
        assert_eq!((s.dirs, s.files_per_dir), (1, 50));
    }

    #[test]
    fn contents_are_deterministic_and_distinct() {
        assert_eq!(file_contents(1, 100), file_contents(1, 100));
        assert_ne!(file_contents(1, 100), file_contents(2, 100));
        assert_eq!(file_contents(3, 13).len(), 13);
    }
}
