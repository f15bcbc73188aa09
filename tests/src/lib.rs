//! Shared support for the integration tests under `tests/tests/`.
//!
//! Every test starts its own `tidegate` process on a free loopback port with
//! its own temporary source and state directories, so the tests can run in
//! parallel under nextest. The pieces:
//!
//! - [`server`]: locate the binary, start it, wait until it accepts
//!   connections, stop it (SIGTERM) and kill it on drop.
//! - [`rpc`]: a small hand-written ONC RPC / XDR client over TCP (record
//!   marking, CALL encoding, reply decoding) with MOUNT v3 and NFSv3 helpers
//!   for the procedures the tests need. It is deliberately independent from
//!   the server's own codec so that it can check it.
//! - [`tools`]: locate external clients (libnfs-utils, fio) and run them with
//!   a time limit.
//! - [`data`]: fast pseudo-random file contents and SHA-256 helpers.
//! - [`s3`]: a private SeaweedFS instance (`weed mini`) as a real S3 server.
//! - [`backend`]: one test body against a directory source and against a
//!   SeaweedFS bucket.
//! - [`s3proxy`]: a byte-transparent HTTP proxy in front of SeaweedFS that
//!   counts the gateway's S3 requests (GETs per key, ranges, listings) and
//!   can delay every answer's first byte.
//! - [`cache_rig`]: SeaweedFS behind that proxy, the gateway with a block
//!   cache and its admin endpoint (`/stats`), and datasets read back and
//!   checked byte for byte; shared by the block-cache and cache-fault tests.
//!
//! Nothing here skips: a missing binary or tool is a test failure that says
//! how to install it.

pub mod backend;
pub mod cache_rig;
pub mod data;
pub mod json;
pub mod privileged;
pub mod rpc;
pub mod s3;
pub mod s3proxy;
pub mod server;
pub mod sigv4;
pub mod tools;

use std::path::PathBuf;

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or(manifest)
}

/// The script that installs every external tool the tests use.
pub const INSTALL_HINT: &str =
    "run xtask/scripts/install-test-deps.sh (or `cargo xtask test`, which runs it)";
