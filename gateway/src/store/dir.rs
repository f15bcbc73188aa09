//! A local directory used as a bucket: the embedded default.
//!
//! Regular files are objects whose keys are their paths relative to the
//! root; sub-directories are prefixes (an empty directory behaves like an S3
//! directory marker). Symlinks, sockets, devices and names that are not UTF-8
//! are not objects: they are skipped and counted, never followed. Every
//! path is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! relative to the root descriptor, so no key can reach outside the root;
//! keys with `.` or `..` segments are refused, as the S3 store refuses them.
//!
//! **Writes** make an object appear whole or not at all, as S3 does. Data
//! goes to a temporary file in a hidden staging directory inside the root
//! ([`STAGING_DIR`], never listed and not addressable as a key), is
//! fsynced, and is renamed over the key's path (parent directories are
//! created as needed, and the parent is fsynced after the rename). The
//! staging directory is inside the root so that the rename stays on one
//! file system. A multipart upload is a directory in the staging area
//! holding the key, the metadata and one file per part; completing it
//! concatenates the parts (`copy_file_range`) into one temporary file that
//! is renamed into place. A key ending in `/` is a directory marker: putting
//! it creates the directory, deleting it removes the directory if empty,
//! and a HEAD of it describes the directory.
//!
//! **ETags** are derived from inode, size and modification time. Every
//! write through the store stamps its file with a modification time that is
//! unique within the process (nanoseconds, strictly increasing), so two
//! versions written in quick succession never share an ETag even when the
//! inode number is reused. The POSIX attributes of [`PosixMeta`] are kept
//! in user extended attributes (`user.tidegate.mode`, `.uid`, `.gid`,
//! `.mtime`, same text as the S3 metadata) on a best-effort basis: a file
//! system without user xattrs simply has none to report. They are never
//! applied to the file itself (a mode of 000 must not lock the gateway out
//! of its own data).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::{File, FileTimes};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{ListPage, ObjectMeta, ObjectStore, PartDone, PosixMeta, StoreError, StoreFuture};

/// Open file descriptors kept for repeated reads of the same objects.
const OPEN_FILES_MAX: usize = 512;
/// How long a cached descriptor is trusted to still name the current file.
const OPEN_FILE_TTL: Duration = Duration::from_secs(1);
/// How long a sorted directory snapshot serves continuation pages.
const SNAPSHOT_TTL: Duration = Duration::from_secs(5);
/// The hidden directory beneath the root where writes are staged.
pub const STAGING_DIR: &str = ".tidegate-uploads";
/// Staged temporary files older than this when the store opens are left
/// over from a crash, and removed.
const STAGED_STALE: Duration = Duration::from_secs(3600);
/// Prefix of the names of staged temporary files.
const TEMP_PREFIX: &str = "tmp-";
/// Prefix of the directory of a multipart upload (its id).
const UPLOAD_PREFIX: &str = "mp-";
/// Parts per multipart upload (as on S3).
const PARTS_MAX: u32 = 10_000;
/// Extended attributes holding [`PosixMeta`], by metadata name.
const XATTR_NAMES: [(&str, &CStr); 4] = [
    ("mode", c"user.tidegate.mode"),
    ("uid", c"user.tidegate.uid"),
    ("gid", c"user.tidegate.gid"),
    ("mtime", c"user.tidegate.mtime"),
];
/// Longest extended attribute value read back (a decimal number).
const XATTR_VALUE_BYTES_MAX: usize = 64;

struct Snapshot {
    prefix: String,
    taken: Instant,
    entries: Arc<Vec<Entry>>,
}

#[derive(Clone)]
enum Entry {
    Object(ObjectMeta),
    Prefix(String),
}

impl Entry {
    fn key(&self) -> &str {
        match self {
            Entry::Object(o) => &o.key,
            Entry::Prefix(p) => p,
        }
    }
}

pub struct DirStore {
    root_path: PathBuf,
    root: OwnedFd,
    open_files: Mutex<HashMap<String, (Arc<File>, Instant)>>,
    snapshot: Mutex<Option<Snapshot>>,
    skipped_entries: AtomicU64,
}

fn io_err(op: &'static str, key: &str, source: io::Error) -> StoreError {
    // A file where a directory of the path should be: no such object either.
    if matches!(
        source.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) {
        StoreError::NotFound {
            key: key.to_string(),
        }
    } else {
        StoreError::Io {
            op,
            key: key.to_string(),
            source,
        }
    }
}

fn etag_of(md: &std::fs::Metadata) -> String {
    format!(
        "{:x}-{:x}-{:x}.{:x}",
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec()
    )
}

fn mtime_of(md: &std::fs::Metadata) -> SystemTime {
    UNIX_EPOCH + Duration::new(md.mtime().max(0) as u64, md.mtime_nsec() as u32)
}

/// A write failed: always an I/O error (a missing path on the way is not
/// "no such object").
fn write_err(op: &'static str, key: &str, source: io::Error) -> StoreError {
    StoreError::Io {
        op,
        key: key.to_string(),
        source,
    }
}

fn invalid_key(key: &str, why: &'static str) -> StoreError {
    StoreError::InvalidKey {
        key: key.to_string(),
        why,
    }
}

fn no_upload(op: &'static str, key: &str) -> StoreError {
    write_err(
        op,
        key,
        io::Error::new(io::ErrorKind::NotFound, "no such multipart upload"),
    )
}

fn invalid_input(op: &'static str, key: &str, why: String) -> StoreError {
    write_err(op, key, io::Error::new(io::ErrorKind::InvalidInput, why))
}

/// Refuses what no key may hold: `.` and `..` segments, NUL, a leading `/`.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(invalid_key(key, "'.' and '..' segments are not keys"));
    }
    if key.contains('\0') {
        return Err(invalid_key(key, "keys cannot contain NUL"));
    }
    if key.starts_with('/') {
        return Err(invalid_key(key, "keys are relative to the root"));
    }
    Ok(())
}

/// Whether `key` names something in the staging directory, which is not
/// part of the bucket.
fn is_staging(key: &str) -> bool {
    key.split('/').find(|seg| !seg.is_empty()) == Some(STAGING_DIR)
}

/// A key as a write sees it: the directories above it and its own name.
struct WriteKey<'a> {
    parents: Vec<&'a str>,
    leaf: &'a str,
    leaf_c: CString,
    /// A directory marker (the key ends with `/`).
    dir: bool,
}

fn write_key(key: &str) -> Result<WriteKey<'_>, StoreError> {
    check_key(key)?;
    let (body, dir) = match key.strip_suffix('/') {
        Some(b) => (b, true),
        None => (key, false),
    };
    if body.is_empty() {
        return Err(invalid_key(key, "an object key cannot be empty"));
    }
    let mut parents: Vec<&str> = body.split('/').collect();
    if parents.iter().any(|seg| seg.is_empty()) {
        return Err(invalid_key(
            key,
            "directory stores cannot hold keys with empty segments",
        ));
    }
    if parents[0] == STAGING_DIR {
        return Err(invalid_key(key, "the staging directory is reserved"));
    }
    let leaf = parents.pop().unwrap_or_default();
    Ok(WriteKey {
        parents,
        leaf,
        leaf_c: CString::new(leaf).map_err(|_| invalid_key(key, "keys cannot contain NUL"))?,
        dir,
    })
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn errno_is(e: &io::Error, errnos: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|n| errnos.contains(&n))
}

/// `rel` opened beneath `dir` without following any symlink (`..` and
/// absolute paths cannot leave `dir`).
fn openat2_beneath(dir: BorrowedFd<'_>, rel: &str, flags: i32) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    let c = c_name(rel)?;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: openat2 with a valid dirfd, path and open_how of the stated size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: a valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: valid dirfds and NUL-terminated names.
    cvt(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// `lstat` of `name` in `dir`: its `st_mode` and `st_mtime`.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(libc::mode_t, i64)> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid dirfd, NUL-terminated name and a stat to fill.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok((st.st_mode, st.st_mtime))
}

fn sync_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fsync on a valid descriptor.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) })
}

/// Names in the directory open as `dir` (not `.` and `..`).
fn dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::OsString>> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    std::fs::read_dir(path)?
        .map(|de| de.map(|de| de.file_name()))
        .collect()
}

/// The last modification time handed out, in nanoseconds since the epoch.
static LAST_WRITE_NS: AtomicU64 = AtomicU64::new(0);

/// Sets the file's modification time to now, or just after the last one
/// handed out: unique per write, so that ETags are too.
fn stamp(file: &File) -> io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let last = LAST_WRITE_NS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or_else(|last| last);
    let t = now.max(last + 1);
    file.set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_nanos(t)))
}

/// Writes `posix` into the extended attributes of `fd`; with `clear`, also
/// removes the ones it does not name. A file system without user xattrs
/// keeps none, silently.
fn set_posix(fd: BorrowedFd<'_>, posix: &PosixMeta, clear: bool) -> io::Result<()> {
    let pairs = posix.to_pairs();
    for (name, attr) in XATTR_NAMES {
        let r = match pairs.iter().find(|(n, _)| *n == name) {
            // SAFETY: a valid descriptor, NUL-terminated name, and a value
            // buffer of the stated length.
            Some((_, value)) => cvt(unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    attr.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }),
            // SAFETY: a valid descriptor and NUL-terminated name.
            None if clear => cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), attr.as_ptr()) }),
            None => Ok(()),
        };
        match r {
            Ok(()) => {}
            Err(e) if errno_is(&e, &[libc::ENOTSUP, libc::EOPNOTSUPP]) => return Ok(()),
            Err(e) if errno_is(&e, &[libc::ENODATA]) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The [`PosixMeta`] kept in the extended attributes of `fd` (which may be
/// an `O_PATH` descriptor); `None` when there is none or it cannot be read.
fn get_posix(fd: BorrowedFd<'_>) -> Option<PosixMeta> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let mut values: Vec<(&str, String)> = Vec::new();
    for (name, attr) in XATTR_NAMES {
        let mut buf = [0u8; XATTR_VALUE_BYTES_MAX];
        // SAFETY: NUL-terminated path and name, and a buffer of the stated
        // length.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                attr.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if errno_is(&e, &[libc::ENOTSUP, libc::EOPNOTSUPP]) {
                return None;
            }
            continue;
        }
        if let Ok(v) = std::str::from_utf8(&buf[..n as usize]) {
            values.push((name, v.to_string()));
        }
    }
    PosixMeta::from_pairs(values.iter().map(|(n, v)| (*n, v.as_str())))
}

/// Distinguishes the temporary names and upload ids of this process.
static STAGED_SEQ: AtomicU64 = AtomicU64::new(0);

/// A name unlikely to exist already: `prefix`, then 16 hex digits drawn
/// from the process, a counter and a random hasher key.
fn fresh_name(prefix: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(STAGED_SEQ.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}{:016x}", h.finish())
}

/// Creates `name` in `dir` (never following a symlink, never replacing).
fn create_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::c_uint) -> io::Result<File> {
    // SAFETY: a valid dirfd and NUL-terminated name; O_EXCL never follows a
    // symlink.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A temporary file in a staging directory, removed on drop unless it was
/// renamed into place.
struct Staged<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
    file: File,
    placed: bool,
}

impl<'a> Staged<'a> {
    fn create(dir: BorrowedFd<'a>) -> io::Result<Staged<'a>> {
        loop {
            let name = c_name(&fresh_name(TEMP_PREFIX))?;
            match create_at(dir, &name, 0o644) {
                Ok(file) => {
                    return Ok(Staged {
                        dir,
                        name,
                        file,
                        placed: false,
                    })
                }
                Err(e) if errno_is(&e, &[libc::EEXIST]) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Metadata, a unique modification time, then fsync; returns the ETag
    /// the file will have in place.
    fn seal(&mut self, posix: Option<&PosixMeta>) -> io::Result<String> {
        if let Some(p) = posix {
            set_posix(self.file.as_fd(), p, false)?;
        }
        stamp(&self.file)?;
        self.file.sync_all()?;
        Ok(etag_of(&self.file.metadata()?))
    }

    /// Renames the file to `to` in `to_dir` (replacing what is there) and
    /// makes the rename durable.
    fn place(&mut self, to_dir: BorrowedFd<'_>, to: &CStr) -> io::Result<()> {
        rename_at(self.dir, &self.name, to_dir, to)?;
        self.placed = true;
        sync_fd(to_dir)
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.placed {
            let _ = unlink_at(self.dir, &self.name, 0);
        }
    }
}

/// Whether `id` has the form of an upload id this store hands out.
fn valid_upload_id(id: &str) -> bool {
    id.strip_prefix(UPLOAD_PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Names inside an upload's directory.
const UPLOAD_KEY: &CStr = c"key";
const UPLOAD_POSIX: &CStr = c"posix";

fn part_name(number: u32) -> String {
    format!("part-{number:05}")
}

/// Removes an upload's directory and everything in it; a missing one is
/// fine.
fn remove_upload(staging: BorrowedFd<'_>, id: &str) -> io::Result<()> {
    let dir = match openat2_beneath(staging, id, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in dir_names(dir.as_fd())? {
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "name contains NUL"))?;
        match unlink_at(dir.as_fd(), &c, 0) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match unlink_at(staging, &c_name(id)?, libc::AT_REMOVEDIR) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes a small file in `dir`, durably.
fn write_small(dir: BorrowedFd<'_>, name: &CStr, data: &[u8]) -> io::Result<()> {
    let mut f = create_at(dir, name, 0o600)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Reads a small file in `dir`.
fn read_small(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<String> {
    let name = name
        .to_str()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name is not UTF-8"))?;
    let mut s = String::new();
    File::from(openat2_beneath(dir, name, libc::O_RDONLY)?)
        .take(64 * 1024)
        .read_to_string(&mut s)?;
    Ok(s)
}

impl DirStore {
    pub fn open(root: &Path) -> io::Result<DirStore> {
        let md = std::fs::metadata(root)?;
        if !md.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let store = DirStore {
            root_path: root.to_path_buf(),
            // SAFETY: `fd` is a fresh descriptor we own.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            open_files: Mutex::new(HashMap::new()),
            snapshot: Mutex::new(None),
            skipped_entries: AtomicU64::new(0),
        };
        store.sweep_staging();
        Ok(store)
    }

    /// Removes temporary files a crash left in the staging directory.
    fn sweep_staging(&self) {
        let Ok(staging) = openat2_beneath(
            self.root.as_fd(),
            STAGING_DIR,
            libc::O_RDONLY | libc::O_DIRECTORY,
        ) else {
            return;
        };
        let Ok(names) = dir_names(staging.as_fd()) else {
            return;
        };
        let stale_before = SystemTime::now()
            .checked_sub(STAGED_STALE)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        let mut removed = 0u64;
        for name in names {
            if name.as_bytes().starts_with(UPLOAD_PREFIX.as_bytes()) {
                // A multipart upload a crash cut short: its parts.
                let path = self.root_path.join(STAGING_DIR).join(&name);
                let stale = std::fs::symlink_metadata(&path).is_ok_and(|m| {
                    m.is_dir()
                        && m.modified().is_ok_and(|t| {
                            t.duration_since(UNIX_EPOCH)
                                .is_ok_and(|d| (d.as_secs() as i64) < stale_before)
                        })
                });
                if stale && std::fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
                continue;
            }
            if !name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                continue;
            }
            let Ok(c) = CString::new(name.as_bytes()) else {
                continue;
            };
            if let Ok((mode, mtime)) = lstat_at(staging.as_fd(), &c) {
                if mode & libc::S_IFMT == libc::S_IFREG
                    && mtime < stale_before
                    && unlink_at(staging.as_fd(), &c, 0).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                root = %self.root_path.display(),
                removed,
                "removed temporary files left by an interrupted write"
            );
        }
    }

    /// Entries skipped while listing (symlinks, special files, non-UTF-8).
    pub fn skipped_entries(&self) -> u64 {
        self.skipped_entries.load(Ordering::Relaxed)
    }

    /// Open `rel` beneath the root without following any symlink.
    fn open_beneath(&self, rel: &str, flags: i32) -> io::Result<OwnedFd> {
        openat2_beneath(self.root.as_fd(), rel, flags).map_err(|e| {
            // A symlink on the way reads as "not there".
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::from(io::ErrorKind::NotFound)
            } else {
                e
            }
        })
    }

    fn file(&self, key: &str) -> Result<Arc<File>, StoreError> {
        let now = Instant::now();
        let mut cache = self.open_files.lock().expect("open file cache poisoned");
        if let Some((f, at)) = cache.get(key) {
            if now.duration_since(*at) < OPEN_FILE_TTL {
                return Ok(f.clone());
            }
        }
        let fd = self
            .open_beneath(key, libc::O_RDONLY)
            .map_err(|e| io_err("open", key, e))?;
        let f = Arc::new(File::from(fd));
        if cache.len() >= OPEN_FILES_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < OPEN_FILE_TTL);
            if cache.len() >= OPEN_FILES_MAX {
                cache.clear();
            }
        }
        cache.insert(key.to_string(), (f.clone(), now));
        Ok(f)
    }

    fn read_sorted(&self, prefix: &str) -> Result<Arc<Vec<Entry>>, StoreError> {
        let dir_rel = prefix.trim_end_matches('/');
        let fd = self
            .open_beneath(dir_rel, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| io_err("opendir", prefix, e))?;
        let dir_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let rd = std::fs::read_dir(&dir_path).map_err(|e| io_err("readdir", prefix, e))?;
        let mut entries = Vec::new();
        for de in rd {
            let de = de.map_err(|e| io_err("readdir", prefix, e))?;
            let Some(name) = de.file_name().to_str().map(str::to_owned) else {
                self.skipped_entries.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if prefix.is_empty() && name == STAGING_DIR {
                continue;
            }
            let ft = de.file_type().map_err(|e| io_err("readdir", prefix, e))?;
            if ft.is_dir() {
                entries.push(Entry::Prefix(format!("{prefix}{name}/")));
            } else if ft.is_file() {
                let md = match de.metadata() {
                    Ok(md) => md,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("stat", &name, e)),
                };
                entries.push(Entry::Object(ObjectMeta {
                    key: format!("{prefix}{name}"),
                    size: md.size(),
                    etag: etag_of(&md),
                    mtime: mtime_of(&md),
                    posix: None,
                }));
            } else {
                self.skipped_entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        entries.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(Arc::new(entries))
    }

    fn list_sync(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        if !(prefix.is_empty() || prefix.ends_with('/')) {
            return Err(StoreError::InvalidKey {
                key: prefix.to_string(),
                why: "directory stores list whole directories only (prefix must end with '/')",
            });
        }
        check_key(prefix)?;
        if is_staging(prefix) {
            return Ok(ListPage::default());
        }
        let now = Instant::now();
        let entries = {
            let mut snap = self.snapshot.lock().expect("snapshot poisoned");
            match snap.as_ref() {
                Some(s)
                    if token.is_some()
                        && s.prefix == prefix
                        && now.duration_since(s.taken) < SNAPSHOT_TTL =>
                {
                    // A listing being paged keeps its snapshot alive, however
                    // long the whole walk takes.
                    let entries = s.entries.clone();
                    if let Some(s) = snap.as_mut() {
                        s.taken = now;
                    }
                    entries
                }
                _ => {
                    drop(snap);
                    let entries = match self.read_sorted(prefix) {
                        Ok(e) => e,
                        Err(StoreError::NotFound { .. }) => Arc::new(Vec::new()),
                        Err(e) => return Err(e),
                    };
                    snap = self.snapshot.lock().expect("snapshot poisoned");
                    // Timed from the end of the scan: a slow scan must not
                    // expire before its first continuation page.
                    *snap = Some(Snapshot {
                        prefix: prefix.to_string(),
                        taken: Instant::now(),
                        entries: entries.clone(),
                    });
                    entries
                }
            }
        };
        let start = match token {
            Some(t) => entries.partition_point(|e| e.key() <= t),
            None => 0,
        };
        let max = max_keys.max(1) as usize;
        let end = (start + max).min(entries.len());
        let mut page = ListPage::default();
        for e in &entries[start..end] {
            match e {
                Entry::Object(o) => page.objects.push(o.clone()),
                Entry::Prefix(p) => page.prefixes.push(p.clone()),
            }
        }
        if end < entries.len() {
            page.next_token = Some(entries[end - 1].key().to_string());
        }
        Ok(page)
    }
}

/// Writes. Each runs synchronously on the calling thread, as the reads do.
impl DirStore {
    /// Forgets what is cached about `key` after a write through the store.
    fn forget(&self, key: &str) {
        self.open_files
            .lock()
            .expect("open file cache poisoned")
            .remove(key);
        *self.snapshot.lock().expect("snapshot poisoned") = None;
    }

    /// The staging directory, created on first use.
    fn staging(&self) -> io::Result<OwnedFd> {
        match mkdir_at(self.root.as_fd(), &c_name(STAGING_DIR)?, 0o700) {
            Err(e) if !errno_is(&e, &[libc::EEXIST]) => return Err(e),
            _ => {}
        }
        openat2_beneath(
            self.root.as_fd(),
            STAGING_DIR,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
    }

    /// The directory `parents` names beneath the root, created (with the
    /// ones above it) as needed.
    fn make_parents(&self, parents: &[&str]) -> io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let mut dir = openat2_beneath(self.root.as_fd(), "", flags)?;
        for seg in parents {
            let name = c_name(seg)?;
            let mut tries = 0;
            dir = loop {
                match mkdir_at(dir.as_fd(), &name, 0o755) {
                    Ok(()) => sync_fd(dir.as_fd())?,
                    Err(e) if errno_is(&e, &[libc::EEXIST]) => {}
                    Err(e) => return Err(e),
                }
                match openat2_beneath(dir.as_fd(), seg, flags) {
                    Ok(next) => break next,
                    // Removed between the two calls: once more.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
                    Err(e) => return Err(e),
                }
            };
        }
        Ok(dir)
    }

    fn put_sync(&self, key: &str, data: &[u8], posix: &PosixMeta) -> Result<String, StoreError> {
        let k = write_key(key)?;
        let parent = self
            .make_parents(&k.parents)
            .map_err(|e| write_err("mkdir", key, e))?;
        if k.dir {
            if !data.is_empty() {
                return Err(invalid_input(
                    "put",
                    key,
                    "a directory marker holds no data".into(),
                ));
            }
            let etag =
                put_marker(parent.as_fd(), &k, posix).map_err(|e| write_err("mkdir", key, e))?;
            self.forget(key);
            return Ok(etag);
        }
        let staging = self.staging().map_err(|e| write_err("stage", key, e))?;
        let mut tmp = Staged::create(staging.as_fd()).map_err(|e| write_err("stage", key, e))?;
        tmp.file
            .write_all(data)
            .map_err(|e| write_err("write", key, e))?;
        let etag = tmp
            .seal(Some(posix))
            .map_err(|e| write_err("sync", key, e))?;
        tmp.place(parent.as_fd(), &k.leaf_c)
            .map_err(|e| write_err("rename", key, e))?;
        self.forget(key);
        Ok(etag)
    }

    fn multipart_start_sync(&self, key: &str, posix: &PosixMeta) -> Result<String, StoreError> {
        const OP: &str = "create_multipart";
        let k = write_key(key)?;
        if k.dir {
            return Err(invalid_key(
                key,
                "a directory marker cannot be uploaded in parts",
            ));
        }
        let staging = self.staging().map_err(|e| write_err(OP, key, e))?;
        let posix_text: String = posix
            .to_pairs()
            .iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect();
        loop {
            let id = fresh_name(UPLOAD_PREFIX);
            match mkdir_at(
                staging.as_fd(),
                &c_name(&id).map_err(|e| write_err(OP, key, e))?,
                0o700,
            ) {
                Ok(()) => {}
                Err(e) if errno_is(&e, &[libc::EEXIST]) => continue,
                Err(e) => return Err(write_err(OP, key, e)),
            }
            let made = openat2_beneath(staging.as_fd(), &id, libc::O_RDONLY | libc::O_DIRECTORY)
                .and_then(|dir| {
                    write_small(dir.as_fd(), UPLOAD_KEY, key.as_bytes())?;
                    write_small(dir.as_fd(), UPLOAD_POSIX, posix_text.as_bytes())?;
                    sync_fd(dir.as_fd())?;
                    sync_fd(staging.as_fd())
                });
            if let Err(e) = made {
                let _ = remove_upload(staging.as_fd(), &id);
                return Err(write_err(OP, key, e));
            }
            return Ok(id);
        }
    }

    /// The directory of upload `upload_id`, if it is an upload of `key`.
    fn upload_dir(
        &self,
        staging: BorrowedFd<'_>,
        key: &str,
        upload_id: &str,
        op: &'static str,
    ) -> Result<OwnedFd, StoreError> {
        if !valid_upload_id(upload_id) {
            return Err(no_upload(op, key));
        }
        let dir = match openat2_beneath(staging, upload_id, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_upload(op, key)),
            Err(e) => return Err(write_err(op, key, e)),
        };
        match read_small(dir.as_fd(), UPLOAD_KEY) {
            Ok(k) if k == key => Ok(dir),
            Ok(_) => Err(no_upload(op, key)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(no_upload(op, key)),
            Err(e) => Err(write_err(op, key, e)),
        }
    }

    fn multipart_part_sync(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: &[u8],
    ) -> Result<String, StoreError> {
        const OP: &str = "upload_part";
        if !(1..=PARTS_MAX).contains(&number) {
            return Err(invalid_input(
                OP,
                key,
                format!("part number {number} is not within 1 to {PARTS_MAX}"),
            ));
        }
        let staging = self.staging().map_err(|e| write_err(OP, key, e))?;
        let dir = self.upload_dir(staging.as_fd(), key, upload_id, OP)?;
        let mut tmp = Staged::create(dir.as_fd()).map_err(|e| write_err(OP, key, e))?;
        tmp.file
            .write_all(data)
            .map_err(|e| write_err(OP, key, e))?;
        let etag = tmp.seal(None).map_err(|e| write_err(OP, key, e))?;
        let name = c_name(&part_name(number)).map_err(|e| write_err(OP, key, e))?;
        tmp.place(dir.as_fd(), &name)
            .map_err(|e| write_err(OP, key, e))?;
        Ok(etag)
    }

    fn multipart_complete_sync(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartDone],
    ) -> Result<String, StoreError> {
        const OP: &str = "complete_multipart";
        let k = write_key(key)?;
        let staging = self.staging().map_err(|e| write_err(OP, key, e))?;
        let dir = self.upload_dir(staging.as_fd(), key, upload_id, OP)?;
        if parts.is_empty() {
            return Err(invalid_input(OP, key, "no parts".into()));
        }
        if !parts.windows(2).all(|w| w[0].number < w[1].number) {
            return Err(invalid_input(
                OP,
                key,
                "parts are not in ascending order".into(),
            ));
        }
        let posix_text =
            read_small(dir.as_fd(), UPLOAD_POSIX).map_err(|e| write_err(OP, key, e))?;
        let posix = PosixMeta::from_pairs(posix_text.lines().filter_map(|l| l.split_once('=')));
        let mut tmp = Staged::create(staging.as_fd()).map_err(|e| write_err(OP, key, e))?;
        for p in parts {
            let mut part = match openat2_beneath(dir.as_fd(), &part_name(p.number), libc::O_RDONLY)
            {
                Ok(fd) => File::from(fd),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(invalid_input(OP, key, format!("no part {}", p.number)))
                }
                Err(e) => return Err(write_err(OP, key, e)),
            };
            let md = part.metadata().map_err(|e| write_err(OP, key, e))?;
            if etag_of(&md) != p.etag {
                return Err(invalid_input(
                    OP,
                    key,
                    format!("part {} has another ETag", p.number),
                ));
            }
            io::copy(&mut part, &mut tmp.file).map_err(|e| write_err(OP, key, e))?;
        }
        let etag = tmp
            .seal(posix.as_ref())
            .map_err(|e| write_err(OP, key, e))?;
        let parent = self
            .make_parents(&k.parents)
            .map_err(|e| write_err("mkdir", key, e))?;
        tmp.place(parent.as_fd(), &k.leaf_c)
            .map_err(|e| write_err("rename", key, e))?;
        self.forget(key);
        if let Err(e) = remove_upload(staging.as_fd(), upload_id) {
            tracing::warn!(key, error = %e, "could not remove a completed upload's parts");
        }
        Ok(etag)
    }

    fn multipart_abort_sync(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        const OP: &str = "abort_multipart";
        if !valid_upload_id(upload_id) {
            return Ok(());
        }
        let staging = match openat2_beneath(
            self.root.as_fd(),
            STAGING_DIR,
            libc::O_RDONLY | libc::O_DIRECTORY,
        ) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(write_err(OP, key, e)),
        };
        match self.upload_dir(staging.as_fd(), key, upload_id, OP) {
            Ok(_) => {}
            // Unknown (or another key's): nothing of this upload to free.
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        remove_upload(staging.as_fd(), upload_id).map_err(|e| write_err(OP, key, e))
    }

    fn copy_sync(
        &self,
        src: &str,
        dst: &str,
        src_etag: Option<&str>,
        posix: Option<&PosixMeta>,
    ) -> Result<String, StoreError> {
        const OP: &str = "copy";
        check_key(src)?;
        let src_gone = || StoreError::NotFound {
            key: src.to_string(),
        };
        let changed = || StoreError::PreconditionFailed {
            key: src.to_string(),
        };
        if is_staging(src) {
            return Err(src_gone());
        }
        let k = write_key(dst)?;
        if k.dir {
            return Err(invalid_key(dst, "a copy cannot make a directory marker"));
        }
        let mut from = File::from(
            self.open_beneath(src, libc::O_RDONLY | libc::O_NONBLOCK)
                .map_err(|e| io_err("open", src, e))?,
        );
        let md = from.metadata().map_err(|e| io_err("stat", src, e))?;
        if !md.is_file() {
            return Err(src_gone());
        }
        let before = etag_of(&md);
        if src_etag.is_some_and(|want| want != before) {
            return Err(changed());
        }
        let kept = match posix {
            Some(_) => None,
            None => get_posix(from.as_fd()),
        };
        let staging = self.staging().map_err(|e| write_err("stage", dst, e))?;
        let mut tmp = Staged::create(staging.as_fd()).map_err(|e| write_err("stage", dst, e))?;
        io::copy(&mut from, &mut tmp.file).map_err(|e| write_err(OP, src, e))?;
        // Another writer changing the source in place while it was copied
        // would leave a mixed copy.
        let after = from.metadata().map_err(|e| io_err("stat", src, e))?;
        if etag_of(&after) != before {
            return Err(changed());
        }
        let etag = tmp
            .seal(posix.or(kept.as_ref()))
            .map_err(|e| write_err("sync", dst, e))?;
        let parent = self
            .make_parents(&k.parents)
            .map_err(|e| write_err("mkdir", dst, e))?;
        tmp.place(parent.as_fd(), &k.leaf_c)
            .map_err(|e| write_err("rename", dst, e))?;
        self.forget(dst);
        Ok(etag)
    }

    fn delete_sync(&self, key: &str) -> Result<(), StoreError> {
        const OP: &str = "delete";
        let k = write_key(key)?;
        let parent = match openat2_beneath(
            self.root.as_fd(),
            &k.parents.join("/"),
            libc::O_RDONLY | libc::O_DIRECTORY,
        ) {
            Ok(p) => p,
            // No directory there (or a symlink on the way): no such object.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || errno_is(&e, &[libc::ENOTDIR, libc::ELOOP]) =>
            {
                return Ok(())
            }
            Err(e) => return Err(write_err(OP, key, e)),
        };
        let parent = parent.as_fd();
        let done = if k.dir {
            match unlink_at(parent, &k.leaf_c, libc::AT_REMOVEDIR) {
                Ok(()) => sync_fd(parent),
                // Missing, not a directory, or not empty (the prefix stays
                // while it holds keys, as on S3): no marker to remove.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || errno_is(&e, &[libc::ENOTDIR, libc::ENOTEMPTY, libc::EEXIST]) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            match lstat_at(parent, &k.leaf_c) {
                // Only regular files are objects.
                Ok((mode, _)) if mode & libc::S_IFMT == libc::S_IFREG => {
                    match unlink_at(parent, &k.leaf_c, 0) {
                        Ok(()) => sync_fd(parent),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        };
        done.map_err(|e| write_err(OP, key, e))?;
        self.forget(key);
        Ok(())
    }
}

/// Creates the directory of a marker key (if missing) and sets its
/// metadata; returns its ETag.
fn put_marker(parent: BorrowedFd<'_>, k: &WriteKey<'_>, posix: &PosixMeta) -> io::Result<String> {
    let created = match mkdir_at(parent, &k.leaf_c, 0o755) {
        Ok(()) => true,
        Err(e) if errno_is(&e, &[libc::EEXIST]) => false,
        Err(e) => return Err(e),
    };
    let dir = File::from(openat2_beneath(
        parent,
        k.leaf,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )?);
    set_posix(dir.as_fd(), posix, true)?;
    dir.sync_all()?;
    if created {
        sync_fd(parent)?;
    }
    Ok(etag_of(&dir.metadata()?))
}

impl ObjectStore for DirStore {
    fn describe(&self) -> String {
        format!("dir:{}", self.root_path.display())
    }

    fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta> {
        Box::pin(async move {
            check_key(key)?;
            let not_found = || StoreError::NotFound {
                key: key.to_string(),
            };
            if is_staging(key) {
                return Err(not_found());
            }
            let f = File::from(
                self.open_beneath(key, libc::O_PATH)
                    .map_err(|e| io_err("open", key, e))?,
            );
            let md = f.metadata().map_err(|e| io_err("stat", key, e))?;
            // A directory answers for its marker key (`dir/`), as the
            // marker object would on S3.
            let marker = md.is_dir() && key.len() > 1 && key.ends_with('/');
            if !md.is_file() && !marker {
                return Err(not_found());
            }
            Ok(ObjectMeta {
                key: key.to_string(),
                size: if marker { 0 } else { md.size() },
                etag: etag_of(&md),
                mtime: mtime_of(&md),
                posix: get_posix(f.as_fd()),
            })
        })
    }

    fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            check_key(prefix)?;
            if is_staging(prefix) {
                return Ok(false);
            }
            let rel = prefix.trim_end_matches('/');
            match self.open_beneath(rel, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(_) => Ok(true),
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    Ok(false)
                }
                Err(e) => Err(io_err("open", prefix, e)),
            }
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> StoreFuture<'a, ListPage> {
        Box::pin(async move { self.list_sync(prefix, token, max_keys) })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        buf: &'a mut [u8],
        if_match: Option<&'a str>,
    ) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            check_key(key)?;
            if is_staging(key) {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                });
            }
            let f = self.file(key)?;
            if let Some(want) = if_match {
                // The descriptor's own metadata: the file being read, even if
                // the path was replaced since it was opened.
                let md = f.metadata().map_err(|e| io_err("stat", key, e))?;
                if etag_of(&md) != want {
                    return Err(StoreError::PreconditionFailed {
                        key: key.to_string(),
                    });
                }
            }
            let mut done = 0;
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err("read", key, e)),
                }
            }
            Ok(done)
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
        Box::pin(async move { self.put_sync(key, &data, posix) })
    }

    fn multipart_start<'a>(
        &'a self,
        key: &'a str,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.multipart_start_sync(key, posix) })
    }

    fn multipart_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Vec<u8>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.multipart_part_sync(key, upload_id, number, &data) })
    }

    fn multipart_complete<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [PartDone],
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.multipart_complete_sync(key, upload_id, parts) })
    }

    fn multipart_abort<'a>(&'a self, key: &'a str, upload_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.multipart_abort_sync(key, upload_id) })
    }

    fn copy<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        src_etag: Option<&'a str>,
        posix: Option<&'a PosixMeta>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.copy_sync(src, dst, src_etag, posix) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.delete_sync(key) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn layout() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.txt"), b"hello").unwrap();
        std::fs::create_dir_all(t.path().join("d/y")).unwrap();
        std::fs::write(t.path().join("d/x"), b"xyz").unwrap();
        std::fs::write(t.path().join("d/y/z"), b"").unwrap();
        t
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn conforms() {
        let t = layout();
        let s = DirStore::open(t.path()).unwrap();
        block_on(conformance::basic_layout(&s));
    }

    #[test]
    fn pages() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("many")).unwrap();
        for i in 0..250 {
            std::fs::write(t.path().join(format!("many/f{i:05}")), b"").unwrap();
        }
        let s = DirStore::open(t.path()).unwrap();
        block_on(conformance::paging(&s, 250, 7));
    }

    #[test]
    fn symlinks_are_neither_listed_nor_followed() {
        let t = layout();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), t.path().join("d/link")).unwrap();
        let s = DirStore::open(t.path()).unwrap();
        block_on(async {
            let root = s.list("", None, 100).await.unwrap();
            assert_eq!(root.prefixes, vec!["d/".to_string()]);
            let d = s.list("d/", None, 100).await.unwrap();
            assert_eq!(d.objects.len(), 1, "only d/x, not the link");
            assert!(matches!(
                s.head("escape/secret").await,
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                s.head("d/link").await,
                Err(StoreError::NotFound { .. })
            ));
            let mut b = [0u8; 4];
            assert!(s.get_range("../etc/passwd", 0, &mut b, None).await.is_err());
            assert!(!s.prefix_exists("escape/").await.unwrap());
        });
        assert_eq!(s.skipped_entries(), 2);
    }

    #[test]
    fn writes() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::open(t.path()).unwrap();
        block_on(conformance::writes(&s));
        // Nothing is left staged: completed and aborted uploads are gone.
        let staged: Vec<_> = std::fs::read_dir(t.path().join(STAGING_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(staged.is_empty(), "{staged:?}");
        assert_eq!(
            std::fs::read(t.path().join("w/mp")).unwrap().len(),
            2 * 4096 + 4096 / 3
        );
        assert_eq!(std::fs::read(t.path().join("w/src")).unwrap(), b"changed");
    }

    #[test]
    fn the_staging_directory_is_not_part_of_the_bucket() {
        let t = layout();
        let s = DirStore::open(t.path()).unwrap();
        let none = PosixMeta::default();
        block_on(async {
            let id = s.multipart_start("d/big", &none).await.unwrap();
            s.multipart_part("d/big", &id, 1, b"part".to_vec())
                .await
                .unwrap();
            assert!(t.path().join(STAGING_DIR).join(&id).is_dir());
            let root = s.list("", None, 100).await.unwrap();
            assert_eq!(root.prefixes, vec!["d/".to_string()]);
            for key in [
                STAGING_DIR,
                ".tidegate-uploads/",
                &format!("{STAGING_DIR}/{id}/key"),
            ] {
                assert!(
                    matches!(s.head(key).await, Err(StoreError::NotFound { .. })),
                    "{key}"
                );
                assert!(matches!(
                    s.put(key, Vec::new(), &none).await,
                    Err(StoreError::InvalidKey { .. })
                ));
                assert!(matches!(
                    s.delete(key).await,
                    Err(StoreError::InvalidKey { .. })
                ));
                assert!(matches!(
                    s.copy("a.txt", key, None, None).await,
                    Err(StoreError::InvalidKey { .. })
                ));
            }
            assert!(!s.prefix_exists(".tidegate-uploads/").await.unwrap());
            let inside = s.list(&format!("{STAGING_DIR}/"), None, 100).await.unwrap();
            assert!(inside.objects.is_empty() && inside.prefixes.is_empty());
            let mut buf = [0u8; 8];
            assert!(matches!(
                s.get_range(&format!("{STAGING_DIR}/{id}/key"), 0, &mut buf, None)
                    .await,
                Err(StoreError::NotFound { .. })
            ));
            // An upload belongs to its key; ids of another form are unknown.
            assert!(s
                .multipart_part("d/other", &id, 2, b"x".to_vec())
                .await
                .is_err());
            assert!(s
                .multipart_part("d/big", "../../d", 1, b"x".to_vec())
                .await
                .is_err());
            s.multipart_abort("d/other", &id).await.unwrap();
            s.multipart_abort("d/big", "../../d").await.unwrap();
            assert!(t.path().join(STAGING_DIR).join(&id).is_dir());
            s.multipart_abort("d/big", &id).await.unwrap();
            assert!(!t.path().join(STAGING_DIR).join(&id).exists());
        });
        block_on(conformance::basic_layout(&s));
    }

    #[test]
    fn writes_stay_beneath_the_root() {
        let t = layout();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), t.path().join("d/link")).unwrap();
        let s = DirStore::open(t.path()).unwrap();
        let none = PosixMeta::default();
        block_on(async {
            for key in ["../x", "d/../a.txt", "./a.txt", "/etc/x", "d//x", "", "/"] {
                assert!(
                    matches!(
                        s.put(key, b"x".to_vec(), &none).await,
                        Err(StoreError::InvalidKey { .. })
                    ),
                    "{key:?}"
                );
            }
            assert!(matches!(
                s.head("d/../a.txt").await,
                Err(StoreError::InvalidKey { .. })
            ));
            // Through a symlinked directory: refused, nothing written.
            assert!(s.put("escape/new", b"x".to_vec(), &none).await.is_err());
            assert!(s.put("escape/", Vec::new(), &none).await.is_err());
            assert!(!outside.path().join("new").exists());
            // Deleting a symlink's name: not an object, left alone.
            s.delete("d/link").await.unwrap();
            s.delete("escape/secret").await.unwrap();
            s.delete("escape/").await.unwrap();
            assert!(t.path().join("d/link").symlink_metadata().is_ok());
            assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
            // Copies neither read through nor write through a symlink.
            assert!(matches!(
                s.copy("d/link", "d/stolen", None, None).await,
                Err(StoreError::NotFound { .. })
            ));
            assert!(s.copy("a.txt", "escape/a", None, None).await.is_err());
            assert!(!outside.path().join("a").exists());
            // A file where a directory is needed.
            assert!(matches!(
                s.put("a.txt/x", b"x".to_vec(), &none).await,
                Err(StoreError::Io { .. })
            ));
            assert!(matches!(
                s.head("a.txt/x").await,
                Err(StoreError::NotFound { .. })
            ));
            s.delete("a.txt/x").await.unwrap();
            // A directory marker holds no data, and a directory is no object.
            assert!(s.put("m/", b"x".to_vec(), &none).await.is_err());
            assert!(s.put("d/y", b"x".to_vec(), &none).await.is_err());
            s.delete("d/y").await.unwrap();
            assert!(t.path().join("d/y/z").exists());
            // A non-empty directory's marker goes, the directory stays.
            s.delete("d/y/").await.unwrap();
            assert!(s.prefix_exists("d/y/").await.unwrap());
        });
    }

    #[test]
    fn markers_describe_their_directory() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::open(t.path()).unwrap();
        let p = PosixMeta {
            mode: Some(0o040_700),
            uid: Some(7),
            gid: None,
            mtime_ns: Some(5),
        };
        block_on(async {
            s.put("a/b/", Vec::new(), &p).await.unwrap();
            let h = s.head("a/b/").await.unwrap();
            assert_eq!((h.size, h.posix), (0, Some(p)));
            assert!(t.path().join("a/b").is_dir());
            // Put again: the metadata is replaced as a whole.
            let q = PosixMeta {
                mode: Some(0o040_755),
                ..PosixMeta::default()
            };
            s.put("a/b/", Vec::new(), &q).await.unwrap();
            assert_eq!(s.head("a/b/").await.unwrap().posix, Some(q));
            // The directory itself is no object, nor is the root.
            assert!(matches!(
                s.head("a/b").await,
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(s.head("").await, Err(StoreError::NotFound { .. })));
            let root = s.list("", None, 10).await.unwrap();
            assert_eq!(root.prefixes, vec!["a/".to_string()]);
            assert!(root.objects.is_empty());
        });
    }

    #[test]
    fn quick_same_size_rewrites_get_new_etags() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::open(t.path()).unwrap();
        let none = PosixMeta::default();
        block_on(async {
            let mut etags = std::collections::HashSet::new();
            for i in 0..200u32 {
                let e = s.put("f", i.to_le_bytes().to_vec(), &none).await.unwrap();
                assert_eq!(s.head("f").await.unwrap().etag, e);
                assert!(etags.insert(e), "ETag repeated at write {i}");
            }
        });
    }

    #[test]
    fn stale_staged_files_are_swept_on_open() {
        let t = tempfile::tempdir().unwrap();
        let staging = t.path().join(STAGING_DIR);
        std::fs::create_dir(&staging).unwrap();
        let old = staging.join("tmp-0123456789abcdef");
        let fresh = staging.join("tmp-fedcba9876543210");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - 2 * STAGED_STALE)
            .unwrap();
        let _s = DirStore::open(t.path()).unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
    }
}
