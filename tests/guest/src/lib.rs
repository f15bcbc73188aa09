//! The dataset that the kernel-client (VM) scenarios read, and the bytes of
//! every file in it.
//!
//! A file's content is a pure function of its path relative to the dataset
//! root: the host writes the dataset once with [`write_dataset`] (through
//! `tidegate-guest gen`), and the helpers inside the guest regenerate the
//! expected bytes of any file from its path to check what they read through
//! the NFS mount. The checksums that the shell scenarios compare with
//! `md5sum`, the size listings and the name lists are computed on the host
//! from the written files by other code (coreutils and xtask), so they do not
//! depend on this generator being right.
//!
//! Layout under the dataset root:
//!
//! - `tree/`: nested directories, empty directories, files of 0 B, 1 B,
//!   4 KiB ± 1, 1 MiB ± 1 and 64 MiB, names with spaces and UTF-8;
//! - `wide/`: one directory of [`WIDE_COUNT`] empty files with names of
//!   varying length;
//! - `small/`: [`SMALL_COUNT`] files of 1 B to 8 KiB in sub-directories of
//!   [`SMALL_PER_DIR`], the shape of an image dataset that a data loader
//!   reads in shuffled order.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Names the generator and layout below. Change it whenever either changes,
/// so that cached datasets are regenerated.
pub const DATASET_ID: &str = "tidegate-vm-dataset-1";

pub const TREE_DIR: &str = "tree";
pub const WIDE_DIR: &str = "wide";
pub const WIDE_COUNT: usize = 100_000;
pub const SMALL_DIR: &str = "small";
pub const SMALL_COUNT: usize = 10_000;
pub const SMALL_PER_DIR: usize = 1_000;
pub const SMALL_BYTES_MAX: usize = 8 * 1024;

const MIB: u64 = 1024 * 1024;

/// Regular files of `tree/`, relative to the dataset root, with their sizes.
pub const TREE_FILES: &[(&str, u64)] = &[
    ("tree/empty.bin", 0),
    ("tree/one byte.bin", 1),
    ("tree/pages/4095.bin", 4095),
    ("tree/pages/4096.bin", 4096),
    ("tree/pages/4097.bin", 4097),
    ("tree/mib/1048575.bin", MIB - 1),
    ("tree/mib/1048576.bin", MIB),
    ("tree/mib/1048577.bin", MIB + 1),
    ("tree/big/64MiB.bin", 64 * MIB),
    ("tree/dir with spaces/file with spaces.txt", 100),
    ("tree/dir with spaces/ leading space.bin", 33),
    ("tree/données/été 2024.bin", 777),
    ("tree/日本語/ファイル 1.bin", 4096),
    ("tree/emoji 🙂/x.bin", 10),
    ("tree/deep/a/b/c/d/e/f/g/h/leaf.bin", 12_345),
    ("tree/deep/a/b/c/mid.bin", 65_536),
];

/// Directories of `tree/` that hold nothing.
pub const TREE_EMPTY_DIRS: &[&str] = &["tree/empty dir", "tree/deep/a/b/empty"];

/// The 64 MiB file that the streaming scenarios read.
pub const BIG_FILE: &str = "tree/big/64MiB.bin";

/// Name of entry `i` of `wide/`: a zero-padded index and a suffix of 0 to
/// 63 characters, some of them not ASCII.
pub fn wide_name(i: usize) -> String {
    let mut name = format!("{i:06}");
    let extra = i % 64;
    if extra > 0 {
        name.push('-');
        let alphabet: &[char] = if i % 10 == 3 {
            &['é', 'ß', 'ø', 'ñ']
        } else {
            &['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']
        };
        for k in 0..extra {
            name.push(alphabet[(i + k) % alphabet.len()]);
        }
    }
    name
}

/// Path of small file `i`, relative to the dataset root.
pub fn small_path(i: usize) -> String {
    format!("{SMALL_DIR}/d{:02}/s{i:05}.bin", i / SMALL_PER_DIR)
}

/// Size of small file `i`: 1 to [`SMALL_BYTES_MAX`] bytes.
pub fn small_size(i: usize) -> usize {
    1 + (splitmix64(i as u64 ^ 0x05ee_d0f5_a11f_11e5) % SMALL_BYTES_MAX as u64) as usize
}

/// FNV-1a over the path: the seed of a file's content stream.
pub fn path_seed(rel_path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rel_path.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The byte stream of one file: consecutive [`Content::fill`] calls continue
/// where the previous one stopped, whatever the chunk sizes.
pub struct Content {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Content {
    pub fn new(rel_path: &str) -> Self {
        Content {
            state: path_seed(rel_path),
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(1);
        splitmix64(self.state).to_le_bytes()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut out = buf;
        // Finish the current word first.
        while self.used < 8 && !out.is_empty() {
            out[0] = self.word[self.used];
            self.used += 1;
            out = &mut out[1..];
        }
        let mut chunks = out.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_word());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word();
            let n = rest.len();
            rest.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

/// The whole content of a file of `len` bytes at `rel_path`.
pub fn content(rel_path: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    Content::new(rel_path).fill(&mut v);
    v
}

/// A small seeded generator for shuffles and sampling.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }

    /// A value in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

fn io_context(op: &str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{op} {}: {err}", path.display()))
}

fn create_dirs(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path).map_err(|e| io_context("mkdir -p", path, e))
}

fn write_file(root: &Path, rel_path: &str, len: u64) -> io::Result<()> {
    let path = root.join(rel_path);
    if let Some(parent) = path.parent() {
        create_dirs(parent)?;
    }
    let mut f = File::create(&path).map_err(|e| io_context("create", &path, e))?;
    let mut gen = Content::new(rel_path);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        gen.fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .map_err(|e| io_context("write", &path, e))?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes the whole dataset under `root`, which must not exist yet or be
/// empty.
pub fn write_dataset(root: &Path) -> io::Result<()> {
    create_dirs(root)?;
    for (rel, len) in TREE_FILES {
        write_file(root, rel, *len)?;
    }
    for rel in TREE_EMPTY_DIRS {
        create_dirs(&root.join(rel))?;
    }
    let wide = root.join(WIDE_DIR);
    create_dirs(&wide)?;
    for i in 0..WIDE_COUNT {
        let path = wide.join(wide_name(i));
        File::create(&path).map_err(|e| io_context("create", &path, e))?;
    }
    for i in 0..SMALL_COUNT {
        write_file(root, &small_path(i), small_size(i) as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_does_not_depend_on_chunking() {
        let whole = content("a/b", 1000);
        let mut pieces = vec![0u8; 1000];
        let mut gen = Content::new("a/b");
        let mut at = 0;
        for step in [1usize, 7, 8, 3, 100, 13, 868] {
            gen.fill(&mut pieces[at..at + step]);
            at += step;
        }
        assert_eq!(at, 1000);
        assert_eq!(whole, pieces);
        assert_ne!(content("a/c", 1000), whole);
    }

    #[test]
    fn wide_names_are_distinct() {
        let mut names: Vec<String> = (0..WIDE_COUNT).map(wide_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), WIDE_COUNT);
        assert!(names.iter().all(|n| n.len() <= 255 && !n.contains('/')));
    }

    #[test]
    fn small_sizes_are_in_range() {
        assert!((0..SMALL_COUNT)
            .map(small_size)
            .all(|s| (1..=SMALL_BYTES_MAX).contains(&s)));
    }
}
