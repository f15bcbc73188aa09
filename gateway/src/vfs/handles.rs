//! The persistent handle table: every file and directory the gateway has
//! ever named gets a 64-bit id that survives restarts.
//!
//! Ids are derived from the key by a fixed hash (FNV-1a plus a finaliser),
//! probing upward on the rare collision, and recorded in a redb database in
//! the state directory. Because the derivation is deterministic, an id that
//! was handed out but not yet flushed before a crash is derived again, the
//! same, after restart. Batches are committed without fsync and made durable
//! by [`HandleTable::flush`], which the server calls periodically and at
//! shutdown.
//!
//! A key names a directory when it is empty (the root) or ends with `/`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

const IDS: TableDefinition<u64, &str> = TableDefinition::new("ids");
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The root directory's id.
pub const ROOT_ID: u64 = 1;
/// Ids below this are reserved.
const FIRST_DERIVED_ID: u64 = 16;
/// Nodes kept in memory before the cache is dropped and refilled from disk.
pub const CACHED_NODES_MAX: usize = 4_000_000;
/// Memory redb may use to cache pages of the table.
pub const HANDLE_DB_CACHE_BYTES: usize = 64 << 20;
/// Collision probes before giving up (practically unreachable).
const PROBES_MAX: u64 = 1024;

#[derive(Debug, Error)]
pub enum HandleError {
    #[error("handle table: {0}")]
    Db(#[from] redb::Error),
    #[error("state directory {dir}: {source}")]
    StateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {dir} belongs to source {owner:?}, not {source_desc:?}; pass another --state-dir")]
    WrongSource {
        dir: String,
        owner: String,
        source_desc: String,
    },
    #[error("no free id near hash of {key:?}")]
    Exhausted { key: String },
}

fn db_err(e: impl Into<redb::Error>) -> HandleError {
    HandleError::Db(e.into())
}

/// What kind of node a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    /// Only in attributes: keys name files or directories, and a file
    /// whose metadata says so is a symbolic link.
    Symlink,
}

/// A named node: its id and its key in the store.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub id: u64,
    pub key: Arc<str>,
}

impl Node {
    pub fn kind(&self) -> NodeKind {
        kind_of(&self.key)
    }

    /// The key of the parent directory (the root is its own parent).
    pub fn parent_key(&self) -> &str {
        parent_key(&self.key)
    }

    /// The last path segment (empty for the root).
    pub fn name(&self) -> &str {
        let k = self.key.trim_end_matches('/');
        &k[parent_key(&self.key).len()..]
    }
}

pub fn kind_of(key: &str) -> NodeKind {
    if key.is_empty() || key.ends_with('/') {
        NodeKind::Dir
    } else {
        NodeKind::File
    }
}

pub fn parent_key(key: &str) -> &str {
    let k = key.trim_end_matches('/');
    match k.rfind('/') {
        Some(i) => &key[..=i],
        None => "",
    }
}

/// The id a key hashes to before collision probing.
pub fn derived_id(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 1).max(FIRST_DERIVED_ID)
}

/// Facts fixed when a state directory is created.
#[derive(Debug, Clone, Copy)]
pub struct ExportIdentity {
    /// Random; part of every file handle, so handles from another state
    /// directory read as stale rather than naming the wrong file.
    pub export_id: u32,
    /// When the state was created; directories report it as their mtime.
    pub created: SystemTime,
}

pub struct HandleTable {
    db: Database,
    by_id: RwLock<HashMap<u64, Arc<Node>>>,
    by_key: RwLock<HashMap<Arc<str>, u64>>,
    dirty: AtomicBool,
    identity: ExportIdentity,
    root: Arc<Node>,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u32) ^ std::process::id()
    }
}

impl HandleTable {
    /// Open (or create) the table in `state_dir` for the source described
    /// by `source_desc`.
    pub fn open(state_dir: &Path, source_desc: &str) -> Result<HandleTable, HandleError> {
        let dir = state_dir.display().to_string();
        std::fs::create_dir_all(state_dir).map_err(|source| HandleError::StateDir {
            dir: dir.clone(),
            source,
        })?;
        let db = redb::Builder::new()
            .set_cache_size(HANDLE_DB_CACHE_BYTES)
            .create(state_dir.join("handles.redb"))
            .map_err(db_err)?;
        let identity = {
            let tx = db.begin_write().map_err(db_err)?;
            let identity;
            {
                let mut meta = tx.open_table(META).map_err(db_err)?;
                tx.open_table(IDS).map_err(db_err)?;
                tx.open_table(KEYS).map_err(db_err)?;
                let owner = meta
                    .get("source")
                    .map_err(db_err)?
                    .map(|v| String::from_utf8_lossy(v.value()).into_owned());
                match owner {
                    Some(owner) if owner != source_desc => {
                        return Err(HandleError::WrongSource {
                            dir,
                            owner,
                            source_desc: source_desc.to_string(),
                        })
                    }
                    Some(_) => {
                        let id = meta.get("export_id").map_err(db_err)?.map(|v| {
                            let b = v.value();
                            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
                        });
                        let created = meta.get("created").map_err(db_err)?.map(|v| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&v.value()[..8]);
                            UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(b))
                        });
                        identity = ExportIdentity {
                            export_id: id.unwrap_or(1),
                            created: created.unwrap_or(UNIX_EPOCH),
                        };
                    }
                    None => {
                        let secs = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs();
                        identity = ExportIdentity {
                            export_id: random_u32().max(1),
                            created: UNIX_EPOCH + Duration::from_secs(secs),
                        };
                        meta.insert("source", source_desc.as_bytes())
                            .map_err(db_err)?;
                        meta.insert("export_id", &identity.export_id.to_be_bytes()[..])
                            .map_err(db_err)?;
                        meta.insert("created", &secs.to_be_bytes()[..])
                            .map_err(db_err)?;
                    }
                }
            }
            tx.commit().map_err(db_err)?;
            identity
        };
        let root = Arc::new(Node {
            id: ROOT_ID,
            key: Arc::from(""),
        });
        let mut by_id = HashMap::new();
        by_id.insert(ROOT_ID, root.clone());
        let mut by_key = HashMap::new();
        by_key.insert(root.key.clone(), ROOT_ID);
        Ok(HandleTable {
            db,
            by_id: RwLock::new(by_id),
            by_key: RwLock::new(by_key),
            dirty: AtomicBool::new(false),
            identity,
            root,
        })
    }

    pub fn identity(&self) -> ExportIdentity {
        self.identity
    }

    pub fn root(&self) -> Arc<Node> {
        self.root.clone()
    }

    fn remember(&self, node: Arc<Node>) {
        let mut by_id = self.by_id.write().expect("handle cache poisoned");
        let mut by_key = self.by_key.write().expect("handle cache poisoned");
        if by_id.len() >= CACHED_NODES_MAX {
            by_id.clear();
            by_key.clear();
            by_id.insert(ROOT_ID, self.root.clone());
            by_key.insert(self.root.key.clone(), ROOT_ID);
        }
        by_key.insert(node.key.clone(), node.id);
        by_id.insert(node.id, node);
    }

    /// The id of `key` if it is cached in memory (no disk access).
    pub fn cached_id(&self, key: &str) -> Option<u64> {
        self.by_key
            .read()
            .expect("handle cache poisoned")
            .get(key)
            .copied()
    }

    /// The node with `id`, if the table knows it.
    pub fn get(&self, id: u64) -> Result<Option<Arc<Node>>, HandleError> {
        if let Some(n) = self.by_id.read().expect("handle cache poisoned").get(&id) {
            return Ok(Some(n.clone()));
        }
        let tx = self.db.begin_read().map_err(db_err)?;
        let ids = tx.open_table(IDS).map_err(db_err)?;
        let Some(key) = ids.get(id).map_err(db_err)? else {
            return Ok(None);
        };
        let node = Arc::new(Node {
            id,
            key: Arc::from(key.value()),
        });
        self.remember(node.clone());
        Ok(Some(node))
    }

    /// Nodes for `keys`, assigning and recording ids for new ones in one
    /// transaction. The nodes stay cached in memory.
    pub fn ensure<S: AsRef<str>>(&self, keys: &[S]) -> Result<Vec<Arc<Node>>, HandleError> {
        let ids = self.assign(keys, true)?;
        Ok(keys
            .iter()
            .zip(ids)
            .map(|(k, id)| {
                self.by_id
                    .read()
                    .expect("handle cache poisoned")
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Node {
                            id,
                            key: Arc::from(k.as_ref()),
                        })
                    })
            })
            .collect())
    }

    /// Ids for `keys`, assigning and recording new ones, without caching
    /// the nodes in memory: directory listings name far more nodes than
    /// clients go on to use, and the table on disk has them all.
    pub fn ensure_ids<S: AsRef<str>>(&self, keys: &[S]) -> Result<Vec<u64>, HandleError> {
        self.assign(keys, false)
    }

    fn assign<S: AsRef<str>>(&self, keys: &[S], remember: bool) -> Result<Vec<u64>, HandleError> {
        let mut out: Vec<Option<u64>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        {
            let by_key = self.by_key.read().expect("handle cache poisoned");
            for (i, k) in keys.iter().enumerate() {
                let id = by_key.get(k.as_ref()).copied();
                if id.is_none() {
                    missing.push(i);
                }
                out.push(id);
            }
        }
        if !missing.is_empty() {
            let mut tx = self.db.begin_write().map_err(db_err)?;
            tx.set_durability(redb::Durability::None)
                .map_err(|e| HandleError::Db(redb::Error::Corrupted(e.to_string())))?;
            {
                let mut ids = tx.open_table(IDS).map_err(db_err)?;
                let mut key_table = tx.open_table(KEYS).map_err(db_err)?;
                for &i in &missing {
                    let key = keys[i].as_ref();
                    let existing = key_table.get(key).map_err(db_err)?.map(|v| v.value());
                    let id = match existing {
                        Some(id) => id,
                        None => {
                            let mut id = derived_id(key);
                            let mut probes = 0;
                            while ids.get(id).map_err(db_err)?.is_some() {
                                id = id.wrapping_add(1).max(FIRST_DERIVED_ID);
                                probes += 1;
                                if probes == PROBES_MAX {
                                    return Err(HandleError::Exhausted {
                                        key: key.to_string(),
                                    });
                                }
                            }
                            ids.insert(id, key).map_err(db_err)?;
                            key_table.insert(key, id).map_err(db_err)?;
                            self.dirty.store(true, Ordering::Relaxed);
                            id
                        }
                    };
                    out[i] = Some(id);
                }
            }
            tx.commit().map_err(db_err)?;
            if remember {
                for &i in &missing {
                    let id = out[i].expect("assigned above");
                    self.remember(Arc::new(Node {
                        id,
                        key: Arc::from(keys[i].as_ref()),
                    }));
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|id| id.expect("every key resolved"))
            .collect())
    }

    /// After a rename: `id` now names `new_key`, and every node below it
    /// (for a directory, keys starting with its old key) moves along, so
    /// the handles clients hold keep naming the same files. Whatever id
    /// `new_key` (or a moved descendant's new key) had before is
    /// forgotten: those handles become stale, as they should once their
    /// file is replaced. Committed durably: a rebound id cannot be derived
    /// again from its key after a crash.
    pub fn rebind(&self, id: u64, old_key: &str, new_key: &str) -> Result<(), HandleError> {
        let mut moved: Vec<(u64, String, String)> = Vec::new();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut ids = tx.open_table(IDS).map_err(db_err)?;
            let mut keys = tx.open_table(KEYS).map_err(db_err)?;
            moved.push((id, old_key.to_string(), new_key.to_string()));
            if kind_of(old_key) == NodeKind::Dir && !old_key.is_empty() {
                for row in keys.range(old_key..).map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let k = k.value();
                    if !k.starts_with(old_key) {
                        break;
                    }
                    if k == old_key {
                        continue;
                    }
                    let nk = format!("{new_key}{}", &k[old_key.len()..]);
                    moved.push((v.value(), k.to_string(), nk));
                }
            }
            for (_, ok, _) in &moved {
                keys.remove(ok.as_str()).map_err(db_err)?;
            }
            for (mid, _, nk) in &moved {
                if let Some(prev) = keys.insert(nk.as_str(), *mid).map_err(db_err)? {
                    let prev = prev.value();
                    if prev != *mid {
                        ids.remove(prev).map_err(db_err)?;
                    }
                }
                ids.insert(*mid, nk.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        self.dirty.store(false, Ordering::Relaxed);
        let mut by_id = self.by_id.write().expect("handle cache poisoned");
        let mut by_key = self.by_key.write().expect("handle cache poisoned");
        for (mid, ok, nk) in moved {
            by_key.remove(ok.as_str());
            if let Some(prev) = by_key.get(nk.as_str()).copied() {
                if prev != mid {
                    by_id.remove(&prev);
                }
            }
            let node = Arc::new(Node {
                id: mid,
                key: Arc::from(nk.as_str()),
            });
            by_key.insert(node.key.clone(), mid);
            by_id.insert(mid, node);
        }
        Ok(())
    }

    /// `key` no longer names anything: its id is forgotten, and handles
    /// holding it answer stale.
    pub fn forget(&self, key: &str) -> Result<(), HandleError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut gone = None;
        {
            let mut ids = tx.open_table(IDS).map_err(db_err)?;
            let mut keys = tx.open_table(KEYS).map_err(db_err)?;
            let removed = keys.remove(key).map_err(db_err)?.map(|v| v.value());
            if let Some(id) = removed {
                ids.remove(id).map_err(db_err)?;
                gone = Some(id);
            }
        }
        tx.commit().map_err(db_err)?;
        self.dirty.store(false, Ordering::Relaxed);
        let mut by_id = self.by_id.write().expect("handle cache poisoned");
        let mut by_key = self.by_key.write().expect("handle cache poisoned");
        by_key.remove(key);
        if let Some(id) = gone {
            by_id.remove(&id);
        }
        Ok(())
    }

    /// Make every recorded id durable.
    pub fn flush(&self) -> Result<(), HandleError> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebind_moves_a_directory_and_its_children() {
        let t = tempfile::tempdir().unwrap();
        let h = HandleTable::open(t.path(), "src").unwrap();
        let n = h.ensure(&["a/", "a/x", "a/b/", "a/b/y", "c"]).unwrap();
        let ids: Vec<u64> = n.iter().map(|n| n.id).collect();
        h.rebind(ids[0], "a/", "z/").unwrap();
        assert_eq!(&*h.get(ids[1]).unwrap().unwrap().key, "z/x");
        assert_eq!(&*h.get(ids[3]).unwrap().unwrap().key, "z/b/y");
        // A file renamed over another: the target's old id goes stale.
        h.rebind(ids[1], "z/x", "c").unwrap();
        assert!(h.get(ids[4]).unwrap().is_none());
        assert_eq!(h.ensure(&["c"]).unwrap()[0].id, ids[1]);
        drop(h);
        let h = HandleTable::open(t.path(), "src").unwrap();
        assert_eq!(&*h.get(ids[3]).unwrap().unwrap().key, "z/b/y");
        assert_eq!(&*h.get(ids[1]).unwrap().unwrap().key, "c");
        assert!(h.get(ids[4]).unwrap().is_none());
        h.forget("c").unwrap();
        assert!(h.get(ids[1]).unwrap().is_none());
        assert_ne!(h.ensure(&["c"]).unwrap()[0].id, ids[1]);
    }

    #[test]
    fn keys_and_parents() {
        assert_eq!(kind_of(""), NodeKind::Dir);
        assert_eq!(kind_of("a/"), NodeKind::Dir);
        assert_eq!(kind_of("a/b"), NodeKind::File);
        assert_eq!(parent_key("a/b/c"), "a/b/");
        assert_eq!(parent_key("a/b/"), "a/");
        assert_eq!(parent_key("a"), "");
        assert_eq!(parent_key(""), "");
        let n = Node {
            id: 5,
            key: Arc::from("x/yz/"),
        };
        assert_eq!(n.name(), "yz");
    }

    #[test]
    fn ids_survive_reopen() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, ident) = {
            let h = HandleTable::open(t.path(), "dir:/x").unwrap();
            let nodes = h.ensure(&["a", "d/", "d/b"]).unwrap();
            assert_eq!(nodes[0].key.as_ref(), "a");
            let again = h.ensure(&["d/b"]).unwrap();
            assert_eq!(again[0].id, nodes[2].id);
            h.flush().unwrap();
            (nodes[0].id, nodes[2].id, h.identity())
        };
        let h = HandleTable::open(t.path(), "dir:/x").unwrap();
        assert_eq!(h.identity().export_id, ident.export_id);
        assert_eq!(h.get(a).unwrap().unwrap().key.as_ref(), "a");
        assert_eq!(h.get(b).unwrap().unwrap().key.as_ref(), "d/b");
        assert!(h.get(12345).unwrap().is_none());
        assert_eq!(h.ensure(&["a"]).unwrap()[0].id, a);
    }

    #[test]
    fn other_source_is_refused() {
        let t = tempfile::tempdir().unwrap();
        drop(HandleTable::open(t.path(), "dir:/x").unwrap());
        assert!(matches!(
            HandleTable::open(t.path(), "dir:/y"),
            Err(HandleError::WrongSource { .. })
        ));
    }

    #[test]
    fn derived_ids_avoid_reserved_range() {
        for k in ["", "a", "b/", "ünï"] {
            assert!(derived_id(k) >= FIRST_DERIVED_ID);
            assert!(derived_id(k) < 1 << 63);
        }
    }
}
