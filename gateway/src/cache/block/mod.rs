//! The NVMe block cache: object data kept on a local device so that every
//! epoch after the first reads at device speed instead of from S3.
//!
//! **Units.** An object is cut into blocks of `block_bytes` (1 MiB by
//! default); the last block, and any object smaller than a block, is stored
//! at its real length rounded to 4 KiB, so a dataset of 100 KiB files is
//! not padded tenfold. A block is identified by (object key, ETag, block
//! index): a new version of an object has a new ETag and so new blocks, and
//! the old ones simply age out.
//!
//! **Device.** A raw block device or a preallocated file, opened O_DIRECT so
//! the page cache neither doubles the memory use nor hides the device's
//! real behaviour. The first 4 KiB hold a superblock ([`format`]); the rest
//! is cut into regions that records are appended to ([`index`]). Every
//! record carries a self-describing header with the block's identity and
//! checksums of header and data, so at start-up the index is rebuilt by
//! reading the headers (a clean stop and a `kill -9` are the same case), a
//! torn or flipped record is never served, and a reader that races with the
//! reclamation of a region notices instead of returning another block's
//! bytes.
//!
//! **Policy.** Regions are reclaimed oldest first, but only when a
//! frequency sketch says the block that missed is read more often than
//! what would leave ([`policy`]); a cyclic sweep over a dataset larger than
//! the cache keeps a cache-full of it instead of thrashing.
//!
//! **Reads.** A hit is one O_DIRECT read of the record into a (registered)
//! page-aligned buffer on the worker's ring; the data is then sent from
//! that buffer with a zero-copy send. A miss fetches the whole block with
//! one ranged GET, however many readers on however many cores want it at
//! once (single flight: the first becomes the fetcher, the rest wait for
//! its result), answers from the fetched buffer and writes it to the device
//! in the background; the flight stays visible until the write completes so
//! nobody fetches the block a second time meanwhile.
//!
//! **Faults.** A full device, an I/O error or the cache file vanishing never
//! fails a read: the block is served from the store, the event is counted
//! and logged once per kind.

pub mod format;
pub mod index;
pub mod memory;
pub mod policy;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::watch;

use crate::io::aligned::{align_up, AlignedBuf, PoolBuf, ALIGN_BYTES};
use crate::io::disk;
use crate::prefetch::{Pattern, PrefetchConfig, Prefetcher, ReadEvent, ReadObserver};
use crate::store::{ObjectStore, StoreError};
use crate::telemetry::{self, Counter, Gauge, Latency};
use format::{RecordHeader, Superblock, SUPER_BYTES};
use index::{block_id, Admission, BlockId, Directory, Layout, Loc};
use memory::MemoryTier;

/// Smallest and largest block size accepted (bytes).
pub const BLOCK_BYTES_MIN: u64 = 64 << 10;
pub const BLOCK_BYTES_MAX: u64 = 16 << 20;
/// Default block size (bytes).
pub const BLOCK_BYTES_DEFAULT: u64 = 1 << 20;
/// Smallest cache accepted (bytes).
pub const CACHE_BYTES_MIN: u64 = 8 << 20;
/// Threads reading record headers at start-up.
const RECOVERY_THREADS: usize = 8;
/// Registered read buffers per worker thread.
pub const READ_BUFFERS_PER_WORKER: usize = 32;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cache {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("cache {path} is in use by another process (a running gateway holds its lock; `tidegate warm --admin` warms a running one)")]
    Locked { path: String },
}

/// How to open the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub path: PathBuf,
    /// Device bytes to use; required for a new file, at most the device's
    /// size for a block device.
    pub size_bytes: Option<u64>,
    pub block_bytes: u64,
    /// Bytes of RAM for the tier of hottest blocks in front of the device
    /// (0 turns it off).
    pub memory_bytes: u64,
    /// Prefetch ahead of readers (`None` or disabled: no prefetch).
    pub prefetch: Option<PrefetchConfig>,
}

/// A block fetched from the store, laid out as a record (header then data)
/// so the same buffer is answered from and written to the device.
pub struct Fetched {
    buf: AlignedBuf,
    header_len: usize,
    data_len: usize,
}

impl Fetched {
    pub fn data(&self) -> &[u8] {
        &self.buf.as_slice()[self.header_len..self.header_len + self.data_len]
    }
}

/// Part of a read's answer, borrowed from a cache buffer until sent.
pub enum Piece {
    /// Read from the device into a worker-owned buffer.
    Cached {
        buf: PoolBuf,
        start: usize,
        len: usize,
    },
    /// Fetched from the store (shared with other waiters).
    Shared {
        block: Arc<Fetched>,
        start: usize,
        len: usize,
    },
}

impl Piece {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Cached { buf, start, len } => &buf.buf().as_slice()[*start..*start + *len],
            Piece::Shared { block, start, len } => &block.data()[*start..*start + *len],
        }
    }
}

type FlightResult = Option<Result<Arc<Fetched>, Arc<StoreError>>>;

/// Which fault kinds were already logged (each is logged once).
#[derive(Default)]
struct Logged {
    read_error: AtomicBool,
    write_error: AtomicBool,
    no_space: AtomicBool,
    checksum: AtomicBool,
}

fn log_once(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::Relaxed)
}

/// Why a block is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A client reads it.
    Read,
    /// A client reads part of it with no pattern: fetch only that part
    /// unless the block is cached or already on its way.
    Exact,
    /// `tidegate warm`: admit it and wait for the write.
    Warm,
    /// Ahead of a reader.
    Prefetch,
}

/// Bytes of cache writes queued for the device at once (each holds its
/// block in memory until written).
const WRITES_IN_FLIGHT_BYTES_MAX: usize = 256 << 20;
/// Blocks fetched with one GET by a prefetch.
const PREFETCH_SPAN_BLOCKS: u64 = 8;
/// Within this distance ahead of a reader, prefetch fetches one block per
/// GET.
const PREFETCH_NEAR_BYTES: u64 = 16 << 20;
/// Queued prefetch jobs looked at for one that fits the budgets.
const PUMP_SCAN_JOBS: usize = 64;
/// Prefetch spans waiting for budget.
const PREFETCH_JOBS_MAX: usize = 4096;

/// A span of blocks to fetch ahead of a reader.
struct PrefetchJob {
    store: Arc<dyn ObjectStore>,
    key: Arc<str>,
    etag: Arc<str>,
    size: u64,
    blocks: std::ops::Range<u64>,
    client: u64,
}

pub struct BlockCache {
    file: File,
    path: PathBuf,
    dev_ino: (u64, u64),
    regular_file: bool,
    cache_id: [u8; 16],
    block_bytes: u64,
    layout: Layout,
    dir: Mutex<Directory>,
    memory: MemoryTier,
    prefetcher: Option<Prefetcher>,
    prefetch_jobs: Mutex<std::collections::VecDeque<PrefetchJob>>,
    writes_in_flight_bytes: AtomicUsize,
    flights: Mutex<HashMap<BlockId, watch::Receiver<FlightResult>>>,
    enabled: AtomicBool,
    logged: Logged,
    registered_buffers: AtomicU64,
}

fn random_id() -> io::Result<[u8; 16]> {
    let mut id = [0u8; 16];
    // SAFETY: getrandom writes at most `len` bytes into the array.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

fn block_device_bytes(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// What start-up found on the device.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub formatted: bool,
    pub entries: usize,
    pub bytes: u64,
    pub millis: u128,
}

impl BlockCache {
    /// Open (creating and formatting if needed) and recover the cache.
    pub fn open(config: &CacheConfig) -> Result<(BlockCache, RecoveryReport), CacheError> {
        let path = config.path.clone();
        let pstr = path.display().to_string();
        let io_err = |source: io::Error| CacheError::Io {
            path: pstr.clone(),
            source,
        };
        let invalid = |message: String| CacheError::Invalid {
            path: pstr.clone(),
            message,
        };
        if !(BLOCK_BYTES_MIN..=BLOCK_BYTES_MAX).contains(&config.block_bytes)
            || config.block_bytes % ALIGN_BYTES as u64 != 0
        {
            return Err(invalid(format!(
                "block size must be a multiple of 4 KiB between {} KiB and {} MiB",
                BLOCK_BYTES_MIN >> 10,
                BLOCK_BYTES_MAX >> 20
            )));
        }
        let existing = std::fs::metadata(&path).ok();
        let is_blockdev = existing
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(invalid(
                "is a directory; give a file or block device path".into(),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(!is_blockdev)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    invalid("the file system does not support O_DIRECT".into())
                } else {
                    io_err(e)
                }
            })?;
        // SAFETY: flock on our own descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(CacheError::Locked { path: pstr.clone() });
        }
        let device_bytes = if is_blockdev {
            let dev = block_device_bytes(&file).map_err(io_err)?;
            config.size_bytes.map_or(dev, |s| s.min(dev))
        } else {
            let current = file.metadata().map_err(io_err)?.len();
            let want = match config.size_bytes {
                Some(s) => s,
                None if current > 0 => current,
                None => {
                    return Err(invalid(
                        "a new cache file needs --cache-size (e.g. --cache-size 100GiB)".into(),
                    ))
                }
            };
            let want = want / ALIGN_BYTES as u64 * ALIGN_BYTES as u64;
            if current != want {
                file.set_len(want).map_err(io_err)?;
            }
            // SAFETY: fallocate on our own descriptor over its length.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, want as libc::off_t) };
            if r != 0 {
                let e = io::Error::last_os_error();
                tracing::warn!(path = %pstr, error = %e,
                    "could not preallocate the cache file; continuing with a sparse file, writes fail once its file system is full");
            }
            want
        };
        if device_bytes < CACHE_BYTES_MIN {
            return Err(invalid(format!(
                "{device_bytes} bytes is too small; the cache needs at least {} MiB",
                CACHE_BYTES_MIN >> 20
            )));
        }
        let record_max = align_up(format::HEADER_BYTES_MAX + config.block_bytes as usize) as u64;
        let layout = Layout::for_device(device_bytes, record_max)
            .ok_or_else(|| invalid("too small for two regions of four blocks".into()))?;
        let md = file.metadata().map_err(io_err)?;
        let start = Instant::now();

        let mut page = AlignedBuf::new(SUPER_BYTES as usize);
        let found = match file.read_exact_at(page.as_mut_slice(), 0) {
            Ok(()) => Superblock::decode(page.as_slice()),
            Err(_) => None,
        };
        let wanted = |id| Superblock {
            block_bytes: config.block_bytes as u32,
            cache_id: id,
            device_bytes,
            region_bytes: layout.region_bytes,
            region_count: layout.region_count,
        };
        let mut report = RecoveryReport::default();
        let mut dir = Directory::new(layout, config.block_bytes);
        let cache_id = match found {
            Some(sb) if sb == wanted(sb.cache_id) => {
                recover(&file, &sb.cache_id, layout, &mut dir).map_err(io_err)?;
                sb.cache_id
            }
            other => {
                if let Some(sb) = other {
                    tracing::info!(path = %pstr, old_block_bytes = sb.block_bytes, old_device_bytes = sb.device_bytes,
                        "cache geometry changed; starting it empty");
                }
                let id = random_id().map_err(io_err)?;
                wanted(id).encode(page.as_mut_slice());
                file.write_all_at(page.as_slice(), 0).map_err(io_err)?;
                file.sync_data().map_err(io_err)?;
                report.formatted = true;
                id
            }
        };
        dir.finish_recovery();
        report.entries = dir.entries();
        report.bytes = dir.live_bytes();
        report.millis = start.elapsed().as_millis();
        let cache = BlockCache {
            file,
            path,
            dev_ino: (md.dev(), md.ino()),
            regular_file: !is_blockdev,
            cache_id,
            block_bytes: config.block_bytes,
            layout,
            dir: Mutex::new(dir),
            memory: MemoryTier::new(config.memory_bytes),
            prefetcher: config.prefetch.filter(|p| p.enabled).map(Prefetcher::new),
            prefetch_jobs: Mutex::new(std::collections::VecDeque::new()),
            writes_in_flight_bytes: AtomicUsize::new(0),
            flights: Mutex::new(HashMap::new()),
            enabled: AtomicBool::new(true),
            logged: Logged::default(),
            registered_buffers: AtomicU64::new(0),
        };
        telemetry::set_gauge(Gauge::CacheBytesCapacity, layout.capacity_bytes());
        telemetry::set_gauge(Gauge::CacheEnabled, 1);
        cache.publish_gauges();
        Ok((cache, report))
    }

    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    pub fn prefetcher(&self) -> Option<&Prefetcher> {
        self.prefetcher.as_ref()
    }

    /// Whether a prefetched block would be kept: by the memory tier, or by
    /// the device when the admission policy would take it now. Fetching a
    /// block that would be dropped again only wastes S3 bandwidth.
    fn worth_prefetching(&self, id: BlockId, block_len: usize) -> bool {
        if self.memory.is_enabled() {
            return true;
        }
        let record_len = format::record_len(format::HEADER_BYTES_MAX, block_len) as u64;
        self.dir
            .lock()
            .expect("cache index poisoned")
            .would_admit(id, record_len)
    }

    /// Whether block `index` of this object version is cached or on its way.
    pub fn has_block(&self, key: &str, etag: &str, index: u64) -> bool {
        self.has_block_id(block_id(key, etag, index))
    }

    fn has_block_id(&self, id: BlockId) -> bool {
        self.memory.contains(id)
            || self.dir.lock().expect("cache index poisoned").contains(id)
            || self
                .flights
                .lock()
                .expect("flights poisoned")
                .contains_key(&id)
    }

    /// Fetch a small object ahead of its reader (a directory sweep): whole
    /// when it is at most the small-object size, else its first block.
    pub async fn prefetch_object(
        self: &Arc<Self>,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        etag: &str,
        size: u64,
    ) {
        if !self.is_enabled() || !format::fits(key, etag) {
            return;
        }
        if !self.worth_prefetching(block_id(key, etag, 0), size.min(self.block_bytes) as usize) {
            return;
        }
        let small = self
            .prefetcher
            .as_ref()
            .map_or(0, |p| p.config().small_object_bytes);
        let r = if size > self.block_bytes && size <= small {
            let r = self.fetch_whole(store.as_ref(), key, etag, size).await;
            if let (Ok(()), Some(p)) = (&r, &self.prefetcher) {
                for index in 0..size.div_ceil(self.block_bytes) {
                    let block_len = (size - index * self.block_bytes).min(self.block_bytes);
                    p.fetched(block_id(key, etag, index), block_len);
                }
            }
            r
        } else {
            let block_len = size.min(self.block_bytes) as usize;
            self.block(
                store.as_ref(),
                key,
                etag,
                0,
                block_len,
                0,
                0,
                Purpose::Prefetch,
            )
            .await
            .map(|_| ())
        };
        if let Err(e) = r {
            tracing::debug!(%key, error = %e, "sweep prefetch failed");
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.layout.capacity_bytes()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, u64) {
        let d = self.dir.lock().expect("cache index poisoned");
        (d.entries(), d.live_bytes())
    }

    fn publish_gauges(&self) {
        telemetry::set_gauge(Gauge::CacheMemoryBytes, self.memory.bytes());
        let (entries, bytes) = self.usage();
        telemetry::set_gauge(Gauge::CacheEntries, entries as u64);
        telemetry::set_gauge(Gauge::CacheBytesCached, bytes);
    }

    /// Prepare the calling worker thread: its registered read buffers.
    pub fn init_worker(&self) {
        if self.memory.is_enabled() {
            // Device reads then go to buffers that stay in the memory tier;
            // a registered pool would sit unused.
            return;
        }
        let record_max = align_up(format::HEADER_BYTES_MAX + self.block_bytes as usize);
        let registered = crate::io::aligned::init_thread_pool(READ_BUFFERS_PER_WORKER, record_max);
        if registered {
            let n = self
                .registered_buffers
                .fetch_add(READ_BUFFERS_PER_WORKER as u64, Ordering::Relaxed);
            telemetry::set_gauge(
                Gauge::CacheRegisteredBuffers,
                n + READ_BUFFERS_PER_WORKER as u64,
            );
        }
    }

    /// Notice the cache file being removed or replaced under us; from then
    /// on every read goes to the store. Returns whether the cache is usable.
    pub fn check_device(&self) -> bool {
        if !self.is_enabled() {
            return false;
        }
        if !self.regular_file {
            return true;
        }
        let gone = match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.dev_ino,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        if gone {
            self.disable("the cache file was removed or replaced");
        }
        !gone
    }

    fn disable(&self, why: &str) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::error!(path = %self.path.display(), why, "cache disabled; serving every read from the store");
            telemetry::add(Counter::CacheDeviceLost, 1);
            telemetry::set_gauge(Gauge::CacheEnabled, 0);
            telemetry::set_gauge(Gauge::CacheEntries, 0);
            telemetry::set_gauge(Gauge::CacheBytesCached, 0);
        }
    }

    /// Read `len` bytes at `offset` of version `etag` of object `key`
    /// (`size` bytes long), as pieces that together hold the bytes in order.
    /// `client` and `file` identify the reader's stream for prefetch. Must
    /// run on a worker thread with a ring.
    #[allow(clippy::too_many_arguments)]
    pub async fn read(
        self: &Arc<Self>,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        etag: &str,
        size: u64,
        offset: u64,
        len: usize,
        client: u64,
        file: u64,
    ) -> Result<Vec<Piece>, StoreError> {
        let end = (offset + len as u64).min(size);
        let mut purpose = Purpose::Read;
        if let Some(p) = &self.prefetcher {
            let advice = p.observe(&ReadEvent {
                client,
                file,
                offset,
                len: (end - offset) as u32,
                at: Instant::now(),
            });
            if size > self.block_bytes {
                if size <= p.config().small_object_bytes && offset == 0 {
                    // Small objects come whole, in one GET, on first touch.
                    if let Err(e) = self.fetch_whole(store.as_ref(), key, etag, size).await {
                        tracing::debug!(%key, error = %e, "whole-object fetch failed; reading by block");
                    }
                } else if matches!(advice.pattern, Pattern::Random | Pattern::Unknown)
                    && offset != 0
                {
                    // No pattern: fetch what is asked, no more.
                    purpose = Purpose::Exact;
                }
            }
            for r in advice.ahead {
                self.prefetch_range(store, key, etag, size, r, end, client);
            }
        }
        let mut pieces = Vec::with_capacity(2);
        let mut at = offset;
        while at < end {
            let index = at / self.block_bytes;
            let block_start = index * self.block_bytes;
            let block_len = (size - block_start).min(self.block_bytes) as usize;
            let in_block = (at - block_start) as usize;
            let take = ((end - at) as usize).min(block_len - in_block);
            pieces.push(
                self.block(
                    store.as_ref(),
                    key,
                    etag,
                    index,
                    block_len,
                    in_block,
                    take,
                    purpose,
                )
                .await?,
            );
            at += take as u64;
        }
        Ok(pieces)
    }

    /// Queue the blocks of `range` that are neither cached nor in flight,
    /// in spans of contiguous blocks fetched with one GET each, and start as
    /// many as the prefetch budget allows.
    #[allow(clippy::too_many_arguments)]
    fn prefetch_range(
        self: &Arc<Self>,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        etag: &str,
        size: u64,
        range: std::ops::Range<u64>,
        frontier: u64,
        client: u64,
    ) {
        if self.prefetcher.is_none() || !self.is_enabled() || !format::fits(key, etag) {
            return;
        }
        let end = range.end.min(size);
        let mut index = range.start / self.block_bytes;
        // Close to the reader, blocks go one per GET: its own READs may
        // arrive any moment and should not wait for a whole span. Further
        // ahead, contiguous blocks share a GET.
        let near_end = frontier + PREFETCH_NEAR_BYTES;
        // A span (held twice while it is cut into blocks) stays well inside
        // the per-client budget.
        let span_blocks_max = self.prefetcher.as_ref().map_or(1, |p| {
            (p.config().client_budget_bytes / (4 * self.block_bytes)).clamp(1, PREFETCH_SPAN_BLOCKS)
        });
        let (key, etag): (Arc<str>, Arc<str>) = (Arc::from(key), Arc::from(etag));
        let mut span: Option<std::ops::Range<u64>> = None;
        let mut jobs = Vec::new();
        while index * self.block_bytes < end {
            let block_len = (size - index * self.block_bytes).min(self.block_bytes) as usize;
            let id = block_id(&key, &etag, index);
            let wanted = !self.has_block_id(id) && self.worth_prefetching(id, block_len);
            span = match (span, wanted) {
                (Some(s), true)
                    if s.end == index
                        && s.end - s.start < span_blocks_max
                        && index * self.block_bytes >= near_end =>
                {
                    Some(s.start..index + 1)
                }
                (s, true) => {
                    jobs.extend(s);
                    Some(index..index + 1)
                }
                (s, false) => {
                    jobs.extend(s);
                    None
                }
            };
            index += 1;
        }
        jobs.extend(span);
        if jobs.is_empty() {
            return;
        }
        {
            let mut q = self.prefetch_jobs.lock().expect("prefetch queue poisoned");
            for blocks in jobs {
                if q.len() >= PREFETCH_JOBS_MAX {
                    telemetry::add(Counter::PrefetchBudgetSkips, 1);
                    break;
                }
                q.push_back(PrefetchJob {
                    store: store.clone(),
                    key: key.clone(),
                    etag: etag.clone(),
                    size,
                    blocks,
                    client,
                });
            }
        }
        self.pump_prefetch();
    }

    /// Start queued prefetch spans while the budget allows; each finished
    /// span pumps again.
    pub(crate) fn pump_prefetch(self: &Arc<Self>) {
        let Some(p) = &self.prefetcher else {
            return;
        };
        loop {
            let job = {
                let mut q = self.prefetch_jobs.lock().expect("prefetch queue poisoned");
                // The first of the next few jobs that fits the budgets (one
                // client at its limit does not hold up the others).
                let fits = q
                    .iter()
                    .take(PUMP_SCAN_JOBS)
                    .position(|job| p.reserve_counted(job.client, self.span_bytes(job), false));
                let Some(i) = fits else {
                    return;
                };
                q.remove(i).expect("position is in the queue")
            };
            let me = self.clone();
            tokio::task::spawn_local(async move {
                let bytes = me.span_bytes(&job);
                let r = me
                    .fetch_blocks(
                        job.store.as_ref(),
                        &job.key,
                        &job.etag,
                        job.size,
                        job.blocks.clone(),
                        Purpose::Prefetch,
                    )
                    .await;
                if let Some(p) = &me.prefetcher {
                    p.release(job.client, bytes);
                }
                if let Err(e) = r {
                    tracing::debug!(key = %job.key, blocks = ?job.blocks, error = %e, "prefetch failed");
                }
                me.pump_prefetch();
            });
        }
    }

    /// Memory a prefetch span holds while in flight: its bytes, twice for a
    /// span of several blocks (the span is received in one buffer, then
    /// cut into block records).
    fn span_bytes(&self, job: &PrefetchJob) -> u64 {
        let start = job.blocks.start * self.block_bytes;
        let bytes = (job.blocks.end * self.block_bytes).min(job.size) - start.min(job.size);
        let held = if job.blocks.end - job.blocks.start > 1 {
            2 * bytes
        } else {
            bytes
        };
        // Never more than a budget holds, so every job can start once the
        // others are done.
        self.prefetcher.as_ref().map_or(held, |p| {
            held.min(p.config().client_budget_bytes)
                .min(p.config().budget_bytes)
        })
    }

    /// Fetch every block of a small object that is neither cached nor in
    /// flight with one GET, each block then published like a miss.
    async fn fetch_whole(
        self: &Arc<Self>,
        store: &dyn ObjectStore,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let blocks = size.div_ceil(self.block_bytes);
        self.fetch_blocks(store, key, etag, size, 0..blocks, Purpose::Read)
            .await
    }

    /// Fetch the blocks of `blocks` that are neither cached nor in flight
    /// with one ranged GET (from the first missing to the last missing),
    /// each then published like a miss.
    async fn fetch_blocks(
        self: &Arc<Self>,
        store: &dyn ObjectStore,
        key: &str,
        etag: &str,
        size: u64,
        blocks: std::ops::Range<u64>,
        purpose: Purpose,
    ) -> Result<(), StoreError> {
        if !self.is_enabled() || !format::fits(key, etag) {
            return Ok(());
        }
        let mut leaders = Vec::new();
        {
            let mut flights = self.flights.lock().expect("flights poisoned");
            for index in blocks {
                let id = block_id(key, etag, index);
                if self.memory.contains(id) || flights.contains_key(&id) {
                    continue;
                }
                if self.dir.lock().expect("cache index poisoned").contains(id) {
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                flights.insert(id, rx);
                leaders.push((index, id, tx));
            }
        }
        let (Some(first), Some(last)) = (leaders.first().map(|l| l.0), leaders.last().map(|l| l.0))
        else {
            return Ok(());
        };
        let guards: Vec<FlightGuard> = leaders
            .iter()
            .map(|l| FlightGuard {
                cache: self,
                id: l.1,
                armed: true,
            })
            .collect();
        let span_start = first * self.block_bytes;
        let span_end = ((last + 1) * self.block_bytes).min(size);
        let mut span = vec![0u8; (span_end - span_start) as usize];
        let t = Instant::now();
        let got = store
            .get_range(key, span_start, &mut span, Some(etag))
            .await;
        telemetry::record(Latency::StoreGet, t.elapsed());
        telemetry::add(Counter::StoreGetRequests, 1);
        let got = match got {
            Ok(n) if n == span.len() => Ok(()),
            Ok(_) => Err(StoreError::PreconditionFailed {
                key: key.to_string(),
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = got {
            let e = Arc::new(e);
            for (_, _, tx) in &leaders {
                let _ = tx.send(Some(Err(e.clone())));
            }
            drop(guards);
            return Err(e.duplicate());
        }
        telemetry::add(Counter::StoreGetBytes, span.len() as u64);
        telemetry::add(Counter::CacheFetchedBytes, span.len() as u64);
        for ((index, id, tx), guard) in leaders.into_iter().zip(guards) {
            let block_start = index * self.block_bytes;
            let block_len = (size - block_start).min(self.block_bytes) as usize;
            let hl = format::header_len(key, etag);
            let mut buf = AlignedBuf::new(format::record_len(hl, block_len));
            let from = (block_start - span_start) as usize;
            buf.as_mut_slice()[hl..hl + block_len].copy_from_slice(&span[from..from + block_len]);
            let fetched = Fetched {
                buf,
                header_len: hl,
                data_len: block_len,
            };
            if purpose == Purpose::Prefetch {
                if let Some(p) = &self.prefetcher {
                    p.fetched(id, block_len as u64);
                }
            }
            self.publish(id, index, key, etag, tx, guard, fetched, purpose)
                .await;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn block(
        self: &Arc<Self>,
        store: &dyn ObjectStore,
        key: &str,
        etag: &str,
        index: u64,
        block_len: usize,
        start: usize,
        len: usize,
        purpose: Purpose,
    ) -> Result<Piece, StoreError> {
        let cacheable = self.is_enabled() && format::fits(key, etag);
        let id = block_id(key, etag, index);
        let reading = matches!(purpose, Purpose::Read | Purpose::Exact);
        if cacheable && reading {
            if let Some(block) = self.memory.get(id).filter(|b| start + len <= b.data_len) {
                telemetry::add(Counter::CacheHits, 1);
                telemetry::add(Counter::CacheMemoryHits, 1);
                telemetry::add(Counter::CacheHitBytes, len as u64);
                self.note_used(id);
                return Ok(Piece::Shared { block, start, len });
            }
            let loc = self.dir.lock().expect("cache index poisoned").lookup(id);
            if let Some(loc) = loc {
                if let Some(piece) = self.read_hit(id, loc, key, etag, index, start, len).await {
                    telemetry::add(Counter::CacheHits, 1);
                    telemetry::add(Counter::CacheHitBytes, len as u64);
                    self.note_used(id);
                    return Ok(piece);
                }
            }
        }
        if reading {
            telemetry::add(Counter::CacheMisses, 1);
        }
        loop {
            let joined = {
                let mut flights = self.flights.lock().expect("flights poisoned");
                match flights.get(&id) {
                    Some(rx) => Some((rx.clone(), None)),
                    None if purpose == Purpose::Exact => None,
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(id, rx.clone());
                        Some((rx, Some(tx)))
                    }
                }
            };
            let Some((mut rx, leader)) = joined else {
                return self.fetch_exact(store, key, etag, index, start, len).await;
            };
            let Some(tx) = leader else {
                telemetry::add(Counter::CacheSingleFlightJoins, 1);
                let got = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone());
                match got {
                    Ok(Some(Ok(block))) => {
                        if start + len > block.data_len {
                            // Fetched for another idea of the object's size:
                            // it changed; the caller re-reads its attributes.
                            return Err(StoreError::PreconditionFailed {
                                key: key.to_string(),
                            });
                        }
                        if reading {
                            self.note_used(id);
                        }
                        return Ok(Piece::Shared { block, start, len });
                    }
                    Ok(Some(Err(e))) => return Err(e.duplicate()),
                    // The fetcher went away (its caller was cancelled).
                    _ => continue,
                }
            };
            let guard = FlightGuard {
                cache: self,
                id,
                armed: true,
            };
            let fetched = match self.fetch(store, key, etag, index, block_len).await {
                Ok(f) => f,
                Err(e) => {
                    let e = Arc::new(e);
                    let _ = tx.send(Some(Err(e.clone())));
                    drop(guard);
                    return Err(e.duplicate());
                }
            };
            if purpose == Purpose::Prefetch {
                if let Some(p) = &self.prefetcher {
                    p.fetched(id, block_len as u64);
                }
            }
            let block = if cacheable {
                self.publish(id, index, key, etag, tx, guard, fetched, purpose)
                    .await
            } else {
                let block = Arc::new(fetched);
                let _ = tx.send(Some(Ok(block.clone())));
                drop(guard);
                block
            };
            return Ok(Piece::Shared { block, start, len });
        }
    }

    /// Count a read of a block that may have been prefetched.
    fn note_used(&self, id: BlockId) {
        if let Some(p) = &self.prefetcher {
            p.used(id);
        }
    }

    /// Place a freshly fetched block, hand it to everyone waiting on its
    /// flight, keep it in memory and write it to the device (awaited when
    /// warming, in the background otherwise; the flight ends with the
    /// write).
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        self: &Arc<Self>,
        id: BlockId,
        index: u64,
        key: &str,
        etag: &str,
        tx: watch::Sender<FlightResult>,
        guard: FlightGuard<'_>,
        mut fetched: Fetched,
        purpose: Purpose,
    ) -> Arc<Fetched> {
        // Place the record before sharing the buffer: its header names the
        // region fill it goes to.
        let placement = self.place(id, &fetched, purpose == Purpose::Warm);
        if let Some(loc) = placement {
            let h = RecordHeader {
                region_seq: loc.seq,
                block_index: index,
                data_len: fetched.data_len as u32,
                data_crc: format::crc(fetched.data()),
                key: key.to_string(),
                etag: etag.to_string(),
            };
            h.encode(&self.cache_id, fetched.buf.as_mut_slice());
        }
        let block = Arc::new(fetched);
        self.memory.insert(id, block.clone());
        let _ = tx.send(Some(Ok(block.clone())));
        let placement = placement.filter(|&loc| {
            // Writes waiting on the device are bounded; past the bound the
            // block is served but not cached.
            let bytes = loc.record_len as usize;
            let ok = self
                .writes_in_flight_bytes
                .fetch_add(bytes, Ordering::Relaxed)
                + bytes
                <= WRITES_IN_FLIGHT_BYTES_MAX;
            if !ok {
                self.writes_in_flight_bytes
                    .fetch_sub(bytes, Ordering::Relaxed);
                self.dir.lock().expect("cache index poisoned").abort(loc);
                telemetry::add(Counter::CacheAdmissionRejects, 1);
            }
            ok
        });
        match placement {
            Some(loc) => {
                guard.disarm();
                // The write runs as a task of its own, so a caller that goes
                // away (a warm request timing out) never leaves a placement
                // half done; a warm waits for it.
                let me = self.clone();
                let record = block.clone();
                let write = tokio::task::spawn_local(async move {
                    me.write_record(id, loc, record).await;
                    me.writes_in_flight_bytes
                        .fetch_sub(loc.record_len as usize, Ordering::Relaxed);
                });
                if purpose == Purpose::Warm {
                    let _ = write.await;
                }
            }
            None => drop(guard),
        }
        block
    }

    /// Fetch exactly `len` bytes at `start` of block `index`, uncached.
    async fn fetch_exact(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        etag: &str,
        index: u64,
        start: usize,
        len: usize,
    ) -> Result<Piece, StoreError> {
        let mut buf = AlignedBuf::new(len);
        let t = Instant::now();
        let n = store
            .get_range(
                key,
                index * self.block_bytes + start as u64,
                &mut buf.as_mut_slice()[..len],
                Some(etag),
            )
            .await?;
        telemetry::record(Latency::StoreGet, t.elapsed());
        telemetry::add(Counter::StoreGetRequests, 1);
        telemetry::add(Counter::StoreGetBytes, n as u64);
        telemetry::add(Counter::CacheBypassReads, 1);
        telemetry::add(Counter::CacheBypassBytes, n as u64);
        if n != len {
            return Err(StoreError::PreconditionFailed {
                key: key.to_string(),
            });
        }
        Ok(Piece::Shared {
            block: Arc::new(Fetched {
                buf,
                header_len: 0,
                data_len: len,
            }),
            start: 0,
            len,
        })
    }

    /// Make sure every block of an object is on the device (waits for the
    /// writes). Returns the bytes written now.
    pub async fn warm(
        self: &Arc<Self>,
        store: &dyn ObjectStore,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<u64, StoreError> {
        let mut written = 0;
        let mut index = 0;
        while index * self.block_bytes < size.max(1) {
            let block_len = (size - index * self.block_bytes).min(self.block_bytes) as usize;
            let id = block_id(key, etag, index);
            let cached = self
                .dir
                .lock()
                .expect("cache index poisoned")
                .lookup(id)
                .is_some();
            if !cached && self.is_enabled() {
                self.block(store, key, etag, index, block_len, 0, 0, Purpose::Warm)
                    .await?;
                written += block_len as u64;
            }
            index += 1;
        }
        Ok(written)
    }

    /// Fetch one block from the store into a record-shaped buffer.
    async fn fetch(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        etag: &str,
        index: u64,
        block_len: usize,
    ) -> Result<Fetched, StoreError> {
        let hl = format::header_len(key, etag);
        let mut buf = AlignedBuf::new(format::record_len(hl, block_len));
        let t = Instant::now();
        let n = store
            .get_range(
                key,
                index * self.block_bytes,
                &mut buf.as_mut_slice()[hl..hl + block_len],
                Some(etag),
            )
            .await?;
        telemetry::record(Latency::StoreGet, t.elapsed());
        telemetry::add(Counter::StoreGetRequests, 1);
        telemetry::add(Counter::StoreGetBytes, n as u64);
        telemetry::add(Counter::CacheFetchedBytes, n as u64);
        if n != block_len {
            // Shorter than its attributes said: the object changed.
            return Err(StoreError::PreconditionFailed {
                key: key.to_string(),
            });
        }
        Ok(Fetched {
            buf,
            header_len: hl,
            data_len: block_len,
        })
    }

    /// Ask the directory for room for a fetched block.
    fn place(&self, id: BlockId, block: &Fetched, force: bool) -> Option<Loc> {
        let record_len = format::record_len(block.header_len, block.data_len);
        let (admission, evicted) = {
            let mut dir = self.dir.lock().expect("cache index poisoned");
            // An explicit warm outranks the policy's guess.
            dir.reserve(id, record_len as u64, force)
        };
        if evicted.entries > 0 {
            telemetry::add(Counter::CacheEvictions, evicted.entries);
            telemetry::add(Counter::CacheEvictedBytes, evicted.bytes);
        }
        match admission {
            Admission::Place(loc) => Some(loc),
            Admission::Rejected | Admission::Busy => {
                telemetry::add(Counter::CacheAdmissionRejects, 1);
                None
            }
        }
    }

    /// Write a placed record and index it. The block's flight (which lets
    /// late readers share the fetched copy) ends when this returns.
    async fn write_record(&self, id: BlockId, loc: Loc, block: Arc<Fetched>) {
        let _flight = FlightGuard {
            cache: self,
            id,
            armed: true,
        };
        let t = Instant::now();
        let ptr = block.buf.as_ptr();
        assert!(loc.record_len as usize <= block.buf.capacity());
        // SAFETY: the record lies in the block's heap buffer, kept alive by
        // the `Arc` the write owns.
        let r = unsafe {
            disk::write_at(
                self.file.as_raw_fd(),
                block.clone(),
                ptr,
                loc.record_len as usize,
                self.layout.device_offset(&loc),
            )
        }
        .await;
        match r {
            Ok(()) => {
                telemetry::record(Latency::CacheWrite, t.elapsed());
                self.dir
                    .lock()
                    .expect("cache index poisoned")
                    .commit(id, loc);
                telemetry::add(Counter::CacheInserts, 1);
                telemetry::add(Counter::CacheInsertedBytes, block.data_len as u64);
            }
            Err(e) => {
                self.dir.lock().expect("cache index poisoned").abort(loc);
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    telemetry::add(Counter::CacheNoSpace, 1);
                    if log_once(&self.logged.no_space) {
                        tracing::error!(path = %self.path.display(),
                            "cache device is full; blocks are served from the store without caching (logged once)");
                    }
                } else {
                    telemetry::add(Counter::CacheWriteErrors, 1);
                    if log_once(&self.logged.write_error) {
                        tracing::error!(path = %self.path.display(), error = %e,
                            "cache write failed; serving from the store (logged once)");
                    }
                }
            }
        }
        self.publish_gauges();
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_hit(
        &self,
        id: BlockId,
        loc: Loc,
        key: &str,
        etag: &str,
        index: u64,
        start: usize,
        len: usize,
    ) -> Option<Piece> {
        let t = Instant::now();
        // With a memory tier the record is read into a buffer of its own
        // and kept there; without one, into a registered pool buffer.
        let buf = if self.memory.is_enabled() {
            PoolBuf::unpooled(loc.record_len as usize)
        } else {
            PoolBuf::take(loc.record_len as usize)
        };
        let (r, buf) = disk::read_at(
            self.file.as_raw_fd(),
            buf,
            self.layout.device_offset(&loc),
            loc.record_len as usize,
        )
        .await;
        if let Err(e) = r {
            telemetry::add(Counter::CacheReadErrors, 1);
            if log_once(&self.logged.read_error) {
                tracing::error!(path = %self.path.display(), error = %e, "cache read failed; serving from the store (logged once)");
            }
            return None;
        }
        let record = &buf.buf().as_slice()[..loc.record_len as usize];
        let checked = RecordHeader::decode(&self.cache_id, record).and_then(|(h, hl)| {
            if h.key != key || h.etag != etag || h.block_index != index || h.region_seq != loc.seq {
                return Err(format::RecordError::NoRecord);
            }
            h.check_data(record, hl).map(|()| (hl, h.data_len as usize))
        });
        match checked {
            Ok((header_len, data_len)) => {
                telemetry::record(Latency::CacheRead, t.elapsed());
                if start + len > data_len {
                    return None;
                }
                match buf.into_aligned() {
                    Ok(aligned) => {
                        let block = Arc::new(Fetched {
                            buf: aligned,
                            header_len,
                            data_len,
                        });
                        self.memory.insert(id, block.clone());
                        Some(Piece::Shared { block, start, len })
                    }
                    Err(buf) => Some(Piece::Cached {
                        buf,
                        start: header_len + start,
                        len,
                    }),
                }
            }
            Err(e) => {
                let mut dir = self.dir.lock().expect("cache index poisoned");
                if dir.is_current(&loc) {
                    dir.remove(id, &loc);
                    drop(dir);
                    telemetry::add(Counter::CacheChecksumFailures, 1);
                    if log_once(&self.logged.checksum) {
                        tracing::warn!(path = %self.path.display(), %key, block = index, error = %e,
                            "damaged cache record dropped; refetching (further ones are counted, not logged)");
                    }
                    self.publish_gauges();
                }
                // Otherwise the region was reclaimed while we read: a miss.
                None
            }
        }
    }
}

/// Removes a block's flight from the table when dropped (also when the
/// fetching task is cancelled, so waiters retry instead of hanging).
struct FlightGuard<'a> {
    cache: &'a BlockCache,
    id: BlockId,
    armed: bool,
}

impl FlightGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cache
                .flights
                .lock()
                .expect("flights poisoned")
                .remove(&self.id);
        }
    }
}

/// What the start-up scan found in one region.
struct RegionScan {
    region: u32,
    seq: u64,
    used_bytes: u64,
    records: Vec<(BlockId, Loc)>,
}

/// Rebuild the directory from the record headers on the device.
fn recover(
    file: &File,
    cache_id: &[u8; 16],
    layout: Layout,
    dir: &mut Directory,
) -> io::Result<()> {
    let next = std::sync::atomic::AtomicU32::new(0);
    let results: Mutex<Vec<RegionScan>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..RECOVERY_THREADS.min(layout.region_count as usize) {
            s.spawn(|| {
                let mut page = AlignedBuf::new(ALIGN_BYTES);
                loop {
                    let r = next.fetch_add(1, Ordering::Relaxed);
                    if r >= layout.region_count {
                        return;
                    }
                    match scan_region(file, cache_id, layout, r, &mut page) {
                        Ok(Some(found)) => results.lock().expect("poisoned").push(found),
                        Ok(None) => {}
                        Err(e) => {
                            first_error.lock().expect("poisoned").get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("poisoned") {
        return Err(e);
    }
    for f in results.into_inner().expect("poisoned") {
        dir.recover_region(f.region, f.seq, f.used_bytes, f.records);
    }
    Ok(())
}

fn scan_region(
    file: &File,
    cache_id: &[u8; 16],
    layout: Layout,
    r: u32,
    page: &mut AlignedBuf,
) -> io::Result<Option<RegionScan>> {
    let mut offset = 0u64;
    let mut seq = None;
    let mut records = Vec::new();
    while offset + ALIGN_BYTES as u64 <= layout.region_bytes {
        let probe = Loc {
            region: r,
            offset,
            record_len: 0,
            seq: 0,
        };
        file.read_exact_at(
            &mut page.as_mut_slice()[..ALIGN_BYTES],
            layout.device_offset(&probe),
        )?;
        let Ok((h, hl)) = RecordHeader::decode(cache_id, page.as_slice()) else {
            break;
        };
        if seq.is_some_and(|s| s != h.region_seq) {
            break;
        }
        let record_len = format::record_len(hl, h.data_len as usize) as u64;
        if offset + record_len > layout.region_bytes {
            break;
        }
        seq = Some(h.region_seq);
        records.push((
            block_id(&h.key, &h.etag, h.block_index),
            Loc {
                region: r,
                offset,
                record_len: record_len as u32,
                seq: h.region_seq,
            },
        ));
        offset += record_len;
    }
    Ok(seq.map(|seq| RegionScan {
        region: r,
        seq,
        used_bytes: offset,
        records,
    }))
}

/// Warms whole objects into a cache at their current version; what the
/// admin endpoint's `/warm` calls.
pub struct Warmer {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
}

impl Warmer {
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<BlockCache>) -> Warmer {
        Warmer { store, cache }
    }
}

impl telemetry::http::WarmTarget for Warmer {
    fn warm<'a>(
        &'a self,
        key: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + 'a>> {
        Box::pin(async move {
            let key = key.trim_start_matches('/');
            let meta = self.store.head(key).await.map_err(|e| e.to_string())?;
            self.cache
                .warm(self.store.as_ref(), key, &meta.etag, meta.size)
                .await
                .map_err(|e| e.to_string())?;
            Ok(meta.size)
        })
    }
}
