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
pub mod listing;
mod mutate;

pub use mutate::{CreateHow, Cred, SetAttrs, TimeSet};

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::prefetch::SweepSignal;
use crate::telemetry::{self, Counter};

pub use error::{FsError, FsResult};
pub use handles::{HandleTable, Node, NodeKind};
pub use listing::{DirEntry, Found, ListedEtag, ListingState};

use crate::cache::block::{BlockCache, Piece};
use crate::cache::meta::MetaCache;
use crate::store::{ObjectStore, StoreError, LIST_PAGE_KEYS_MAX};
use crate::write::{Data as WData, Kind as WKind, Record, WriteBack};

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
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub ctime: SystemTime,
}

/// Permission bits of objects that carry none.
pub const FILE_MODE_DEFAULT: u32 = 0o644;
/// Permission bits of directories that carry none.
pub const DIR_MODE_DEFAULT: u32 = 0o755;
/// `st_mode` file-type bits as kept in object metadata.
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

impl Attr {
    /// Attributes of a store object or prefix with no metadata.
    pub fn plain(
        fileid: u64,
        kind: NodeKind,
        size: u64,
        mtime: SystemTime,
        etag: Option<Arc<str>>,
    ) -> Attr {
        Attr {
            fileid,
            kind,
            size,
            mtime,
            etag,
            mode: if kind == NodeKind::Dir {
                DIR_MODE_DEFAULT
            } else {
                FILE_MODE_DEFAULT
            },
            uid: 0,
            gid: 0,
            atime: mtime,
            ctime: mtime,
        }
    }

    /// Apply what an object's metadata says (HEAD).
    pub fn with_posix(mut self, p: Option<&crate::store::PosixMeta>) -> Attr {
        let Some(p) = p else { return self };
        if let Some(m) = p.mode {
            self.mode = m & 0o7777;
            if m & S_IFMT == S_IFLNK && self.kind == NodeKind::File {
                self.kind = NodeKind::Symlink;
            }
        }
        if let Some(u) = p.uid {
            self.uid = u;
        }
        if let Some(g) = p.gid {
            self.gid = g;
        }
        if let Some(t) = p.mtime_ns {
            self.mtime = crate::write::time_of_ns(t);
            self.atime = self.mtime;
            self.ctime = self.mtime;
        }
        self
    }
}

/// A directory listing shared by every reader of the directory: the state
/// is read under a lock, pages are fetched one reader at a time.
#[derive(Default)]
pub struct Listing {
    fetch: tokio::sync::Mutex<()>,
    state: RwLock<ListingState>,
}

impl Listing {
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, ListingState> {
        self.state.read().expect("listing poisoned")
    }

    /// Fresh while pages keep coming and for `ttl` after the last one.
    pub fn is_fresh(&self, ttl: Duration) -> bool {
        self.state().touched.elapsed() < ttl
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
    cache: Option<Arc<BlockCache>>,
    /// Write-back; `None` exports read-only.
    write: Option<Arc<WriteBack>>,
    /// One copy of a store object into a staging file at a time.
    copy_up: tokio::sync::Mutex<()>,
}

fn not_found_is_stale(e: StoreError) -> FsError {
    match e {
        StoreError::NotFound { .. } => FsError::Stale,
        e => FsError::Store(e),
    }
}

impl Vfs {
    pub fn new(store: Arc<dyn ObjectStore>, handles: HandleTable, meta: MetaCache) -> Self {
        Self {
            store,
            handles,
            meta,
            cache: None,
            write: None,
            copy_up: tokio::sync::Mutex::new(()),
        }
    }

    /// Accept writes through `write`.
    pub fn with_write(self, write: Option<Arc<WriteBack>>) -> Self {
        Self { write, ..self }
    }

    pub fn write_back(&self) -> Option<&Arc<WriteBack>> {
        self.write.as_ref()
    }

    /// The overlay's record of `key`, when there is a non-empty overlay.
    fn overlay(&self, key: &str) -> Option<Record> {
        let w = self.write.as_ref()?;
        w.get(key)
    }

    /// Serve file data through a block cache.
    pub fn with_cache(self, cache: Option<Arc<BlockCache>>) -> Self {
        Self { cache, ..self }
    }

    pub fn cache(&self) -> Option<&Arc<BlockCache>> {
        self.cache.as_ref()
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
        Attr::plain(
            id,
            NodeKind::Dir,
            4096,
            self.handles.identity().created,
            None,
        )
    }

    /// Whether a directory still exists. A fresh listing of its parent that
    /// shows it settles the question without a store call, and keeps
    /// LOOKUP, GETATTR and READDIR consistent with what READDIR showed
    /// (some stores list a prefix in its parent that has no keys left).
    async fn dir_exists(&self, dir: &Node) -> FsResult<bool> {
        if dir.id == handles::ROOT_ID {
            return Ok(true);
        }
        if let Some(r) = self.overlay(&dir.key) {
            return Ok(r.kind == WKind::Dir);
        }
        if let Some(parent_id) = self.handles.cached_id(dir.parent_key()) {
            if let Some(l) = self.meta.listing(parent_id) {
                let suffix = &dir.key[dir.parent_key().len()..];
                match l.state().find(suffix) {
                    Found::Entry(_) => return Ok(true),
                    Found::Absent => return Ok(false),
                    Found::NotYetListed => {}
                }
            }
        }
        Ok(self.store.prefix_exists(&dir.key).await?)
    }

    /// Current attributes; `Stale` when the object is gone.
    pub async fn getattr(&self, node: &Node) -> FsResult<Attr> {
        Ok(self.attr_and_record(node).await?.0)
    }

    /// Current attributes and the overlay's record they came from (one
    /// overlay lookup for a READ's attributes and data).
    async fn attr_and_record(&self, node: &Node) -> FsResult<(Attr, Option<Record>)> {
        if let Some(r) = self.overlay(&node.key) {
            return match r.kind {
                WKind::Gone => Err(FsError::Stale),
                _ => Ok((self.record_attr(node.id, &r), Some(r))),
            };
        }
        Ok((self.store_attr(node).await?, None))
    }

    /// Attributes from the metadata cache or the store.
    async fn store_attr(&self, node: &Node) -> FsResult<Attr> {
        if let Some(a) = self.meta.attr(node.id) {
            return Ok(a);
        }
        let attr = match node.kind() {
            NodeKind::Dir => {
                if !self.dir_exists(node).await? {
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
                file_attr(node.id, m)
            }
            NodeKind::Symlink => return Err(FsError::Stale),
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
        let (mut mask_dir, mut mask_file) = (false, false);
        if self.write.as_ref().is_some_and(|w| !w.is_empty()) {
            let dk = format!("{}{name}/", dir.key);
            let fk = format!("{}{name}", dir.key);
            for key in [dk, fk] {
                match self.overlay(&key) {
                    Some(r) if r.kind == WKind::Gone => {
                        if key.ends_with('/') {
                            mask_dir = true;
                        } else {
                            mask_file = true;
                        }
                    }
                    Some(r) => {
                        let node = self.node_for(&key, r.id)?;
                        let attr = self.record_attr(node.id, &r);
                        return Ok((node, attr));
                    }
                    None => {}
                }
            }
        }
        if let Some(listing) = self.meta.listing(dir.id) {
            let st = listing.state();
            let dir_suffix = format!("{name}/");
            match (st.find(&dir_suffix), st.find(name)) {
                (Found::Entry(e), _) | (Found::Absent, Found::Entry(e)) => {
                    let id = e.id;
                    let mut attr = self.entry_attr(&dir.key, e);
                    attr.etag = e.etag.as_ref().map(ListedEtag::to_arc);
                    let listed_at = st.fetched_at(&e.suffix);
                    drop(st);
                    // A listed file's attributes are complete when the
                    // listing carried its ETag (S3 LIST does): no HEAD
                    // needed until they expire, a TTL after the page that
                    // listed them was fetched.
                    if attr.kind == NodeKind::Dir {
                        self.meta.put_attr(attr.clone());
                    } else if let (Some(_), Some(at)) = (&attr.etag, listed_at) {
                        self.meta.put_attr_at(attr.clone(), at);
                    }
                    return Ok((self.node(id)?, attr));
                }
                (Found::Absent, Found::Absent) => return Err(FsError::NotFound),
                // Not fetched that far yet: ask the store directly.
                _ => {}
            }
        }
        if self.meta.is_negative(dir.id, name) {
            return Err(FsError::NotFound);
        }
        let dir_key = format!("{}{name}/", dir.key);
        let file_key = format!("{}{name}", dir.key);
        // A name resolved before whose attributes are still trusted needs
        // no store round trip: a training epoch looks every file up again,
        // often in folders it never lists.
        let dir_id = (!mask_dir)
            .then(|| self.handles.cached_id(&dir_key))
            .flatten();
        let file_id = (!mask_file)
            .then(|| self.handles.cached_id(&file_key))
            .flatten();
        for id in [dir_id, file_id].into_iter().flatten() {
            if let Some(attr) = self.meta.attr(id) {
                return Ok((self.node(id)?, attr));
            }
        }
        // A file whose attributes expired is revalidated with one HEAD;
        // only when it is gone is the name resolved afresh.
        let known_file = file_id.filter(|id| self.meta.kind_known(*id) == Some(NodeKind::File));
        if let Some(id) = known_file {
            match self.store.head(&file_key).await {
                Ok(m) => {
                    let attr = file_attr(id, m);
                    self.meta.put_attr(attr.clone());
                    return Ok((self.node(id)?, attr));
                }
                Err(StoreError::NotFound { .. }) => self.meta.forget_attr(id),
                Err(e) => return Err(e.into()),
            }
        }
        if !mask_dir && self.store.prefix_exists(&dir_key).await? {
            let node = self.handles.ensure(&[dir_key])?.remove(0);
            let attr = self.dir_attr(node.id);
            self.meta.put_attr(attr.clone());
            return Ok((node, attr));
        }
        if mask_file {
            return Err(FsError::NotFound);
        }
        match self.store.head(&file_key).await {
            Ok(m) => {
                let node = self.handles.ensure(&[file_key])?.remove(0);
                let attr = file_attr(node.id, m);
                self.meta.put_attr(attr.clone());
                Ok((node, attr))
            }
            Err(StoreError::NotFound { .. }) => {
                self.meta.put_negative(dir.id, name);
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Attributes of a listing entry.
    pub fn entry_attr(&self, dir_key: &str, e: &DirEntry) -> Attr {
        if self.write.as_ref().is_some_and(|w| !w.is_empty()) {
            if let Some(r) = self.overlay(&format!("{dir_key}{}", e.suffix)) {
                if r.kind != WKind::Gone {
                    return self.record_attr(e.id, &r);
                }
            }
        }
        match e.kind() {
            NodeKind::Dir => self.dir_attr(e.id),
            // What the listing knows of the version stays there until a
            // LOOKUP needs it: READDIRPLUS replies carry no ETag.
            kind => Attr::plain(e.id, kind, e.size, e.mtime, None),
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
        let (attr, rec) = self.attr_and_record(node).await?;
        if let Some(r) = rec {
            return self.read_record(&r, attr, offset, buf).await;
        }
        if offset >= attr.size || buf.is_empty() {
            return Ok((0, offset >= attr.size, attr));
        }
        let mut attr = attr;
        // One retry: a 412 means the object changed since its attributes
        // were read; re-stat and read the new version whole, never a mix.
        for attempt in 0..2 {
            if offset >= attr.size {
                return Ok((0, true, attr));
            }
            let want = (attr.size - offset).min(buf.len() as u64) as usize;
            let r = self
                .store
                .get_range(&node.key, offset, &mut buf[..want], attr.etag.as_deref())
                .await;
            match r {
                Ok(n) => return Ok((n, offset + n as u64 >= attr.size, attr)),
                Err(StoreError::PreconditionFailed { .. }) if attempt == 0 => {
                    tracing::debug!(key = %node.key, "object changed during read; re-reading its attributes");
                    self.meta.forget_attr(node.id);
                    attr = self.getattr(node).await?;
                }
                Err(e) => {
                    // Attributes are only wrong if the object is gone; an
                    // unavailable store leaves them valid for cached use.
                    if matches!(e, StoreError::NotFound { .. }) {
                        self.meta.forget_attr(node.id);
                    }
                    return Err(not_found_is_stale(e));
                }
            }
        }
        Err(FsError::Stale)
    }

    /// Read through the block cache: the bytes come back as pieces of cache
    /// buffers, ready to be sent without a copy. `None` when no cache is in
    /// use (or it was disabled) and the caller should use [`Vfs::read`].
    pub async fn read_cached(
        &self,
        node: &Node,
        offset: u64,
        count: usize,
        client: u64,
    ) -> Option<FsResult<(Vec<Piece>, usize, bool, Attr)>> {
        let cache = self.cache.as_ref().filter(|c| c.is_enabled())?;
        if node.kind() == NodeKind::Dir {
            return Some(Err(FsError::IsDir));
        }
        let (mut attr, rec) = match self.attr_and_record(node).await {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        if let Some(r) = rec {
            let WData::Remote { src, etag } = &r.data else {
                // Staged data (or not a file): the plain read path.
                return None;
            };
            if r.kind != WKind::File {
                return None;
            }
            if offset >= r.size || count == 0 {
                return Some(Ok((Vec::new(), 0, offset >= r.size, attr)));
            }
            let want = (r.size - offset).min(count as u64) as usize;
            let etag: Arc<str> = Arc::from(etag.as_str());
            return Some(
                match cache
                    .read(
                        &self.store,
                        src,
                        &etag,
                        r.size,
                        offset,
                        want,
                        client,
                        node.id,
                    )
                    .await
                {
                    Ok(pieces) => Ok((pieces, want, offset + want as u64 >= r.size, attr)),
                    Err(e) => Err(self.remote_failed(src, e)),
                },
            );
        }
        for attempt in 0..2 {
            if offset >= attr.size || count == 0 {
                return Some(Ok((Vec::new(), 0, offset >= attr.size, attr)));
            }
            let etag = attr.etag.clone()?;
            let want = (attr.size - offset).min(count as u64) as usize;
            match cache
                .read(
                    &self.store,
                    &node.key,
                    &etag,
                    attr.size,
                    offset,
                    want,
                    client,
                    node.id,
                )
                .await
            {
                Ok(pieces) => {
                    if offset == 0 {
                        self.maybe_sweep(cache, client, node);
                    }
                    let eof = offset + want as u64 >= attr.size;
                    return Some(Ok((pieces, want, eof, attr)));
                }
                Err(StoreError::PreconditionFailed { .. }) if attempt == 0 => {
                    tracing::debug!(key = %node.key, "object changed during read; re-reading its attributes");
                    self.meta.forget_attr(node.id);
                    attr = match self.getattr(node).await {
                        Ok(a) => a,
                        Err(e) => return Some(Err(e)),
                    };
                }
                Err(e) => {
                    if matches!(e, StoreError::NotFound { .. }) {
                        self.meta.forget_attr(node.id);
                    }
                    return Some(Err(not_found_is_stale(e)));
                }
            }
        }
        Some(Err(FsError::Stale))
    }

    /// Count a first read of a file for its directory; when one client has
    /// read many of the directory's files in a short while, fetch the rest
    /// of its small files in the background (a training epoch in shuffled
    /// order). Needs the directory's listing in the metadata cache.
    fn maybe_sweep(&self, cache: &Arc<BlockCache>, client: u64, node: &Node) {
        let Some(p) = cache.prefetcher() else {
            return;
        };
        let Some(dir_id) = self.handles.cached_id(node.parent_key()) else {
            return;
        };
        if p.sweep_read(client, dir_id, node.id) != SweepSignal::Start {
            return;
        }
        let Some(listing) = self.meta.listing(dir_id) else {
            p.sweep_finished(client, dir_id);
            return;
        };
        telemetry::add(Counter::PrefetchDirSweeps, 1);
        tracing::debug!(dir = node.parent_key(), client, "directory sweep starts");
        let sweep = Sweep {
            cache: cache.clone(),
            store: self.store.clone(),
            listing,
            dir_key: Arc::from(node.parent_key()),
            dir_id,
            client,
        };
        tokio::task::spawn_local(sweep.run());
    }

    /// The cached listing of `dir`, or a new, empty one.
    async fn listing(&self, dir: &Node) -> FsResult<Arc<Listing>> {
        if dir.kind() != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        if let Some(l) = self.meta.listing(dir.id) {
            return Ok(l);
        }
        if !self.dir_exists(dir).await? {
            return Err(FsError::Stale);
        }
        let l = Arc::new(Listing::default());
        self.meta.put_listing(dir.id, l.clone());
        Ok(l)
    }

    /// Fetch the next page of `listing` unless another reader already did
    /// since `seen_len` entries were observed.
    async fn fetch_page(&self, dir: &Node, listing: &Listing, seen_len: usize) -> FsResult<()> {
        let _one_fetcher = listing.fetch.lock().await;
        let token = {
            let st = listing.state();
            if st.complete
                || st.entries.len() != seen_len
                || (st.started && st.next_token.is_none())
            {
                return Ok(());
            }
            (st.next_token.clone(), st.listed_upto.clone())
        };
        let (token, listed_upto) = token;
        let page = self
            .store
            .list(&dir.key, token.as_deref(), LIST_PAGE_KEYS_MAX)
            .await?;
        let prefix_len = dir.key.len();
        let mut last: Option<&str> = None;
        let mut keys: Vec<&str> = Vec::with_capacity(page.objects.len() + page.prefixes.len());
        let mut sizes = Vec::with_capacity(keys.capacity());
        let mut hidden = 0u64;
        // Merge objects and prefixes back into one key-ordered sequence.
        let (mut oi, mut pi) = (0, 0);
        while oi < page.objects.len() || pi < page.prefixes.len() {
            let take_object = match (page.objects.get(oi), page.prefixes.get(pi)) {
                (Some(o), Some(p)) => o.key.as_str() < p.as_str(),
                (Some(_), None) => true,
                _ => false,
            };
            let (key, size, mtime, etag) = if take_object {
                let o = &page.objects[oi];
                oi += 1;
                let etag = (!o.etag.is_empty()).then(|| ListedEtag::new(&o.etag));
                (o.key.as_str(), o.size, o.mtime, etag)
            } else {
                let p = &page.prefixes[pi];
                pi += 1;
                (p.as_str(), 4096, self.handles.identity().created, None)
            };
            let Some(suffix) = key.get(prefix_len..).filter(|_| key.starts_with(&*dir.key)) else {
                hidden += 1;
                continue;
            };
            last = Some(suffix);
            if suffix.is_empty() {
                continue; // the directory's own marker object
            }
            if !listing::suffix_is_valid(suffix) {
                hidden += 1;
                tracing::debug!(key, "key is not a valid NFS name; hidden");
                continue;
            }
            keys.push(key);
            sizes.push((size, mtime, etag));
        }
        let ids = self.handles.ensure_ids(&keys)?;
        let entries: Vec<DirEntry> = keys
            .iter()
            .zip(ids)
            .zip(sizes)
            .map(|((k, id), (size, mtime, etag))| DirEntry {
                suffix: k[prefix_len..].into(),
                id,
                size,
                mtime,
                etag,
            })
            .collect();
        let upto = if page.next_token.is_some() {
            last
        } else {
            None
        };
        let entries = self.merge_overlay(&dir.key, entries, listed_upto.as_deref(), upto)?;
        let mut st = listing.state.write().expect("listing poisoned");
        if st.entries.len() + entries.len() > DIR_ENTRIES_MAX {
            return Err(FsError::TooManyEntries(DIR_ENTRIES_MAX));
        }
        st.append(entries, last, page.next_token, hidden);
        if st.complete && st.hidden_keys > 0 {
            tracing::info!(dir = %dir.key, hidden = st.hidden_keys, "keys hidden by the naming rules");
        }
        Ok(())
    }

    /// Visit the entries of `dir` after `cookie` (0: from the start) in
    /// order, fetching pages as needed, until `visit` returns false.
    /// Returns true when the end of the directory was reached.
    pub async fn readdir(
        &self,
        dir: &Node,
        cookie: u64,
        mut visit: impl FnMut(&DirEntry) -> bool,
    ) -> FsResult<bool> {
        let listing = self.listing(dir).await?;
        let after: Option<Arc<str>> = if cookie == 0 {
            None
        } else {
            let node = self.handles.get(cookie)?.ok_or(FsError::BadCookie)?;
            if node.parent_key() != &*dir.key || node.id == handles::ROOT_ID {
                return Err(FsError::BadCookie);
            }
            Some(Arc::from(&node.key[dir.key.len()..]))
        };
        let mut pos: Option<usize> = None;
        loop {
            let seen_len = {
                let st = listing.state();
                let start = match pos {
                    Some(p) => Some(p),
                    None => match &after {
                        None => Some(0),
                        Some(a) => st.position_after(a),
                    },
                };
                if let Some(mut i) = start {
                    while i < st.visible {
                        if !visit(&st.entries[i]) {
                            return Ok(false);
                        }
                        i += 1;
                    }
                    pos = Some(i);
                    if st.complete {
                        return Ok(true);
                    }
                }
                st.entries.len()
            };
            self.fetch_page(dir, &listing, seen_len).await?;
        }
    }
}

/// A background fetch of a directory's small files for one client.
struct Sweep {
    cache: Arc<BlockCache>,
    store: Arc<dyn ObjectStore>,
    listing: Arc<Listing>,
    dir_key: Arc<str>,
    dir_id: u64,
    client: u64,
}

/// Entries a sweep looks at between yields to other tasks.
const SWEEP_YIELD_ENTRIES: usize = 256;
/// How long a sweep waits for prefetch budget before looking again.
const SWEEP_BUDGET_WAIT: Duration = Duration::from_millis(5);

impl Sweep {
    async fn run(self) {
        let Some(p) = self.cache.prefetcher() else {
            return;
        };
        let small = p.config().small_object_bytes;
        let mut i = 0;
        'entries: loop {
            // One entry at a time under the listing's lock: no copy of a
            // huge directory.
            let next = {
                let st = self.listing.state();
                if i >= st.visible {
                    None
                } else {
                    let e = &st.entries[i];
                    Some((
                        e.kind(),
                        e.suffix.clone(),
                        e.size,
                        e.etag.as_ref().map(ListedEtag::to_arc),
                    ))
                }
            };
            let Some((kind, suffix, size, etag)) = next else {
                break;
            };
            i += 1;
            if i % SWEEP_YIELD_ENTRIES == 0 {
                // Never hold the worker for a long run of cached entries.
                tokio::task::yield_now().await;
            }
            let Some(etag) = etag else {
                continue;
            };
            if kind != NodeKind::File || size == 0 || size > small {
                continue;
            }
            let key = format!("{}{}", self.dir_key, suffix);
            if self.cache.has_block(&key, &etag, 0) {
                continue;
            }
            let bytes = size;
            loop {
                if !p.sweep_keep_going(self.client, self.dir_id) || !self.cache.is_enabled() {
                    break 'entries;
                }
                if p.reserve_counted(self.client, bytes, false) {
                    break;
                }
                tokio::time::sleep(SWEEP_BUDGET_WAIT).await;
            }
            telemetry::add(Counter::PrefetchSweepFiles, 1);
            let (cache, store, client) = (self.cache.clone(), self.store.clone(), self.client);
            tokio::task::spawn_local(async move {
                cache.prefetch_object(&store, &key, &etag, size).await;
                if let Some(p) = cache.prefetcher() {
                    p.release(client, bytes);
                }
                cache.pump_prefetch();
            });
        }
        p.sweep_finished(self.client, self.dir_id);
    }
}

/// Attributes of a file from its HEAD.
fn file_attr(id: u64, m: crate::store::ObjectMeta) -> Attr {
    Attr::plain(id, NodeKind::File, m.size, m.mtime, Some(Arc::from(m.etag)))
        .with_posix(m.posix.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::MetaTtls;
    use crate::store::memory::MemoryStore;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn vfs(store: Arc<MemoryStore>, state: &std::path::Path) -> Vfs {
        let h = HandleTable::open(state, "memory").unwrap();
        let ttls = MetaTtls {
            attrs: Duration::from_millis(0),
            negative: Duration::from_millis(0),
            immutable: false,
        };
        Vfs::new(store, h, MetaCache::new(ttls))
    }

    /// Walk a directory `page` entries at a time, resuming by cookie.
    async fn walk(v: &Vfs, d: &Node, page: usize) -> Vec<String> {
        let mut cookie = 0;
        let mut names = Vec::new();
        for _ in 0..100_000 {
            let mut batch = Vec::new();
            let eof = v
                .readdir(d, cookie, |e| {
                    if batch.len() == page {
                        return false;
                    }
                    batch.push((e.name().to_string(), e.id));
                    true
                })
                .await
                .unwrap();
            if let Some((_, id)) = batch.last() {
                cookie = *id;
            }
            names.extend(batch.into_iter().map(|(n, _)| n));
            if eof {
                return names;
            }
        }
        panic!("walk did not finish");
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
    fn a_name_looked_up_again_within_its_ttl_costs_no_store_call() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/f", b"0123456789");
        s.put("d/sub/x", b"x");
        let t = tempfile::tempdir().unwrap();
        let h = HandleTable::open(t.path(), "memory").unwrap();
        let ttls = MetaTtls {
            attrs: Duration::from_secs(3600),
            negative: Duration::from_secs(0),
            immutable: false,
        };
        let v = Vfs::new(s.clone(), h, MetaCache::new(ttls));
        block_on(async {
            let (d, _) = v.lookup(&v.root(), b"d").await.unwrap();
            // Never listed: each name is resolved against the store once.
            let (f, fa) = v.lookup(&d, b"f").await.unwrap();
            let (sub, _) = v.lookup(&d, b"sub").await.unwrap();
            // Gone from the store, the names still resolve from the cache
            // (no HEAD, no LIST) to the same handles and attributes.
            s.delete("d/f");
            s.delete("d/sub/x");
            let (f2, fa2) = v.lookup(&d, b"f").await.unwrap();
            assert_eq!(
                (f2.id, fa2.size, fa2.etag.clone()),
                (f.id, 10, fa.etag.clone())
            );
            let (sub2, sa) = v.lookup(&d, b"sub").await.unwrap();
            assert_eq!((sub2.id, sa.kind), (sub.id, NodeKind::Dir));
        });
        // With a zero TTL the store is asked again and the names are gone.
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(MemoryStore::new());
        s.put("d/f", b"0123456789");
        let v = vfs(s.clone(), t.path());
        block_on(async {
            let (d, _) = v.lookup(&v.root(), b"d").await.unwrap();
            v.lookup(&d, b"f").await.unwrap();
            s.delete("d/f");
            assert!(matches!(v.lookup(&d, b"f").await, Err(FsError::NotFound)));
        });
    }

    #[test]
    fn a_changed_object_is_read_whole_from_its_new_version() {
        let s = Arc::new(MemoryStore::new());
        s.put("f", b"old old old");
        let t = tempfile::tempdir().unwrap();
        let h = HandleTable::open(t.path(), "memory").unwrap();
        let ttls = MetaTtls {
            attrs: Duration::from_secs(3600),
            negative: Duration::from_secs(0),
            immutable: false,
        };
        let v = Vfs::new(s.clone(), h, MetaCache::new(ttls));
        block_on(async {
            let (f, a) = v.lookup(&v.root(), b"f").await.unwrap();
            assert_eq!(a.size, 11);
            s.put("f", b"NEW");
            let mut buf = [0u8; 16];
            let (n, eof, attr) = v.read(&f, 0, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"NEW");
            assert!(eof);
            assert_eq!(attr.size, 3, "fresh attributes come back with the data");
        });
    }

    #[test]
    fn paged_walks_visit_each_entry_once_across_store_pages() {
        let s = Arc::new(MemoryStore::new());
        for i in 0..2500 {
            s.put(&format!("big/n{i:04}"), b"");
        }
        s.put("big/sub/x", b"");
        let t = tempfile::tempdir().unwrap();
        let v = vfs(s.clone(), t.path());
        block_on(async {
            let (d, _) = v.lookup(&v.root(), b"big").await.unwrap();
            for page in [1, 7, 1000, 5000] {
                let names = walk(&v, &d, page).await;
                assert_eq!(names.len(), 2501, "page size {page}");
                let mut uniq = names.clone();
                uniq.sort();
                uniq.dedup();
                assert_eq!(uniq.len(), 2501);
            }
            assert!(matches!(
                v.readdir(&d, 999_999, |_| true).await,
                Err(FsError::BadCookie)
            ));
        });
    }

    #[test]
    fn odd_keys_follow_the_naming_rules() {
        let s = Arc::new(MemoryStore::new());
        for k in [
            "ok",
            "a//b",
            "./x",
            "../y",
            "both",
            "both/inner",
            "marker/",
            "sp ace",
            "ünï",
        ] {
            s.put(k, b"1");
        }
        s.put(&"l".repeat(256), b"1");
        let t = tempfile::tempdir().unwrap();
        let v = vfs(s.clone(), t.path());
        block_on(async {
            let mut names = walk(&v, &v.root(), 3).await;
            names.sort();
            assert_eq!(names, vec!["a", "both", "marker", "ok", "sp ace", "ünï"]);
            let (both, attr) = v.lookup(&v.root(), b"both").await.unwrap();
            assert_eq!(attr.kind, NodeKind::Dir, "the directory wins");
            let inner = walk(&v, &both, 10).await;
            assert_eq!(inner, vec!["inner"]);
            let (a, _) = v.lookup(&v.root(), b"a").await.unwrap();
            assert!(
                walk(&v, &a, 10).await.is_empty(),
                "a//b has an empty segment"
            );
            let (m, _) = v.lookup(&v.root(), b"marker").await.unwrap();
            assert!(
                walk(&v, &m, 10).await.is_empty(),
                "a marker is not its own child"
            );
        });
    }
}
