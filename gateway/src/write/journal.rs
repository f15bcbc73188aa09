//! The write journal: one redb table from key to [`Record`], committed
//! durably before any namespace change or COMMIT is acknowledged.
//!
//! A record is the gateway's word on one key until the store agrees with
//! it: a file, directory or symbolic link that was created, changed or
//! renamed here, or a whiteout for a key that was removed or renamed away.
//! Staged file data lives beside the journal in `staging/<file number>`;
//! the record holds the size that was last made stable, so bytes written
//! after it (never acknowledged as stable) are cut off at recovery.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Memory redb may use to cache journal pages.
const JOURNAL_DB_CACHE_BYTES: usize = 16 << 20;
/// Longest string a record may hold (keys, ETags, link targets).
const RECORD_STRING_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("write journal: {0}")]
    Db(#[from] redb::Error),
    #[error("write journal: record of {key:?} is damaged")]
    Damaged { key: String },
    #[error("write journal: not open (reopening after an I/O error failed)")]
    Closed,
}

impl JournalError {
    /// Whether the journal failed for lack of space.
    pub fn is_no_space(&self) -> bool {
        let JournalError::Db(e) = self else {
            return false;
        };
        let text = e.to_string();
        matches!(e, redb::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
            || text.contains("No space left")
    }
}

fn db_err(e: impl Into<redb::Error>) -> JournalError {
    JournalError::Db(e.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Removed (or renamed away): hides whatever the store still has.
    Gone,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Directories, whiteouts.
    None,
    /// In the staging file with this number.
    Staged(u64),
    /// In the store, under `src` at version `etag` (a file renamed or with
    /// changed attributes whose copy is pending, or a clean one).
    Remote { src: String, etag: String },
    /// A symbolic link's target.
    Link(String),
}

/// POSIX attributes the gateway keeps for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: u64,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    /// The node id its handle carries.
    pub id: u64,
    pub size: u64,
    pub attrs: Attrs,
    pub data: Data,
    /// The store does not match this record yet.
    pub dirty: bool,
    /// The store may hold an object under this key (a whiteout then needs
    /// a DELETE).
    pub in_store: bool,
    /// EXCLUSIVE create's verifier.
    pub verf: Option<[u8; 8]>,
}

impl Record {
    /// A whiteout for a key the store holds.
    pub fn whiteout() -> Record {
        Record {
            kind: Kind::Gone,
            id: 0,
            size: 0,
            attrs: Attrs::default(),
            data: Data::None,
            dirty: true,
            in_store: true,
            verf: None,
        }
    }
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        if n > RECORD_STRING_BYTES_MAX {
            return None;
        }
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Record format version, first byte of every record.
const RECORD_VERSION: u8 = 1;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(96));
        e.u8(RECORD_VERSION);
        e.u8(match self.kind {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            Kind::Gone => 3,
        });
        e.u8(self.dirty as u8 | (self.in_store as u8) << 1);
        e.u64(self.id);
        e.u64(self.size);
        let a = &self.attrs;
        e.u32(a.mode);
        e.u32(a.uid);
        e.u32(a.gid);
        e.u64(a.atime_ns);
        e.u64(a.mtime_ns);
        e.u64(a.ctime_ns);
        match self.verf {
            None => e.u8(0),
            Some(v) => {
                e.u8(1);
                e.0.extend_from_slice(&v);
            }
        }
        match &self.data {
            Data::None => e.u8(0),
            Data::Staged(n) => {
                e.u8(1);
                e.u64(*n);
            }
            Data::Remote { src, etag } => {
                e.u8(2);
                e.str(src);
                e.str(etag);
            }
            Data::Link(t) => {
                e.u8(3);
                e.str(t);
            }
        }
        e.0
    }

    pub fn decode(b: &[u8]) -> Option<Record> {
        let mut d = Dec(b);
        if d.u8()? != RECORD_VERSION {
            return None;
        }
        let kind = match d.u8()? {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            3 => Kind::Gone,
            _ => return None,
        };
        let flags = d.u8()?;
        let id = d.u64()?;
        let size = d.u64()?;
        let attrs = Attrs {
            mode: d.u32()?,
            uid: d.u32()?,
            gid: d.u32()?,
            atime_ns: d.u64()?,
            mtime_ns: d.u64()?,
            ctime_ns: d.u64()?,
        };
        let verf = match d.u8()? {
            0 => None,
            1 => Some(d.take(8)?.try_into().ok()?),
            _ => return None,
        };
        let data = match d.u8()? {
            0 => Data::None,
            1 => Data::Staged(d.u64()?),
            2 => Data::Remote {
                src: d.str()?,
                etag: d.str()?,
            },
            3 => Data::Link(d.str()?),
            _ => return None,
        };
        if !d.0.is_empty() {
            return None;
        }
        Some(Record {
            kind,
            id,
            size,
            attrs,
            data,
            dirty: flags & 1 != 0,
            in_store: flags & 2 != 0,
            verf,
        })
    }
}

pub struct Journal {
    path: PathBuf,
    /// `None` only while being reopened.
    db: Mutex<Option<Database>>,
}

fn open_db(path: &Path) -> Result<Database, JournalError> {
    let db = redb::Builder::new()
        .set_cache_size(JOURNAL_DB_CACHE_BYTES)
        .create(path)
        .map_err(db_err)?;
    let tx = db.begin_write().map_err(db_err)?;
    tx.open_table(ENTRIES).map_err(db_err)?;
    tx.open_table(META).map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(db)
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        let path = dir.join("journal.redb");
        let db = open_db(&path)?;
        Ok(Journal {
            path,
            db: Mutex::new(Some(db)),
        })
    }

    /// Every record, and the next free staging file number.
    pub fn load(&self) -> Result<(Vec<(String, Record)>, u64), JournalError> {
        let guard = self.db.lock().expect("journal poisoned");
        let db = guard.as_ref().ok_or(JournalError::Closed)?;
        let tx = db.begin_read().map_err(db_err)?;
        let t = tx.open_table(ENTRIES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let key = k.value().to_string();
            let rec =
                Record::decode(v.value()).ok_or(JournalError::Damaged { key: key.clone() })?;
            out.push((key, rec));
        }
        let m = tx.open_table(META).map_err(db_err)?;
        let next = m
            .get("next_file_no")
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(1);
        Ok((out, next))
    }

    /// Apply changes in one durable transaction: `Some` writes a record,
    /// `None` deletes it.
    pub fn apply(
        &self,
        changes: &[(&str, Option<&Record>)],
        next_file_no: u64,
    ) -> Result<(), JournalError> {
        let mut guard = self.db.lock().expect("journal poisoned");
        if guard.is_none() {
            *guard = Some(open_db(&self.path)?);
        }
        let db = guard.as_ref().expect("opened above");
        let r = Self::apply_in(db, changes, next_file_no);
        if let Err(e) = &r {
            // redb refuses every transaction after an I/O error until it is
            // reopened; what was committed before is intact.
            tracing::warn!(error = %e, "write journal commit failed; reopening it");
            *guard = None;
            match open_db(&self.path) {
                Ok(db) => *guard = Some(db),
                Err(e2) => tracing::error!(error = %e2, "reopening the write journal failed"),
            }
        }
        r
    }

    fn apply_in(
        db: &Database,
        changes: &[(&str, Option<&Record>)],
        next_file_no: u64,
    ) -> Result<(), JournalError> {
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(ENTRIES).map_err(db_err)?;
            for (k, r) in changes {
                match r {
                    Some(r) => {
                        t.insert(*k, r.encode().as_slice()).map_err(db_err)?;
                    }
                    None => {
                        t.remove(*k).map_err(db_err)?;
                    }
                }
            }
            let mut m = tx.open_table(META).map_err(db_err)?;
            m.insert("next_file_no", next_file_no).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let recs = [
            Record {
                kind: Kind::File,
                id: 77,
                size: 1 << 33,
                attrs: Attrs {
                    mode: 0o640,
                    uid: 1000,
                    gid: 100,
                    atime_ns: 1,
                    mtime_ns: 2,
                    ctime_ns: 3,
                },
                data: Data::Staged(9),
                dirty: true,
                in_store: false,
                verf: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            },
            Record {
                kind: Kind::File,
                id: 5,
                size: 10,
                attrs: Attrs::default(),
                data: Data::Remote {
                    src: "a/b".into(),
                    etag: "e".into(),
                },
                dirty: false,
                in_store: true,
                verf: None,
            },
            Record {
                kind: Kind::Symlink,
                id: 6,
                size: 3,
                attrs: Attrs::default(),
                data: Data::Link("../x".into()),
                dirty: true,
                in_store: true,
                verf: None,
            },
        ];
        for r in &recs {
            let b = r.encode();
            assert_eq!(Record::decode(&b).as_ref(), Some(r));
            for cut in 0..b.len() {
                assert!(Record::decode(&b[..cut]).is_none(), "cut at {cut}");
            }
        }
        let t = tempfile::tempdir().unwrap();
        let j = Journal::open(t.path()).unwrap();
        j.apply(&[("k1", Some(&recs[0])), ("k2", Some(&recs[1]))], 10)
            .unwrap();
        j.apply(&[("k1", None)], 11).unwrap();
        drop(j);
        let j = Journal::open(t.path()).unwrap();
        let (all, next) = j.load().unwrap();
        assert_eq!(next, 11);
        assert_eq!(all, vec![("k2".to_string(), recs[1].clone())]);
    }
}
