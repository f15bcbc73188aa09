//! Caches in front of the object store.

pub mod meta;
pub mod block;
