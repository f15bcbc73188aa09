//! An in-memory bucket for unit tests of the layers above the store.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use super::{ListPage, ObjectMeta, ObjectStore, PartDone, PosixMeta, StoreError, StoreFuture};

/// One object: contents, modification time, version and metadata.
struct Stored {
    data: Vec<u8>,
    mtime: SystemTime,
    version: u64,
    posix: Option<PosixMeta>,
}

/// A multipart upload in progress: its key, metadata and parts so far
/// (number → contents and ETag).
struct Upload {
    key: String,
    posix: PosixMeta,
    parts: BTreeMap<u32, (Vec<u8>, String)>,
}

#[derive(Default)]
pub struct MemoryStore {
    objects: RwLock<BTreeMap<String, Stored>>,
    uploads: Mutex<HashMap<String, Upload>>,
    version: AtomicU64,
}

fn no_upload(op: &'static str, key: &str) -> StoreError {
    StoreError::Io {
        op,
        key: key.to_string(),
        source: io::Error::new(io::ErrorKind::NotFound, "no such multipart upload"),
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` as `key` without metadata (a test fixture shortcut;
    /// the trait's `put` is the full write).
    pub fn put(&self, key: &str, data: &[u8]) {
        self.insert(key, data.to_vec(), None);
    }

    pub fn delete(&self, key: &str) {
        self.objects
            .write()
            .expect("memory store poisoned")
            .remove(key);
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores an object; returns its ETag.
    fn insert(&self, key: &str, data: Vec<u8>, posix: Option<PosixMeta>) -> String {
        let stored = Stored {
            data,
            mtime: SystemTime::now(),
            version: self.next_version(),
            posix: posix.filter(|p| !p.is_empty()),
        };
        let etag = Self::etag(&stored);
        self.objects
            .write()
            .expect("memory store poisoned")
            .insert(key.to_string(), stored);
        etag
    }

    fn etag(v: &Stored) -> String {
        format!("v{}", v.version)
    }

    /// What a LIST says (no metadata); HEAD adds the metadata.
    fn meta(key: &str, v: &Stored) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: v.data.len() as u64,
            etag: Self::etag(v),
            mtime: v.mtime,
            posix: None,
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
                .map(|v| ObjectMeta {
                    posix: v.posix,
                    ..Self::meta(key, v)
                })
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
            let data = &stored.data;
            let start = (offset.min(data.len() as u64)) as usize;
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        })
    }

    fn part_bytes_min(&self) -> u64 {
        1
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Vec<u8>,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { Ok(self.insert(key, data, Some(*posix))) })
    }

    fn multipart_start<'a>(
        &'a self,
        key: &'a str,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let id = format!("upload-{}", self.next_version());
            self.uploads.lock().expect("memory store poisoned").insert(
                id.clone(),
                Upload {
                    key: key.to_string(),
                    posix: *posix,
                    parts: BTreeMap::new(),
                },
            );
            Ok(id)
        })
    }

    fn multipart_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Vec<u8>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            if !(1..=10_000).contains(&number) {
                return Err(StoreError::Io {
                    op: "upload_part",
                    key: key.to_string(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("part number {number} is not within 1 to 10000"),
                    ),
                });
            }
            let mut uploads = self.uploads.lock().expect("memory store poisoned");
            let upload = uploads
                .get_mut(upload_id)
                .filter(|u| u.key == key)
                .ok_or_else(|| no_upload("upload_part", key))?;
            let etag = format!("p{}", self.next_version());
            upload.parts.insert(number, (data, etag.clone()));
            Ok(etag)
        })
    }

    fn multipart_complete<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [PartDone],
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let invalid = |why: String| StoreError::Io {
                op: "complete_multipart",
                key: key.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, why),
            };
            let mut uploads = self.uploads.lock().expect("memory store poisoned");
            let upload = uploads
                .get(upload_id)
                .filter(|u| u.key == key)
                .ok_or_else(|| no_upload("complete_multipart", key))?;
            if parts.is_empty() {
                return Err(invalid("no parts".into()));
            }
            let mut data = Vec::new();
            let mut previous = 0;
            for p in parts {
                if p.number <= previous {
                    return Err(invalid("parts are not in ascending order".into()));
                }
                previous = p.number;
                match upload.parts.get(&p.number) {
                    Some((bytes, etag)) if *etag == p.etag => data.extend_from_slice(bytes),
                    _ => return Err(invalid(format!("no part {} with that ETag", p.number))),
                }
            }
            let posix = upload.posix;
            uploads.remove(upload_id);
            drop(uploads);
            Ok(self.insert(key, data, Some(posix)))
        })
    }

    fn multipart_abort<'a>(&'a self, _key: &'a str, upload_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.uploads
                .lock()
                .expect("memory store poisoned")
                .remove(upload_id);
            Ok(())
        })
    }

    fn copy<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        src_etag: Option<&'a str>,
        posix: Option<&'a PosixMeta>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let (data, kept) = {
                let m = self.objects.read().expect("memory store poisoned");
                let s = m.get(src).ok_or_else(|| StoreError::NotFound {
                    key: src.to_string(),
                })?;
                if src_etag.is_some_and(|want| want != Self::etag(s)) {
                    return Err(StoreError::PreconditionFailed {
                        key: src.to_string(),
                    });
                }
                (s.data.clone(), s.posix)
            };
            Ok(self.insert(dst, data, posix.copied().or(kept)))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            MemoryStore::delete(self, key);
            Ok(())
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

    #[test]
    fn writes() {
        block_on(conformance::writes(&MemoryStore::new()));
    }
}
