//! Test data: pseudo-random file contents and SHA-256 digests.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// A SHA-256 digest together with the number of bytes hashed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub len_bytes: u64,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes sha256={}", self.len_bytes, hex(&self.sha256))
    }
}

/// Lower-case hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streaming fingerprint computation.
pub struct Hasher {
    sha: Sha256,
    len_bytes: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    pub fn new() -> Self {
        Hasher {
            sha: Sha256::new(),
            len_bytes: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len_bytes += bytes.len() as u64;
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint {
            len_bytes: self.len_bytes,
            sha256: self.sha.finalize().into(),
        }
    }
}

/// Fingerprint of an in-memory buffer.
pub fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let mut h = Hasher::new();
    h.update(bytes);
    h.finish()
}

/// Fingerprint of everything a reader yields.
pub fn fingerprint_reader(mut r: impl Read) -> std::io::Result<Fingerprint> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Fingerprint of a local file.
pub fn fingerprint_file(path: &Path) -> Result<Fingerprint> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    fingerprint_reader(f).with_context(|| format!("read {}", path.display()))
}

/// splitmix64: a small, fast generator; plenty for filling test files with
/// bytes that do not compress and do not repeat at any block size.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// A seed that differs between runs and between tests of one run.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut m = SplitMix64::new(t ^ ((std::process::id() as u64) << 32));
    m.next_u64()
}

/// Write `len_bytes` pseudo-random bytes to `path` (creating parent
/// directories) and return their fingerprint. Streams in 1 MiB chunks, so a
/// 256 MiB file costs no more memory than a small one.
pub fn write_random_file(path: &Path, len_bytes: u64, seed: u64) -> Result<Fingerprint> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("mkdir -p {}", parent.display()))?;
    }
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut rng = SplitMix64::new(seed);
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len_bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all().ok();
    Ok(h.finish())
}
