//! Per-thread latency histograms, merged when scraped.
//!
//! A [`Registry`] is a `'static` list of per-thread histogram sets. The
//! first time a thread records into a registry, it allocates a set, puts an
//! `Arc` of it into the registry's live list and keeps another in a
//! thread-local table; later records find it there (a pointer compare in a
//! table with one entry in production) and lock its mutex, which nobody
//! else holds unless a scrape is reading that very set. Each histogram in
//! a set is allocated only when its [`Latency`] is first recorded on that
//! thread, so a thread that only ever times cache writes pays for one
//! histogram (about 140 KiB at these bounds), not eight.
//!
//! When a thread exits, its thread-local table is dropped, and each entry
//! merges its set into the registry's single "retired" set and leaves the
//! live list. Memory is therefore bounded by the threads alive now plus
//! one, however many threads come and go, and no sample is lost or counted
//! twice: a scrape holds the live list's lock while it reads, and
//! retirement moves a set under the same lock.
//!
//! Lock order, everywhere: live list → a thread's set → retired set.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{Latency, LatencySummary, LATENCY_COUNT};

/// Lowest latency the histograms distinguish.
pub const LATENCY_US_MIN: u64 = 1;
/// Highest latency recorded; longer samples are recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Precision of every histogram.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// One latency's histogram on one thread, with the exact sum of its samples
/// (HDR histograms only keep bucketed values).
struct Slot {
    hist: Histogram<u64>,
    sum_us: u64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            hist: Histogram::new_with_bounds(LATENCY_US_MIN, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            sum_us: 0,
        }
    }

    fn merge_from(&mut self, other: &Slot) {
        // Same bounds on both sides, so adding never needs to resize.
        let _ = self.hist.add(&other.hist);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

/// One thread's histograms, one slot per [`Latency`], allocated on first use.
type Set = [Option<Slot>; LATENCY_COUNT];

fn empty_set() -> Set {
    std::array::from_fn(|_| None)
}

fn merge_set(into: &mut Set, from: &Set) {
    for (dst, src) in into.iter_mut().zip(from.iter()) {
        if let Some(src) = src {
            dst.get_or_insert_with(Slot::new).merge_from(src);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a histogram lock leaves plain counts behind,
    // which are still worth reporting.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// All the per-thread sets of one family of latencies.
pub(super) struct Registry {
    live: Mutex<Vec<Arc<Mutex<Set>>>>,
    retired: Mutex<Option<Box<Set>>>,
}

/// A thread's membership in one registry; dropped when the thread exits.
struct Membership {
    registry: &'static Registry,
    set: Arc<Mutex<Set>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.registry.retire(&self.set);
    }
}

thread_local! {
    /// This thread's sets, one per registry it recorded into. Its length is
    /// bounded by the number of `static` registries in the program (one,
    /// plus private ones in tests).
    static MEMBERSHIPS: RefCell<Vec<Membership>> = const { RefCell::new(Vec::new()) };
}

impl Registry {
    pub(super) const fn new() -> Registry {
        Registry {
            live: Mutex::new(Vec::new()),
            retired: Mutex::new(None),
        }
    }

    /// Record one sample into the calling thread's set. During thread
    /// teardown (thread-locals already gone) the sample is dropped.
    pub(super) fn record(&'static self, l: Latency, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .min(LATENCY_US_MAX);
        let _ = MEMBERSHIPS.try_with(|cell| {
            let Ok(mut members) = cell.try_borrow_mut() else {
                return;
            };
            let me: *const Registry = self;
            let i = match members.iter().position(|m| std::ptr::eq(m.registry, me)) {
                Some(i) => i,
                None => {
                    let set = Arc::new(Mutex::new(empty_set()));
                    lock(&self.live).push(set.clone());
                    members.push(Membership {
                        registry: self,
                        set,
                    });
                    members.len() - 1
                }
            };
            let mut set = lock(&members[i].set);
            let slot = set[l.index()].get_or_insert_with(Slot::new);
            slot.hist.saturating_record(us);
            slot.sum_us = slot.sum_us.saturating_add(us);
        });
    }

    /// Move an exiting thread's samples into the retired set.
    fn retire(&self, set: &Arc<Mutex<Set>>) {
        let mut live = lock(&self.live);
        live.retain(|s| !Arc::ptr_eq(s, set));
        let mine = lock(set);
        let mut retired = lock(&self.retired);
        merge_set(retired.get_or_insert_with(|| Box::new(empty_set())), &mine);
    }

    /// Sets currently registered by live threads.
    #[cfg(test)]
    fn live_sets(&self) -> usize {
        lock(&self.live).len()
    }

    /// Merge every thread's histograms and summarise each latency.
    pub(super) fn summaries(&self) -> Vec<LatencySummary> {
        let mut merged = empty_set();
        {
            let live = lock(&self.live);
            for set in live.iter() {
                merge_set(&mut merged, &lock(set));
            }
            if let Some(r) = lock(&self.retired).as_deref() {
                merge_set(&mut merged, r);
            }
        }
        Latency::ALL
            .iter()
            .map(|&l| summarise(l, merged[l.index()].as_ref()))
            .collect()
    }
}

fn summarise(l: Latency, slot: Option<&Slot>) -> LatencySummary {
    let mut s = LatencySummary {
        name: l.name(),
        help: l.help(),
        count: 0,
        sum_us: 0,
        p50_us: 0,
        p90_us: 0,
        p99_us: 0,
        p999_us: 0,
        max_us: 0,
    };
    if let Some(slot) = slot.filter(|s| !s.hist.is_empty()) {
        let h = &slot.hist;
        s.count = h.len();
        s.sum_us = slot.sum_us;
        s.p50_us = h.value_at_quantile(0.5);
        s.p90_us = h.value_at_quantile(0.9);
        s.p99_us = h.value_at_quantile(0.99);
        s.p999_us = h.value_at_quantile(0.999);
        s.max_us = h.max();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(v: &[LatencySummary], l: Latency) -> LatencySummary {
        v.iter().find(|s| s.name == l.name()).unwrap().clone()
    }

    #[test]
    fn merges_across_threads_and_retires_exited_ones() {
        static REG: Registry = Registry::new();
        let threads_n = 4u64;
        // Thread t records 1..=1000 µs, plus one 5 s outlier from thread 3.
        let handles: Vec<_> = (0..threads_n)
            .map(|t| {
                std::thread::spawn(move || {
                    for us in 1..=1000u64 {
                        REG.record(Latency::StoreGet, Duration::from_micros(us));
                    }
                    if t == 3 {
                        REG.record(Latency::StoreGet, Duration::from_secs(5));
                    }
                    REG.record(Latency::NfsRead, Duration::from_micros(10 * (t + 1)));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // All four threads have exited: their sets were retired.
        assert_eq!(REG.live_sets(), 0);
        let s = REG.summaries();
        assert_eq!(s.len(), LATENCY_COUNT);
        let g = find(&s, Latency::StoreGet);
        assert_eq!(g.count, threads_n * 1000 + 1);
        assert_eq!(g.sum_us, threads_n * 500_500 + 5_000_000);
        assert!((499..=501).contains(&g.p50_us), "{g:?}");
        assert!((899..=901).contains(&g.p90_us), "{g:?}");
        assert!((989..=991).contains(&g.p99_us), "{g:?}");
        // The outlier is 1 in 4001 samples: above the 99.9th percentile.
        assert!((999..=1001).contains(&g.p999_us), "{g:?}");
        assert!(g.max_us >= 5_000_000 && g.max_us <= 5_010_000, "{g:?}");
        let r = find(&s, Latency::NfsRead);
        assert_eq!((r.count, r.sum_us), (4, 100));
        let w = find(&s, Latency::CacheWrite);
        assert_eq!((w.count, w.p50_us, w.max_us), (0, 0, 0));
    }

    #[test]
    fn live_threads_are_seen_by_a_scrape() {
        static REG: Registry = Registry::new();
        let (recorded_tx, recorded_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            REG.record(Latency::CacheRead, Duration::from_micros(250));
            recorded_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            REG.record(Latency::CacheRead, Duration::from_micros(250));
        });
        recorded_rx.recv().unwrap();
        assert_eq!(REG.live_sets(), 1);
        assert_eq!(find(&REG.summaries(), Latency::CacheRead).count, 1);
        done_tx.send(()).unwrap();
        h.join().unwrap();
        assert_eq!(REG.live_sets(), 0);
        let c = find(&REG.summaries(), Latency::CacheRead);
        assert_eq!((c.count, c.sum_us), (2, 500));
        assert!((249..=251).contains(&c.p50_us));
    }

    #[test]
    fn clamps_long_samples() {
        static REG: Registry = Registry::new();
        std::thread::spawn(|| {
            REG.record(Latency::NfsOther, Duration::from_secs(3600));
            REG.record(Latency::NfsOther, Duration::ZERO);
        })
        .join()
        .unwrap();
        let o = find(&REG.summaries(), Latency::NfsOther);
        assert_eq!(o.count, 2);
        assert_eq!(o.sum_us, LATENCY_US_MAX);
        assert!(o.max_us >= LATENCY_US_MAX);
    }
}
