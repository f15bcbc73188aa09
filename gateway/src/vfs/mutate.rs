//! Namespace changes: create, mkdir, symlink, write, commit, setattr,
//! remove, rmdir, rename. Each one becomes a durable change of the write
//! overlay (see [`crate::write`]); the store follows in the background.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::{check_name, Attr, FsError, FsResult, Node, NodeKind, Vfs};
use super::{DirEntry, DIR_MODE_DEFAULT, FILE_MODE_DEFAULT};
use crate::store::StoreError;
use crate::write::{now_ns, time_of_ns, Attrs, Data, Kind, Record, WriteBack};

/// Keys a directory rename may move (objects and subdirectories); larger
/// trees answer XDEV, which `mv` turns into copy and delete.
pub const DIR_RENAME_KEYS_MAX: usize = 100_000;
/// Longest symbolic link target (bytes).
pub const SYMLINK_TARGET_BYTES_MAX: usize = 4096;
/// Chunk size when copying a store object into a staging file.
const COPY_UP_CHUNK_BYTES: usize = 8 << 20;

/// Supplementary groups AUTH_SYS may carry.
pub const GROUPS_MAX: usize = 16;

/// Who is asking (AUTH_SYS; AUTH_NONE is nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    groups: [u32; GROUPS_MAX],
    groups_len: u8,
}

impl Cred {
    pub const NOBODY: Cred = Cred::new(65534, 65534);
    pub const ROOT: Cred = Cred::new(0, 0);

    pub const fn new(uid: u32, gid: u32) -> Cred {
        Cred {
            uid,
            gid,
            groups: [0; GROUPS_MAX],
            groups_len: 0,
        }
    }

    /// With supplementary groups (past [`GROUPS_MAX`] ignored).
    pub fn with_groups(mut self, groups: &[u32]) -> Cred {
        let n = groups.len().min(GROUPS_MAX);
        self.groups[..n].copy_from_slice(&groups[..n]);
        self.groups_len = n as u8;
        self
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups[..self.groups_len as usize].contains(&gid)
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the mode bits of `a` grant `want` (4 read, 2 write, 1
    /// execute/search) to this caller. Root may read and write anything
    /// and execute what anyone may.
    pub fn may(&self, a: &Attr, want: u32) -> bool {
        if self.is_root() {
            return want & 1 == 0 || a.kind == NodeKind::Dir || a.mode & 0o111 != 0;
        }
        let bits = if self.uid == a.uid {
            a.mode >> 6
        } else if self.in_group(a.gid) {
            a.mode >> 3
        } else {
            a.mode
        } & 7;
        bits & want == want
    }
}

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    ServerNow,
    At(SystemTime),
}

/// SETATTR's requested changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

impl SetAttrs {
    fn apply(&self, a: &mut Attrs) {
        let now = now_ns();
        let ns = |t: TimeSet| match t {
            TimeSet::ServerNow => now,
            TimeSet::At(t) => t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        if let Some(m) = self.mode {
            a.mode = m & 0o7777;
        }
        if let Some(u) = self.uid {
            a.uid = u;
        }
        if let Some(g) = self.gid {
            a.gid = g;
        }
        if let Some(t) = self.atime {
            a.atime_ns = ns(t);
        }
        if let Some(t) = self.mtime {
            a.mtime_ns = ns(t);
        }
        a.ctime_ns = now;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateHow {
    Unchecked(SetAttrs),
    Guarded(SetAttrs),
    Exclusive([u8; 8]),
}

fn ns_of(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn attrs_of(a: &Attr) -> Attrs {
    Attrs {
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        atime_ns: ns_of(a.atime),
        mtime_ns: ns_of(a.mtime),
        ctime_ns: ns_of(a.ctime),
    }
}

impl Vfs {
    fn writer(&self) -> FsResult<&Arc<WriteBack>> {
        self.write.as_ref().ok_or(FsError::ReadOnly)
    }

    /// Attributes of an overlay record.
    pub(super) fn record_attr(&self, id: u64, r: &Record) -> Attr {
        let kind = match r.kind {
            Kind::Dir => NodeKind::Dir,
            Kind::Symlink => NodeKind::Symlink,
            _ => NodeKind::File,
        };
        let size = if kind == NodeKind::Dir { 4096 } else { r.size };
        let etag = match &r.data {
            Data::Remote { etag, .. } => Some(Arc::from(etag.as_str())),
            _ => None,
        };
        Attr {
            fileid: id,
            kind,
            size,
            mtime: time_of_ns(r.attrs.mtime_ns),
            etag,
            mode: r.attrs.mode,
            uid: r.attrs.uid,
            gid: r.attrs.gid,
            atime: time_of_ns(r.attrs.atime_ns),
            ctime: time_of_ns(r.attrs.ctime_ns),
        }
    }

    /// The node for `key`, whose record says `id`.
    pub(super) fn node_for(&self, key: &str, id: u64) -> FsResult<Arc<Node>> {
        if let Some(n) = self.handles.get(id)? {
            if &*n.key == key {
                return Ok(n);
            }
        }
        Ok(self.handles.ensure(&[key])?.remove(0))
    }

    pub(super) fn remote_failed(&self, src: &str, e: StoreError) -> FsError {
        match e {
            StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. } => {
                tracing::error!(key = src, error = %e, "data of a renamed file changed or vanished in the store");
                FsError::Store(e)
            }
            e => FsError::Store(e),
        }
    }

    /// READ of a file the overlay knows.
    pub(super) async fn read_record(
        &self,
        r: &Record,
        attr: Attr,
        offset: u64,
        buf: &mut [u8],
    ) -> FsResult<(usize, bool, Attr)> {
        match r.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid("not a regular file")),
            Kind::Gone => return Err(FsError::Stale),
            Kind::File => {}
        }
        if offset >= r.size || buf.is_empty() {
            return Ok((0, offset >= r.size, attr));
        }
        let want = (r.size - offset).min(buf.len() as u64) as usize;
        match &r.data {
            Data::Remote { src, etag } => {
                let n = self
                    .store
                    .get_range(src, offset, &mut buf[..want], Some(etag))
                    .await
                    .map_err(|e| self.remote_failed(src, e))?;
                Ok((n, offset + n as u64 >= r.size, attr))
            }
            _ => {
                let w = self.writer()?;
                // Find the key again by id: the record may have moved.
                let node = self.node(attr.fileid)?;
                match w.read(&node.key, offset, &mut buf[..want]) {
                    Some(Ok((n, rec))) => {
                        let attr = self.record_attr(attr.fileid, &rec);
                        Ok((n, offset + n as u64 >= rec.size, attr))
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(FsError::Stale),
                }
            }
        }
    }

    /// Merge the overlay's children of `dir_key` with suffixes in
    /// (`after`, `upto`] into one page of store entries (sorted).
    pub(super) fn merge_overlay(
        &self,
        dir_key: &str,
        entries: Vec<DirEntry>,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> FsResult<Vec<DirEntry>> {
        let Some(w) = self.write.as_ref() else {
            return Ok(entries);
        };
        let over = w.children(dir_key, after, upto);
        if over.is_empty() {
            return Ok(entries);
        }
        let mut m: BTreeMap<Box<str>, Option<DirEntry>> = BTreeMap::new();
        for e in entries {
            m.insert(e.suffix.clone(), Some(e));
        }
        for (suffix, r) in over {
            let v = match r.kind {
                Kind::Gone => None,
                _ => Some(DirEntry {
                    suffix: suffix.as_str().into(),
                    id: r.id,
                    size: r.size,
                    mtime: time_of_ns(r.attrs.mtime_ns),
                    etag: None,
                }),
            };
            m.insert(suffix.into(), v);
        }
        Ok(m.into_values().flatten().collect())
    }

    /// The change that moves `dir`'s times (applied in the same journal
    /// transaction as the change of its entries).
    fn dir_touch(&self, dir: &Node) -> Vec<(String, Option<Record>)> {
        let Some(w) = self.write.as_ref() else {
            return Vec::new();
        };
        let now = now_ns();
        let r = match w.get(&dir.key) {
            Some(mut r) if r.kind == Kind::Dir => {
                r.attrs.mtime_ns = now;
                r.attrs.ctime_ns = now;
                r
            }
            _ => {
                let mut a = attrs_of(&self.dir_attr(dir.id));
                a.mtime_ns = now;
                a.ctime_ns = now;
                Record {
                    kind: Kind::Dir,
                    id: dir.id,
                    size: 0,
                    attrs: a,
                    data: Data::None,
                    dirty: false,
                    in_store: true,
                    verf: None,
                }
            }
        };
        vec![(dir.key.to_string(), Some(r))]
    }

    /// After a change of `dir`'s entries: its listing is refetched.
    fn dir_changed(&self, dir: &Node) {
        self.meta.forget_listing(dir.id);
        self.meta.forget_attr(dir.id);
    }

    /// Look `name` up in `dir`, `None` when missing.
    async fn find(&self, dir: &Node, name: &[u8]) -> FsResult<Option<(Arc<Node>, Attr)>> {
        match self.lookup(dir, name).await {
            Ok(x) => Ok(Some(x)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the store may hold an object under `key`, by the overlay's
    /// record or (without one) because it was found there.
    fn in_store(&self, key: &str, found_in_store: bool) -> bool {
        match self.overlay(key) {
            Some(r) => r.in_store,
            None => found_in_store,
        }
    }

    fn check_parent(&self, dir: &Node) -> FsResult<()> {
        if dir.kind() != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(())
    }

    /// The caller may add or remove entries in `dir`: write and search.
    async fn may_change_dir(&self, dir: &Node, cred: &Cred) -> FsResult<Attr> {
        let a = self.getattr(dir).await?;
        if a.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        if !cred.may(&a, 3) {
            return Err(FsError::Access);
        }
        Ok(a)
    }

    /// The sticky-directory rule: in a sticky `dir`, only the owner of
    /// the entry or of the directory (or root) removes or replaces it.
    fn sticky_allows(dir: &Attr, entry: &Attr, cred: &Cred) -> bool {
        dir.mode & S_ISVTX == 0 || cred.is_root() || cred.uid == entry.uid || cred.uid == dir.uid
    }

    /// Owner and mode bits of a new node in directory `dir` (SysV rules:
    /// the caller's group unless the directory is set-group-ID, whose
    /// group and, for directories, bit are inherited).
    fn inherit(&self, dir: &Attr, cred: &Cred, attrs: &mut Attrs, is_dir: bool) {
        if dir.mode & S_ISGID != 0 {
            attrs.gid = dir.gid;
            if is_dir {
                attrs.mode |= S_ISGID;
            }
        }
        if !is_dir && attrs.mode & S_ISGID != 0 && !cred.is_root() && !cred.in_group(attrs.gid) {
            attrs.mode &= !S_ISGID;
        }
    }

    fn new_attrs(&self, cred: Cred, mode: u32, sa: Option<&SetAttrs>) -> Attrs {
        let now = now_ns();
        let mut a = Attrs {
            mode,
            uid: cred.uid,
            gid: cred.gid,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
        };
        if let Some(sa) = sa {
            let mut sa = *sa;
            sa.size = None;
            sa.apply(&mut a);
        }
        a
    }

    /// CREATE.
    pub async fn create(
        &self,
        dir: &Node,
        name: &[u8],
        how: CreateHow,
        cred: Cred,
    ) -> FsResult<(Arc<Node>, Attr)> {
        let w = self.writer()?.clone();
        self.check_parent(dir)?;
        let name = check_name(name)?;
        if name == "." || name == ".." {
            return Err(FsError::Exists);
        }
        let dir_attr = self.getattr(dir).await?;
        if let Some((node, attr)) = self.find(dir, name.as_bytes()).await? {
            return match how {
                CreateHow::Guarded(_) => Err(FsError::Exists),
                CreateHow::Exclusive(v) => match self.overlay(&node.key) {
                    Some(r) if r.verf == Some(v) => Ok((node, attr)),
                    _ => Err(FsError::Exists),
                },
                CreateHow::Unchecked(sa) => {
                    if attr.kind == NodeKind::Dir {
                        return Err(FsError::Exists);
                    }
                    if sa.size.is_some() {
                        let attr = self.setattr(&node, &sa, None, cred).await?;
                        return Ok((node, attr));
                    }
                    Ok((node, attr))
                }
            };
        }
        if !cred.may(&dir_attr, 3) {
            return Err(FsError::Access);
        }
        let key = format!("{}{name}", dir.key);
        let node = self.handles.ensure(&[key.as_str()])?.remove(0);
        let (attrs, verf) = match &how {
            CreateHow::Unchecked(sa) | CreateHow::Guarded(sa) => (
                self.new_attrs(cred, sa.mode.unwrap_or(FILE_MODE_DEFAULT), Some(sa)),
                None,
            ),
            CreateHow::Exclusive(v) => (self.new_attrs(cred, FILE_MODE_DEFAULT, None), Some(*v)),
        };
        let mut attrs = attrs;
        self.inherit(&dir_attr, &cred, &mut attrs, false);
        let (n, f) = w.new_staging_file()?;
        let rec = Record {
            kind: Kind::File,
            id: node.id,
            size: 0,
            attrs,
            data: Data::Staged(n),
            dirty: true,
            in_store: self.in_store(&key, false),
            verf,
        };
        let mut changes = vec![(key, Some(rec.clone()))];
        changes.extend(self.dir_touch(dir));
        w.apply(changes, vec![(n, f)])?;
        self.meta.forget_negative(dir.id, name);
        self.meta.forget_attr(node.id);
        self.dir_changed(dir);
        let attr = self.record_attr(node.id, &rec);
        Ok((node, attr))
    }

    /// MKDIR.
    pub async fn mkdir(
        &self,
        dir: &Node,
        name: &[u8],
        sa: &SetAttrs,
        cred: Cred,
    ) -> FsResult<(Arc<Node>, Attr)> {
        let w = self.writer()?.clone();
        self.check_parent(dir)?;
        let name = check_name(name)?;
        if name == "." || name == ".." {
            return Err(FsError::Exists);
        }
        let dir_attr = self.getattr(dir).await?;
        if self.find(dir, name.as_bytes()).await?.is_some() {
            return Err(FsError::Exists);
        }
        if !cred.may(&dir_attr, 3) {
            return Err(FsError::Access);
        }
        let key = format!("{}{name}/", dir.key);
        let node = self.handles.ensure(&[key.as_str()])?.remove(0);
        let mut attrs = self.new_attrs(cred, sa.mode.unwrap_or(DIR_MODE_DEFAULT), Some(sa));
        self.inherit(&dir_attr, &cred, &mut attrs, true);
        let rec = Record {
            kind: Kind::Dir,
            id: node.id,
            size: 0,
            attrs,
            data: Data::None,
            dirty: true,
            in_store: self.in_store(&key, false),
            verf: None,
        };
        let mut changes = vec![(key, Some(rec.clone()))];
        changes.extend(self.dir_touch(dir));
        w.apply(changes, Vec::new())?;
        self.meta.forget_negative(dir.id, name);
        self.meta.forget_attr(node.id);
        self.meta.forget_listing(node.id);
        self.dir_changed(dir);
        Ok((node.clone(), self.record_attr(node.id, &rec)))
    }

    /// SYMLINK.
    pub async fn symlink(
        &self,
        dir: &Node,
        name: &[u8],
        target: &[u8],
        sa: &SetAttrs,
        cred: Cred,
    ) -> FsResult<(Arc<Node>, Attr)> {
        let w = self.writer()?.clone();
        self.check_parent(dir)?;
        let name = check_name(name)?;
        if target.is_empty() {
            return Err(FsError::Invalid("empty link target"));
        }
        if target.len() > SYMLINK_TARGET_BYTES_MAX {
            return Err(FsError::NameTooLong);
        }
        let target = std::str::from_utf8(target)
            .map_err(|_| FsError::Invalid("link target is not UTF-8"))?;
        if target.contains('\0') {
            return Err(FsError::Invalid("link target contains NUL"));
        }
        let dir_attr = self.getattr(dir).await?;
        if self.find(dir, name.as_bytes()).await?.is_some() {
            return Err(FsError::Exists);
        }
        if !cred.may(&dir_attr, 3) {
            return Err(FsError::Access);
        }
        let key = format!("{}{name}", dir.key);
        let node = self.handles.ensure(&[key.as_str()])?.remove(0);
        let mut attrs = self.new_attrs(cred, 0o777, Some(&SetAttrs { mode: None, ..*sa }));
        self.inherit(&dir_attr, &cred, &mut attrs, false);
        let rec = Record {
            kind: Kind::Symlink,
            id: node.id,
            size: target.len() as u64,
            attrs,
            data: Data::Link(target.to_string()),
            dirty: true,
            in_store: self.in_store(&key, false),
            verf: None,
        };
        let mut changes = vec![(key, Some(rec.clone()))];
        changes.extend(self.dir_touch(dir));
        w.apply(changes, Vec::new())?;
        self.meta.forget_negative(dir.id, name);
        self.meta.forget_attr(node.id);
        self.dir_changed(dir);
        Ok((node.clone(), self.record_attr(node.id, &rec)))
    }

    /// READLINK.
    pub async fn readlink(&self, node: &Node) -> FsResult<String> {
        if let Some(r) = self.overlay(&node.key) {
            return match (r.kind, r.data) {
                (Kind::Symlink, Data::Link(t)) => Ok(t),
                (Kind::Gone, _) => Err(FsError::Stale),
                _ => Err(FsError::Invalid("not a symbolic link")),
            };
        }
        let attr = self.getattr(node).await?;
        if attr.kind != NodeKind::Symlink {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        let len = (attr.size as usize).min(SYMLINK_TARGET_BYTES_MAX);
        let mut buf = vec![0u8; len];
        let n = self
            .store
            .get_range(&node.key, 0, &mut buf, attr.etag.as_deref())
            .await?;
        buf.truncate(n);
        String::from_utf8(buf).map_err(|_| FsError::Invalid("link target is not UTF-8"))
    }

    /// Make sure `node`'s data is in a staging file (copying the store
    /// object in when it is not), optionally starting empty. Returns the
    /// record.
    async fn staged(&self, node: &Node, empty: bool) -> FsResult<Record> {
        let w = self.writer()?.clone();
        if let Some(r) = self.overlay(&node.key) {
            match (&r.kind, &r.data) {
                (Kind::File, Data::Staged(_)) => return Ok(r),
                (Kind::Dir, _) => return Err(FsError::IsDir),
                (Kind::Symlink, _) => return Err(FsError::Invalid("not a regular file")),
                (Kind::Gone, _) => return Err(FsError::Stale),
                _ => {}
            }
        }
        let _one = self.copy_up.lock().await;
        let attr = self.getattr(node).await?;
        let r = self.overlay(&node.key);
        if let Some(r) = &r {
            if let Data::Staged(_) = r.data {
                return Ok(r.clone());
            }
        }
        if attr.kind != NodeKind::File {
            return Err(match attr.kind {
                NodeKind::Dir => FsError::IsDir,
                _ => FsError::Invalid("not a regular file"),
            });
        }
        let (src, etag) = match &r {
            Some(Record {
                data: Data::Remote { src, etag },
                ..
            }) => (src.clone(), Some(etag.clone())),
            _ => (
                node.key.to_string(),
                attr.etag.as_deref().map(str::to_string),
            ),
        };
        let (n, f) = w.new_staging_file()?;
        let size = if empty { 0 } else { attr.size };
        if size > 0 {
            tracing::debug!(key = %node.key, size, "copying an object into staging for a write");
            let mut buf = vec![0u8; COPY_UP_CHUNK_BYTES.min(size as usize)];
            let mut off = 0u64;
            while off < size {
                let want = ((size - off) as usize).min(buf.len());
                let got = self
                    .store
                    .get_range(&src, off, &mut buf[..want], etag.as_deref())
                    .await
                    .map_err(|e| self.remote_failed(&src, e))?;
                if got == 0 {
                    break;
                }
                std::os::unix::fs::FileExt::write_all_at(&*f, &buf[..got], off).map_err(|e| {
                    FsError::Local {
                        op: "write",
                        path: format!("staging file {n}"),
                        source: e,
                    }
                })?;
                off += got as u64;
            }
            f.sync_data().map_err(|e| FsError::Local {
                op: "fdatasync",
                path: format!("staging file {n}"),
                source: e,
            })?;
        }
        let rec = Record {
            kind: Kind::File,
            id: node.id,
            size,
            attrs: r
                .as_ref()
                .map(|r| r.attrs)
                .unwrap_or_else(|| attrs_of(&attr)),
            data: Data::Staged(n),
            dirty: true,
            in_store: self.in_store(&node.key, true),
            verf: r.as_ref().and_then(|r| r.verf),
        };
        w.apply(
            vec![(node.key.to_string(), Some(rec.clone()))],
            vec![(n, f)],
        )?;
        self.meta.forget_attr(node.id);
        Ok(rec)
    }

    /// WRITE. Returns the attributes before and after.
    pub async fn write(
        &self,
        node: &Node,
        offset: u64,
        data: &[u8],
        stable: bool,
    ) -> FsResult<Attr> {
        let w = self.writer()?.clone();
        if node.kind() == NodeKind::Dir {
            return Err(FsError::IsDir);
        }
        // An upload can move the data out of staging between the two
        // steps: bring it back and try again.
        for _ in 0..3 {
            self.staged(node, false).await?;
            match w.write(&node.key, offset, data, stable) {
                Err(FsError::NotStaged) => continue,
                r => return Ok(self.record_attr(node.id, &r?)),
            }
        }
        Err(FsError::Delay)
    }

    /// COMMIT.
    pub async fn commit(&self, node: &Node) -> FsResult<Attr> {
        let w = self.writer()?.clone();
        match self.overlay(&node.key) {
            Some(r) if r.kind != Kind::Gone => {
                let rec = w.commit(&node.key)?;
                Ok(self.record_attr(node.id, &rec))
            }
            _ => self.getattr(node).await,
        }
    }

    /// SETATTR; `guard`: fail with NOT_SYNC unless the ctime is this.
    pub async fn setattr(
        &self,
        node: &Node,
        sa: &SetAttrs,
        guard: Option<SystemTime>,
        cred: Cred,
    ) -> FsResult<Attr> {
        let w = self.writer()?.clone();
        let attr = self.getattr(node).await?;
        let sa = &self.setattr_allowed(&attr, sa, &cred)?;
        if let Some(g) = guard {
            // The guard is the ctime this gateway reported, to the
            // nanosecond.
            if ns_of(g) != ns_of(attr.ctime) {
                return Err(FsError::NotSync);
            }
        }
        if let Some(size) = sa.size {
            if attr.kind == NodeKind::Dir {
                return Err(FsError::IsDir);
            }
            if attr.kind != NodeKind::File {
                return Err(FsError::Invalid("size of a non-file"));
            }
            let rec = self.staged(node, size == 0).await?;
            if let (Some((f, _)), Data::Staged(n)) = (w.staged(&node.key), &rec.data) {
                f.set_len(size).map_err(|e| FsError::Local {
                    op: "truncate",
                    path: format!("staging file {n}"),
                    source: e,
                })?;
                f.sync_data().map_err(|e| FsError::Local {
                    op: "fdatasync",
                    path: format!("staging file {n}"),
                    source: e,
                })?;
            }
        }
        match self.overlay(&node.key) {
            Some(r) if r.kind != Kind::Gone => {}
            _ => {
                // A store object or directory the overlay does not know yet.
                let etag = attr.etag.as_deref().unwrap_or("").to_string();
                let (kind, data) = match attr.kind {
                    NodeKind::Dir => (Kind::Dir, Data::None),
                    NodeKind::File => (
                        Kind::File,
                        Data::Remote {
                            src: node.key.to_string(),
                            etag,
                        },
                    ),
                    NodeKind::Symlink => (Kind::Symlink, Data::Link(self.readlink(node).await?)),
                };
                let rec = Record {
                    kind,
                    id: node.id,
                    size: attr.size,
                    attrs: attrs_of(&attr),
                    data,
                    dirty: true,
                    in_store: true,
                    verf: None,
                };
                w.apply(vec![(node.key.to_string(), Some(rec))], Vec::new())?;
            }
        }
        let is_root = node.key.is_empty();
        let now = now_ns();
        let rec = w.update(&node.key, |r| {
            sa.apply(&mut r.attrs);
            if let Some(size) = sa.size {
                if size != r.size {
                    r.attrs.mtime_ns = if sa.mtime.is_some() {
                        r.attrs.mtime_ns
                    } else {
                        now
                    };
                }
                r.size = size;
            }
        })?;
        if is_root {
            // The root has no marker object; its attributes stay local.
            let mut r = rec.clone();
            r.dirty = false;
            w.apply(vec![(String::new(), Some(r))], Vec::new())?;
        }
        self.meta.forget_attr(node.id);
        if let Some(pid) = self.handles.cached_id(node.parent_key()) {
            self.meta.forget_listing(pid);
        }
        Ok(self.record_attr(node.id, &rec))
    }

    /// Check SETATTR against the POSIX rules and add what they imply
    /// (set-ID bits dropped on ownership changes).
    fn setattr_allowed(&self, a: &Attr, sa: &SetAttrs, cred: &Cred) -> FsResult<SetAttrs> {
        let mut sa = *sa;
        let owner = cred.is_root() || cred.uid == a.uid;
        if let Some(u) = sa.uid {
            if u != a.uid && !cred.is_root() {
                return Err(FsError::Perm);
            }
        }
        if let Some(g) = sa.gid {
            if g != a.gid && !(cred.is_root() || (cred.uid == a.uid && cred.in_group(g))) {
                return Err(FsError::Perm);
            }
        }
        if let Some(m) = sa.mode {
            if !owner {
                return Err(FsError::Perm);
            }
            let gid = sa.gid.unwrap_or(a.gid);
            if m & S_ISGID != 0 && !cred.is_root() && !cred.in_group(gid) && a.kind != NodeKind::Dir
            {
                sa.mode = Some(m & !S_ISGID);
            }
        }
        for t in [sa.atime, sa.mtime].into_iter().flatten() {
            match t {
                TimeSet::At(_) if !owner => return Err(FsError::Perm),
                TimeSet::ServerNow if !owner && !cred.may(a, 2) => return Err(FsError::Access),
                _ => {}
            }
        }
        if sa.size.is_some() && !owner && !cred.may(a, 2) {
            return Err(FsError::Access);
        }
        let chown = sa.uid.is_some_and(|u| u != a.uid) || sa.gid.is_some_and(|g| g != a.gid);
        if chown && a.kind != NodeKind::Dir && sa.mode.is_none() {
            let mut m = a.mode & !S_ISUID;
            if m & 0o010 != 0 {
                m &= !S_ISGID;
            }
            if m != a.mode {
                sa.mode = Some(m);
            }
        }
        Ok(sa)
    }

    /// REMOVE (files and links).
    pub async fn remove(&self, dir: &Node, name: &[u8], cred: Cred) -> FsResult<()> {
        let w = self.writer()?.clone();
        self.check_parent(dir)?;
        let name = check_name(name)?;
        if name == "." || name == ".." {
            return Err(FsError::Invalid("cannot remove . or .."));
        }
        let (node, attr) = self.lookup(dir, name.as_bytes()).await?;
        if attr.kind == NodeKind::Dir {
            return Err(FsError::IsDir);
        }
        let dir_attr = self.may_change_dir(dir, &cred).await?;
        if !Self::sticky_allows(&dir_attr, &attr, &cred) {
            return Err(FsError::Perm);
        }
        let in_store = self.in_store(&node.key, true);
        let change = in_store.then(Record::whiteout);
        let mut changes = vec![(node.key.to_string(), change)];
        changes.extend(self.dir_touch(dir));
        w.apply(changes, Vec::new())?;
        self.handles.forget(&node.key)?;
        self.meta.forget_attr(node.id);
        self.dir_changed(dir);
        Ok(())
    }

    /// Whether directory `node` has any entry.
    async fn is_empty_dir(&self, node: &Node) -> FsResult<bool> {
        let mut any = false;
        self.readdir(node, 0, |_| {
            any = true;
            false
        })
        .await?;
        Ok(!any)
    }

    /// RMDIR.
    pub async fn rmdir(&self, dir: &Node, name: &[u8], cred: Cred) -> FsResult<()> {
        let w = self.writer()?.clone();
        self.check_parent(dir)?;
        let name = check_name(name)?;
        if name == "." {
            return Err(FsError::Invalid("cannot remove ."));
        }
        if name == ".." {
            return Err(FsError::NotEmpty);
        }
        let (node, attr) = self.lookup(dir, name.as_bytes()).await?;
        if attr.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        let dir_attr = self.may_change_dir(dir, &cred).await?;
        if !Self::sticky_allows(&dir_attr, &attr, &cred) {
            return Err(FsError::Perm);
        }
        self.meta.forget_listing(node.id);
        if !self.is_empty_dir(&node).await? {
            return Err(FsError::NotEmpty);
        }
        let mut changes = vec![(node.key.to_string(), Some(Record::whiteout()))];
        changes.extend(self.dir_touch(dir));
        w.apply(changes, Vec::new())?;
        self.handles.forget(&node.key)?;
        self.meta.forget_attr(node.id);
        self.meta.forget_listing(node.id);
        self.dir_changed(dir);
        Ok(())
    }

    /// RENAME: atomic for every client of the gateway.
    pub async fn rename(
        &self,
        from_dir: &Node,
        from_name: &[u8],
        to_dir: &Node,
        to_name: &[u8],
        cred: Cred,
    ) -> FsResult<()> {
        let w = self.writer()?.clone();
        self.check_parent(from_dir)?;
        self.check_parent(to_dir)?;
        let from_name = check_name(from_name)?;
        let to_name = check_name(to_name)?;
        for n in [from_name, to_name] {
            if n == "." || n == ".." {
                return Err(FsError::Invalid("cannot rename . or .."));
            }
        }
        let (src, src_attr) = self.lookup(from_dir, from_name.as_bytes()).await?;
        let from_attr = self.may_change_dir(from_dir, &cred).await?;
        let to_attr = self.may_change_dir(to_dir, &cred).await?;
        let dst = self.find(to_dir, to_name.as_bytes()).await?;
        let src_is_dir = src_attr.kind == NodeKind::Dir;
        if !Self::sticky_allows(&from_attr, &src_attr, &cred) {
            return Err(FsError::Perm);
        }
        if let Some((_, da)) = &dst {
            if !Self::sticky_allows(&to_attr, da, &cred) {
                return Err(FsError::Perm);
            }
        }
        if src_is_dir && from_dir.id != to_dir.id && !cred.may(&src_attr, 2) {
            // Its ".." changes.
            return Err(FsError::Access);
        }
        let new_key = if src_is_dir {
            format!("{}{to_name}/", to_dir.key)
        } else {
            format!("{}{to_name}", to_dir.key)
        };
        if *src.key == new_key {
            return Ok(());
        }
        if src_is_dir && new_key.starts_with(&*src.key) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        let mut changes: Vec<(String, Option<Record>)> = Vec::new();
        if let Some((dnode, dattr)) = &dst {
            if dnode.id == src.id {
                return Ok(());
            }
            match (src_is_dir, dattr.kind == NodeKind::Dir) {
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) => {
                    self.meta.forget_listing(dnode.id);
                    if !self.is_empty_dir(dnode).await? {
                        return Err(FsError::NotEmpty);
                    }
                }
                (false, false) => {}
            }
        }
        let dst_in_store = match &dst {
            Some((dn, _)) => self.in_store(&dn.key, true),
            None => self.in_store(&new_key, false),
        };
        if !src_is_dir {
            let rec = match self.overlay(&src.key) {
                Some(r) if r.kind != Kind::Gone => r,
                _ => Record {
                    kind: if src_attr.kind == NodeKind::Symlink {
                        Kind::Symlink
                    } else {
                        Kind::File
                    },
                    id: src.id,
                    size: src_attr.size,
                    attrs: attrs_of(&src_attr),
                    data: if src_attr.kind == NodeKind::Symlink {
                        Data::Link(self.readlink(&src).await?)
                    } else {
                        Data::Remote {
                            src: src.key.to_string(),
                            etag: src_attr.etag.as_deref().unwrap_or("").to_string(),
                        }
                    },
                    dirty: true,
                    in_store: true,
                    verf: None,
                },
            };
            let src_in_store = rec.in_store;
            let mut moved = rec;
            moved.dirty = true;
            moved.in_store = dst_in_store;
            moved.attrs.ctime_ns = now_ns();
            changes.push((new_key.clone(), Some(moved)));
            changes.push((src.key.to_string(), src_in_store.then(Record::whiteout)));
        } else {
            // An empty target directory is replaced.
            changes = self.dir_rename_changes(&src, &src_attr, &new_key).await?;
        }
        changes.extend(self.dir_touch(from_dir));
        if to_dir.id != from_dir.id {
            changes.extend(self.dir_touch(to_dir));
        }
        w.apply(changes, Vec::new())?;
        if let Some((dnode, _)) = &dst {
            self.handles.forget(&dnode.key)?;
            self.meta.forget_attr(dnode.id);
        }
        self.handles.rebind(src.id, &src.key, &new_key)?;
        self.meta.forget_attr(src.id);
        self.meta.forget_negative(to_dir.id, to_name);
        if src_is_dir {
            self.meta.forget_listings();
        }
        self.dir_changed(from_dir);
        if to_dir.id != from_dir.id {
            self.dir_changed(to_dir);
        }
        Ok(())
    }

    /// The overlay changes that move directory `src` (and everything in
    /// it, in the overlay and in the store) to `new_key`.
    async fn dir_rename_changes(
        &self,
        src: &Node,
        src_attr: &Attr,
        new_key: &str,
    ) -> FsResult<Vec<(String, Option<Record>)>> {
        let w = self.writer()?;
        let old = src.key.to_string();
        // Everything the store has below the directory, depth first.
        let mut objects: Vec<(String, u64, String, SystemTime)> = Vec::new();
        let mut dirs: Vec<String> = Vec::new();
        let mut todo = vec![old.clone()];
        while let Some(prefix) = todo.pop() {
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .store
                    .list(&prefix, token.as_deref(), crate::store::LIST_PAGE_KEYS_MAX)
                    .await?;
                for o in page.objects {
                    if o.key == prefix {
                        continue;
                    }
                    objects.push((o.key, o.size, o.etag, o.mtime));
                }
                for p in page.prefixes {
                    dirs.push(p.clone());
                    todo.push(p);
                }
                if objects.len() + dirs.len() > DIR_RENAME_KEYS_MAX {
                    return Err(FsError::CrossDevice);
                }
                token = page.next_token;
                if token.is_none() {
                    break;
                }
            }
        }
        let moved_key = |k: &str| format!("{new_key}{}", &k[old.len()..]);
        let mut changes: BTreeMap<String, Option<Record>> = BTreeMap::new();
        let now = now_ns();
        // Store objects and prefixes not overridden by the overlay.
        for (k, size, etag, mtime) in objects {
            if self.overlay(&k).is_some() {
                continue;
            }
            let id = self.handles.ensure(&[k.as_str()])?.remove(0).id;
            let m = ns_of(mtime);
            changes.insert(
                moved_key(&k),
                Some(Record {
                    kind: Kind::File,
                    id,
                    size,
                    attrs: Attrs {
                        mode: FILE_MODE_DEFAULT,
                        uid: 0,
                        gid: 0,
                        atime_ns: m,
                        mtime_ns: m,
                        ctime_ns: now,
                    },
                    data: Data::Remote {
                        src: k.clone(),
                        etag,
                    },
                    dirty: true,
                    in_store: false,
                    verf: None,
                }),
            );
            changes.insert(k, Some(Record::whiteout()));
        }
        for d in dirs {
            if self.overlay(&d).is_some() {
                continue;
            }
            let id = self.handles.ensure(&[d.as_str()])?.remove(0).id;
            changes.insert(
                moved_key(&d),
                Some(Record {
                    kind: Kind::Dir,
                    id,
                    size: 0,
                    attrs: attrs_of(&self.dir_attr(id)),
                    data: Data::None,
                    dirty: true,
                    in_store: false,
                    verf: None,
                }),
            );
            changes.insert(d, Some(Record::whiteout()));
        }
        // Overlay records below it move as they are.
        for (suffix, r) in w.descendants(&old) {
            let k = format!("{old}{suffix}");
            let in_store = r.in_store;
            if r.kind != Kind::Gone {
                let mut m = r.clone();
                m.dirty = true;
                m.in_store = false;
                changes.insert(moved_key(&k), Some(m));
            }
            // A pending delete stays where it is.
            if r.kind == Kind::Gone {
                continue;
            }
            changes.insert(k, in_store.then(Record::whiteout));
        }
        // The directory itself.
        let mut top = match self.overlay(&old) {
            Some(r) if r.kind == Kind::Dir => r,
            _ => Record {
                kind: Kind::Dir,
                id: src.id,
                size: 0,
                attrs: attrs_of(src_attr),
                data: Data::None,
                dirty: true,
                in_store: true,
                verf: None,
            },
        };
        top.dirty = true;
        top.in_store = self.in_store(new_key, false);
        top.attrs.ctime_ns = now;
        changes.insert(new_key.to_string(), Some(top));
        changes.insert(old, Some(Record::whiteout()));
        Ok(changes.into_iter().collect())
    }
}
