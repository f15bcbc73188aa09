//! Benchmarks for tidegate.
//!
//! The side-by-side harness (`src/bin/sidebyside.rs`, run by
//! `cargo xtask bench`) measures tidegate against NFS-Ganesha serving the
//! same file from the same machine, with the same client: fio's nfs engine
//! (libnfs, NFSv3 over TCP), using the job files in `fio/`. Both servers run
//! in a private network namespace that holds only `lo`, which also lets
//! Ganesha's rpcbind run without touching the host's.
//!
//! What the numbers mean: both peers serve from the page cache (every run is
//! preceded by one full read through each server), so the comparison is of
//! the request path — RPC handling, copies, scheduling — not of disks. On a
//! 2-core machine the client and server share the cores, which bounds both.
//!
//! This library holds the parts that are worth unit-testing on their own:
//! a small JSON reader/writer ([`json`]), fio result extraction ([`fio`]),
//! and the namespace/process sandbox ([`sandbox`]).

pub mod fio;
pub mod json;
pub mod sandbox;
