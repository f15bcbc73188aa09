//! The in-memory side of the cache: where each block lives, which regions
//! are free, open or sealed, and which region goes next. No I/O here.
//!
//! The device is cut into equal regions. Records are appended to the open
//! region; a full region is sealed and joins a FIFO; space is reclaimed a
//! whole region at a time, oldest first, and only when the admission policy
//! says the newcomer is worth more than what would go. Capacity therefore
//! cannot be exceeded: a record is only ever placed inside a region.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use super::format::SUPER_BYTES;
use super::policy::FrequencySketch;

/// Identity of a cached block: a 128-bit hash of (key, ETag, index). The
/// record header carries the full identity, so a hash collision can only
/// cause a miss, never wrong data.
pub type BlockId = u128;

pub fn block_id(key: &str, etag: &str, index: u64) -> BlockId {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        etag.hash(&mut h);
        index.hash(&mut h);
        h.finish()
    };
    ((half(1) as u128) << 64) | half(2) as u128
}

/// Where a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub region: u32,
    /// Offset inside the region (bytes, aligned).
    pub offset: u64,
    pub record_len: u32,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegionState {
    Free,
    Open,
    Sealed,
}

#[derive(Debug)]
struct Region {
    state: RegionState,
    seq: u64,
    used_bytes: u64,
    pending_writes: u32,
    entries: Vec<BlockId>,
}

/// Geometry of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub region_bytes: u64,
    pub region_count: u32,
}

impl Layout {
    /// Regions for a device of `device_bytes` whose largest record is
    /// `record_bytes_max`: at least four records per region, at most
    /// 64 MiB, and enough regions that reclaiming one costs little.
    pub fn for_device(device_bytes: u64, record_bytes_max: u64) -> Option<Layout> {
        const REGION_BYTES_MAX: u64 = 64 << 20;
        const REGIONS_WANTED: u64 = 32;
        let usable = device_bytes.checked_sub(SUPER_BYTES)?;
        let floor = 4 * record_bytes_max;
        let region_bytes = (usable / REGIONS_WANTED).clamp(floor, REGION_BYTES_MAX.max(floor));
        let region_bytes = region_bytes / 4096 * 4096;
        let region_count = usable / region_bytes;
        if region_count < 2 {
            return None;
        }
        Some(Layout {
            region_bytes,
            region_count: region_count.min(u32::MAX as u64) as u32,
        })
    }

    pub fn device_offset(&self, loc: &Loc) -> u64 {
        SUPER_BYTES + loc.region as u64 * self.region_bytes + loc.offset
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.region_bytes * self.region_count as u64
    }
}

/// Outcome of asking for room.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Write the record here, then `commit` or `abort`.
    Place(Loc),
    /// The policy prefers what is cached.
    Rejected,
    /// Every reclaimable region has writes in flight.
    Busy,
}

/// Counts of what `reserve` evicted, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub entries: u64,
    pub bytes: u64,
}

pub struct Directory {
    pub layout: Layout,
    map: HashMap<BlockId, Loc>,
    regions: Vec<Region>,
    sealed: VecDeque<u32>,
    free: Vec<u32>,
    open: Option<u32>,
    next_seq: u64,
    sketch: FrequencySketch,
    live_bytes: u64,
}

impl Directory {
    pub fn new(layout: Layout, typical_record_bytes: u64) -> Directory {
        let entries = (layout.capacity_bytes() / typical_record_bytes.max(4096)) as usize;
        Directory {
            layout,
            map: HashMap::new(),
            regions: (0..layout.region_count)
                .map(|_| Region {
                    state: RegionState::Free,
                    seq: 0,
                    used_bytes: 0,
                    pending_writes: 0,
                    entries: Vec::new(),
                })
                .collect(),
            sealed: VecDeque::new(),
            free: (0..layout.region_count).rev().collect(),
            open: None,
            next_seq: 1,
            sketch: FrequencySketch::new(entries),
            live_bytes: 0,
        }
    }

    pub fn entries(&self) -> usize {
        self.map.len()
    }

    /// Device bytes held by live records.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Whether a block is cached (not counted as an access).
    pub fn contains(&self, id: BlockId) -> bool {
        self.map.contains_key(&id)
    }

    /// Find a block and count the access.
    pub fn lookup(&mut self, id: BlockId) -> Option<Loc> {
        self.sketch.add(id);
        self.map.get(&id).copied()
    }

    /// Whether `loc` still describes the region's current fill.
    pub fn is_current(&self, loc: &Loc) -> bool {
        self.regions
            .get(loc.region as usize)
            .is_some_and(|r| r.seq == loc.seq && r.state != RegionState::Free)
    }

    /// Forget a block found damaged at `loc`.
    pub fn remove(&mut self, id: BlockId, loc: &Loc) {
        if self.map.get(&id) == Some(loc) {
            self.map.remove(&id);
            self.live_bytes -= loc.record_len as u64;
        }
    }

    /// Whether `reserve` would place a record for `id` now (nothing is
    /// reserved or counted).
    pub fn would_admit(&self, id: BlockId, record_len: u64) -> bool {
        if record_len > self.layout.region_bytes {
            return false;
        }
        if let Some(r) = self.open {
            if self.regions[r as usize].used_bytes + record_len <= self.layout.region_bytes {
                return true;
            }
        }
        if !self.free.is_empty() {
            return true;
        }
        self.victim()
            .is_some_and(|(_, freq)| self.sketch.estimate(id) > freq)
    }

    /// The region reclaiming would take (the oldest without writes in
    /// flight): its place in `sealed` and the recent frequency of its
    /// oldest live block, which a newcomer must beat.
    fn victim(&self) -> Option<(usize, u8)> {
        let pos = self
            .sealed
            .iter()
            .position(|&r| self.regions[r as usize].pending_writes == 0)?;
        let victim = self.sealed[pos];
        let freq = self.regions[victim as usize]
            .entries
            .iter()
            .find(|e| self.map.get(e).is_some_and(|l| l.region == victim))
            .map_or(0, |&e| self.sketch.estimate(e));
        Some((pos, freq))
    }

    /// Room for a record of `record_len` bytes for block `id`, reclaiming
    /// the oldest region if the policy admits the block.
    /// `force` (an explicit warm) skips the frequency comparison.
    pub fn reserve(&mut self, id: BlockId, record_len: u64, force: bool) -> (Admission, Evicted) {
        let mut evicted = Evicted::default();
        if record_len > self.layout.region_bytes {
            return (Admission::Rejected, evicted);
        }
        if let Some(r) = self.open {
            if self.regions[r as usize].used_bytes + record_len <= self.layout.region_bytes {
                return (Admission::Place(self.place(r, record_len)), evicted);
            }
            self.regions[r as usize].state = RegionState::Sealed;
            self.sealed.push_back(r);
            self.open = None;
        }
        let r = match self.free.pop() {
            Some(r) => r,
            None => {
                let Some((pos, victim_freq)) = self.victim() else {
                    return (Admission::Busy, evicted);
                };
                let victim = self.sealed[pos];
                if !force && self.sketch.estimate(id) <= victim_freq {
                    return (Admission::Rejected, evicted);
                }
                self.sealed.remove(pos);
                evicted = self.clear_region(victim);
                victim
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let region = &mut self.regions[r as usize];
        region.state = RegionState::Open;
        region.seq = seq;
        region.used_bytes = 0;
        self.open = Some(r);
        (Admission::Place(self.place(r, record_len)), evicted)
    }

    fn place(&mut self, r: u32, record_len: u64) -> Loc {
        let region = &mut self.regions[r as usize];
        let loc = Loc {
            region: r,
            offset: region.used_bytes,
            record_len: record_len as u32,
            seq: region.seq,
        };
        region.used_bytes += record_len;
        region.pending_writes += 1;
        loc
    }

    fn clear_region(&mut self, r: u32) -> Evicted {
        let mut evicted = Evicted::default();
        let entries = std::mem::take(&mut self.regions[r as usize].entries);
        for e in entries {
            if let Some(l) = self.map.get(&e) {
                if l.region == r {
                    evicted.entries += 1;
                    evicted.bytes += l.record_len as u64;
                    self.live_bytes -= l.record_len as u64;
                    self.map.remove(&e);
                }
            }
        }
        let region = &mut self.regions[r as usize];
        region.used_bytes = 0;
        region.state = RegionState::Free;
        evicted
    }

    /// The record at `loc` is on the device: make it findable.
    pub fn commit(&mut self, id: BlockId, loc: Loc) {
        let region = &mut self.regions[loc.region as usize];
        region.pending_writes = region.pending_writes.saturating_sub(1);
        if region.seq != loc.seq {
            return;
        }
        region.entries.push(id);
        if let Some(old) = self.map.insert(id, loc) {
            self.live_bytes -= old.record_len as u64;
        }
        self.live_bytes += loc.record_len as u64;
    }

    /// The write to `loc` failed; its space is lost until the region is
    /// reclaimed.
    pub fn abort(&mut self, loc: Loc) {
        let region = &mut self.regions[loc.region as usize];
        region.pending_writes = region.pending_writes.saturating_sub(1);
    }

    /// Rebuild from a recovery scan: `records` of region `r` found with
    /// sequence `seq`, the region filled up to `used_bytes`.
    pub fn recover_region(
        &mut self,
        r: u32,
        seq: u64,
        used_bytes: u64,
        records: Vec<(BlockId, Loc)>,
    ) {
        let region = &mut self.regions[r as usize];
        region.state = RegionState::Sealed;
        region.seq = seq;
        region.used_bytes = used_bytes;
        self.free.retain(|&f| f != r);
        for (id, loc) in records {
            self.regions[r as usize].entries.push(id);
            match self.map.get(&id) {
                Some(old) if old.seq > loc.seq => {}
                Some(old) => {
                    self.live_bytes -= old.record_len as u64;
                    self.live_bytes += loc.record_len as u64;
                    self.map.insert(id, loc);
                }
                None => {
                    self.live_bytes += loc.record_len as u64;
                    self.map.insert(id, loc);
                }
            }
        }
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// After every region was recovered: order sealed regions oldest first.
    pub fn finish_recovery(&mut self) {
        let mut sealed: Vec<u32> = (0..self.layout.region_count)
            .filter(|&r| self.regions[r as usize].state == RegionState::Sealed)
            .collect();
        sealed.sort_by_key(|&r| self.regions[r as usize].seq);
        self.sealed = sealed.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Run `passes` sequential sweeps over `blocks` blocks of `MIB` through
    /// a directory; returns the hit ratio of the passes after the first.
    fn cyclic(dir: &mut Directory, blocks: u64, passes: u32) -> f64 {
        let (mut hits, mut lookups) = (0u64, 0u64);
        for pass in 0..passes {
            for b in 0..blocks {
                let id = block_id("data", "e", b);
                let hit = dir.lookup(id).is_some();
                if pass > 0 {
                    lookups += 1;
                    hits += hit as u64;
                }
                if !hit {
                    if let (Admission::Place(loc), _) = dir.reserve(id, MIB + 4096, false) {
                        dir.commit(id, loc);
                    }
                }
                assert!(dir.live_bytes() <= dir.layout.capacity_bytes());
            }
        }
        hits as f64 / lookups as f64
    }

    #[test]
    fn cyclic_sweep_keeps_a_cache_full() {
        let layout = Layout::for_device(64 * MIB, MIB + 4096).unwrap();
        let mut dir = Directory::new(layout, MIB);
        let ideal = layout.capacity_bytes() as f64 / (128 * (MIB + 4096)) as f64;
        let ratio = cyclic(&mut dir, 128, 4);
        assert!(
            ratio > 0.8 * ideal,
            "hit ratio {ratio:.3}, ideal {ideal:.3}"
        );
        assert!(ratio <= ideal + 1e-9);
    }

    #[test]
    fn cyclic_sweep_over_twice_a_large_cache_keeps_a_cache_full() {
        // A thousand resident blocks and twice as many swept: the sketch's
        // collisions must not let blocks seen once displace residents seen
        // once.
        let layout = Layout::for_device(1024 * MIB, MIB + 4096).unwrap();
        let mut dir = Directory::new(layout, MIB);
        let blocks = 2 * layout.capacity_bytes() / (MIB + 4096);
        let ideal = layout.capacity_bytes() as f64 / (blocks * (MIB + 4096)) as f64;
        let ratio = cyclic(&mut dir, blocks, 3);
        assert!(
            ratio > 0.8 * ideal,
            "hit ratio {ratio:.3}, ideal {ideal:.3}"
        );
    }

    #[test]
    fn a_new_hot_set_gets_in() {
        let layout = Layout::for_device(64 * MIB, MIB + 4096).unwrap();
        let mut dir = Directory::new(layout, MIB);
        cyclic(&mut dir, 40, 2);
        // A different, smaller set read many times displaces the old one.
        let mut hits = 0;
        for round in 0..8 {
            for b in 0..30u64 {
                let id = block_id("new", "e", b);
                if dir.lookup(id).is_some() {
                    if round == 7 {
                        hits += 1;
                    }
                } else if let (Admission::Place(loc), _) = dir.reserve(id, MIB + 4096, false) {
                    dir.commit(id, loc);
                }
            }
        }
        assert!(hits >= 25, "only {hits} of 30 hot blocks cached");
    }

    #[test]
    fn regions_with_writes_in_flight_are_not_reclaimed() {
        let layout = Layout::for_device(16 * MIB, MIB).unwrap();
        let mut dir = Directory::new(layout, MIB);
        let mut held = Vec::new();
        let mut busy = false;
        for b in 0..64u64 {
            let id = block_id("k", "e", b);
            for _ in 0..(b + 2) {
                dir.lookup(id);
            }
            match dir.reserve(id, MIB, false).0 {
                Admission::Place(loc) => held.push(loc),
                Admission::Busy => {
                    busy = true;
                    break;
                }
                Admission::Rejected => {}
            }
        }
        assert!(busy, "with every write pending, reservation must stop");
        let placed: u64 = held.iter().map(|l| l.record_len as u64).sum();
        assert!(placed <= layout.capacity_bytes());
    }

    #[test]
    fn layout_bounds() {
        assert!(Layout::for_device(3 * MIB, MIB).is_none());
        let l = Layout::for_device(10 << 30, MIB + 4096).unwrap();
        assert_eq!(l.region_bytes, 64 * MIB);
        assert!(l.capacity_bytes() + SUPER_BYTES <= 10 << 30);
        let l = Layout::for_device(16 * MIB, MIB + 4096).unwrap();
        assert!(l.region_count >= 2 && l.capacity_bytes() + SUPER_BYTES <= 16 * MIB);
    }
}
