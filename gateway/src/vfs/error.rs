//! Protocol-neutral file system errors. Each protocol maps them to its
//! status codes in one table (`nfs::v3::status_of`).

use thiserror::Error;

use super::handles::HandleError;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    #[error("file handle is malformed")]
    BadHandle,
    #[error("file handle no longer names an object")]
    Stale,
    #[error("directory cookie is not valid for this directory")]
    BadCookie,
    #[error("the export is read-only")]
    ReadOnly,
    #[error("operation not supported")]
    NotSupported,
    #[error("directory has more than {0} entries")]
    TooManyEntries(usize),
    #[error("file exists")]
    Exists,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("directory not empty")]
    NotEmpty,
    #[error("busy: staging is full or the journal is at its bound; try again")]
    Delay,
    #[error("file too large")]
    TooBig,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Internal: the file's data left staging between two steps; the
    /// caller brings it back and retries.
    #[error("file data is not staged")]
    NotStaged,
    #[error("attributes changed since the guard was read")]
    NotSync,
    #[error("too large to rename in place")]
    CrossDevice,
    #[error("{op} {path}: {source}")]
    Local {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Journal(#[from] crate::write::JournalError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Handles(#[from] HandleError),
}

pub type FsResult<T> = Result<T, FsError>;
