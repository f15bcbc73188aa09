//! A local directory used as a bucket: the embedded default.
//!
//! Regular files are objects whose keys are their paths relative to the
//! root; sub-directories are prefixes (an empty directory behaves like an S3
//! directory marker). Symlinks, sockets, devices and names that are not UTF-8
//! are not objects: they are skipped and counted, never followed. Every
//! path is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! relative to the root descriptor, so no key can reach outside the root.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{ListPage, ObjectMeta, ObjectStore, StoreError, StoreFuture};

/// Open file descriptors kept for repeated reads of the same objects.
const OPEN_FILES_MAX: usize = 512;
/// How long a cached descriptor is trusted to still name the current file.
const OPEN_FILE_TTL: Duration = Duration::from_secs(1);
/// How long a sorted directory snapshot serves continuation pages.
const SNAPSHOT_TTL: Duration = Duration::from_secs(5);

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
    if source.kind() == io::ErrorKind::NotFound {
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
        Ok(DirStore {
            root_path: root.to_path_buf(),
            // SAFETY: `fd` is a fresh descriptor we own.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            open_files: Mutex::new(HashMap::new()),
            snapshot: Mutex::new(None),
            skipped_entries: AtomicU64::new(0),
        })
    }

    /// Entries skipped while listing (symlinks, special files, non-UTF-8).
    pub fn skipped_entries(&self) -> u64 {
        self.skipped_entries.load(Ordering::Relaxed)
    }

    /// Open `rel` beneath the root without following any symlink.
    fn open_beneath(&self, rel: &str, flags: i32) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        let c = CString::new(rel)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key contains NUL"))?;
        // SAFETY: open_how is plain data; all-zero is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: openat2 with a valid dirfd, path and open_how of the stated size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // A symlink on the way reads as "not there".
            return Err(if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::from(io::ErrorKind::NotFound)
            } else {
                e
            });
        }
        // SAFETY: a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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

impl ObjectStore for DirStore {
    fn describe(&self) -> String {
        format!("dir:{}", self.root_path.display())
    }

    fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta> {
        Box::pin(async move {
            let fd = self
                .open_beneath(key, libc::O_PATH)
                .map_err(|e| io_err("open", key, e))?;
            let md = File::from(fd)
                .metadata()
                .map_err(|e| io_err("stat", key, e))?;
            if !md.is_file() {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                });
            }
            Ok(ObjectMeta {
                key: key.to_string(),
                size: md.size(),
                etag: etag_of(&md),
                mtime: mtime_of(&md),
            })
        })
    }

    fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
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
}
