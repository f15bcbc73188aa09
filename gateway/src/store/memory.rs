//! An in-memory bucket for unit tests of the layers above the store.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;
use std::time::SystemTime;

use super::{ListPage, ObjectMeta, ObjectStore, StoreError, StoreFuture};

/// Contents, modification time and version of one object.
type Stored = (Vec<u8>, SystemTime, u64);

#[derive(Default)]
pub struct MemoryStore {
    objects: RwLock<BTreeMap<String, Stored>>,
    version: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        let v = self
            .version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.objects
            .write()
            .expect("memory store poisoned")
            .insert(key.to_string(), (data.to_vec(), SystemTime::now(), v));
    }

    pub fn delete(&self, key: &str) {
        self.objects
            .write()
            .expect("memory store poisoned")
            .remove(key);
    }

    fn meta(key: &str, v: &Stored) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: v.0.len() as u64,
            etag: format!("v{}", v.2),
            mtime: v.1,
        }
    }
}

impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta> {
        Box::pin(async move {
            let m = self.objects.read().expect("memory store poisoned");
            m.get(key)
                .map(|v| Self::meta(key, v))
                .ok_or_else(|| StoreError::NotFound {
                    key: key.to_string(),
                })
        })
    }

    fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let m = self.objects.read().expect("memory store poisoned");
            Ok(
                m.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(prefix)),
            )
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> StoreFuture<'a, ListPage> {
        Box::pin(async move {
            let m = self.objects.read().expect("memory store poisoned");
            let start = match token {
                Some(t) => Bound::Excluded(t),
                None => Bound::Included(prefix),
            };
            let mut page = ListPage::default();
            let mut count = 0u32;
            let mut last: Option<String> = None;
            let mut iter = m.range::<str, _>((start, Bound::Unbounded)).peekable();
            while let Some((k, v)) = iter.next() {
                if !k.starts_with(prefix) {
                    break;
                }
                if count == max_keys.max(1) {
                    page.next_token = last;
                    return Ok(page);
                }
                let rest = &k[prefix.len()..];
                if let Some(slash) = rest.find('/') {
                    let p = format!("{prefix}{}", &rest[..=slash]);
                    // Skip every key under this common prefix.
                    while iter.peek().is_some_and(|(k2, _)| k2.starts_with(&p)) {
                        iter.next();
                    }
                    // The token must sort after every key under the prefix.
                    last = Some(format!("{p}\u{10ffff}"));
                    page.prefixes.push(p);
                } else {
                    page.objects.push(Self::meta(k, v));
                    last = Some(k.clone());
                }
                count += 1;
            }
            Ok(page)
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        buf: &'a mut [u8],
        if_match: Option<&'a str>,
    ) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let m = self.objects.read().expect("memory store poisoned");
            let stored = m.get(key).ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })?;
            if if_match.is_some_and(|want| want != Self::meta(key, stored).etag) {
                return Err(StoreError::PreconditionFailed {
                    key: key.to_string(),
                });
            }
            let data = &stored.0;
            let start = (offset.min(data.len() as u64)) as usize;
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn conforms() {
        let s = MemoryStore::new();
        s.put("a.txt", b"hello");
        s.put("d/x", b"xyz");
        s.put("d/y/z", b"");
        block_on(conformance::basic_layout(&s));
    }

    #[test]
    fn pages() {
        let s = MemoryStore::new();
        for i in 0..250 {
            s.put(&format!("many/f{i:05}"), b"");
        }
        block_on(conformance::paging(&s, 250, 7));
    }
}
