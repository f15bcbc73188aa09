//! Caches in front of the object store.

pub mod block;
pub mod meta;
