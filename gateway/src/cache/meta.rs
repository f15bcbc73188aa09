//! Metadata cache: object attributes and directory listings, each trusted
//! for a TTL and then revalidated against the store.
//!
//! Both maps are bounded: attributes by entry count, listings by the total
//! number of entries they hold. When a bound is reached the oldest half is
//! dropped (the store remains the source of truth, so eviction only costs a
//! refetch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::vfs::{Attr, Listing};

/// Attribute entries kept.
pub const ATTR_ENTRIES_MAX: usize = 1_000_000;
/// Directory entries kept across all cached listings.
pub const LISTING_ENTRIES_MAX: usize = 4_000_000;

pub struct MetaCache {
    ttl: Duration,
    attrs: Mutex<HashMap<u64, (Attr, Instant)>>,
    listings: Mutex<Listings>,
}

#[derive(Default)]
struct Listings {
    map: HashMap<u64, (Arc<Listing>, Instant)>,
    entries_total: usize,
}

impl MetaCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            attrs: Mutex::new(HashMap::new()),
            listings: Mutex::new(Listings::default()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn attr(&self, id: u64) -> Option<Attr> {
        let m = self.attrs.lock().expect("attr cache poisoned");
        m.get(&id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(a, _)| a.clone())
    }

    pub fn put_attr(&self, attr: Attr) {
        let mut m = self.attrs.lock().expect("attr cache poisoned");
        if m.len() >= ATTR_ENTRIES_MAX {
            let ttl = self.ttl;
            m.retain(|_, (_, at)| at.elapsed() < ttl);
            if m.len() >= ATTR_ENTRIES_MAX / 2 {
                m.clear();
            }
        }
        m.insert(attr.fileid, (attr, Instant::now()));
    }

    pub fn forget_attr(&self, id: u64) {
        self.attrs.lock().expect("attr cache poisoned").remove(&id);
    }

    pub fn listing(&self, dir_id: u64) -> Option<Arc<Listing>> {
        let l = self.listings.lock().expect("listing cache poisoned");
        l.map
            .get(&dir_id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(l, _)| l.clone())
    }

    pub fn put_listing(&self, dir_id: u64, listing: Arc<Listing>) {
        let mut l = self.listings.lock().expect("listing cache poisoned");
        let add = listing.entries.len();
        if let Some((old, _)) = l.map.remove(&dir_id) {
            l.entries_total -= old.entries.len();
        }
        if l.entries_total + add > LISTING_ENTRIES_MAX {
            let mut by_age: Vec<(u64, Instant)> = l.map.iter().map(|(k, v)| (*k, v.1)).collect();
            by_age.sort_by_key(|(_, at)| *at);
            for (k, _) in by_age {
                if l.entries_total + add <= LISTING_ENTRIES_MAX / 2 {
                    break;
                }
                if let Some((old, _)) = l.map.remove(&k) {
                    l.entries_total -= old.entries.len();
                }
            }
        }
        l.entries_total += add;
        l.map.insert(dir_id, (listing, Instant::now()));
    }
}
