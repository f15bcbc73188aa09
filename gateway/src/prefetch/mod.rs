//! Adaptive prefetch: hide S3's first-byte latency from readers that go
//! through files in a pattern, without flooding S3 or fetching for readers
//! that jump around.
//!
//! Read events — (client, file, offset, length, time) — reach the
//! [`tracker`] through the [`ReadObserver`] trait; the READ path feeds it
//! today and the eBPF probes can feed the same trait later. The tracker
//! finds sequential and strided streams per (client, file) and says which
//! bytes lie ahead of each. The block cache fetches those blocks with
//! bounded parallel ranged GETs through the same single-flight path as
//! demand misses and stores them in the cache (memory tier and device), not
//! in a buffer of their own: a prefetched block is just a block that is
//! already there when the reader arrives.
//!
//! Bounds: bytes of prefetch in flight, globally and per client; GETs in
//! flight; streams tracked. Prefetched blocks that are never read are
//! counted as waste. Random readers get exactly the bytes they ask for
//! (no block rounding), so they fetch no more than they read.

pub mod sweep;
pub mod tracker;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cache::block::index::BlockId;
use crate::telemetry::{self, Counter, Gauge};
pub use sweep::{SweepConfig, SweepSignal, SweepTracker};
pub use tracker::{Advice, Pattern, ReadEvent, Tracker, TrackerConfig};

/// Where read events go.
pub trait ReadObserver: Send + Sync {
    fn observe(&self, ev: &ReadEvent) -> Advice;
}

#[derive(Debug, Clone, Copy)]
pub struct PrefetchConfig {
    pub enabled: bool,
    pub tracker: TrackerConfig,
    /// Bytes of prefetch in flight across all clients.
    pub budget_bytes: u64,
    /// Bytes of prefetch in flight for one client.
    pub client_budget_bytes: u64,
    /// Objects up to this size are fetched whole on their first read.
    pub small_object_bytes: u64,
    /// Prefetch GETs in flight at once.
    pub fetches_in_flight_max: usize,
    pub sweep: SweepConfig,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            tracker: TrackerConfig::default(),
            budget_bytes: 512 << 20,
            client_budget_bytes: 128 << 20,
            small_object_bytes: 4 << 20,
            fetches_in_flight_max: 32,
            sweep: SweepConfig::default(),
        }
    }
}

/// Prefetched blocks remembered until read (for hit and waste counts).
const OUTSTANDING_BLOCKS_MAX: usize = 65_536;

/// A prefetched block not read within this long counts as waste.
const UNUSED_AFTER: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Outstanding {
    bytes: HashMap<BlockId, u64>,
    order: VecDeque<(Instant, BlockId)>,
}

pub struct Prefetcher {
    config: PrefetchConfig,
    tracker: Mutex<Tracker>,
    sweeps: Mutex<SweepTracker>,
    in_flight_bytes: AtomicU64,
    in_flight_fetches: AtomicUsize,
    per_client: Mutex<HashMap<u64, u64>>,
    outstanding: Mutex<Outstanding>,
    /// `outstanding.bytes.len()`, readable without the lock.
    outstanding_count: AtomicUsize,
}

impl Prefetcher {
    pub fn new(config: PrefetchConfig) -> Prefetcher {
        Prefetcher {
            config,
            tracker: Mutex::new(Tracker::new(config.tracker)),
            sweeps: Mutex::new(SweepTracker::new(config.sweep)),
            in_flight_bytes: AtomicU64::new(0),
            in_flight_fetches: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(Outstanding::default()),
            outstanding_count: AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &PrefetchConfig {
        &self.config
    }

    /// Take `bytes` of budget and one fetch slot for `client`; false when
    /// a bound would be passed. Give it back with [`Prefetcher::release`].
    pub fn reserve(&self, client: u64, bytes: u64) -> bool {
        self.reserve_counted(client, bytes, true)
    }

    /// As [`Prefetcher::reserve`]; `count_skip` false for callers that
    /// wait and retry.
    pub fn reserve_counted(&self, client: u64, bytes: u64, count_skip: bool) -> bool {
        let mut pc = self.per_client.lock().expect("prefetch budget poisoned");
        let mine = pc.get(&client).copied().unwrap_or(0);
        let all = self.in_flight_bytes.load(Ordering::Relaxed);
        let fetches = self.in_flight_fetches.load(Ordering::Relaxed);
        if mine + bytes > self.config.client_budget_bytes
            || all + bytes > self.config.budget_bytes
            || fetches >= self.config.fetches_in_flight_max
        {
            if count_skip {
                telemetry::add(Counter::PrefetchBudgetSkips, 1);
            }
            return false;
        }
        *pc.entry(client).or_insert(0) += bytes;
        self.in_flight_fetches.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        telemetry::set_gauge(Gauge::PrefetchInFlightBytes, now);
        true
    }

    /// Give back what [`Prefetcher::reserve`] took.
    pub fn release(&self, client: u64, bytes: u64) {
        let mut pc = self.per_client.lock().expect("prefetch budget poisoned");
        if let Some(v) = pc.get_mut(&client) {
            *v = v.saturating_sub(bytes);
            if *v == 0 {
                pc.remove(&client);
            }
        }
        self.in_flight_fetches.fetch_sub(1, Ordering::Relaxed);
        let now = self.in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        telemetry::set_gauge(Gauge::PrefetchInFlightBytes, now);
    }

    /// A client read a file of a directory; `Start` when a sweep of the
    /// directory should begin.
    pub fn sweep_read(&self, client: u64, dir: u64, file: u64) -> SweepSignal {
        self.sweeps
            .lock()
            .expect("sweep tracker poisoned")
            .read(client, dir, file, Instant::now())
    }

    /// Whether a running sweep should go on.
    pub fn sweep_keep_going(&self, client: u64, dir: u64) -> bool {
        self.sweeps
            .lock()
            .expect("sweep tracker poisoned")
            .keep_going(client, dir, Instant::now())
    }

    pub fn sweep_finished(&self, client: u64, dir: u64) {
        self.sweeps
            .lock()
            .expect("sweep tracker poisoned")
            .finished(client, dir, Instant::now());
    }

    /// A block was fetched ahead of its reader.
    pub fn fetched(&self, id: BlockId, bytes: u64) {
        telemetry::add(Counter::PrefetchBlocks, 1);
        telemetry::add(Counter::PrefetchBytes, bytes);
        let now = Instant::now();
        let mut o = self.outstanding.lock().expect("prefetch set poisoned");
        if o.bytes.insert(id, bytes).is_none() {
            o.order.push_back((now, id));
        }
        while let Some(&(at, old)) = o.order.front() {
            if o.order.len() <= OUTSTANDING_BLOCKS_MAX && now.duration_since(at) < UNUSED_AFTER {
                break;
            }
            o.order.pop_front();
            if let Some(b) = o.bytes.remove(&old) {
                telemetry::add(Counter::PrefetchUnusedBytes, b);
            }
        }
        self.outstanding_count
            .store(o.bytes.len(), Ordering::Relaxed);
    }

    /// A reader used a block; count it if it was prefetched.
    pub fn used(&self, id: BlockId) {
        // Most reads find nothing prefetched: no lock for them.
        if self.outstanding_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut o = self.outstanding.lock().expect("prefetch set poisoned");
        if let Some(b) = o.bytes.remove(&id) {
            self.outstanding_count
                .store(o.bytes.len(), Ordering::Relaxed);
            telemetry::add(Counter::PrefetchHits, 1);
            telemetry::add(Counter::PrefetchUsedBytes, b);
        }
    }
}

impl ReadObserver for Prefetcher {
    fn observe(&self, ev: &ReadEvent) -> Advice {
        let mut t = self.tracker.lock().expect("tracker poisoned");
        let before = t.stats();
        let advice = t.observe(ev);
        let after = t.stats();
        drop(t);
        telemetry::add(
            Counter::PrefetchWindowGrows,
            after.window_grows - before.window_grows,
        );
        telemetry::add(
            Counter::PrefetchWindowCollapses,
            after.window_collapses - before.window_collapses,
        );
        telemetry::set_gauge(Gauge::PrefetchStreams, after.streams);
        advice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_bound_in_flight_bytes() {
        let p = Prefetcher::new(PrefetchConfig {
            budget_bytes: 10,
            client_budget_bytes: 6,
            fetches_in_flight_max: 2,
            ..PrefetchConfig::default()
        });
        assert!(p.reserve(1, 4));
        assert!(!p.reserve(1, 4), "client budget");
        assert!(p.reserve(2, 6));
        assert!(!p.reserve(3, 1), "global budget");
        p.release(1, 4);
        assert!(p.reserve(3, 1));
        assert!(!p.reserve(4, 1), "fetch slots");
        p.release(2, 6);
        p.release(3, 1);
        assert_eq!(p.in_flight_bytes.load(Ordering::Relaxed), 0);
        assert!(p.per_client.lock().unwrap().is_empty());
    }
}
