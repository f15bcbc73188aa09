//! Metadata cache: object attributes, directory listings and negative
//! lookups, each trusted for a TTL and then revalidated against the store.
//!
//! `immutable` exports (dataset prefixes that never change) trust
//! attributes and listings forever. Every map is bounded: attributes and
//! negative entries by count, listings by count and by the entries they
//! hold. When a bound is reached the oldest entries go; the store remains
//! the source of truth, so eviction only costs a refetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::vfs::{Attr, Listing, NodeKind};

/// Attribute entries kept.
pub const ATTR_ENTRIES_MAX: usize = 1_000_000;
/// Negative lookup entries kept.
pub const NEGATIVE_ENTRIES_MAX: usize = 100_000;
/// Directory listings kept.
pub const LISTINGS_MAX: usize = 16_384;
/// Directory entries kept across all cached listings.
pub const LISTING_ENTRIES_MAX: usize = 8_000_000;

/// How long each kind of metadata is trusted.
#[derive(Debug, Clone, Copy)]
pub struct MetaTtls {
    pub attrs: Duration,
    pub negative: Duration,
    /// Never revalidate attributes or listings.
    pub immutable: bool,
}

pub struct MetaCache {
    ttls: MetaTtls,
    attrs: Mutex<HashMap<u64, (Attr, Instant)>>,
    negative: Mutex<HashMap<(u64, Box<str>), Instant>>,
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
}

impl MetaCache {
    pub fn new(ttls: MetaTtls) -> Self {
        Self {
            ttls,
            attrs: Mutex::new(HashMap::new()),
            negative: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, at: Instant, ttl: Duration) -> bool {
        self.ttls.immutable || at.elapsed() < ttl
    }

    pub fn attr(&self, id: u64) -> Option<Attr> {
        let m = self.attrs.lock().expect("attr cache poisoned");
        m.get(&id)
            .filter(|(_, at)| self.fresh(*at, self.ttls.attrs))
            .map(|(a, _)| a.clone())
    }

    /// The kind last known for `id`, fresh or not: what an expired entry
    /// says the node was, so that revalidating it asks the store one
    /// question instead of several.
    pub fn kind_known(&self, id: u64) -> Option<NodeKind> {
        let m = self.attrs.lock().expect("attr cache poisoned");
        m.get(&id).map(|(a, _)| a.kind)
    }

    pub fn put_attr(&self, attr: Attr) {
        self.put_attr_at(attr, Instant::now());
    }

    /// Remember attributes learnt at `at` (they expire a TTL after it).
    pub fn put_attr_at(&self, attr: Attr, at: Instant) {
        let mut m = self.attrs.lock().expect("attr cache poisoned");
        if m.len() >= ATTR_ENTRIES_MAX {
            let ttl = self.ttls.attrs;
            m.retain(|_, (_, at)| at.elapsed() < ttl);
            if m.len() >= ATTR_ENTRIES_MAX / 2 {
                m.clear();
            }
        }
        m.insert(attr.fileid, (attr, at));
    }

    pub fn forget_attr(&self, id: u64) {
        self.attrs.lock().expect("attr cache poisoned").remove(&id);
    }

    /// Whether `name` in directory `dir_id` was recently found missing.
    pub fn is_negative(&self, dir_id: u64, name: &str) -> bool {
        let m = self.negative.lock().expect("negative cache poisoned");
        m.get(&(dir_id, Box::from(name)))
            .is_some_and(|at| at.elapsed() < self.ttls.negative)
    }

    pub fn put_negative(&self, dir_id: u64, name: &str) {
        if self.ttls.negative.is_zero() {
            return;
        }
        let mut m = self.negative.lock().expect("negative cache poisoned");
        if m.len() >= NEGATIVE_ENTRIES_MAX {
            let ttl = self.ttls.negative;
            m.retain(|_, at| at.elapsed() < ttl);
            if m.len() >= NEGATIVE_ENTRIES_MAX / 2 {
                m.clear();
            }
        }
        m.insert((dir_id, Box::from(name)), Instant::now());
    }

    /// Drop the cached listing of one directory (its content changed).
    pub fn forget_listing(&self, dir_id: u64) {
        self.listings
            .lock()
            .expect("listing cache poisoned")
            .remove(&dir_id);
    }

    /// Drop every cached listing (a directory moved).
    pub fn forget_listings(&self) {
        self.listings
            .lock()
            .expect("listing cache poisoned")
            .clear();
    }

    /// `name` in `dir_id` exists now.
    pub fn forget_negative(&self, dir_id: u64, name: &str) {
        self.negative
            .lock()
            .expect("negative cache poisoned")
            .remove(&(dir_id, Box::from(name)));
    }

    pub fn listing(&self, dir_id: u64) -> Option<Arc<Listing>> {
        let l = self.listings.lock().expect("listing cache poisoned");
        l.get(&dir_id)
            .filter(|l| self.ttls.immutable || l.is_fresh(self.ttls.attrs))
            .cloned()
    }

    pub fn put_listing(&self, dir_id: u64, listing: Arc<Listing>) {
        let mut l = self.listings.lock().expect("listing cache poisoned");
        let total: usize = l.values().map(|x| x.state().entries.len()).sum();
        if l.len() >= LISTINGS_MAX || total >= LISTING_ENTRIES_MAX {
            let mut by_age: Vec<(u64, Instant, usize)> = l
                .iter()
                .map(|(k, v)| {
                    let st = v.state();
                    (*k, st.touched, st.entries.len())
                })
                .collect();
            by_age.sort_by_key(|(_, at, _)| *at);
            let (mut count, mut entries) = (l.len(), total);
            for (k, _, n) in by_age {
                if count < LISTINGS_MAX / 2 && entries < LISTING_ENTRIES_MAX / 2 {
                    break;
                }
                l.remove(&k);
                count -= 1;
                entries -= n;
            }
        }
        l.insert(dir_id, listing);
    }
}
