//! Telemetry: the gateway's counters, gauges and latency histograms, and
//! their two renderings (Prometheus text, a flat JSON object).
//!
//! **Names are an enum, not strings.** Every metric is a variant of
//! [`Counter`], [`Gauge`] or [`Latency`]; the variant knows its Prometheus
//! name (without the `tidegate_` prefix, which the renderer adds) and its
//! help text. A typo is a compile error, and a scrape can walk `ALL` to
//! export everything, including metrics nobody has touched yet (they read
//! 0, so dashboards never see a series appear out of nowhere).
//!
//! **Counters and gauges are static atomics.** One `AtomicU64` per metric
//! in a static array, updated with `Relaxed` ordering: a counter is a
//! statistic, not a synchronisation point, so the hot path pays one
//! uncontended-in-the-common-case `fetch_add` and nothing else. Counters
//! shared by all cores do bounce a cache line between them; at the rates
//! the gateway counts (per NFS call, per cache block) that is noise next
//! to the work being counted.
//!
//! **Latencies are per-thread histograms, merged at scrape time.** An HDR
//! histogram (1 µs .. 60 s, 3 significant digits) cannot be updated
//! atomically, and a shared one behind a lock would serialise every core.
//! So each thread that records gets its own set of histograms (one per
//! [`Latency`] variant, allocated the first time that variant is recorded
//! on that thread), behind a mutex that only its owner and a scrape ever
//! take: recording locks an uncontended mutex, a scrape locks each set in
//! turn and merges. The sets are registered in a global list when first
//! used; when a thread exits its set is merged into a "retired" set and
//! dropped from the list, so memory stays bounded by the threads alive now
//! plus one. See [`latency`].
//!
//! A scrape ([`snapshot`]) reads everything into a plain [`Snapshot`];
//! [`render_prometheus`] and [`render_json`] turn that into text for the
//! admin endpoint in [`http`]. Nothing here runs on the data path except
//! [`add`], [`set_gauge`] and [`record`].

pub mod http;
mod latency;
mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use render::{render_json, render_prometheus};

/// Prefix of every exported Prometheus name.
pub const METRIC_PREFIX: &str = "tidegate_";

/// Monotonic event and byte counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    CacheHits,
    CacheMisses,
    CacheHitBytes,
    CacheFetchedBytes,
    CacheInserts,
    CacheInsertedBytes,
    CacheEvictions,
    CacheEvictedBytes,
    CacheAdmissionRejects,
    CacheChecksumFailures,
    CacheReadErrors,
    CacheWriteErrors,
    CacheNoSpace,
    CacheDeviceLost,
    CacheSingleFlightJoins,
    CacheMemoryHits,
    SendZc,
    SendZcCopied,
    StoreGetRequests,
    StoreGetBytes,
    NfsCalls,
    PrefetchBlocks,
    PrefetchBytes,
    PrefetchHits,
    PrefetchUsedBytes,
    PrefetchUnusedBytes,
    PrefetchBudgetSkips,
    PrefetchWindowGrows,
    PrefetchWindowCollapses,
    CacheBypassReads,
    CacheBypassBytes,
    PrefetchDirSweeps,
    PrefetchSweepFiles,
    WriteBytes,
    WriteDelays,
    UploadObjects,
    UploadBytes,
    UploadFailures,
    StoreCopies,
    StoreDeletes,
}

/// Number of [`Counter`] variants.
pub const COUNTER_COUNT: usize = Counter::ALL.len();

impl Counter {
    /// Every counter, in export order.
    pub const ALL: [Counter; 40] = [
        Counter::CacheHits,
        Counter::CacheMisses,
        Counter::CacheHitBytes,
        Counter::CacheFetchedBytes,
        Counter::CacheInserts,
        Counter::CacheInsertedBytes,
        Counter::CacheEvictions,
        Counter::CacheEvictedBytes,
        Counter::CacheAdmissionRejects,
        Counter::CacheChecksumFailures,
        Counter::CacheReadErrors,
        Counter::CacheWriteErrors,
        Counter::CacheNoSpace,
        Counter::CacheDeviceLost,
        Counter::CacheSingleFlightJoins,
        Counter::CacheMemoryHits,
        Counter::SendZc,
        Counter::SendZcCopied,
        Counter::StoreGetRequests,
        Counter::StoreGetBytes,
        Counter::NfsCalls,
        Counter::PrefetchBlocks,
        Counter::PrefetchBytes,
        Counter::PrefetchHits,
        Counter::PrefetchUsedBytes,
        Counter::PrefetchUnusedBytes,
        Counter::PrefetchBudgetSkips,
        Counter::PrefetchWindowGrows,
        Counter::PrefetchWindowCollapses,
        Counter::CacheBypassReads,
        Counter::CacheBypassBytes,
        Counter::PrefetchDirSweeps,
        Counter::PrefetchSweepFiles,
        Counter::WriteBytes,
        Counter::WriteDelays,
        Counter::UploadObjects,
        Counter::UploadBytes,
        Counter::UploadFailures,
        Counter::StoreCopies,
        Counter::StoreDeletes,
    ];

    /// Prometheus name without the `tidegate_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Counter::CacheHits => "cache_hits_total",
            Counter::CacheMisses => "cache_misses_total",
            Counter::CacheHitBytes => "cache_hit_bytes_total",
            Counter::CacheFetchedBytes => "cache_fetched_bytes_total",
            Counter::CacheInserts => "cache_inserts_total",
            Counter::CacheInsertedBytes => "cache_inserted_bytes_total",
            Counter::CacheEvictions => "cache_evictions_total",
            Counter::CacheEvictedBytes => "cache_evicted_bytes_total",
            Counter::CacheAdmissionRejects => "cache_admission_rejects_total",
            Counter::CacheChecksumFailures => "cache_checksum_failures_total",
            Counter::CacheReadErrors => "cache_read_errors_total",
            Counter::CacheWriteErrors => "cache_write_errors_total",
            Counter::CacheNoSpace => "cache_no_space_total",
            Counter::CacheDeviceLost => "cache_device_lost_total",
            Counter::CacheSingleFlightJoins => "cache_single_flight_joins_total",
            Counter::CacheMemoryHits => "cache_memory_hits_total",
            Counter::SendZc => "send_zc_total",
            Counter::SendZcCopied => "send_zc_copied_total",
            Counter::StoreGetRequests => "store_get_requests_total",
            Counter::StoreGetBytes => "store_get_bytes_total",
            Counter::NfsCalls => "nfs_calls_total",
            Counter::PrefetchBlocks => "prefetch_blocks_total",
            Counter::PrefetchBytes => "prefetch_bytes_total",
            Counter::PrefetchHits => "prefetch_hits_total",
            Counter::PrefetchUsedBytes => "prefetch_used_bytes_total",
            Counter::PrefetchUnusedBytes => "prefetch_unused_bytes_total",
            Counter::PrefetchBudgetSkips => "prefetch_budget_skips_total",
            Counter::PrefetchWindowGrows => "prefetch_window_grows_total",
            Counter::PrefetchWindowCollapses => "prefetch_window_collapses_total",
            Counter::CacheBypassReads => "cache_bypass_reads_total",
            Counter::CacheBypassBytes => "cache_bypass_bytes_total",
            Counter::PrefetchDirSweeps => "prefetch_dir_sweeps_total",
            Counter::PrefetchSweepFiles => "prefetch_sweep_files_total",
            Counter::WriteBytes => "write_bytes_total",
            Counter::WriteDelays => "write_delays_total",
            Counter::UploadObjects => "upload_objects_total",
            Counter::UploadBytes => "upload_bytes_total",
            Counter::UploadFailures => "upload_failures_total",
            Counter::StoreCopies => "store_copies_total",
            Counter::StoreDeletes => "store_deletes_total",
        }
    }

    /// One line for `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Counter::CacheHits => "Block reads answered from the block cache.",
            Counter::CacheMisses => "Block reads the block cache could not answer.",
            Counter::CacheHitBytes => "Bytes answered from the block cache.",
            Counter::CacheFetchedBytes => "Bytes fetched from the store to fill cache misses.",
            Counter::CacheInserts => "Blocks written into the block cache.",
            Counter::CacheInsertedBytes => "Bytes written into the block cache.",
            Counter::CacheEvictions => "Blocks evicted from the block cache.",
            Counter::CacheEvictedBytes => "Bytes evicted from the block cache.",
            Counter::CacheAdmissionRejects => "Blocks the admission policy kept out of the cache.",
            Counter::CacheChecksumFailures => {
                "Cached blocks whose checksum did not match (dropped and refetched)."
            }
            Counter::CacheReadErrors => "I/O errors reading the cache device.",
            Counter::CacheWriteErrors => "I/O errors writing the cache device.",
            Counter::CacheNoSpace => "Inserts that found no space to write into.",
            Counter::CacheDeviceLost => "Times the cache device was lost and the cache turned off.",
            Counter::CacheSingleFlightJoins => {
                "Misses that waited for a fetch already in flight instead of starting one."
            }
            Counter::CacheMemoryHits => "Cache hits answered from the memory tier (no device I/O).",
            Counter::SendZc => "Zero-copy sends completed.",
            Counter::SendZcCopied => "Zero-copy sends the kernel completed by copying.",
            Counter::StoreGetRequests => "Ranged GET requests sent to the store.",
            Counter::StoreGetBytes => "Bytes received from the store by ranged GETs.",
            Counter::NfsCalls => "NFS and MOUNT calls handled.",
            Counter::PrefetchBlocks => "Blocks fetched ahead of their readers.",
            Counter::PrefetchBytes => "Bytes fetched ahead of their readers.",
            Counter::PrefetchHits => "Prefetched blocks that a reader then used.",
            Counter::PrefetchUsedBytes => "Bytes of prefetched blocks that a reader then used.",
            Counter::PrefetchUnusedBytes => {
                "Bytes prefetched and forgotten or evicted without being read (waste)."
            }
            Counter::PrefetchBudgetSkips => "Prefetches skipped because a budget was exhausted.",
            Counter::PrefetchWindowGrows => "Times a stream's readahead window grew.",
            Counter::PrefetchWindowCollapses => {
                "Times readahead windows collapsed on random access."
            }
            Counter::CacheBypassReads => {
                "Random reads fetched exactly, without a whole block or caching."
            }
            Counter::CacheBypassBytes => "Bytes fetched by random reads without caching.",
            Counter::PrefetchDirSweeps => {
                "Directory sweeps started (many files of one directory read by one client)."
            }
            Counter::PrefetchSweepFiles => "Files fetched ahead by directory sweeps.",
            Counter::WriteBytes => "Bytes written by NFS WRITE into staging.",
            Counter::WriteDelays => "Writes answered JUKEBOX because staging reached its bound.",
            Counter::UploadObjects => "Store updates finished (uploads, copies, markers, deletes).",
            Counter::UploadBytes => "Bytes of staged files uploaded to the store.",
            Counter::UploadFailures => "Store updates that failed and will be retried.",
            Counter::StoreCopies => {
                "Server-side copies sent to the store (renames of uploaded files)."
            }
            Counter::StoreDeletes => "Deletes sent to the store.",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Values that go up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gauge {
    CacheBytesCached,
    CacheBytesCapacity,
    CacheEntries,
    CacheEnabled,
    CacheRegisteredBuffers,
    CacheMemoryBytes,
    PrefetchInFlightBytes,
    PrefetchStreams,
    UploadPendingFiles,
    UploadPendingBytes,
    UploadPendingKeys,
    UploadOldestPendingSeconds,
    StagedBytes,
}

/// Number of [`Gauge`] variants.
pub const GAUGE_COUNT: usize = Gauge::ALL.len();

impl Gauge {
    /// Every gauge, in export order.
    pub const ALL: [Gauge; 13] = [
        Gauge::CacheBytesCached,
        Gauge::CacheBytesCapacity,
        Gauge::CacheEntries,
        Gauge::CacheEnabled,
        Gauge::CacheRegisteredBuffers,
        Gauge::CacheMemoryBytes,
        Gauge::PrefetchInFlightBytes,
        Gauge::PrefetchStreams,
        Gauge::UploadPendingFiles,
        Gauge::UploadPendingBytes,
        Gauge::UploadPendingKeys,
        Gauge::UploadOldestPendingSeconds,
        Gauge::StagedBytes,
    ];

    /// Prometheus name without the `tidegate_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Gauge::CacheBytesCached => "cache_bytes_cached",
            Gauge::CacheBytesCapacity => "cache_bytes_capacity",
            Gauge::CacheEntries => "cache_entries",
            Gauge::CacheEnabled => "cache_enabled",
            Gauge::CacheRegisteredBuffers => "cache_registered_buffers",
            Gauge::CacheMemoryBytes => "cache_memory_bytes",
            Gauge::PrefetchInFlightBytes => "prefetch_in_flight_bytes",
            Gauge::PrefetchStreams => "prefetch_streams",
            Gauge::UploadPendingFiles => "upload_pending_files",
            Gauge::UploadPendingBytes => "upload_pending_bytes",
            Gauge::UploadPendingKeys => "upload_pending_keys",
            Gauge::UploadOldestPendingSeconds => "upload_oldest_pending_seconds",
            Gauge::StagedBytes => "staged_bytes",
        }
    }

    /// One line for `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Gauge::CacheBytesCached => "Bytes of object data held in the block cache.",
            Gauge::CacheBytesCapacity => "Bytes the block cache may hold.",
            Gauge::CacheEntries => "Blocks held in the block cache.",
            Gauge::CacheEnabled => "1 while the block cache is in use, 0 when it is off.",
            Gauge::CacheRegisteredBuffers => "Buffers registered with io_uring for cache I/O.",
            Gauge::CacheMemoryBytes => "Bytes of blocks held in the memory tier.",
            Gauge::PrefetchInFlightBytes => "Bytes of prefetch fetches in flight.",
            Gauge::PrefetchStreams => "Read streams being tracked.",
            Gauge::UploadPendingFiles => "Files whose data the store does not have yet.",
            Gauge::UploadPendingBytes => "Bytes of staged files not yet uploaded.",
            Gauge::UploadPendingKeys => {
                "Keys the store does not match yet (files, directories, links, deletes)."
            }
            Gauge::UploadOldestPendingSeconds => {
                "Age of the oldest change not yet in the store, in seconds."
            }
            Gauge::StagedBytes => "Bytes held in staging files awaiting upload.",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Operations whose latency is recorded, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Latency {
    NfsRead,
    NfsGetattr,
    NfsLookup,
    NfsReaddir,
    NfsOther,
    CacheRead,
    CacheWrite,
    StoreGet,
}

/// Number of [`Latency`] variants.
pub const LATENCY_COUNT: usize = Latency::ALL.len();

impl Latency {
    /// Every latency, in export order.
    pub const ALL: [Latency; 8] = [
        Latency::NfsRead,
        Latency::NfsGetattr,
        Latency::NfsLookup,
        Latency::NfsReaddir,
        Latency::NfsOther,
        Latency::CacheRead,
        Latency::CacheWrite,
        Latency::StoreGet,
    ];

    /// Prometheus name without the `tidegate_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Latency::NfsRead => "nfs_read_latency_us",
            Latency::NfsGetattr => "nfs_getattr_latency_us",
            Latency::NfsLookup => "nfs_lookup_latency_us",
            Latency::NfsReaddir => "nfs_readdir_latency_us",
            Latency::NfsOther => "nfs_other_latency_us",
            Latency::CacheRead => "cache_read_latency_us",
            Latency::CacheWrite => "cache_write_latency_us",
            Latency::StoreGet => "store_get_latency_us",
        }
    }

    /// One line for `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Latency::NfsRead => "NFS READ latency in microseconds, call decoded to reply sent.",
            Latency::NfsGetattr => "NFS GETATTR latency in microseconds.",
            Latency::NfsLookup => "NFS LOOKUP latency in microseconds.",
            Latency::NfsReaddir => "NFS READDIR and READDIRPLUS latency in microseconds.",
            Latency::NfsOther => "Latency of all other NFS and MOUNT calls in microseconds.",
            Latency::CacheRead => "Block cache device read latency in microseconds.",
            Latency::CacheWrite => "Block cache device write latency in microseconds.",
            Latency::StoreGet => "Store ranged GET latency in microseconds.",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The process-wide counters and gauges. A struct (rather than loose
/// statics) so tests can run the same code on a private instance.
struct Values {
    counters: [AtomicU64; COUNTER_COUNT],
    gauges: [AtomicU64; GAUGE_COUNT],
}

impl Values {
    const fn new() -> Values {
        Values {
            counters: [const { AtomicU64::new(0) }; COUNTER_COUNT],
            gauges: [const { AtomicU64::new(0) }; GAUGE_COUNT],
        }
    }

    fn add(&self, c: Counter, n: u64) {
        self.counters[c.index()].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, c: Counter) -> u64 {
        self.counters[c.index()].load(Ordering::Relaxed)
    }

    fn set_gauge(&self, g: Gauge, v: u64) {
        self.gauges[g.index()].store(v, Ordering::Relaxed);
    }

    fn gauge(&self, g: Gauge) -> u64 {
        self.gauges[g.index()].load(Ordering::Relaxed)
    }
}

static VALUES: Values = Values::new();
static LATENCIES: latency::Registry = latency::Registry::new();

/// Add `n` to a counter.
#[inline]
pub fn add(c: Counter, n: u64) {
    VALUES.add(c, n);
}

/// A counter's current value.
pub fn get(c: Counter) -> u64 {
    VALUES.get(c)
}

/// Set a gauge.
#[inline]
pub fn set_gauge(g: Gauge, v: u64) {
    VALUES.set_gauge(g, v);
}

/// A gauge's current value.
pub fn gauge(g: Gauge) -> u64 {
    VALUES.gauge(g)
}

/// Record one latency sample (microseconds, clamped to 60 s) into this
/// thread's histogram.
#[inline]
pub fn record(l: Latency, d: Duration) {
    LATENCIES.record(l, d);
}

/// Starts timing now; records into `l` when dropped (or at [`LatencyTimer::finish`]).
pub fn start_timer(l: Latency) -> LatencyTimer {
    LatencyTimer {
        latency: l,
        started: Instant::now(),
    }
}

/// Records the time since it was made when it goes away. A cancelled
/// future that held one still records (how long it ran until cancelled).
#[must_use = "a timer records when dropped; bind it to a variable"]
pub struct LatencyTimer {
    latency: Latency,
    started: Instant,
}

impl LatencyTimer {
    /// Record now and return the elapsed time.
    pub fn finish(self) -> Duration {
        self.started.elapsed()
        // Dropped here: records once.
    }
}

impl Drop for LatencyTimer {
    fn drop(&mut self) {
        record(self.latency, self.started.elapsed());
    }
}

/// One counter or gauge in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

/// One latency histogram in a [`Snapshot`], merged over all threads.
/// Quantiles are the highest value equivalent (to 3 significant digits)
/// to the sample at that rank; all zero when `count` is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySummary {
    pub name: &'static str,
    pub help: &'static str,
    pub count: u64,
    pub sum_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Everything a scrape exports, read at one moment (each value is read
/// atomically; the set as a whole is not a single atomic cut).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<Value>,
    pub gauges: Vec<Value>,
    pub latencies: Vec<LatencySummary>,
}

impl Snapshot {
    /// A counter by its name without prefix.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.value)
    }

    /// A gauge by its name without prefix.
    pub fn gauge(&self, name: &str) -> Option<u64> {
        self.gauges.iter().find(|v| v.name == name).map(|v| v.value)
    }

    /// A latency by its name without prefix.
    pub fn latency(&self, name: &str) -> Option<&LatencySummary> {
        self.latencies.iter().find(|v| v.name == name)
    }

    /// hits / (hits + misses), 0 when there were none.
    pub fn cache_hit_ratio(&self) -> f64 {
        let hits = self.counter(Counter::CacheHits.name()).unwrap_or(0);
        let misses = self.counter(Counter::CacheMisses.name()).unwrap_or(0);
        if hits == 0 && misses == 0 {
            0.0
        } else {
            hits as f64 / (hits as f64 + misses as f64)
        }
    }
}

fn snapshot_of(values: &Values, latencies: &latency::Registry) -> Snapshot {
    Snapshot {
        counters: Counter::ALL
            .iter()
            .map(|&c| Value {
                name: c.name(),
                help: c.help(),
                value: values.get(c),
            })
            .collect(),
        gauges: Gauge::ALL
            .iter()
            .map(|&g| Value {
                name: g.name(),
                help: g.help(),
                value: values.gauge(g),
            })
            .collect(),
        latencies: latencies.summaries(),
    }
}

/// Read every metric. Takes each recording thread's histogram lock
/// briefly, one at a time; call it from a control thread, not a data core.
pub fn snapshot() -> Snapshot {
    if let Some(f) = REFRESH.lock().expect("refresher poisoned").as_ref() {
        f();
    }
    snapshot_of(&VALUES, &LATENCIES)
}

type Refresher = Box<dyn Fn() + Send>;

/// Called before every snapshot to bring gauges up to date.
static REFRESH: std::sync::Mutex<Option<Refresher>> = std::sync::Mutex::new(None);

/// Have `f` refresh gauges before each snapshot (one refresher per
/// process; a later call replaces an earlier one).
pub fn set_refresher(f: impl Fn() + Send + 'static) {
    *REFRESH.lock().expect("refresher poisoned") = Some(Box::new(f));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        let names = Counter::ALL
            .iter()
            .map(|c| c.name())
            .chain(Gauge::ALL.iter().map(|g| g.name()))
            .chain(Latency::ALL.iter().map(|l| l.name()));
        for n in names {
            assert!(seen.insert(n), "duplicate metric name {n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n}"
            );
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.name().ends_with("_total"));
        }
        for (i, g) in Gauge::ALL.iter().enumerate() {
            assert_eq!(g.index(), i);
        }
        for (i, l) in Latency::ALL.iter().enumerate() {
            assert_eq!(l.index(), i);
            assert!(l.name().ends_with("_us"));
        }
    }

    #[test]
    fn counters_add_up_across_threads() {
        static PRIVATE: Values = Values::new();
        let threads_n = 8;
        let adds_n = 10_000;
        std::thread::scope(|s| {
            for t in 0..threads_n {
                s.spawn(move || {
                    for _ in 0..adds_n {
                        PRIVATE.add(Counter::CacheHits, 1);
                        PRIVATE.add(Counter::CacheHitBytes, t + 1);
                    }
                });
            }
        });
        assert_eq!(PRIVATE.get(Counter::CacheHits), threads_n * adds_n);
        let bytes: u64 = (1..=threads_n).map(|t| t * adds_n).sum();
        assert_eq!(PRIVATE.get(Counter::CacheHitBytes), bytes);
        assert_eq!(PRIVATE.get(Counter::CacheMisses), 0);
        PRIVATE.set_gauge(Gauge::CacheEntries, 7);
        PRIVATE.set_gauge(Gauge::CacheEntries, 5);
        assert_eq!(PRIVATE.gauge(Gauge::CacheEntries), 5);
    }

    #[test]
    fn global_counters_and_snapshot() {
        let before = get(Counter::CacheSingleFlightJoins);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        add(Counter::CacheSingleFlightJoins, 1);
                    }
                });
            }
        });
        // Other tests may count too; this one's adds are all there.
        assert!(get(Counter::CacheSingleFlightJoins) >= before + 4000);
        set_gauge(Gauge::CacheBytesCapacity, 1 << 30);
        let s = snapshot();
        assert_eq!(s.counters.len(), COUNTER_COUNT);
        assert_eq!(s.gauges.len(), GAUGE_COUNT);
        assert_eq!(s.latencies.len(), LATENCY_COUNT);
        assert!(s.counter("cache_single_flight_joins_total").unwrap() >= before + 4000);
        assert_eq!(s.gauge("cache_bytes_capacity"), Some(1 << 30));
    }

    #[test]
    fn timer_records_once() {
        let before = snapshot().latency("cache_write_latency_us").unwrap().count;
        let t = start_timer(Latency::CacheWrite);
        let d = t.finish();
        assert!(d < Duration::from_secs(60));
        {
            let _t = start_timer(Latency::CacheWrite);
        }
        let after = snapshot().latency("cache_write_latency_us").unwrap().count;
        assert!(after >= before + 2);
    }

    #[test]
    fn hit_ratio() {
        let mut s = Snapshot::default();
        assert_eq!(s.cache_hit_ratio(), 0.0);
        s.counters.push(Value {
            name: "cache_hits_total",
            help: "",
            value: 3,
        });
        s.counters.push(Value {
            name: "cache_misses_total",
            help: "",
            value: 1,
        });
        assert_eq!(s.cache_hit_ratio(), 0.75);
    }
}
