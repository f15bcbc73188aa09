//! An ImageNet-like training set for the read-epoch workload, and the flat
//! directory of empty files for the metadata workload.
//!
//! The training set is `imagenet/nDDDDDDDD/nDDDDDDDD_KKKKK.JPEG`: `files`
//! files spread round-robin over `dirs` class directories, with sizes drawn
//! from a log-normal distribution shaped like ImageNet's JPEGs (median
//! about 100 KiB, mean about 110 KiB, clamped to [4 KiB, 1 MiB]). Sizes
//! and contents are pure functions of the seed and the file's index, so a
//! reader can check every byte it reads without the data being stored
//! anywhere but in the system under test.
//!
//! The flat directory is `count` empty files `f0000000`, `f0000001`, … in
//! one directory.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use crate::s3::{S3Client, S3Target};

/// Top directory of the training set (locally and in the bucket).
pub const IMAGENET_ROOT: &str = "imagenet";
/// Smallest file of the training set.
pub const FILE_BYTES_MIN: u64 = 4 << 10;
/// Largest file of the training set.
pub const FILE_BYTES_MAX: u64 = 1 << 20;
/// Mean file size of the full set (ImageNet-1k's training JPEGs average
/// about 110 KiB).
pub const MEAN_BYTES_DEFAULT: u64 = 110 << 10;
/// Seed of the standard set.
pub const SEED_DEFAULT: u64 = 0x1a6e_2012_0000_5eed;
/// Most parallel connections [`upload`] and [`seed_flat`] open.
pub const CONNECTIONS_MAX: usize = 16;
/// Standard deviation of the natural log of a file's size: with
/// `mean = median * exp(sigma^2 / 2)`, a mean of 110 KiB puts the median at
/// 100 KiB.
const SIZE_LN_SIGMA: f64 = 0.4366;
/// How often the parallel uploads report progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Leading bytes compared when deciding that an existing local file is
/// already the right one.
const CHECK_PREFIX_BYTES: usize = 64;
/// Bytes compared per step by [`first_mismatch`].
const VERIFY_CHUNK_BYTES: usize = 4096;

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// Keeps the stream of a file's size apart from the stream of its content.
const SIZE_STREAM: u64 = 0x5153_0000_0000_0001;
const CONTENT_STREAM: u64 = 0xc0de_0000_0000_0002;

/// The shape of an ImageNet-like training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagenetSpec {
    pub files: u32,
    /// Class directories (at most one per file).
    pub dirs: u32,
    pub mean_bytes: u64,
    pub seed: u64,
}

/// One file of the training set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Relative path, e.g. `imagenet/n00000042/n00000042_00017.JPEG`.
    pub path: String,
    pub size_bytes: u64,
    /// Position in the set; keys the file's content ([`content`]).
    pub index: u32,
}

impl ImagenetSpec {
    /// 20 000 files in 100 class directories, mean 110 KiB (about
    /// 2.1 GiB), fixed seed.
    pub fn default_full() -> Self {
        Self::with_counts(20_000, 100)
    }

    /// `files` files in `dirs` class directories, with the standard mean
    /// size and seed.
    pub fn with_counts(files: u32, dirs: u32) -> Self {
        Self {
            files,
            dirs,
            mean_bytes: MEAN_BYTES_DEFAULT,
            seed: SEED_DEFAULT,
        }
    }

    /// Class directories that hold files: `dirs`, but at least one and at
    /// most one per file.
    pub fn used_dirs(&self) -> u32 {
        self.dirs.clamp(1, self.files.max(1))
    }

    /// Name of class directory `d`.
    pub fn class_name(d: u32) -> String {
        format!("n{d:08}")
    }

    /// Relative paths of the class directories (`imagenet/n00000000`, …).
    pub fn class_dirs(&self) -> Vec<String> {
        if self.files == 0 {
            return Vec::new();
        }
        (0..self.used_dirs())
            .map(|d| format!("{IMAGENET_ROOT}/{}", Self::class_name(d)))
            .collect()
    }

    /// Every file, by index; file `i` is number `i / dirs` of class
    /// `i % dirs`.
    pub fn files(&self) -> Vec<DataFile> {
        let dirs = self.used_dirs();
        (0..self.files)
            .map(|i| {
                let class = Self::class_name(i % dirs);
                DataFile {
                    path: format!("{IMAGENET_ROOT}/{class}/{class}_{:05}.JPEG", i / dirs),
                    size_bytes: self.size_bytes(i),
                    index: i,
                }
            })
            .collect()
    }

    /// Size of file `index`: log-normal around the median that gives
    /// `mean_bytes`, clamped to [`FILE_BYTES_MIN`, `FILE_BYTES_MAX`].
    pub fn size_bytes(&self, index: u32) -> u64 {
        let mut rng = SplitMix64::new(self.seed ^ mix(u64::from(index) ^ SIZE_STREAM));
        let median_bytes = self.mean_bytes as f64 * (-SIZE_LN_SIGMA * SIZE_LN_SIGMA / 2.0).exp();
        let size = median_bytes * (SIZE_LN_SIGMA * rng.normal()).exp();
        (size.round() as u64).clamp(FILE_BYTES_MIN, FILE_BYTES_MAX)
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable generator,
/// good enough for sizes, shuffles and test data.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix(self.0)
    }

    /// Uniform in `0..bound` (Lemire's multiply-and-reject, unbiased).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if m as u64 >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in (0, 1].
    fn unit_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit_open();
        let u2 = self.unit_open();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 8 bytes of block `block` (bytes `8 * block ..`) of a file whose
/// content key is `key`: splitmix64's value at position `block`, so that
/// any block can be produced without the ones before it.
fn block_word(key: u64, block: u64) -> [u8; 8] {
    mix(key.wrapping_add(block.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA))).to_le_bytes()
}

fn content_key(seed: u64, index: u32) -> u64 {
    mix(seed ^ mix(u64::from(index) ^ CONTENT_STREAM))
}

/// Fills `buf` with the bytes of file `index` of the set seeded `seed`,
/// starting at byte `offset`.
pub fn content(seed: u64, index: u32, offset: u64, buf: &mut [u8]) {
    let key = content_key(seed, index);
    let mut pos = offset;
    let mut filled = 0;
    while filled < buf.len() {
        let within = (pos % 8) as usize;
        let n = (8 - within).min(buf.len() - filled);
        buf[filled..filled + n].copy_from_slice(&block_word(key, pos / 8)[within..within + n]);
        filled += n;
        pos += n as u64;
    }
}

/// The offset in the file of the first byte of `data` (read from file
/// `index` at `offset`) that is not what [`content`] makes, or `None` when
/// all are.
pub fn first_mismatch(seed: u64, index: u32, offset: u64, data: &[u8]) -> Option<u64> {
    let mut want = [0u8; VERIFY_CHUNK_BYTES];
    let mut at = 0usize;
    for got in data.chunks(VERIFY_CHUNK_BYTES) {
        let want = &mut want[..got.len()];
        content(seed, index, offset + at as u64, want);
        if got != want {
            let i = got.iter().zip(want.iter()).position(|(a, b)| a != b);
            return Some(offset + (at + i.expect("chunks differ")) as u64);
        }
        at += got.len();
    }
    None
}

/// Whether the local file at `path` already is `file` of the set: its size
/// and its leading bytes match.
fn is_written(path: &Path, seed: u64, file: &DataFile) -> Result<bool> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let len = f
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    if len != file.size_bytes {
        return Ok(false);
    }
    let n = CHECK_PREFIX_BYTES.min(len as usize);
    let mut head = [0u8; CHECK_PREFIX_BYTES];
    f.read_exact(&mut head[..n])
        .with_context(|| format!("read {}", path.display()))?;
    Ok(first_mismatch(seed, file.index, 0, &head[..n]).is_none())
}

/// Writes every file of `spec` under `root`, leaving alone those that
/// already hold the right bytes (same size, same leading bytes), so that a
/// rerun is quick. `progress(done, total)` is called after every file.
pub fn write_local(
    spec: &ImagenetSpec,
    root: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<()> {
    let files = spec.files();
    let total = files.len() as u64;
    // Grows to the largest file, at most FILE_BYTES_MAX.
    let mut buf = Vec::new();
    for (done, f) in files.iter().enumerate() {
        let path = root.join(&f.path);
        if !is_written(&path, spec.seed, f)? {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            buf.resize(f.size_bytes as usize, 0);
            content(spec.seed, f.index, 0, &mut buf);
            fs::write(&path, &buf).with_context(|| format!("write {}", path.display()))?;
        }
        progress(done as u64 + 1, total);
    }
    Ok(())
}

/// Runs `put(client, i)` for every `i` in `0..count` with `connections`
/// threads (at most [`CONNECTIONS_MAX`]), each with its own keep-alive
/// [`S3Client`]. The first failure stops the others and is returned.
/// `progress(done, total)` is called from this thread as puts complete.
/// Tries of one PUT while seeding, and the pause before the first retry
/// (growing linearly).
const PUT_ATTEMPTS: u32 = 5;
const PUT_RETRY_PAUSE: Duration = Duration::from_millis(200);

fn put_parallel(
    target: &S3Target,
    count: usize,
    connections: usize,
    mut progress: impl FnMut(u64, u64),
    put: impl Fn(&mut S3Client, usize) -> Result<()> + Sync,
) -> Result<()> {
    let total = count as u64;
    let threads = connections.clamp(1, CONNECTIONS_MAX).min(count.max(1));
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let fail = |e: anyhow::Error| {
        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
        stop.store(true, Ordering::Relaxed);
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (next, done, stop, put, fail) = (&next, &done, &stop, &put, &fail);
                scope.spawn(move || {
                    let mut client = S3Client::new(target.clone());
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        // A loaded store answers 500/503 now and then: a
                        // few retries with a fresh connection and a pause.
                        let mut attempt = 0;
                        let outcome = loop {
                            match put(&mut client, i) {
                                Ok(()) => break Ok(()),
                                Err(e) if attempt + 1 >= PUT_ATTEMPTS => break Err(e),
                                Err(_) => {
                                    attempt += 1;
                                    client = S3Client::new(target.clone());
                                    std::thread::sleep(PUT_RETRY_PAUSE * attempt);
                                }
                            }
                        };
                        if let Err(e) = outcome {
                            fail(e.context(format!("after {PUT_ATTEMPTS} attempts")));
                            break;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut reported = None;
        while workers.iter().any(|w| !w.is_finished()) {
            let d = done.load(Ordering::Relaxed);
            if reported != Some(d) {
                progress(d, total);
                reported = Some(d);
            }
            std::thread::sleep(PROGRESS_EVERY);
        }
        for w in workers {
            if w.join().is_err() {
                fail(anyhow!("an upload thread panicked"));
            }
        }
    });
    progress(done.load(Ordering::Relaxed), total);
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// PUTs each of `files` from under `root` (as [`write_local`] wrote them)
/// to `bucket` under its relative path, with `connections` parallel
/// connections (at most [`CONNECTIONS_MAX`]). Call from inside the
/// server's network namespace.
pub fn upload(
    files: &[DataFile],
    root: &Path,
    target: &S3Target,
    bucket: &str,
    connections: usize,
    progress: impl FnMut(u64, u64),
) -> Result<()> {
    put_parallel(target, files.len(), connections, progress, |client, i| {
        let f = &files[i];
        put_local_file(client, bucket, f, &root.join(&f.path))
            .with_context(|| format!("upload s3://{bucket}/{}", f.path))
    })
}

/// PUTs the local copy `local` of `f`, checking first that it has the
/// expected size.
fn put_local_file(client: &mut S3Client, bucket: &str, f: &DataFile, local: &Path) -> Result<()> {
    let len = fs::metadata(local)
        .with_context(|| format!("stat {}", local.display()))?
        .len();
    ensure!(
        len == f.size_bytes,
        "{} has {len} bytes, expected {}",
        local.display(),
        f.size_bytes
    );
    client.put_file(bucket, &f.path, local)
}

/// Name of file `i` of the flat directory.
pub fn flat_name(i: u32) -> String {
    format!("f{i:07}")
}

/// Names of the `count` files of the flat directory, in order.
pub fn flat_names(count: u32) -> Vec<String> {
    (0..count).map(flat_name).collect()
}

/// PUTs `count` empty objects `{dir_prefix}/f0000000`, … (one directory of
/// `count` entries) with `connections` parallel connections (at most
/// [`CONNECTIONS_MAX`]). Call from inside the server's network namespace.
pub fn seed_flat(
    dir_prefix: &str,
    count: u32,
    target: &S3Target,
    bucket: &str,
    connections: usize,
    progress: impl FnMut(u64, u64),
) -> Result<()> {
    let dir = dir_prefix.trim_end_matches('/');
    put_parallel(
        target,
        count as usize,
        connections,
        progress,
        |client, i| {
            let key = format!("{dir}/{}", flat_name(i as u32));
            client
                .put(bucket, &key, b"")
                .with_context(|| format!("upload s3://{bucket}/{key}"))
        },
    )
}

/// Creates the `count` empty files of the flat directory in `root/dir`
/// (those missing).
pub fn write_flat_local(root: &Path, dir: &str, count: u32) -> Result<()> {
    let dir = root.join(dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for i in 0..count {
        let path = dir.join(flat_name(i));
        match File::create_new(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_set_is_deterministic() {
        let spec = ImagenetSpec::default_full();
        let a = spec.files();
        assert_eq!(a, spec.files());
        assert_eq!(a.len(), 20_000);
        assert_eq!(a[17].path, "imagenet/n00000017/n00000017_00000.JPEG");
        assert_eq!(a[4217].path, "imagenet/n00000017/n00000017_00042.JPEG");
        assert!(a.iter().enumerate().all(|(i, f)| f.index as usize == i));
        let other = ImagenetSpec { seed: 1, ..spec };
        let b = other.files();
        let same = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.size_bytes == y.size_bytes)
            .count();
        assert!(same < 200, "{same} sizes equal under another seed");
        assert_eq!(spec.class_dirs().len(), 100);
        assert_eq!(spec.class_dirs()[42], "imagenet/n00000042");
    }

    #[test]
    fn sizes_are_shaped_like_imagenet() {
        let files = ImagenetSpec::default_full().files();
        let n = files.len() as f64;
        let mean = files.iter().map(|f| f.size_bytes as f64).sum::<f64>() / n;
        let target = (110 << 10) as f64;
        assert!(
            (mean - target).abs() < target * 0.1,
            "mean {mean:.0} bytes, want about {target}"
        );
        let mut sizes: Vec<u64> = files.iter().map(|f| f.size_bytes).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2] as f64;
        assert!(median < mean, "right-skewed: median {median} < mean {mean}");
        assert!((90_000.0..115_000.0).contains(&median), "median {median}");
        assert!(sizes[0] >= FILE_BYTES_MIN && sizes[sizes.len() - 1] <= FILE_BYTES_MAX);
    }

    #[test]
    fn sizes_are_clamped() {
        let tiny = ImagenetSpec {
            mean_bytes: 100,
            ..ImagenetSpec::with_counts(500, 5)
        };
        assert!(tiny.files().iter().all(|f| f.size_bytes == FILE_BYTES_MIN));
        let huge = ImagenetSpec {
            mean_bytes: 1 << 30,
            ..ImagenetSpec::with_counts(500, 5)
        };
        assert!(huge.files().iter().all(|f| f.size_bytes == FILE_BYTES_MAX));
    }

    #[test]
    fn small_sets_use_no_more_dirs_than_files() {
        let spec = ImagenetSpec::with_counts(3, 10);
        assert_eq!(spec.used_dirs(), 3);
        assert_eq!(spec.class_dirs().len(), 3);
        assert!(ImagenetSpec::with_counts(0, 10).files().is_empty());
        assert!(ImagenetSpec::with_counts(0, 10).class_dirs().is_empty());
    }

    #[test]
    fn content_is_deterministic_and_seekable() {
        let mut whole = vec![0u8; 1000];
        content(7, 3, 0, &mut whole);
        let mut again = vec![0u8; 1000];
        content(7, 3, 0, &mut again);
        assert_eq!(whole, again);
        // Any offset, any length, gives the same bytes as the whole.
        for (offset, len) in [(1usize, 5usize), (7, 9), (8, 8), (13, 600), (999, 1)] {
            let mut part = vec![0u8; len];
            content(7, 3, offset as u64, &mut part);
            assert_eq!(part, whole[offset..offset + len], "at {offset}+{len}");
        }
        let mut other = vec![0u8; 1000];
        content(7, 4, 0, &mut other);
        assert_ne!(whole, other, "another index");
        content(8, 3, 0, &mut other);
        assert_ne!(whole, other, "another seed");
    }

    #[test]
    fn mismatches_are_found_where_they_are() {
        let mut data = vec![0u8; 10_000];
        content(5, 9, 300, &mut data);
        assert_eq!(first_mismatch(5, 9, 300, &data), None);
        assert_eq!(first_mismatch(5, 9, 301, &data), Some(301));
        assert_eq!(first_mismatch(5, 10, 300, &data), Some(300));
        data[5000] ^= 1;
        assert_eq!(first_mismatch(5, 9, 300, &data), Some(5300));
    }

    #[test]
    fn shuffling_draws_are_in_range_and_spread() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn flat_names_are_fixed_width() {
        assert_eq!(flat_names(3), ["f0000000", "f0000001", "f0000002"]);
        assert_eq!(flat_name(123), "f0000123");
    }
}
