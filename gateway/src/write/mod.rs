//! Write-back: how bytes written over NFS become objects in the store.
//!
//! The store has no append, no rename and no partial object, so the
//! gateway never edits objects in place. Everything a client changes lands
//! first in the *overlay*: a map from key to [`Record`] that is the
//! gateway's word on that key until the store agrees. Each change is
//! committed durably to the [`journal`] (redb) before the call that made it
//! is answered; file data goes to a staging file on local disk. The
//! overlay is consulted before the store on every lookup, attribute read,
//! listing and read, so every client of the gateway sees every change at
//! once (read-your-writes across clients), and a rename is one journal
//! transaction: atomic in the namespace.
//!
//! A background uploader then makes the store match, one key at a time:
//! - a staged file is sent as one PUT, or as a multipart upload that is
//!   completed only when every part is in: S3 readers see the old object
//!   or the new one, never a partial one. It starts once the file has no
//!   uncommitted writes and has been quiet for the upload delay (a COMMIT,
//!   which the kernel client sends on close and fsync, followed by quiet);
//! - a file renamed after upload (data still under its old key) is copied
//!   server-side to its new key, then the old key's whiteout deletes it;
//!   a source is never deleted or overwritten while a copy still needs it;
//! - directories get a marker object (`dir/`), symbolic links a small
//!   object holding the target (see [`crate::store::PosixMeta`] for the
//!   metadata keys that carry modes, owners and times).
//!
//! Uploads read the staging file while clients may keep writing: every
//! write bumps the entry's generation before touching the file, and the
//! uploader checks the generation after each chunk it reads, so what it
//! sends is one consistent state of the file or the upload is abandoned
//! and redone. A crash anywhere leaves the journal saying what is still
//! owed to the store; the uploader picks it up at start-up. Bytes written
//! UNSTABLE and never committed are cut off at recovery (the client sees
//! the new write verifier and sends them again).
//!
//! Limits: staged bytes are bounded; past the bound writes answer
//! JUKEBOX (the client retries) while uploads drain. Clean records (the
//! store agrees) stay so attributes stay exact, up to
//! [`CLEAN_RECORDS_MAX`], oldest dropped first.

pub mod journal;
mod upload;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use journal::{Attrs, Data, Journal, JournalError, Kind, Record};

use crate::store::ObjectStore;
use crate::vfs::{FsError, FsResult};

/// Clean records kept for their attributes.
pub const CLEAN_RECORDS_MAX: usize = 100_000;
/// Writes that were never committed are made stable and uploaded after
/// this long without a change.
pub const UNCOMMITTED_IDLE: Duration = Duration::from_secs(30);
/// Records (dirty or not) the overlay may hold.
pub const RECORDS_MAX: usize = 2_000_000;
/// Free space on the staging file system that staged data leaves to the
/// journal: a write that would eat into it answers NOSPC.
pub const STAGING_RESERVE_BYTES: u64 = 4 << 20;
/// How old a free-space reading may be when far from the reserve.
const ROOM_RECHECK: Duration = Duration::from_millis(100);
/// "Far" from the reserve: more than this much above it.
const ROOM_SLACK_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// Where staging files and the journal live.
    pub staging_dir: PathBuf,
    /// Quiet time after the last change before an upload starts.
    pub upload_delay: Duration,
    /// Staged bytes not yet uploaded past which writes answer JUKEBOX.
    pub staged_bytes_max: u64,
    /// Multipart part size; files up to it go in one PUT.
    pub part_bytes: u64,
    /// Uploads (objects) in flight at once.
    pub uploads_max: usize,
}

impl WriteConfig {
    pub fn new(staging_dir: PathBuf) -> WriteConfig {
        WriteConfig {
            staging_dir,
            upload_delay: Duration::from_secs(2),
            staged_bytes_max: 64 << 30,
            part_bytes: 16 << 20,
            uploads_max: 4,
        }
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn time_of_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Generations are unique across all entries: an upload that finishes
/// finds its entry changed (or replaced by a rename) by a differing one.
static NEXT_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_gen() -> u64 {
    NEXT_GEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What happens to a file's data and the store's view; kept beside its
/// record in memory only.
struct Entry {
    rec: Record,
    /// Bumped by every change to data or attributes.
    gen: u64,
    /// Writes since the last COMMIT or stable write.
    unstable: bool,
    /// Last change.
    changed: Instant,
    /// WRITEs between their two locked sections (bytes going into the
    /// staging file): no upload starts meanwhile.
    writes_in_flight: u32,
    /// Failed uploads in a row (backoff).
    failures: u32,
    not_before: Instant,
    file: Option<Arc<File>>,
}

impl Entry {
    fn new(rec: Record) -> Entry {
        Entry {
            rec,
            gen: next_gen(),
            unstable: false,
            changed: Instant::now(),
            writes_in_flight: 0,
            failures: 0,
            not_before: Instant::now(),
            file: None,
        }
    }
}

struct Inner {
    map: BTreeMap<String, Entry>,
    next_file_no: u64,
    /// Bytes of staged files that still have to be uploaded.
    staged_bytes: u64,
    /// Clean records in the order they became clean (key, generation).
    clean: VecDeque<(String, u64)>,
    /// Keys with a store request in flight.
    busy: HashSet<String>,
    /// Multipart uploads in flight (key → upload id): aborted at
    /// shutdown so no parts are left behind.
    multiparts: std::collections::HashMap<String, String>,
}

pub struct WriteBack {
    store: Arc<dyn ObjectStore>,
    cfg: WriteConfig,
    staging: PathBuf,
    journal: Journal,
    inner: Mutex<Inner>,
    verifier: [u8; 8],
    wake: tokio::sync::Notify,
    /// Free bytes on the staging file system at the last reading, and
    /// when (ms since `epoch`).
    room_free: std::sync::atomic::AtomicU64,
    room_at_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

/// Numbers for `tidegate status` and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Keys the store does not match yet.
    pub keys: u64,
    /// Of those, files with data to upload or copy.
    pub files: u64,
    pub bytes: u64,
    pub oldest: Option<Duration>,
    pub staged_bytes: u64,
    pub records: u64,
}

fn local_err(op: &'static str, path: &Path, source: std::io::Error) -> FsError {
    FsError::Local {
        op,
        path: path.display().to_string(),
        source,
    }
}

fn random_verifier() -> [u8; 8] {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n != 8 {
        b = now_ns().to_be_bytes();
    }
    b
}

impl WriteBack {
    /// Open the journal in `cfg.staging_dir` and recover: staged files are
    /// cut to their stable size, orphans removed.
    pub fn open(store: Arc<dyn ObjectStore>, cfg: WriteConfig) -> FsResult<WriteBack> {
        let dir = cfg.staging_dir.clone();
        let staging = dir.join("staging");
        std::fs::create_dir_all(&staging).map_err(|e| local_err("create", &staging, e))?;
        let journal = Journal::open(&dir)?;
        let (records, next_file_no) = journal.load()?;
        let mut map = BTreeMap::new();
        let mut referenced = HashSet::new();
        let mut staged_bytes = 0;
        let mut clean = VecDeque::new();
        let mut max_no = 0;
        for (key, rec) in records {
            let mut e = Entry::new(rec);
            if let Data::Staged(n) = e.rec.data {
                max_no = max_no.max(n);
                referenced.insert(n);
                let path = staging.join(n.to_string());
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| local_err("open", &path, e))?;
                // Only what was made stable counts.
                f.set_len(e.rec.size)
                    .map_err(|e| local_err("truncate", &path, e))?;
                if e.rec.dirty {
                    staged_bytes += e.rec.size;
                    if e.rec.size == 0 {
                        // Created and never committed: its writer will
                        // send the data again (new verifier); an empty
                        // object goes up only if nobody does.
                        e.unstable = true;
                    }
                }
                e.file = Some(Arc::new(f));
            }
            if !e.rec.dirty {
                clean.push_back((key.clone(), e.gen));
            }
            map.insert(key, e);
        }
        if let Ok(rd) = std::fs::read_dir(&staging) {
            for ent in rd.flatten() {
                let name = ent.file_name();
                let keep = name
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|n| referenced.contains(&n));
                if !keep {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
        let dirty = map.values().filter(|e| e.rec.dirty).count();
        if !map.is_empty() {
            tracing::info!(
                records = map.len(),
                owed_to_store = dirty,
                staged_bytes,
                "write journal recovered"
            );
        }
        Ok(WriteBack {
            store,
            staging,
            journal,
            inner: Mutex::new(Inner {
                map,
                next_file_no: next_file_no.max(max_no + 1),
                staged_bytes,
                clean,
                busy: HashSet::new(),
                multiparts: std::collections::HashMap::new(),
            }),
            verifier: random_verifier(),
            wake: tokio::sync::Notify::new(),
            room_free: std::sync::atomic::AtomicU64::new(0),
            room_at_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            cfg,
        })
    }

    pub fn config(&self) -> &WriteConfig {
        &self.cfg
    }

    /// The write verifier: new on every start, so clients resend writes
    /// they did not see committed.
    pub fn verifier(&self) -> [u8; 8] {
        self.verifier
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("write overlay poisoned")
    }

    fn staging_path(&self, n: u64) -> PathBuf {
        self.staging.join(n.to_string())
    }

    /// Whether the overlay is empty (the read path's fast check).
    pub fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }

    /// The record of `key`, if the overlay has one.
    pub fn get(&self, key: &str) -> Option<Record> {
        self.lock().map.get(key).map(|e| e.rec.clone())
    }

    /// Records of the direct children of directory `dir_key` whose name
    /// suffix is after `after` (exclusive) and up to `upto` (inclusive).
    pub fn children(
        &self,
        dir_key: &str,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Vec<(String, Record)> {
        let inner = self.lock();
        if inner.map.is_empty() {
            return Vec::new();
        }
        let lo = match after {
            Some(a) => Bound::Excluded(format!("{dir_key}{a}")),
            None => Bound::Excluded(dir_key.to_string()),
        };
        let hi = match upto {
            Some(u) => Bound::Included(format!("{dir_key}{u}")),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for (k, e) in inner.map.range::<String, _>((lo, hi)) {
            if !k.starts_with(dir_key) {
                break;
            }
            let suffix = &k[dir_key.len()..];
            let direct = match suffix.find('/') {
                None => true,
                Some(i) => i == suffix.len() - 1,
            };
            if direct && !suffix.is_empty() {
                out.push((suffix.to_string(), e.rec.clone()));
            }
        }
        out
    }

    /// Every record below `dir_key` (any depth), with its key suffix.
    pub fn descendants(&self, dir_key: &str) -> Vec<(String, Record)> {
        let inner = self.lock();
        inner
            .map
            .range::<str, _>((Bound::Excluded(dir_key), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(dir_key))
            .map(|(k, e)| (k[dir_key.len()..].to_string(), e.rec.clone()))
            .collect()
    }

    /// A new, empty staging file (not yet referenced by any record).
    pub fn new_staging_file(&self) -> FsResult<(u64, Arc<File>)> {
        let n = {
            let mut inner = self.lock();
            let n = inner.next_file_no;
            inner.next_file_no += 1;
            n
        };
        let path = self.staging_path(n);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| local_err("create", &path, e))?;
        Ok((n, Arc::new(f)))
    }

    /// Apply `changes` (key → new record, or `None` to drop the key's
    /// record) durably, then in memory. `files` gives open staging files
    /// for records that name new ones. Staging files no record names any
    /// more are removed.
    pub fn apply(
        &self,
        mut changes: Vec<(String, Option<Record>)>,
        files: Vec<(u64, Arc<File>)>,
    ) -> FsResult<()> {
        let mut inner = self.lock();
        if inner.map.len() + changes.len() > RECORDS_MAX {
            return Err(FsError::Delay);
        }
        // A key being uploaded right now will exist in the store: whatever
        // replaces it must delete or overwrite it afterwards.
        for (k, r) in changes.iter_mut() {
            if !inner.busy.contains(k.as_str()) {
                continue;
            }
            match r {
                None => *r = Some(Record::whiteout()),
                Some(rec) => {
                    rec.in_store = true;
                    rec.dirty = true;
                }
            }
        }
        let refs: Vec<(&str, Option<&Record>)> = changes
            .iter()
            .map(|(k, r)| (k.as_str(), r.as_ref()))
            .collect();
        if let Err(e) = self.journal.apply(&refs, inner.next_file_no) {
            drop(inner);
            // New staging files no record names: gone with the change.
            for (n, _) in &files {
                let _ = std::fs::remove_file(self.staging_path(*n));
            }
            return Err(e.into());
        }
        let mut freed = Vec::new();
        let mut moved_files: Vec<(u64, Arc<File>)> = files;
        // Detach the entries being replaced first, so a rename that moves
        // one key's staging file to another keeps the open file.
        let mut old: Vec<Option<Entry>> = Vec::with_capacity(changes.len());
        for (k, _) in &changes {
            let e = inner.map.remove(k);
            if let Some(e) = &e {
                if e.rec.dirty {
                    if let Data::Staged(_) = e.rec.data {
                        inner.staged_bytes = inner.staged_bytes.saturating_sub(e.rec.size);
                    }
                }
            }
            old.push(e);
        }
        for o in old.iter().flatten() {
            if let (Data::Staged(n), Some(f)) = (&o.rec.data, &o.file) {
                moved_files.push((*n, f.clone()));
            }
        }
        for ((k, r), o) in changes.into_iter().zip(old) {
            let Some(rec) = r else { continue };
            let mut e = Entry::new(rec);
            match o {
                // Same data: keep what is known about its state.
                Some(o) if o.rec.data == e.rec.data => e.unstable = o.unstable,
                Some(_) => {}
                // A file just created (or emptied into new staging): its
                // writer has not committed anything yet, so no empty
                // object goes up before the data (or the 30 s idle bound).
                None if e.rec.kind == Kind::File
                    && e.rec.dirty
                    && e.rec.size == 0
                    && matches!(e.rec.data, Data::Staged(_)) =>
                {
                    e.unstable = true
                }
                None => {}
            }
            if let Data::Staged(n) = e.rec.data {
                e.file = moved_files
                    .iter()
                    .find(|(m, _)| *m == n)
                    .map(|(_, f)| f.clone());
                if e.rec.dirty {
                    inner.staged_bytes += e.rec.size;
                }
            }
            if !e.rec.dirty {
                inner.clean.push_back((k.clone(), e.gen));
            }
            inner.map.insert(k, e);
        }
        let live: HashSet<u64> = inner
            .map
            .values()
            .filter_map(|e| match e.rec.data {
                Data::Staged(n) => Some(n),
                _ => None,
            })
            .collect();
        for (n, _) in &moved_files {
            if !live.contains(n) {
                freed.push(*n);
            }
        }
        self.trim_clean(&mut inner);
        drop(inner);
        for n in freed {
            let _ = std::fs::remove_file(self.staging_path(n));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Drop the oldest clean records past [`CLEAN_RECORDS_MAX`].
    fn trim_clean(&self, inner: &mut Inner) {
        let mut drop_keys = Vec::new();
        while inner.clean.len() > CLEAN_RECORDS_MAX {
            let Some((k, gen)) = inner.clean.pop_front() else {
                break;
            };
            if inner.map.get(&k).is_some_and(|e| {
                !e.rec.dirty && e.gen == gen && !matches!(e.rec.data, Data::Staged(_))
            }) {
                drop_keys.push(k);
            }
        }
        if drop_keys.is_empty() {
            return;
        }
        let refs: Vec<(&str, Option<&Record>)> =
            drop_keys.iter().map(|k| (k.as_str(), None)).collect();
        if self.journal.apply(&refs, inner.next_file_no).is_ok() {
            for k in drop_keys {
                inner.map.remove(&k);
            }
        }
    }

    /// Change the record of `key` in place (attributes, size), durably.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut Record)) -> FsResult<Record> {
        let mut inner = self.lock();
        let next = inner.next_file_no;
        let e = inner.map.get_mut(key).ok_or(FsError::Stale)?;
        let mut rec = e.rec.clone();
        f(&mut rec);
        rec.dirty = true;
        self.journal.apply(&[(key, Some(&rec))], next)?;
        let was_dirty_staged = e.rec.dirty && matches!(e.rec.data, Data::Staged(_));
        let old_size = e.rec.size;
        e.rec = rec.clone();
        e.gen = next_gen();
        e.changed = Instant::now();
        let now_staged = matches!(e.rec.data, Data::Staged(_));
        let new_size = e.rec.size;
        if was_dirty_staged {
            inner.staged_bytes = inner.staged_bytes.saturating_sub(old_size);
        }
        if now_staged {
            inner.staged_bytes += new_size;
        }
        drop(inner);
        self.wake.notify_one();
        Ok(rec)
    }

    /// The open staging file of `key` and its record, for reads.
    pub fn staged(&self, key: &str) -> Option<(Arc<File>, Record)> {
        let inner = self.lock();
        let e = inner.map.get(key)?;
        Some((e.file.clone()?, e.rec.clone()))
    }

    /// Write `data` at `offset` of the staged file `key`. With `stable`,
    /// the data and the new size are on stable storage before returning.
    /// Returns the record after the write.
    pub fn write(&self, key: &str, offset: u64, data: &[u8], stable: bool) -> FsResult<Record> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::TooBig)?;
        let (file, n) = {
            let mut inner = self.lock();
            let over = inner.staged_bytes;
            let e = inner.map.get_mut(key).ok_or(FsError::Stale)?;
            let (Data::Staged(n), Some(f)) = (&e.rec.data, &e.file) else {
                return Err(FsError::NotStaged);
            };
            let growth = end.saturating_sub(e.rec.size);
            if growth > 0 && over + growth > self.cfg.staged_bytes_max {
                crate::telemetry::add(crate::telemetry::Counter::WriteDelays, 1);
                return Err(FsError::Delay);
            }
            if !self.has_room(data.len() as u64) {
                return Err(FsError::Local {
                    op: "write",
                    path: self.staging.display().to_string(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            // Before the bytes change: an upload reading now notices, and
            // none starts until this write is recorded.
            e.gen = next_gen();
            e.writes_in_flight += 1;
            e.changed = Instant::now();
            (f.clone(), *n)
        };
        let io = file
            .write_all_at(data, offset)
            .map_err(|e| local_err("write", &self.staging_path(n), e))
            .and_then(|()| {
                if stable {
                    file.sync_data()
                        .map_err(|e| local_err("fdatasync", &self.staging_path(n), e))
                } else {
                    Ok(())
                }
            });
        let mut inner = self.lock();
        let next = inner.next_file_no;
        let e = inner.map.get_mut(key).ok_or(FsError::Stale)?;
        e.writes_in_flight = e.writes_in_flight.saturating_sub(1);
        io?;
        if e.rec.data != Data::Staged(n) {
            // Cannot happen while the write is in flight; never record a
            // size against other data.
            return Err(FsError::Delay);
        }
        crate::telemetry::add(crate::telemetry::Counter::WriteBytes, data.len() as u64);
        let old_size = e.rec.size;
        let was_dirty = e.rec.dirty;
        e.rec.size = e.rec.size.max(end);
        let now = now_ns();
        e.rec.attrs.mtime_ns = now;
        e.rec.attrs.ctime_ns = now;
        e.rec.dirty = true;
        e.changed = Instant::now();
        e.gen = next_gen();
        if stable {
            // fdatasync above made every earlier write durable too.
            let rec = e.rec.clone();
            self.journal.apply(&[(key, Some(&rec))], next)?;
            e.unstable = false;
        } else {
            e.unstable = true;
        }
        let rec = e.rec.clone();
        let grown = rec.size - if was_dirty { old_size } else { 0 };
        inner.staged_bytes += grown;
        Ok(rec)
    }

    /// Whether the staging file system keeps room for `bytes` more and
    /// the journal's reserve ([`STAGING_RESERVE_BYTES`]): staged data never
    /// takes the space the journal needs to record it.
    fn has_room(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Far from full, a reading up to ROOM_RECHECK old will do; near
        // the reserve every write looks again.
        let free = self.room_free.load(Relaxed);
        let age_ms =
            (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.room_at_ms.load(Relaxed));
        if age_ms < ROOM_RECHECK.as_millis() as u64
            && free >= bytes.saturating_add(STAGING_RESERVE_BYTES + ROOM_SLACK_BYTES)
        {
            self.room_free.fetch_sub(bytes.min(free), Relaxed);
            return true;
        }
        let Ok(c) = std::ffi::CString::new(self.staging.as_os_str().as_encoded_bytes()) else {
            return true;
        };
        // SAFETY: statvfs is plain data; all zeroes is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable
        // statvfs that outlives the call.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return true;
        }
        let free = st.f_bavail as u64 * st.f_frsize as u64;
        self.room_free.store(free, Relaxed);
        self.room_at_ms
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
        free >= bytes.saturating_add(STAGING_RESERVE_BYTES)
    }

    /// COMMIT: everything written to `key` so far is on stable storage and
    /// its size journaled. The upload may start after the quiet period.
    pub fn commit(&self, key: &str) -> FsResult<Record> {
        let (file, n) = {
            let inner = self.lock();
            let Some(e) = inner.map.get(key) else {
                return Err(FsError::Stale);
            };
            match (&e.rec.data, &e.file) {
                (Data::Staged(n), Some(f)) => (Some(f.clone()), *n),
                _ => (None, 0),
            }
        };
        if let Some(f) = &file {
            f.sync_data()
                .map_err(|e| local_err("fdatasync", &self.staging_path(n), e))?;
        }
        let mut inner = self.lock();
        let next = inner.next_file_no;
        let e = inner.map.get_mut(key).ok_or(FsError::Stale)?;
        let rec = e.rec.clone();
        if e.unstable || file.is_some() {
            self.journal.apply(&[(key, Some(&rec))], next)?;
        }
        e.unstable = false;
        e.changed = Instant::now();
        drop(inner);
        self.wake.notify_one();
        Ok(rec)
    }

    /// Read staged bytes of `key` at `offset`; `None` when `key` has no
    /// staged data (the caller reads the store).
    pub fn read(
        &self,
        key: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<FsResult<(usize, Record)>> {
        let (file, rec) = self.staged(key)?;
        if offset >= rec.size {
            return Some(Ok((0, rec)));
        }
        let want = ((rec.size - offset).min(buf.len() as u64)) as usize;
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..want], offset + got as u64) {
                Ok(0) => {
                    // Extended by SETATTR or a sparse write: zeros.
                    buf[got..want].fill(0);
                    got = want;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let path = match rec.data {
                        Data::Staged(n) => self.staging_path(n),
                        _ => self.staging.clone(),
                    };
                    return Some(Err(local_err("read", &path, e)));
                }
            }
        }
        Some(Ok((got, rec)))
    }

    /// What the store still owes.
    pub fn pending(&self) -> Pending {
        let inner = self.lock();
        let mut p = Pending {
            staged_bytes: inner.staged_bytes,
            records: inner.map.len() as u64,
            ..Pending::default()
        };
        for e in inner.map.values().filter(|e| e.rec.dirty) {
            p.keys += 1;
            if matches!(e.rec.kind, Kind::File) {
                p.files += 1;
                if matches!(e.rec.data, Data::Staged(_)) {
                    p.bytes += e.rec.size;
                }
            }
            let age = e.changed.elapsed();
            p.oldest = Some(p.oldest.map_or(age, |o| o.max(age)));
        }
        p
    }

    /// Wait until nothing is owed to the store or `timeout` passes;
    /// returns whether it drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.pending().keys == 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Export what is pending as gauges.
    pub fn publish_gauges(&self) {
        use crate::telemetry::{set_gauge, Gauge};
        let p = self.pending();
        set_gauge(Gauge::UploadPendingFiles, p.files);
        set_gauge(Gauge::UploadPendingBytes, p.bytes);
        set_gauge(Gauge::UploadPendingKeys, p.keys);
        set_gauge(
            Gauge::UploadOldestPendingSeconds,
            p.oldest.map_or(0, |d| d.as_secs()),
        );
        set_gauge(Gauge::StagedBytes, p.staged_bytes);
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests;
