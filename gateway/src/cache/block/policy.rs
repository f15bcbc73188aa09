//! Frequency-aware admission: a count-min sketch of recent accesses
//! (TinyLFU-style) decides whether a block that missed may displace what
//! eviction would remove.
//!
//! Why not plain LRU or FIFO: a training epoch sweeps the whole dataset in
//! a cycle. With a dataset larger than the cache, recency-based policies
//! evict every block just before its next use and hit nothing. Comparing
//! frequencies instead (ties keep the resident block) lets the first
//! cache-full of blocks stay and hit on every later sweep, giving the ideal
//! cache/dataset ratio for a cyclic scan, while a block read more often
//! than the resident ones still gets in. Counters are halved every
//! `sample` accesses so old popularity fades.

/// Counters saturate here (4 bits of information).
const COUNTER_MAX: u8 = 15;
const ROWS: usize = 4;
/// Bounds on the width of each sketch row (counters).
pub const SKETCH_WIDTH_MIN: usize = 1024;
pub const SKETCH_WIDTH_MAX: usize = 1 << 24;

pub struct FrequencySketch {
    rows: Vec<u8>,
    width_mask: usize,
    additions: u64,
    sample: u64,
}

impl FrequencySketch {
    /// A sketch sized for about `entries` resident blocks.
    pub fn new(entries: usize) -> FrequencySketch {
        // Sixteen counters per resident block: a sweep over a dataset
        // several times the cache touches that many more distinct blocks,
        // and with fewer counters their collisions inflate the estimates
        // of blocks seen once, which then displace residents that were
        // seen once too (a cyclic sweep over twice the cache lost every
        // resident within one pass at two counters per block).
        let width = (entries.saturating_mul(16))
            .clamp(SKETCH_WIDTH_MIN, SKETCH_WIDTH_MAX)
            .next_power_of_two();
        FrequencySketch {
            rows: vec![0; width * ROWS],
            width_mask: width - 1,
            additions: 0,
            sample: (width as u64) * 10,
        }
    }

    fn slots(&self, id: u128) -> [usize; ROWS] {
        let a = id as u64;
        let b = (id >> 64) as u64 | 1;
        let width = self.width_mask + 1;
        let mut out = [0; ROWS];
        for (i, o) in out.iter_mut().enumerate() {
            let h = a
                .wrapping_add((i as u64).wrapping_mul(b))
                .rotate_left(17 * i as u32);
            *o = i * width + (h as usize & self.width_mask);
        }
        out
    }

    /// Count one access.
    pub fn add(&mut self, id: u128) {
        let slots = self.slots(id);
        let min = slots.iter().map(|&s| self.rows[s]).min().unwrap_or(0);
        if min < COUNTER_MAX {
            // Conservative update: raise only the counters at the minimum.
            for s in slots {
                if self.rows[s] == min {
                    self.rows[s] += 1;
                }
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.additions /= 2;
            self.rows.iter_mut().for_each(|c| *c /= 2);
        }
    }

    /// Estimated recent accesses.
    pub fn estimate(&self, id: u128) -> u8 {
        self.slots(id)
            .iter()
            .map(|&s| self.rows[s])
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ages() {
        let mut s = FrequencySketch::new(1000);
        for _ in 0..5 {
            s.add(42);
        }
        s.add(7);
        assert_eq!(s.estimate(42), 5);
        assert_eq!(s.estimate(7), 1);
        assert_eq!(s.estimate(99), 0);
        // Enough other traffic halves the old counts.
        for i in 0..s.sample {
            s.add(1_000_000 + i as u128);
        }
        assert!(s.estimate(42) <= 3, "aged to {}", s.estimate(42));
    }
}
