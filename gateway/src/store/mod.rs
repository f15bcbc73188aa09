//! Object stores: the storage of record behind the gateway.
//!
//! The [`ObjectStore`] trait is shaped after S3 (flat keys, `/`-delimited
//! listings in key order with continuation tokens, ranged reads), so every
//! backend — a local directory standing in for a bucket, S3 itself, or the
//! in-memory store used by unit tests — answers the same questions and the
//! namespace layer above never needs to know which one it talks to.

pub mod dir;
pub mod memory;
pub mod outage;
pub mod s3;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use thiserror::Error;

/// A boxed future returned by store operations.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Keys per LIST page that callers should ask for (S3's own maximum).
pub const LIST_PAGE_KEYS_MAX: u32 = 1000;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no such object: {key}")]
    NotFound { key: String },
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key {key:?} is not valid for this store: {why}")]
    InvalidKey { key: String, why: &'static str },
    /// An `If-Match` precondition failed: the object changed since its
    /// ETag was read (HTTP 412).
    #[error("{key} changed: its ETag no longer matches")]
    PreconditionFailed { key: String },
    /// The store did not answer usefully within the retry bound (timeouts,
    /// connection failures, 5xx, throttling). Worth retrying later.
    #[error("{op} {key}: store unavailable: {message}")]
    Unavailable {
        op: &'static str,
        key: String,
        message: String,
    },
    /// The store has been unavailable for longer than the outage bound.
    #[error("{op} {key}: store down for {seconds} s")]
    Down {
        op: &'static str,
        key: String,
        seconds: u64,
    },
    /// The store refused the request (bad credentials, no permission).
    #[error("{op} {key}: access denied: {message}")]
    Denied {
        op: &'static str,
        key: String,
        message: String,
    },
    /// The store cannot be set up or used as configured.
    #[error("store configuration: {message}")]
    Config { message: String },
}

impl StoreError {
    /// A copy of this error for a second caller waiting on the same
    /// request (I/O errors keep their kind and message).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::NotFound { key } => StoreError::NotFound { key: key.clone() },
            StoreError::Io { op, key, source } => StoreError::Io {
                op,
                key: key.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::InvalidKey { key, why } => StoreError::InvalidKey {
                key: key.clone(),
                why,
            },
            StoreError::PreconditionFailed { key } => {
                StoreError::PreconditionFailed { key: key.clone() }
            }
            StoreError::Unavailable { op, key, message } => StoreError::Unavailable {
                op,
                key: key.clone(),
                message: message.clone(),
            },
            StoreError::Down { op, key, seconds } => StoreError::Down {
                op,
                key: key.clone(),
                seconds: *seconds,
            },
            StoreError::Denied { op, key, message } => StoreError::Denied {
                op,
                key: key.clone(),
                message: message.clone(),
            },
            StoreError::Config { message } => StoreError::Config {
                message: message.clone(),
            },
        }
    }
}

/// What a HEAD or a LIST says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Opaque version tag; changes whenever the content changes.
    pub etag: String,
    pub mtime: SystemTime,
    /// POSIX attributes from the object's user metadata. Only HEAD reports
    /// them (S3 listings carry no metadata); `None` when absent.
    pub posix: Option<PosixMeta>,
}

/// POSIX attributes an object store cannot hold natively, kept in user
/// metadata under the keys s3fs uses, so either tool reads the other's:
/// `x-amz-meta-mode` (decimal `st_mode` including the file type bits, so a
/// symbolic link is `S_IFLNK | 0777` and its body is the target),
/// `x-amz-meta-uid`, `x-amz-meta-gid` (decimal) and `x-amz-meta-mtime`
/// (seconds since the epoch, decimal, with up to nine fractional digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PosixMeta {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: Option<u64>,
}

impl PosixMeta {
    pub fn is_empty(&self) -> bool {
        *self == PosixMeta::default()
    }

    /// The metadata pairs to send (names without the `x-amz-meta-` prefix).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::with_capacity(4);
        if let Some(m) = self.mode {
            v.push(("mode", m.to_string()));
        }
        if let Some(u) = self.uid {
            v.push(("uid", u.to_string()));
        }
        if let Some(g) = self.gid {
            v.push(("gid", g.to_string()));
        }
        if let Some(t) = self.mtime_ns {
            let (s, ns) = (t / 1_000_000_000, t % 1_000_000_000);
            v.push((
                "mtime",
                if ns == 0 {
                    s.to_string()
                } else {
                    format!("{s}.{ns:09}")
                },
            ));
        }
        v
    }

    /// Parse metadata pairs (names without the prefix, any case); unknown
    /// names and unparsable values are ignored. `None` when nothing known.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let mut p = PosixMeta::default();
        for (k, v) in pairs {
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "mode" => p.mode = v.parse().ok(),
                "uid" => p.uid = v.parse().ok(),
                "gid" => p.gid = v.parse().ok(),
                "mtime" => p.mtime_ns = parse_mtime_ns(v),
                _ => {}
            }
        }
        (!p.is_empty()).then_some(p)
    }
}

fn parse_mtime_ns(v: &str) -> Option<u64> {
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let s: u64 = s.parse().ok()?;
    let mut ns = 0u64;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ns = frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32);
    }
    s.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// One finished part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDone {
    /// 1 to 10,000.
    pub number: u32,
    pub etag: String,
}

/// One page of a delimited listing, in key order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes, each ending with the delimiter.
    pub prefixes: Vec<String>,
    /// Pass back to continue; `None` on the last page.
    pub next_token: Option<String>,
}

pub trait ObjectStore: Send + Sync + 'static {
    /// A short description for logs (`dir:/data`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Metadata of one object.
    fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta>;

    /// Whether any key starts with `prefix` (which ends with `/`), or a
    /// directory marker exists for it.
    fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool>;

    /// List keys under `prefix` with `/` as delimiter, starting after the
    /// continuation `token` of the previous page.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> StoreFuture<'a, ListPage>;

    /// Read bytes of `key` starting at `offset` into `buf`; returns how many
    /// were read (fewer than `buf.len()` only at the end of the object, 0 at
    /// or past the end). With `if_match`, the read fails with
    /// [`StoreError::PreconditionFailed`] unless the object's current ETag
    /// equals it, so bytes of two versions are never mixed.
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        buf: &'a mut [u8],
        if_match: Option<&'a str>,
    ) -> StoreFuture<'a, usize>;

    // Writes. Every one of them makes an object appear whole or not at
    // all: there is no append and no partial object.

    /// Smallest part a multipart upload accepts, except the last (5 MiB on
    /// S3).
    fn part_bytes_min(&self) -> u64 {
        5 << 20
    }

    /// Store `data` as `key` in one request, replacing any object there.
    /// Returns the new ETag.
    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Vec<u8>,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String>;

    /// Start a multipart upload of `key`; returns the upload id.
    fn multipart_start<'a>(&'a self, key: &'a str, posix: &'a PosixMeta)
        -> StoreFuture<'a, String>;

    /// Upload part `number` (1 to 10,000) of an upload; returns its ETag.
    fn multipart_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Vec<u8>,
    ) -> StoreFuture<'a, String>;

    /// Complete an upload from its parts in number order; the object
    /// appears whole. Returns its ETag.
    fn multipart_complete<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [PartDone],
    ) -> StoreFuture<'a, String>;

    /// Abandon an upload and free its parts. An unknown id is not an error.
    fn multipart_abort<'a>(&'a self, key: &'a str, upload_id: &'a str) -> StoreFuture<'a, ()>;

    /// Server-side copy of `src` to `dst`. With `src_etag`, fails with
    /// [`StoreError::PreconditionFailed`] unless the source still has that
    /// ETag. With `posix`, the copy's metadata is replaced by it; without,
    /// the source's metadata is kept. Large sources are copied in parts.
    /// Returns the new ETag.
    fn copy<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        src_etag: Option<&'a str>,
        posix: Option<&'a PosixMeta>,
    ) -> StoreFuture<'a, String>;

    /// Delete `key`; deleting a missing key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

/// One test body run against every backend: the unit tests here run it
/// against the memory and directory stores, the integration tests (through
/// the `testing` feature) against SeaweedFS.
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;

    /// Expects the store to hold exactly: `a.txt` ("hello"), `d/x` (3
    /// bytes "xyz"), `d/y/z` (empty) and nothing else.
    pub async fn basic_layout(store: &dyn ObjectStore) {
        let root = store.list("", None, 1000).await.unwrap();
        let keys: Vec<_> = root.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["a.txt"]);
        assert_eq!(root.prefixes, vec!["d/".to_string()]);
        assert!(root.next_token.is_none());

        let d = store.list("d/", None, 1000).await.unwrap();
        assert_eq!(d.objects.len(), 1);
        assert_eq!(d.objects[0].key, "d/x");
        assert_eq!(d.objects[0].size, 3);
        assert_eq!(d.prefixes, vec!["d/y/".to_string()]);

        let meta = store.head("a.txt").await.unwrap();
        assert_eq!(meta.size, 5);
        assert!(matches!(
            store.head("missing").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.prefix_exists("d/y/").await.unwrap());
        assert!(!store.prefix_exists("nope/").await.unwrap());

        let mut buf = [0u8; 8];
        let n = store.get_range("a.txt", 1, &mut buf, None).await.unwrap();
        assert_eq!(&buf[..n], b"ello");
        let n = store.get_range("a.txt", 5, &mut buf, None).await.unwrap();
        assert_eq!(n, 0);
        let n = store.get_range("a.txt", 99, &mut buf, None).await.unwrap();
        assert_eq!(n, 0);
        let n = store.get_range("d/y/z", 0, &mut buf, None).await.unwrap();
        assert_eq!(n, 0);

        // An ETag precondition passes with the current tag and fails with
        // any other, never returning bytes.
        let n = store
            .get_range("a.txt", 0, &mut buf, Some(&meta.etag))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(matches!(
            store
                .get_range("a.txt", 0, &mut buf, Some("not-the-etag"))
                .await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert!(matches!(
            store.get_range("missing", 0, &mut buf, None).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    /// Paging: with `n` files `f00000..` under `many/`, pages of `page`
    /// keys visit each exactly once, in order.
    pub async fn paging(store: &dyn ObjectStore, n: usize, page: u32) {
        let mut token: Option<String> = None;
        let mut seen = Vec::new();
        for _ in 0..=(n / page as usize + 1) {
            let p = store.list("many/", token.as_deref(), page).await.unwrap();
            assert!(p.objects.len() <= page as usize);
            seen.extend(p.objects.into_iter().map(|o| o.key));
            token = p.next_token;
            if token.is_none() {
                break;
            }
        }
        assert!(token.is_none(), "listing did not finish");
        let want: Vec<_> = (0..n).map(|i| format!("many/f{i:05}")).collect();
        assert_eq!(seen, want);
    }

    /// Reads all of `key` in one ranged read.
    async fn read_whole(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
        let size = store.head(key).await.unwrap().size as usize;
        let mut buf = vec![0u8; size + 1];
        let n = store.get_range(key, 0, &mut buf, None).await.unwrap();
        buf.truncate(n);
        buf
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    fn not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::NotFound { .. }))
    }

    /// Every write: expects an empty store and leaves only keys under `w/`.
    pub async fn writes(store: &dyn ObjectStore) {
        let posix = PosixMeta {
            mode: Some(0o100_640),
            uid: Some(1000),
            gid: Some(100),
            mtime_ns: Some(1_700_000_000_123_456_789),
        };
        let none = PosixMeta::default();

        // A put appears whole, with its metadata; a second one replaces it.
        let e1 = store.put("w/a", b"first".to_vec(), &posix).await.unwrap();
        let h = store.head("w/a").await.unwrap();
        assert_eq!((h.key.as_str(), h.size), ("w/a", 5));
        assert_eq!(h.etag, e1);
        assert_eq!(h.posix, Some(posix));
        assert_eq!(read_whole(store, "w/a").await, b"first");
        let e2 = store.put("w/a", b"second".to_vec(), &none).await.unwrap();
        assert_ne!(e1, e2);
        let h = store.head("w/a").await.unwrap();
        assert_eq!((h.size, h.etag.as_str(), h.posix), (6, e2.as_str(), None));
        assert_eq!(read_whole(store, "w/a").await, b"second");
        // Same size, new content: still a new ETag, and reads see it.
        let e3 = store.put("w/a", b"SECOND".to_vec(), &none).await.unwrap();
        assert_ne!(e2, e3);
        assert_eq!(read_whole(store, "w/a").await, b"SECOND");
        let mut buf = [0u8; 8];
        assert!(matches!(
            store.get_range("w/a", 0, &mut buf, Some(&e2)).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        // Parents come into being as needed; empty objects are objects.
        store.put("w/n/e/s/t", Vec::new(), &none).await.unwrap();
        assert_eq!(store.head("w/n/e/s/t").await.unwrap().size, 0);
        assert!(store.prefix_exists("w/n/e/").await.unwrap());

        // Multipart: three parts, sent out of order, the last one short;
        // nothing shows until the upload completes.
        let part = store.part_bytes_min().max(4096) as usize;
        let data = pattern(7, 2 * part + part / 3);
        let id = store.multipart_start("w/mp", &posix).await.unwrap();
        let chunks: Vec<&[u8]> = data.chunks(part).collect();
        assert_eq!(chunks.len(), 3);
        let mut done = Vec::new();
        for number in [2u32, 1, 3] {
            let chunk = chunks[number as usize - 1].to_vec();
            let etag = store
                .multipart_part("w/mp", &id, number, chunk)
                .await
                .unwrap();
            done.push(PartDone { number, etag });
        }
        done.sort_by_key(|p| p.number);
        assert!(not_found(store.head("w/mp").await));
        let etag = store.multipart_complete("w/mp", &id, &done).await.unwrap();
        let h = store.head("w/mp").await.unwrap();
        assert_eq!(
            (h.size, h.etag.as_str()),
            (data.len() as u64, etag.as_str())
        );
        assert_eq!(h.posix, Some(posix));
        assert!(read_whole(store, "w/mp").await == data, "multipart content");

        // An aborted upload leaves nothing; aborting it again is fine.
        let id = store.multipart_start("w/ab", &none).await.unwrap();
        store
            .multipart_part("w/ab", &id, 1, b"partial".to_vec())
            .await
            .unwrap();
        store.multipart_abort("w/ab", &id).await.unwrap();
        assert!(not_found(store.head("w/ab").await));
        store.multipart_abort("w/ab", &id).await.unwrap();

        // Copies keep the source's metadata, or take new metadata.
        let src = store
            .put("w/src", b"copy me".to_vec(), &posix)
            .await
            .unwrap();
        store.copy("w/src", "w/c1", None, None).await.unwrap();
        let h = store.head("w/c1").await.unwrap();
        assert_eq!((h.size, h.posix), (7, Some(posix)));
        assert_eq!(read_whole(store, "w/c1").await, b"copy me");
        let other = PosixMeta {
            mode: Some(0o100_600),
            ..PosixMeta::default()
        };
        let e = store
            .copy("w/src", "w/c2", Some(&src), Some(&other))
            .await
            .unwrap();
        let h = store.head("w/c2").await.unwrap();
        assert_eq!((h.etag.as_str(), h.posix), (e.as_str(), Some(other)));
        assert_eq!(read_whole(store, "w/c2").await, b"copy me");
        // A copy replaces its destination.
        store.copy("w/a", "w/c2", None, None).await.unwrap();
        let h = store.head("w/c2").await.unwrap();
        assert_eq!((h.size, h.posix), (6, None));
        assert_eq!(read_whole(store, "w/c2").await, b"SECOND");
        // A stale source ETag fails and copies nothing.
        store
            .put("w/src", b"changed".to_vec(), &none)
            .await
            .unwrap();
        assert!(matches!(
            store.copy("w/src", "w/c3", Some(&src), None).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert!(not_found(store.head("w/c3").await));
        assert!(not_found(store.copy("w/missing", "w/c3", None, None).await));

        // Deleting twice, or what never was, succeeds.
        store.delete("w/c1").await.unwrap();
        assert!(not_found(store.head("w/c1").await));
        store.delete("w/c1").await.unwrap();
        store.delete("w/never").await.unwrap();

        // A directory marker makes its prefix exist until it is deleted.
        // (Its metadata is not checked: SeaweedFS keeps markers as filer
        // directories and drops their user metadata.)
        let dir = PosixMeta {
            mode: Some(0o040_755),
            ..PosixMeta::default()
        };
        store.put("dd/", Vec::new(), &dir).await.unwrap();
        assert!(store.prefix_exists("dd/").await.unwrap());
        store.delete("dd/").await.unwrap();
        assert!(!store.prefix_exists("dd/").await.unwrap());

        // Only the objects written are left, listed without metadata.
        let root = store.list("", None, 1000).await.unwrap();
        assert!(root.objects.is_empty(), "{:?}", root.objects);
        assert_eq!(root.prefixes, vec!["w/".to_string()]);
        let w = store.list("w/", None, 1000).await.unwrap();
        let keys: Vec<_> = w.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["w/a", "w/c2", "w/mp", "w/src"]);
        assert!(w.objects.iter().all(|o| o.posix.is_none()));
        assert_eq!(w.prefixes, vec!["w/n/".to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_meta_round_trips_through_pairs() {
        let full = PosixMeta {
            mode: Some(0o100_644),
            uid: Some(1000),
            gid: Some(0),
            mtime_ns: Some(1_700_000_000_000_000_007),
        };
        let pairs = full.to_pairs();
        assert_eq!(
            pairs,
            vec![
                ("mode", "33188".to_string()),
                ("uid", "1000".to_string()),
                ("gid", "0".to_string()),
                ("mtime", "1700000000.000000007".to_string()),
            ]
        );
        let back = PosixMeta::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(back, Some(full));

        // Whole seconds are written without a fraction.
        let whole = PosixMeta {
            mtime_ns: Some(1_700_000_000_000_000_000),
            ..PosixMeta::default()
        };
        assert_eq!(whole.to_pairs(), vec![("mtime", "1700000000".to_string())]);
        assert!(PosixMeta::default().to_pairs().is_empty());
        assert!(PosixMeta::default().is_empty());
    }

    #[test]
    fn posix_meta_parses_what_others_write() {
        // Any case, surrounding space, fewer fractional digits, foreign keys.
        let p = PosixMeta::from_pairs([
            ("Mode", " 16877 "),
            ("UID", "501"),
            ("mtime", "1.5"),
            ("x-other", "whatever"),
        ])
        .unwrap();
        assert_eq!(p.mode, Some(0o040_755));
        assert_eq!(p.uid, Some(501));
        assert_eq!(p.gid, None);
        assert_eq!(p.mtime_ns, Some(1_500_000_000));
        assert_eq!(
            PosixMeta::from_pairs([("mtime", "12.000000001")])
                .unwrap()
                .mtime_ns,
            Some(12_000_000_001)
        );
        assert_eq!(
            PosixMeta::from_pairs([("mtime", "0")]).unwrap().mtime_ns,
            Some(0)
        );
    }

    #[test]
    fn posix_meta_ignores_garbage() {
        for bad in [
            "",
            "x",
            "-1",
            ".5",
            "1.5.5",
            "1.0000000001",
            "1.-5",
            "1.+5",
            "1.5e3",
            "18446744073709551616",
            "18446744074",
        ] {
            assert_eq!(
                PosixMeta::from_pairs([("mtime", bad)]),
                None,
                "mtime {bad:?}"
            );
        }
        for bad in ["", "-1", "4294967296", "0x1ff", "12 3", "abc"] {
            assert_eq!(PosixMeta::from_pairs([("mode", bad)]), None, "mode {bad:?}");
            assert_eq!(PosixMeta::from_pairs([("uid", bad)]), None, "uid {bad:?}");
        }
        // Garbage in one field leaves the others.
        let p = PosixMeta::from_pairs([("mode", "zzz"), ("gid", "7")]).unwrap();
        assert_eq!((p.mode, p.gid), (None, Some(7)));
        assert_eq!(PosixMeta::from_pairs([("size", "7")]), None);
    }
}
