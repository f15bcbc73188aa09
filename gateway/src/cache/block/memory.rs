//! The DRAM tier in front of the device: verified blocks kept in memory and
//! sent zero-copy straight from there.
//!
//! Cache hosts carry far more RAM than a page cache would use well, and a
//! hit from memory costs no device I/O at all; the device tier stays the
//! large, persistent one. Blocks enter after a fetch from the store or a
//! verified device read. Eviction is CLOCK (one reference bit per block),
//! sharded so the cores rarely meet on a lock. The byte budget is a hard
//! bound: a block larger than a shard's share is simply not kept.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::index::BlockId;
use super::Fetched;

const SHARDS: usize = 16;

struct Entry {
    block: Arc<Fetched>,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<BlockId, Entry>,
    clock: VecDeque<BlockId>,
    bytes: u64,
}

pub struct MemoryTier {
    shards: Vec<Mutex<Shard>>,
    shard_bytes_max: u64,
}

impl MemoryTier {
    /// A tier holding at most `bytes_max` bytes of blocks.
    pub fn new(bytes_max: u64) -> MemoryTier {
        MemoryTier {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_bytes_max: bytes_max / SHARDS as u64,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.shard_bytes_max > 0
    }

    fn shard(&self, id: BlockId) -> &Mutex<Shard> {
        &self.shards[(id as usize ^ (id >> 64) as usize) % SHARDS]
    }

    /// Whether the block is held (without touching its reference bit).
    pub fn contains(&self, id: BlockId) -> bool {
        self.is_enabled()
            && self
                .shard(id)
                .lock()
                .expect("memory tier poisoned")
                .map
                .contains_key(&id)
    }

    pub fn get(&self, id: BlockId) -> Option<Arc<Fetched>> {
        if self.shard_bytes_max == 0 {
            return None;
        }
        let mut s = self.shard(id).lock().expect("memory tier poisoned");
        let e = s.map.get_mut(&id)?;
        e.referenced = true;
        Some(e.block.clone())
    }

    /// Keep `block`, evicting unreferenced blocks as needed. Returns the
    /// number of blocks evicted.
    pub fn insert(&self, id: BlockId, block: Arc<Fetched>) -> u64 {
        let size = block.buf.capacity() as u64;
        if size > self.shard_bytes_max {
            return 0;
        }
        let mut s = self.shard(id).lock().expect("memory tier poisoned");
        if s.map.contains_key(&id) {
            return 0;
        }
        let mut evicted = 0;
        // Each pass over the clock clears reference bits, so this ends
        // within two rounds.
        while s.bytes + size > self.shard_bytes_max {
            let Some(victim) = s.clock.pop_front() else {
                break;
            };
            let second_chance = match s.map.get_mut(&victim) {
                Some(e) if e.referenced => {
                    e.referenced = false;
                    true
                }
                Some(_) => false,
                None => continue,
            };
            if second_chance {
                s.clock.push_back(victim);
            } else if let Some(e) = s.map.remove(&victim) {
                s.bytes -= e.block.buf.capacity() as u64;
                evicted += 1;
            }
        }
        s.bytes += size;
        s.clock.push_back(id);
        s.map.insert(
            id,
            Entry {
                block,
                referenced: false,
            },
        );
        evicted
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().expect("memory tier poisoned").bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::aligned::AlignedBuf;

    fn block(bytes: usize) -> Arc<Fetched> {
        Arc::new(Fetched {
            buf: AlignedBuf::new(bytes),
            header_len: 0,
            data_len: bytes,
        })
    }

    #[test]
    fn bounded_and_clocked() {
        let t = MemoryTier::new(SHARDS as u64 * 16384);
        let ids: Vec<BlockId> = (0..400u128).map(|i| i * SHARDS as u128).collect();
        for &id in &ids {
            t.insert(id, block(4096));
            assert!(t.bytes() <= SHARDS as u64 * 16384);
        }
        // All ids land in one shard holding four 4 KiB blocks.
        let held = ids.iter().filter(|&&id| t.get(id).is_some()).count();
        assert_eq!(held, 4);
        assert!(t.get(ids[399]).is_some(), "the newest block stays");
        // Too big for a shard: not kept.
        assert_eq!(t.insert(1, block(1 << 20)), 0);
        assert!(t.get(1).is_none());
        let off = MemoryTier::new(0);
        off.insert(5, block(4096));
        assert!(off.get(5).is_none());
    }
}
