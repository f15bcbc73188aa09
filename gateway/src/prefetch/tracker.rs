//! Per-(client, file) stream detection from read events.
//!
//! A stream is a run of reads that follow each other: sequential (each read
//! starts where an earlier one ended) or strided (equal steps between the
//! starts). A kernel client keeps many READs in flight and they arrive
//! slightly out of order, so "where the stream is" is a band, not a point:
//! a read that starts within `reorder_bytes` of the stream's frontier
//! belongs to it. One file may carry several streams (a loader reading two
//! regions of one shard); each is tracked on its own, up to
//! `streams_per_file_max`.
//!
//! The readahead window of a stream starts at `window_min_bytes`, doubles
//! with every read that confirms the pattern up to `window_max_bytes`, and
//! what lies ahead of the reader within the window is returned once (the
//! tracker remembers how far it has asked for). A read that fits no stream
//! starts a new one; two such reads in a row on a file mean random access,
//! and every window on the file collapses back to the minimum.
//!
//! No I/O and no clocks of its own: events carry their time, so traces
//! replay deterministically in tests.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One read as seen by the gateway (or, later, by an eBPF probe).
/// Largest step in which a sequential stream's advice moves on.
const ADVICE_CHUNK_BYTES_MAX: u64 = 8 << 20;

/// How many reads of its own size a READ may arrive out of order.
const REORDER_READS: u64 = 32;

/// Reads ahead advised at once for a strided stream.
const STRIDE_AHEAD_MAX: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEvent {
    /// Who reads: a hash of the client's address.
    pub client: u64,
    /// What is read: the file's node id.
    pub file: u64,
    pub offset: u64,
    pub len: u32,
    pub at: Instant,
}

impl ReadEvent {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Not enough history yet.
    Unknown,
    Sequential,
    /// Equal steps between read starts (negative: backwards).
    Strided {
        stride: i64,
    },
    Random,
}

/// What the tracker makes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub pattern: Pattern,
    /// Byte ranges of the file worth fetching now, ahead of the reader.
    pub ahead: Vec<Range<u64>>,
    /// The stream's window after this event (0 when none).
    pub window_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    pub window_min_bytes: u64,
    pub window_max_bytes: u64,
    pub streams_per_file_max: usize,
    /// (client, file) pairs tracked at once; the least recently used go.
    pub files_max: usize,
    /// How far behind or ahead of a stream's frontier a read may start and
    /// still belong to it.
    pub reorder_bytes: u64,
    /// A stream idle for this long is forgotten.
    pub idle: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            window_min_bytes: 2 << 20,
            window_max_bytes: 64 << 20,
            streams_per_file_max: 4,
            files_max: 16_384,
            reorder_bytes: 8 << 20,
            idle: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
struct Stream {
    /// Highest end offset read so far.
    frontier: u64,
    /// Start of the previous read (for strides).
    last_start: u64,
    stride: Option<i64>,
    /// Reads that confirmed the pattern.
    confirmed: u32,
    window: u64,
    /// How far ahead fetches were already advised.
    advised_to: u64,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct FileStreams {
    streams: Vec<Stream>,
    unmatched_in_a_row: u32,
    /// Random access was seen; a stream must then prove itself over
    /// [`RANDOM_CONFIRMATIONS`] reads before it counts, so a random read
    /// that happens to land next to an earlier one does not start
    /// prefetching.
    random: bool,
    last_seen: Option<Instant>,
}

/// Reads that must continue a stream, on a file that was read randomly,
/// before the stream is believed.
const RANDOM_CONFIRMATIONS: u32 = 3;

/// Counters of what the tracker decided.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackerStats {
    pub window_grows: u64,
    pub window_collapses: u64,
    pub streams: u64,
}

pub struct Tracker {
    config: TrackerConfig,
    files: HashMap<(u64, u64), FileStreams>,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker {
            config,
            files: HashMap::new(),
            stats: TrackerStats::default(),
        }
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Feed one read; say what to fetch ahead.
    pub fn observe(&mut self, ev: &ReadEvent) -> Advice {
        if self.files.len() >= self.config.files_max
            && !self.files.contains_key(&(ev.client, ev.file))
        {
            self.forget_oldest();
        }
        let cfg = self.config;
        let f = self.files.entry((ev.client, ev.file)).or_default();
        f.last_seen = Some(ev.at);
        let before = f.streams.len();
        f.streams
            .retain(|s| ev.at.saturating_duration_since(s.last_seen) < cfg.idle);
        self.stats.streams -= (before - f.streams.len()) as u64;

        // An exact stride continuation wins over a read near some frontier
        // (which could be a late READ of a sequential stream).
        let matched = f
            .streams
            .iter()
            .position(|s| s.stride.is_some_and(|st| st == step(s, ev)))
            .or_else(|| f.streams.iter().position(|s| near_frontier(s, ev, &cfg)));
        let Some(i) = matched else {
            return self.unmatched(ev);
        };
        f.unmatched_in_a_row = 0;
        let need = if f.random { RANDOM_CONFIRMATIONS } else { 1 };
        let s = &mut f.streams[i];
        if s.confirmed + 1 < need {
            // Not yet believed: follow it without advising anything.
            s.confirmed += 1;
            s.last_start = ev.offset;
            s.frontier = s.frontier.max(ev.end());
            s.last_seen = ev.at;
            return Advice {
                pattern: Pattern::Random,
                ahead: Vec::new(),
                window_bytes: s.window,
            };
        }
        f.random = false;
        let s = &mut f.streams[i];
        let pattern = match s.stride {
            Some(st) if st == step(s, ev) => Pattern::Strided { stride: st },
            _ => {
                s.stride = None;
                Pattern::Sequential
            }
        };
        s.confirmed += 1;
        if s.window < cfg.window_max_bytes {
            s.window = (s.window * 2).min(cfg.window_max_bytes);
            self.stats.window_grows += 1;
        }
        s.last_start = ev.offset;
        s.frontier = s.frontier.max(ev.end());
        s.last_seen = ev.at;
        let ahead = match pattern {
            Pattern::Sequential => {
                let from = s.advised_to.max(s.frontier);
                let to = s.frontier + s.window;
                // While enough is already on its way, wait until a chunk
                // worth one larger GET is free to advise.
                let chunk = (s.window / 8).min(ADVICE_CHUNK_BYTES_MAX);
                let ahead_already = s.advised_to.saturating_sub(s.frontier);
                if to > from && (to - from >= chunk || ahead_already < chunk) {
                    s.advised_to = to;
                    std::iter::once(from..to).collect()
                } else {
                    Vec::new()
                }
            }
            Pattern::Strided { stride } => {
                // The next reads at this stride, as many as the window holds.
                let count = (s.window / stride.unsigned_abs().max(1)).clamp(1, STRIDE_AHEAD_MAX);
                let mut v = Vec::new();
                for k in 1..=count as i64 {
                    let Some(start) = ev.offset.checked_add_signed(k * stride) else {
                        break;
                    };
                    let fresh = if stride > 0 {
                        start >= s.advised_to
                    } else {
                        start < s.advised_to
                    };
                    if fresh {
                        v.push(start..start + ev.len as u64);
                    }
                }
                if let Some(last) = v.last() {
                    s.advised_to = if stride > 0 {
                        last.start + 1
                    } else {
                        last.start
                    };
                } else if s.confirmed == 1 {
                    s.advised_to = ev.offset;
                }
                v
            }
            _ => Vec::new(),
        };
        Advice {
            pattern,
            ahead,
            window_bytes: s.window,
        }
    }

    /// A read that continues no stream: maybe the second read of a stride,
    /// else a new stream; the second such read in a row means random
    /// access.
    fn unmatched(&mut self, ev: &ReadEvent) -> Advice {
        let cfg = self.config;
        let f = self
            .files
            .get_mut(&(ev.client, ev.file))
            .expect("entry made by observe");
        // The first read of a file starts its first stream; only reads
        // that fit none of the existing streams hint at random access.
        if !f.streams.is_empty() {
            f.unmatched_in_a_row += 1;
        }
        let random = f.unmatched_in_a_row >= 2;
        if random {
            f.random = true;
            for s in &mut f.streams {
                if s.window > cfg.window_min_bytes {
                    self.stats.window_collapses += 1;
                }
                s.window = cfg.window_min_bytes;
                s.confirmed = 0;
            }
        }
        // One equal step from the latest stream's last read, bigger than a
        // read and within the window cap: a stride, to be confirmed by the
        // next read.
        // One equal step from the latest single-read stream, bigger than a
        // read (or exactly one read back) and within the window cap: maybe a
        // stride. The new stream carries it as a candidate that its next
        // read confirms; the other stream is left as it is (it may be
        // another reader's).
        let stride_candidate = (0..f.streams.len())
            .filter(|&j| f.streams[j].confirmed == 0)
            .max_by_key(|&j| f.streams[j].last_seen)
            .map(|j| step(&f.streams[j], ev))
            .filter(|&st| {
                st != 0
                    && (st.unsigned_abs() > ev.len as u64 || st == -(ev.len as i64))
                    && st.unsigned_abs() <= cfg.window_max_bytes
            });
        if f.streams.len() >= cfg.streams_per_file_max {
            let oldest = (0..f.streams.len())
                .min_by_key(|&j| f.streams[j].last_seen)
                .expect("streams not empty");
            f.streams.swap_remove(oldest);
            self.stats.streams -= 1;
        }
        // A read from the very start of a file is most likely the first of
        // a sequential pass: give it a small head start.
        let from_start = ev.offset == 0 && !random;
        let ahead_to = ev.end() + cfg.window_min_bytes;
        self.stats.streams += 1;
        f.streams.push(Stream {
            frontier: ev.end(),
            last_start: ev.offset,
            stride: stride_candidate,
            confirmed: 0,
            window: cfg.window_min_bytes,
            advised_to: if from_start { ahead_to } else { ev.end() },
            last_seen: ev.at,
        });
        Advice {
            pattern: if random {
                Pattern::Random
            } else {
                Pattern::Unknown
            },
            ahead: if from_start {
                std::iter::once(ev.end()..ahead_to).collect()
            } else {
                Vec::new()
            },
            window_bytes: cfg.window_min_bytes,
        }
    }

    fn forget_oldest(&mut self) {
        // Drop the least recently used eighth in one pass.
        let mut ages: Vec<(Option<Instant>, (u64, u64))> =
            self.files.iter().map(|(k, f)| (f.last_seen, *k)).collect();
        ages.sort_unstable_by_key(|(t, _)| *t);
        let n = (ages.len() / 8).max(1);
        for (_, k) in ages.into_iter().take(n) {
            if let Some(f) = self.files.remove(&k) {
                self.stats.streams -= f.streams.len() as u64;
            }
        }
    }
}

/// Signed distance from the stream's previous read to this one.
fn step(s: &Stream, ev: &ReadEvent) -> i64 {
    ev.offset.wrapping_sub(s.last_start) as i64
}

/// Whether `ev` starts near the stream's frontier: within the stream's
/// window (at most `reorder_bytes`) ahead of it, or behind it but ending
/// no further than `reorder_bytes` back (a late READ of a kernel client).
fn near_frontier(s: &Stream, ev: &ReadEvent, cfg: &TrackerConfig) -> bool {
    // On a stream not yet shown to go forward, a read that ends where the
    // previous one started is the start of a backward pass, not a late
    // READ.
    if s.confirmed == 0 && ev.end() == s.last_start && ev.offset < s.last_start {
        return false;
    }
    // A kernel client has at most a few dozen READs of this size in
    // flight; that is how far out of order one may arrive.
    let band = cfg.reorder_bytes.min(REORDER_READS * ev.len.max(1) as u64);
    ev.offset <= s.frontier + band && ev.end() + band >= s.frontier
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    struct Trace {
        t: Tracker,
        now: Instant,
    }

    impl Trace {
        fn new() -> Trace {
            Trace {
                t: Tracker::new(TrackerConfig::default()),
                now: Instant::now(),
            }
        }

        fn read(&mut self, file: u64, offset: u64, len: u64) -> Advice {
            self.now += Duration::from_millis(1);
            self.t.observe(&ReadEvent {
                client: 1,
                file,
                offset,
                len: len as u32,
                at: self.now,
            })
        }
    }

    fn advised(a: &Advice) -> u64 {
        a.ahead.iter().map(|r| r.end - r.start).sum()
    }

    #[test]
    fn sequential_window_grows_to_the_cap() {
        let mut tr = Trace::new();
        let mut total = 0;
        let mut last = None;
        for i in 0..40 {
            let a = tr.read(1, i * MIB, MIB);
            if i > 0 {
                assert_eq!(a.pattern, Pattern::Sequential, "read {i}");
            }
            total += advised(&a);
            last = Some(a);
        }
        let last = last.unwrap();
        assert_eq!(last.window_bytes, 64 * MIB);
        // Everything advised lies ahead and nothing twice: at most the
        // reads plus one window.
        assert!((40 * MIB..=40 * MIB + 64 * MIB).contains(&total), "{total}");
        assert!(tr.t.stats().window_grows >= 5);
    }

    #[test]
    fn out_of_order_arrival_stays_sequential() {
        let mut tr = Trace::new();
        let order = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12];
        let mut patterns = Vec::new();
        for &i in &order {
            patterns.push(tr.read(1, i * MIB, MIB).pattern);
        }
        assert!(
            patterns[1..].iter().all(|p| *p == Pattern::Sequential),
            "{patterns:?}"
        );
    }

    #[test]
    fn reverse_is_a_negative_stride() {
        let mut tr = Trace::new();
        let mut last = None;
        for i in (0..20u64).rev() {
            last = Some(tr.read(1, i * MIB, MIB));
        }
        let last = last.unwrap();
        assert_eq!(
            last.pattern,
            Pattern::Strided {
                stride: -(MIB as i64)
            }
        );
        let a = {
            let mut tr = Trace::new();
            tr.read(1, 50 * MIB, MIB);
            tr.read(1, 49 * MIB, MIB);
            tr.read(1, 48 * MIB, MIB)
        };
        assert!(
            !a.ahead.is_empty() && a.ahead.iter().all(|r| r.start < 48 * MIB),
            "{a:?}"
        );
    }

    #[test]
    fn strided_reads_are_predicted() {
        let mut tr = Trace::new();
        let mut a = None;
        for i in 0..10 {
            a = Some(tr.read(1, i * 4 * MIB, 64 * 1024));
        }
        let a = a.unwrap();
        assert_eq!(
            a.pattern,
            Pattern::Strided {
                stride: 4 * MIB as i64
            }
        );
        assert!(a
            .ahead
            .iter()
            .all(|r| r.start % (4 * MIB) == 0 && r.end - r.start == 64 * 1024));
        assert!(a.ahead.iter().all(|r| r.start > 36 * MIB));
    }

    #[test]
    fn random_reads_advise_nothing_and_collapse_windows() {
        let mut tr = Trace::new();
        for i in 0..10 {
            tr.read(1, i * MIB, MIB);
        }
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut advised_total = 0;
        for _ in 0..200 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let a = tr.read(1, (rng % 1_000_000) * 4096 + 100 * MIB, 4096);
            advised_total += advised(&a);
        }
        assert_eq!(advised_total, 0);
        assert!(tr.t.stats().window_collapses >= 1);
        // A stream that turns random is random from then on.
        let a = tr.read(1, 777_777 * 4096 + 100 * MIB, 4096);
        assert_eq!(a.pattern, Pattern::Random);
    }

    #[test]
    fn two_interleaved_streams_in_one_file() {
        let mut tr = Trace::new();
        let mut seq = 0;
        for i in 0..30 {
            let a = tr.read(1, i * MIB, MIB);
            let b = tr.read(1, 500 * MIB + i * MIB, MIB);
            if i > 1 {
                seq += (a.pattern == Pattern::Sequential) as u32;
                seq += (b.pattern == Pattern::Sequential) as u32;
                assert!(b.ahead.iter().all(|r| r.start >= 500 * MIB));
                assert!(a.ahead.iter().all(|r| r.end <= 500 * MIB));
            }
        }
        assert_eq!(seq, 56);
        assert_eq!(tr.t.stats().streams, 2);
    }

    #[test]
    fn a_second_reader_close_by_gets_its_own_stream() {
        let mut tr = Trace::new();
        let (mut a_ahead, mut b_ahead) = (0, 0);
        for i in 0..30 {
            let a = tr.read(1, i * MIB, MIB);
            let b = tr.read(1, 32 * MIB + i * MIB, MIB);
            if i >= 2 {
                assert_eq!(a.pattern, Pattern::Sequential, "reader A, read {i}");
                assert_eq!(b.pattern, Pattern::Sequential, "reader B, read {i}");
            }
            a_ahead += a.ahead.iter().filter(|r| r.start < 32 * MIB).count();
            b_ahead += b.ahead.iter().filter(|r| r.start >= 32 * MIB).count();
        }
        assert!(a_ahead > 0 && b_ahead > 0, "A {a_ahead}, B {b_ahead}");
    }

    #[test]
    fn random_reads_next_to_earlier_ones_do_not_start_prefetch() {
        let mut tr = Trace::new();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut advised_total = 0;
        let mut prev = 4096;
        for k in 0..2000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Every 50th read lands right behind the previous one.
            let off = if k % 50 == 49 {
                prev + 4096
            } else {
                (rng % 65_535 + 1) * 4096
            };
            prev = off;
            advised_total += advised(&tr.read(1, off, 4096));
        }
        assert_eq!(advised_total, 0, "random reads got readahead");
    }

    #[test]
    fn a_stream_that_turns_random() {
        let mut tr = Trace::new();
        for i in 0..10 {
            tr.read(1, i * MIB, MIB);
        }
        let jumps = [900, 13, 450, 77, 301];
        let patterns: Vec<Pattern> = jumps
            .iter()
            .map(|&j| tr.read(1, j * MIB + 4096, 4096).pattern)
            .collect();
        assert_eq!(patterns.last(), Some(&Pattern::Random), "{patterns:?}");
    }

    #[test]
    fn tracked_files_are_bounded() {
        let mut t = Tracker::new(TrackerConfig {
            files_max: 100,
            ..TrackerConfig::default()
        });
        let now = Instant::now();
        for f in 0..1000 {
            t.observe(&ReadEvent {
                client: 1,
                file: f,
                offset: 0,
                len: 4096,
                at: now + Duration::from_millis(f),
            });
            assert!(t.files.len() <= 100);
        }
    }
}
