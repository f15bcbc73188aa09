//! The read-epoch workload: what a training job's data loader does to its
//! dataset in one epoch. Every file of the set is read whole, once, in a
//! fresh shuffled order, by a few reader threads that each take the next
//! file of the order; every byte read is checked against the dataset's
//! generator ([`dataset::content`]).
//!
//! Files are read either through a raw NFSv3 client (one connection per
//! reader: LOOKUP of the name in its class directory, then READs of at
//! most 1 MiB until eof) or through the file system (a mount point, or the
//! local copy as a baseline).
//!
//! Reader threads are not scoped: a read blocked in the kernel (a hung
//! mount) cannot be interrupted, so at the time limit the epoch fails
//! without waiting for such a thread, which then exits on its own once its
//! call returns.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::dataset::{self, DataFile, SplitMix64};
use crate::nfs3::{NfsClient, Status};

/// Most reader threads of an epoch.
pub const READERS_MAX: usize = 16;
/// Largest READ (and largest `read(2)` of the file system path).
pub const READ_CHUNK_BYTES: u32 = 1 << 20;
/// How long a failed or timed-out epoch waits for its other readers to
/// stop before returning.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the caller's count of files done is updated.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Shortest per-call socket timeout of an NFS reader.
const NFS_CALL_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// How files are read.
#[derive(Debug, Clone)]
pub enum ReadPath {
    /// A raw NFSv3 client of the NFS server at `addr`, mounting `export`
    /// through the MOUNT server at `mount_addr` (the same address when
    /// one port serves both).
    Nfs {
        addr: SocketAddr,
        mount_addr: SocketAddr,
        export: String,
    },
    /// The file system, with the set's relative paths under `root`.
    Posix { root: PathBuf },
}

/// An NFS connection to `addr` and the root handle of `export`, mounted
/// through `mount_addr` (on the same connection when the addresses are
/// the same). Calls time out after `timeout` (at least a second).
pub(crate) fn nfs_session(
    addr: SocketAddr,
    mount_addr: SocketAddr,
    export: &str,
    timeout: Duration,
) -> Result<(NfsClient, Vec<u8>)> {
    let call_timeout = timeout.max(NFS_CALL_TIMEOUT_MIN);
    let mut c = NfsClient::connect(addr, call_timeout)?;
    let root = if mount_addr == addr {
        c.mount(export)
    } else {
        NfsClient::connect(mount_addr, call_timeout)?.mount(export)
    }
    .with_context(|| format!("MNT {export} at {mount_addr}"))?;
    Ok((c, root))
}

/// Runs `f` on its own thread and waits at most `timeout` for its result;
/// past that, fails and leaves the thread to finish on its own.
pub(crate) fn with_deadline<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("bench-deadline".into())
        .spawn(move || {
            // The receiver is gone only after a timeout; nobody to tell.
            let _ = tx.send(f());
        })
        .context("spawn a worker thread")?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            bail!("{what}: no result after {}s", timeout.as_secs_f64())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{what}: the worker thread panicked"),
    }
}

/// One epoch's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// From starting the readers (their connecting and mounting
    /// included) to the end of the last one.
    pub secs: f64,
    pub files: u64,
    pub bytes: u64,
}

/// A permutation of `0..n`: Fisher-Yates driven by splitmix64 seeded with
/// `seed`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// What the readers of one epoch share.
struct Shared {
    /// The files in this epoch's order.
    order: Vec<DataFile>,
    seed: u64,
    next: AtomicUsize,
    stop: AtomicBool,
    deadline: Instant,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
}

/// Reads every file of `files` (a data set seeded `seed`) once, in the
/// order of epoch `epoch` (a shuffle seeded with `seed ^ epoch`), with
/// `readers` threads (at most [`READERS_MAX`]), checking sizes and bytes.
/// Fails at `timeout`, or at the first error of any reader (the others
/// stop before their next file). When given, `files_done` is kept up to
/// date (every 100 ms) with the number of files read so far, for display.
pub fn run_epoch(
    path: &ReadPath,
    files: &[DataFile],
    seed: u64,
    epoch: u32,
    readers: usize,
    timeout: Duration,
    files_done: Option<&AtomicU64>,
) -> Result<EpochStats> {
    let order = shuffled(files.len(), seed ^ u64::from(epoch));
    let readers = readers.clamp(1, READERS_MAX).min(files.len().max(1));
    let start = Instant::now();
    let shared = Arc::new(Shared {
        order: order.into_iter().map(|i| files[i].clone()).collect(),
        seed,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        deadline: start + timeout,
        files_done: AtomicU64::new(0),
        bytes_done: AtomicU64::new(0),
    });
    let (tx, rx) = mpsc::channel::<Result<()>>();
    for r in 0..readers {
        let (path, mine, tx) = (path.clone(), Arc::clone(&shared), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("epoch-reader-{r}"))
            .spawn(move || {
                let result = read_share(&path, &mine, timeout);
                if result.is_err() {
                    mine.stop.store(true, Ordering::Relaxed);
                }
                // The receiver is gone only after the epoch failed.
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            shared.stop.store(true, Ordering::Relaxed);
            return Err(e).context("spawn an epoch reader");
        }
    }
    drop(tx);

    let show = |shared: &Shared| {
        if let Some(done) = files_done {
            done.store(shared.files_done.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    };
    let mut finished = 0;
    let mut failure: Option<anyhow::Error> = None;
    while finished < readers {
        let now = Instant::now();
        if now >= shared.deadline {
            failure = Some(anyhow!(
                "epoch {epoch} timed out after {}s: {} of {} files read",
                timeout.as_secs_f64(),
                shared.files_done.load(Ordering::Relaxed),
                files.len()
            ));
            break;
        }
        match rx.recv_timeout(PROGRESS_EVERY.min(shared.deadline - now)) {
            Ok(Ok(())) => finished += 1,
            Ok(Err(e)) => {
                failure = Some(e.context(format!("epoch {epoch}")));
                finished += 1;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                failure = Some(anyhow!("epoch {epoch}: a reader thread panicked"));
                break;
            }
        }
        show(&shared);
    }
    let secs = start.elapsed().as_secs_f64();
    show(&shared);
    if let Some(e) = failure {
        shared.stop.store(true, Ordering::Relaxed);
        // Let the other readers close their connections before the caller
        // goes on, but not for long.
        let grace_end = Instant::now() + STOP_GRACE;
        while finished < readers {
            let left = grace_end.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
            finished += 1;
        }
        return Err(e);
    }
    let stats = EpochStats {
        secs,
        files: shared.files_done.load(Ordering::Relaxed),
        bytes: shared.bytes_done.load(Ordering::Relaxed),
    };
    if stats.files != files.len() as u64 {
        let why = if Instant::now() >= shared.deadline {
            format!("timed out after {}s", timeout.as_secs_f64())
        } else {
            "readers stopped early".to_owned()
        };
        bail!(
            "epoch {epoch} {why}: {} of {} files read",
            stats.files,
            files.len()
        );
    }
    Ok(stats)
}

/// One reader's part of an epoch: files from the shared order until none
/// are left, another reader failed, or time is up (the epoch then fails
/// for want of files read).
fn read_share(path: &ReadPath, shared: &Shared, timeout: Duration) -> Result<()> {
    let mut reader = FileReader::open(path, timeout)?;
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= shared.deadline {
            return Ok(());
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(f) = shared.order.get(i) else {
            return Ok(());
        };
        let bytes = reader
            .read_checked(f, shared.seed)
            .with_context(|| format!("read {}", f.path))?;
        shared.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        shared.files_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A reader's connection or file system root, and its reused buffer.
enum FileReader {
    Nfs {
        client: NfsClient,
        root: Vec<u8>,
        /// Handles of the class directories met so far (one per directory
        /// of the set).
        dirs: HashMap<String, Vec<u8>>,
        /// One READ's data, at most [`READ_CHUNK_BYTES`].
        buf: Vec<u8>,
    },
    Posix {
        root: PathBuf,
        /// [`READ_CHUNK_BYTES`] long.
        buf: Vec<u8>,
    },
}

impl FileReader {
    fn open(path: &ReadPath, timeout: Duration) -> Result<Self> {
        Ok(match path {
            ReadPath::Nfs {
                addr,
                mount_addr,
                export,
            } => {
                let (client, root) = nfs_session(*addr, *mount_addr, export, timeout)?;
                FileReader::Nfs {
                    client,
                    root,
                    dirs: HashMap::new(),
                    buf: Vec::with_capacity(READ_CHUNK_BYTES as usize),
                }
            }
            ReadPath::Posix { root } => FileReader::Posix {
                root: root.clone(),
                buf: vec![0u8; READ_CHUNK_BYTES as usize],
            },
        })
    }

    /// Reads all of `f`, checking its size and every byte; its size.
    fn read_checked(&mut self, f: &DataFile, seed: u64) -> Result<u64> {
        match self {
            FileReader::Nfs {
                client,
                root,
                dirs,
                buf,
            } => {
                let (dir, name) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
                if !dirs.contains_key(dir) {
                    let fh = client.lookup_path(root, dir)?;
                    dirs.insert(dir.to_owned(), fh);
                }
                let (fh, attr) = match client.lookup(&dirs[dir], name.as_bytes())? {
                    Ok(found) => found,
                    Err(Status(s)) => bail!("LOOKUP {name:?} failed with nfsstat3 {s}"),
                };
                if let Some(a) = attr {
                    ensure!(
                        a.size == f.size_bytes,
                        "LOOKUP says {} bytes, expected {}",
                        a.size,
                        f.size_bytes
                    );
                }
                let mut offset = 0u64;
                loop {
                    buf.clear();
                    let reply = match client.read(&fh, offset, READ_CHUNK_BYTES, buf)? {
                        Ok(r) => r,
                        Err(Status(s)) => bail!("READ at {offset} failed with nfsstat3 {s}"),
                    };
                    check_chunk(f, seed, offset, buf)?;
                    offset += reply.bytes as u64;
                    if reply.eof {
                        break;
                    }
                    ensure!(
                        reply.bytes > 0,
                        "READ at {offset} returned nothing before eof"
                    );
                }
                ensure!(
                    offset == f.size_bytes,
                    "read {offset} bytes to eof, expected {}",
                    f.size_bytes
                );
                Ok(offset)
            }
            FileReader::Posix { root, buf } => {
                let p = root.join(&f.path);
                let mut file = File::open(&p).with_context(|| format!("open {}", p.display()))?;
                let mut offset = 0u64;
                loop {
                    let n = match file.read(buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("read {} at {offset}", p.display()))
                        }
                    };
                    check_chunk(f, seed, offset, &buf[..n])?;
                    offset += n as u64;
                }
                ensure!(
                    offset == f.size_bytes,
                    "read {offset} bytes to the end, expected {}",
                    f.size_bytes
                );
                Ok(offset)
            }
        }
    }
}

/// Checks `data`, read from `f` at `offset`, against the dataset.
fn check_chunk(f: &DataFile, seed: u64, offset: u64, data: &[u8]) -> Result<()> {
    let end = offset + data.len() as u64;
    ensure!(
        end <= f.size_bytes,
        "data up to byte {end}, past the expected {} bytes",
        f.size_bytes
    );
    if let Some(at) = dataset::first_mismatch(seed, f.index, offset, data) {
        bail!("bytes differ from the dataset's from offset {at}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ImagenetSpec;

    #[test]
    fn shuffles_are_deterministic_permutations() {
        let a = shuffled(1000, 42);
        assert_eq!(a, shuffled(1000, 42));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        let b = shuffled(1000, 42 ^ 1);
        assert_ne!(a, b, "another epoch, another order");
        assert!(shuffled(0, 1).is_empty());
        assert_eq!(shuffled(1, 1), [0]);
    }

    #[test]
    fn shuffles_are_unbiased_enough() {
        // Where element 0 lands, over many seeds: about uniform.
        let mut landed = [0u32; 4];
        for seed in 0..4000 {
            let p = shuffled(4, seed).iter().position(|&i| i == 0).unwrap();
            landed[p] += 1;
        }
        assert!(
            landed.iter().all(|&n| (850..1150).contains(&n)),
            "{landed:?}"
        );
    }

    #[test]
    fn chunks_are_checked() {
        let spec = ImagenetSpec::with_counts(2, 1);
        let f = &spec.files()[1];
        let mut data = vec![0u8; 100];
        dataset::content(spec.seed, f.index, 50, &mut data);
        check_chunk(f, spec.seed, 50, &data).unwrap();
        let e = check_chunk(f, spec.seed, 51, &data).unwrap_err();
        assert!(e.to_string().contains("offset 51"), "{e}");
        let e = check_chunk(f, spec.seed, f.size_bytes - 10, &data).unwrap_err();
        assert!(e.to_string().contains("past the expected"), "{e}");
        data[99] ^= 0x80;
        let e = check_chunk(f, spec.seed, 50, &data).unwrap_err();
        assert!(e.to_string().contains("offset 149"), "{e}");
    }

    #[test]
    fn a_deadline_bounds_a_stuck_call() {
        let t = Instant::now();
        let r: Result<()> = with_deadline(Duration::from_millis(50), "stuck", || {
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        });
        assert!(r.unwrap_err().to_string().contains("no result"));
        assert!(t.elapsed() < Duration::from_millis(400));
        assert_eq!(
            with_deadline(Duration::from_secs(5), "quick", || Ok(7)).unwrap(),
            7
        );
    }
}
