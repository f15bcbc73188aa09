//! The protocol-neutral namespace over an object store.
//!
//! Directories are key prefixes ending in `/`, files are objects; the root is
//! the empty prefix. Every node has a persistent id ([`handles`]), so the
//! handles built from ids stay valid across restarts. Attributes and listings
//! come from the store and are cached for a TTL ([`crate::cache::meta`]).
//!
//! Directory listings are kept sorted by (name, kind). A listing position is
//! the id of the last entry returned, resolved back to its name, so a reader
//! can resume after any entry even when the listing was refetched or the
//! gateway restarted in between: no entry is skipped or returned twice.

pub mod error;
pub mod handles;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use error::{FsError, FsResult};
pub use handles::{HandleTable, Node, NodeKind};

use crate::cache::meta::MetaCache;
use crate::store::{ObjectStore, StoreError, LIST_PAGE_KEYS_MAX};

/// Longest name component accepted (bytes).
pub const NAME_BYTES_MAX: usize = 255;
/// Entries one directory may hold before listing it fails.
pub const DIR_ENTRIES_MAX: usize = 10_000_000;

/// Attributes of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub fileid: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<Arc<str>>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Box<str>,
    pub id: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: SystemTime,
}

/// A full directory listing, sorted by (name, kind).
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
}

fn kind_rank(k: NodeKind) -> u8 {
    match k {
        NodeKind::File => 0,
        NodeKind::Dir => 1,
    }
}

impl Listing {
    /// Index of the first entry after (name, kind).
    pub fn position_after(&self, name: &str, kind: NodeKind) -> usize {
        let key = (name, kind_rank(kind));
        self.entries
            .partition_point(|e| (&*e.name, kind_rank(e.kind)) <= key)
    }

    pub fn find(&self, name: &str, kind: NodeKind) -> Option<&DirEntry> {
        let i = self
            .entries
            .partition_point(|e| (&*e.name, kind_rank(e.kind)) < (name, kind_rank(kind)));
        self.entries
            .get(i)
            .filter(|e| &*e.name == name && e.kind == kind)
    }
}

/// Validate one name component from a client.
pub fn check_name(name: &[u8]) -> FsResult<&str> {
    if name.is_empty() {
        return Err(FsError::InvalidName("empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.contains(&0) {
        return Err(FsError::InvalidName("contains NUL"));
    }
    if name.contains(&b'/') {
        return Err(FsError::InvalidName("contains '/'"));
    }
    // Keys are UTF-8; a name that is not cannot exist.
    std::str::from_utf8(name).map_err(|_| FsError::NotFound)
}

pub struct Vfs {
    store: Arc<dyn ObjectStore>,
    handles: HandleTable,
    meta: MetaCache,
}

fn not_found_is_stale(e: StoreError) -> FsError {
    match e {
        StoreError::NotFound { .. } => FsError::Stale,
        e => FsError::Store(e),
    }
}

impl Vfs {
    pub fn new(store: Arc<dyn ObjectStore>, handles: HandleTable, meta_ttl: Duration) -> Self {
        Self {
            store,
            handles,
            meta: MetaCache::new(meta_ttl),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn handles(&self) -> &HandleTable {
        &self.handles
    }

    pub fn root(&self) -> Arc<Node> {
        self.handles.root()
    }

    /// The node behind an id from a client's handle.
    pub fn node(&self, id: u64) -> FsResult<Arc<Node>> {
        self.handles.get(id)?.ok_or(FsError::Stale)
    }

    fn dir_attr(&self, id: u64) -> Attr {
        Attr {
            fileid: id,
            kind: NodeKind::Dir,
            size: 4096,
            mtime: self.handles.identity().created,
            etag: None,
        }
    }

    /// Current attributes; `Stale` when the object is gone.
    pub async fn getattr(&self, node: &Node) -> FsResult<Attr> {
        if let Some(a) = self.meta.attr(node.id) {
            return Ok(a);
        }
        let attr = match node.kind() {
            NodeKind::Dir => {
                if node.id != handles::ROOT_ID && !self.store.prefix_exists(&node.key).await? {
                    return Err(FsError::Stale);
                }
                self.dir_attr(node.id)
            }
            NodeKind::File => {
                let m = self
                    .store
                    .head(&node.key)
                    .await
                    .map_err(not_found_is_stale)?;
                Attr {
                    fileid: node.id,
                    kind: NodeKind::File,
                    size: m.size,
                    mtime: m.mtime,
                    etag: Some(Arc::from(m.etag)),
                }
            }
        };
        self.meta.put_attr(attr.clone());
        Ok(attr)
    }

    /// Resolve `name` in directory `dir`.
    pub async fn lookup(&self, dir: &Node, name: &[u8]) -> FsResult<(Arc<Node>, Attr)> {
        if dir.kind() != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        let name = check_name(name)?;
        if name == "." || name == ".." {
            let node = if name == "." {
                self.node(dir.id)?
            } else {
                let pk = dir.parent_key().to_string();
                self.handles.ensure(&[pk])?.remove(0)
            };
            let attr = self.getattr(&node).await?;
            return Ok((node, attr));
        }
        if let Some(listing) = self.meta.listing(dir.id) {
            for kind in [NodeKind::Dir, NodeKind::File] {
                if let Some(e) = listing.find(name, kind) {
                    let node = self.node(e.id)?;
                    let attr = self.entry_attr(e);
                    return Ok((node, attr));
                }
            }
            return Err(FsError::NotFound);
        }
        let dir_key = format!("{}{name}/", dir.key);
        if self.store.prefix_exists(&dir_key).await? {
            let node = self.handles.ensure(&[dir_key])?.remove(0);
            let attr = self.dir_attr(node.id);
            return Ok((node, attr));
        }
        let file_key = format!("{}{name}", dir.key);
        match self.store.head(&file_key).await {
            Ok(m) => {
                let node = self.handles.ensure(&[file_key])?.remove(0);
                let attr = Attr {
                    fileid: node.id,
                    kind: NodeKind::File,
                    size: m.size,
                    mtime: m.mtime,
                    etag: Some(Arc::from(m.etag)),
                };
                self.meta.put_attr(attr.clone());
                Ok((node, attr))
            }
            Err(StoreError::NotFound { .. }) => Err(FsError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Attributes of a listing entry.
    pub fn entry_attr(&self, e: &DirEntry) -> Attr {
        match e.kind {
            NodeKind::Dir => self.dir_attr(e.id),
            NodeKind::File => Attr {
                fileid: e.id,
                kind: NodeKind::File,
                size: e.size,
                mtime: e.mtime,
                etag: None,
            },
        }
    }

    /// Read up to `buf.len()` bytes at `offset`. Returns the count, whether
    /// the end of the file was reached, and the attributes used.
    pub async fn read(
        &self,
        node: &Node,
        offset: u64,
        buf: &mut [u8],
    ) -> FsResult<(usize, bool, Attr)> {
        if node.kind() == NodeKind::Dir {
            return Err(FsError::IsDir);
        }
        let attr = self.getattr(node).await?;
        if offset >= attr.size || buf.is_empty() {
            return Ok((0, offset >= attr.size, attr));
        }
        let want = (attr.size - offset).min(buf.len() as u64) as usize;
        let n = match self
            .store
            .get_range(&node.key, offset, &mut buf[..want])
            .await
        {
            Ok(n) => n,
            Err(e) => {
                self.meta.forget_attr(node.id);
                return Err(not_found_is_stale(e));
            }
        };
        Ok((n, offset + n as u64 >= attr.size, attr))
    }

    /// The listing of `dir` (cached for the TTL).
    pub async fn listing(&self, dir: &Node) -> FsResult<Arc<Listing>> {
        if dir.kind() != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        if let Some(l) = self.meta.listing(dir.id) {
            return Ok(l);
        }
        if dir.id != handles::ROOT_ID && !self.store.prefix_exists(&dir.key).await? {
            return Err(FsError::Stale);
        }
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list(&dir.key, token.as_deref(), LIST_PAGE_KEYS_MAX)
                .await?;
            let mut keys: Vec<&str> = Vec::with_capacity(page.objects.len() + page.prefixes.len());
            let mut pending: Vec<DirEntry> = Vec::with_capacity(keys.capacity());
            for o in &page.objects {
                let name = &o.key[dir.key.len()..];
                if check_name(name.as_bytes()).is_err() || name == "." || name == ".." {
                    continue;
                }
                keys.push(&o.key);
                pending.push(DirEntry {
                    name: name.into(),
                    id: 0,
                    kind: NodeKind::File,
                    size: o.size,
                    mtime: o.mtime,
                });
            }
            for p in &page.prefixes {
                let name = p[dir.key.len()..].trim_end_matches('/');
                if check_name(name.as_bytes()).is_err() || name == "." || name == ".." {
                    continue;
                }
                keys.push(p);
                pending.push(DirEntry {
                    name: name.into(),
                    id: 0,
                    kind: NodeKind::Dir,
                    size: 4096,
                    mtime: self.handles.identity().created,
                });
            }
            let nodes = self.handles.ensure(&keys)?;
            for (e, n) in pending.iter_mut().zip(nodes) {
                e.id = n.id;
            }
            entries.extend(pending);
            if entries.len() > DIR_ENTRIES_MAX {
                return Err(FsError::TooManyEntries(DIR_ENTRIES_MAX));
            }
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        entries.sort_by(|a, b| (&*a.name, kind_rank(a.kind)).cmp(&(&*b.name, kind_rank(b.kind))));
        entries.dedup_by(|a, b| a.name == b.name && a.kind == b.kind);
        let listing = Arc::new(Listing { entries });
        self.meta.put_listing(dir.id, listing.clone());
        Ok(listing)
    }

    /// Where a listing continues after `cookie` (0 = the start).
    pub fn resume_index(&self, dir: &Node, listing: &Listing, cookie: u64) -> FsResult<usize> {
        if cookie == 0 {
            return Ok(0);
        }
        let node = self.handles.get(cookie)?.ok_or(FsError::BadCookie)?;
        if node.parent_key() != &*dir.key || node.id == handles::ROOT_ID {
            return Err(FsError::BadCookie);
        }
        Ok(listing.position_after(node.name(), node.kind()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn vfs(store: Arc<MemoryStore>, state: &std::path::Path) -> Vfs {
        let h = HandleTable::open(state, "memory").unwrap();
        Vfs::new(store, h, Duration::from_millis(0))
    }

    #[test]
    fn lookup_and_read() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/f", b"0123456789");
        s.put("top", b"x");
        let t = tempfile::tempdir().unwrap();
        let v = vfs(s.clone(), t.path());
        block_on(async {
            let root = v.root();
            let (d, da) = v.lookup(&root, b"d").await.unwrap();
            assert_eq!(da.kind, NodeKind::Dir);
            let (f, fa) = v.lookup(&d, b"f").await.unwrap();
            assert_eq!(fa.size, 10);
            let mut buf = [0u8; 4];
            let (n, eof, _) = v.read(&f, 8, &mut buf).await.unwrap();
            assert_eq!((n, eof, &buf[..n]), (2, true, &b"89"[..]));
            let (n, eof, _) = v.read(&f, 0, &mut buf).await.unwrap();
            assert_eq!((n, eof), (4, false));
            assert!(matches!(
                v.lookup(&root, b"nope").await,
                Err(FsError::NotFound)
            ));
            assert!(matches!(
                v.lookup(&root, b"a/b").await,
                Err(FsError::InvalidName(_))
            ));
            assert!(matches!(
                v.lookup(&root, &[b'a'; 256]).await,
                Err(FsError::NameTooLong)
            ));
            assert!(matches!(v.lookup(&f, b"x").await, Err(FsError::NotDir)));
            let (up, _) = v.lookup(&d, b"..").await.unwrap();
            assert_eq!(up.id, root.id);
            let (up, _) = v.lookup(&root, b"..").await.unwrap();
            assert_eq!(up.id, root.id);
            s.delete("d/f");
            assert!(matches!(v.getattr(&f).await, Err(FsError::Stale)));
        });
    }

    #[test]
    fn resume_after_every_entry_visits_each_once() {
        let s = Arc::new(MemoryStore::new());
        for i in 0..2500 {
            s.put(&format!("big/n{i:04}"), b"");
        }
        s.put("big/sub/x", b"");
        let t = tempfile::tempdir().unwrap();
        let v = vfs(s.clone(), t.path());
        block_on(async {
            let (d, _) = v.lookup(&v.root(), b"big").await.unwrap();
            let mut cookie = 0;
            let mut names = Vec::new();
            for _ in 0..1000 {
                let l = v.listing(&d).await.unwrap();
                let start = v.resume_index(&d, &l, cookie).unwrap();
                let page: Vec<_> = l.entries[start..].iter().take(7).cloned().collect();
                if page.is_empty() {
                    break;
                }
                cookie = page.last().unwrap().id;
                names.extend(page.into_iter().map(|e| e.name.to_string()));
            }
            assert_eq!(names.len(), 2501);
            let mut uniq = names.clone();
            uniq.dedup();
            assert_eq!(uniq.len(), 2501);
            let l = v.listing(&d).await.unwrap();
            assert!(matches!(
                v.resume_index(&d, &l, 999_999),
                Err(FsError::BadCookie)
            ));
        });
    }
}
