//! tidegate: an S3-backed caching NFS gateway.
//!
//! The layers, top to bottom: [`rpc`] (record marking, call headers,
//! dispatch) → [`nfs`] (thin protocol adapters) → [`vfs`] (namespace,
//! stable handles) → [`cache`] → [`store`] (the storage of record). The
//! [`io`] facade owns the per-core io_uring runtime that [`server`] runs on.

pub mod cache;
pub mod config;
pub mod io;
pub mod nfs;
pub mod prefetch;
pub mod rpc;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod vfs;
pub mod write;
