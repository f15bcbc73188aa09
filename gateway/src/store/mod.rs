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
}
