//! Real NFS clients (libnfs-utils `nfs-cat`, `nfs-cp`, `nfs-ls`) against a
//! real `tidegate serve`, each body run over a local source directory and
//! over a SeaweedFS bucket: content is compared byte for byte (SHA-256 and
//! length), listings name for name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::backend::{Backend, Fixture};
use tidegate_tests::data::{fingerprint_file, fresh_seed, write_random_file, Fingerprint};
use tidegate_tests::for_each_backend;
use tidegate_tests::rpc::{NfsClient, NF3DIR, NF3REG};
use tidegate_tests::server::Server;
use tidegate_tests::tools::{
    nfs_cat, nfs_cp, nfs_file_url, nfs_ls, nfs_root_url, parse_nfs_ls, run, run_hash_stdout,
    walk_local, LsEntry,
};

const MIB: u64 = 1 << 20;

for_each_backend!(
    edge_sizes_match_byte_for_byte,
    file_of_256_mib_matches_byte_for_byte,
    recursive_listing_matches_source_tree,
    nested_and_unicode_files_match_byte_for_byte,
    hundred_thousand_entry_directory_lists_completely,
);

/// Read a file with `nfs-cat` (stdout hashed as it streams).
fn cat(server: &Server, rel: &str, timeout: Duration) -> Fingerprint {
    let url = nfs_file_url(server.port, rel);
    let (status, fp, stderr) = run_hash_stdout(Command::new(nfs_cat()).arg(&url), timeout)
        .unwrap_or_else(|e| {
            panic!(
                "nfs-cat {url}: {e:#}\nserver stderr:\n{}",
                server.stderr_text()
            )
        });
    assert!(
        status.success(),
        "nfs-cat {url} failed ({status}): {stderr}\nserver stderr:\n{}",
        server.stderr_text()
    );
    fp
}

/// Copy a file with `nfs-cp` to a local file and fingerprint the copy.
fn cp(server: &Server, rel: &str, dest: &Path, timeout: Duration) -> Fingerprint {
    let url = nfs_file_url(server.port, rel);
    let out = run(Command::new(nfs_cp()).arg(&url).arg(dest), timeout).unwrap_or_else(|e| {
        panic!(
            "nfs-cp {url}: {e:#}\nserver stderr:\n{}",
            server.stderr_text()
        )
    });
    assert!(
        out.status.success(),
        "nfs-cp {url} {} failed ({}): {}{}\nserver stderr:\n{}",
        dest.display(),
        out.status,
        out.stdout_text(),
        out.stderr,
        server.stderr_text()
    );
    let fp = fingerprint_file(dest).expect("fingerprint nfs-cp output");
    std::fs::remove_file(dest).ok();
    fp
}

/// `nfs-ls [-R]` of the export root, parsed.
fn ls_root(server: &Server, recursive: bool, timeout: Duration) -> Vec<LsEntry> {
    let url = nfs_root_url(server.port);
    let mut cmd = Command::new(nfs_ls());
    if recursive {
        cmd.arg("-R");
    }
    cmd.arg(&url);
    let out = run(&mut cmd, timeout).unwrap_or_else(|e| {
        panic!(
            "nfs-ls {url}: {e:#}\nserver stderr:\n{}",
            server.stderr_text()
        )
    });
    assert!(
        out.status.success(),
        "nfs-ls {url} failed ({}): {}{}\nserver stderr:\n{}",
        out.status,
        out.stdout_text(),
        out.stderr,
        server.stderr_text()
    );
    parse_nfs_ls(&out.stdout_text()).expect("parse nfs-ls output")
}

/// Files of every edge size at the export root, read with nfs-cat and
/// nfs-cp, match their source byte for byte.
fn edge_sizes_match_byte_for_byte(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let sizes = [0, 1, 4095, 4096, 4097, MIB - 1, MIB, MIB + 1, 3 * MIB + 17];
    let seed = fresh_seed();
    let mut expected = BTreeMap::new();
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("size-{size}.bin");
        let fp = write_random_file(
            &fx.source_dir().join(&name),
            size,
            seed.wrapping_add(i as u64),
        )
        .unwrap();
        expected.insert(name, fp);
    }
    let server = fx.start();
    let scratch = fx.scratch();
    for (name, want) in &expected {
        let got = cat(&server, name, Duration::from_secs(60));
        assert_eq!(&got, want, "nfs-cat {name}");
        let got = cp(
            &server,
            name,
            &scratch.join("copy"),
            Duration::from_secs(60),
        );
        assert_eq!(&got, want, "nfs-cp {name}");
    }
    // The listing shows each file once with its size.
    let listed: BTreeMap<String, u64> = ls_root(&server, false, Duration::from_secs(60))
        .into_iter()
        .map(|e| (e.path, e.size))
        .collect();
    let want: BTreeMap<String, u64> = expected
        .iter()
        .map(|(n, f)| (n.clone(), f.len_bytes))
        .collect();
    assert_eq!(listed, want, "nfs-ls of the root");
}

/// A 256 MiB file of random bytes survives nfs-cat and nfs-cp intact.
fn file_of_256_mib_matches_byte_for_byte(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let want =
        write_random_file(&fx.source_dir().join("big.bin"), 256 * MIB, fresh_seed()).unwrap();
    let server = fx.start();
    let got = cat(&server, "big.bin", Duration::from_secs(300));
    assert_eq!(got, want, "nfs-cat big.bin");
    let got = cp(
        &server,
        "big.bin",
        &fx.scratch().join("big.copy"),
        Duration::from_secs(300),
    );
    assert_eq!(got, want, "nfs-cp big.bin");
}

/// The tree used for nested-directory and name tests: (relative path, size).
const TREE_FILES: &[(&str, u64)] = &[
    ("top.txt", 100),
    ("ünïcødé файл 数据.bin", 12_345),
    ("with space/file with spaces.txt", 777),
    ("a/b/sibling.bin", 5_000),
    ("a/b/c/d/deep.bin", 10_000),
    ("a/b/c/d/e/f/deepest.bin", 4_097),
    ("目录 ünï/数据 file.bin", 4_096),
    ("目录 ünï/.hidden", 1),
    ("a/empty.bin", 0),
];
const TREE_EMPTY_DIRS: &[&str] = &["a/empty-dir", "目录 ünï/空"];

fn build_tree(root: &Path) -> BTreeMap<String, Fingerprint> {
    let seed = fresh_seed();
    let mut out = BTreeMap::new();
    for (i, (rel, size)) in TREE_FILES.iter().enumerate() {
        let fp = write_random_file(&root.join(rel), *size, seed.wrapping_add(i as u64)).unwrap();
        out.insert(rel.to_string(), fp);
    }
    for d in TREE_EMPTY_DIRS {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    out
}

/// `nfs-ls -R` lists exactly the source tree (names, kinds, file sizes),
/// including nested, empty, spaced and UTF-8 names.
fn recursive_listing_matches_source_tree(backend: Backend) {
    let mut fx = Fixture::new(backend);
    build_tree(fx.source_dir());
    let server = fx.start();
    let listed = ls_root(&server, true, Duration::from_secs(60));

    let key = |e: &LsEntry| {
        (
            e.path.clone(),
            e.kind,
            if e.kind == 'd' { 0 } else { e.size },
        )
    };
    let mut seen = BTreeSet::new();
    for e in &listed {
        assert!(
            seen.insert(e.path.clone()),
            "nfs-ls -R listed {:?} twice",
            e.path
        );
    }
    let got: BTreeSet<_> = listed.iter().map(key).collect();
    let want: BTreeSet<_> = walk_local(fx.source_dir())
        .unwrap()
        .iter()
        .map(key)
        .collect();
    assert_eq!(got, want, "nfs-ls -R versus the source tree");
    // Sanity: the walk saw what we built.
    assert!(want.iter().any(|(p, k, _)| p == "a/b/c/d/e/f" && *k == 'd'));
    assert!(want
        .iter()
        .any(|(p, _, s)| p == "ünïcødé файл 数据.bin" && *s == 12_345));
}

/// Files in nested directories and with spaces or UTF-8 in their names read
/// back byte for byte through nfs-cat and nfs-cp (libnfs mounts the parent
/// directory path, e.g. MNT `//a/b/c/d`), and through LOOKUP + READ on a
/// raw connection.
fn nested_and_unicode_files_match_byte_for_byte(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let expected = build_tree(fx.source_dir());
    let server = fx.start();
    let scratch = fx.scratch();
    for (rel, want) in &expected {
        let got = cat(&server, rel, Duration::from_secs(60));
        assert_eq!(&got, want, "nfs-cat {rel}");
        let got = cp(&server, rel, &scratch.join("copy"), Duration::from_secs(60));
        assert_eq!(&got, want, "nfs-cp {rel}");
    }

    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    for (rel, want) in &expected {
        let fh = c.lookup_path(&root, rel).unwrap();
        let attr = c
            .getattr(&fh)
            .unwrap()
            .unwrap_or_else(|s| panic!("GETATTR {rel}: nfsstat3 {s}"));
        assert_eq!(attr.ftype, NF3REG, "{rel} type");
        assert_eq!(attr.size, want.len_bytes, "{rel} size");
        let data = c.read_all(&fh, 65_536, 1 << 30).unwrap();
        assert_eq!(
            tidegate_tests::data::fingerprint(&data),
            *want,
            "LOOKUP+READ {rel}"
        );
    }
    for d in TREE_EMPTY_DIRS {
        let fh = c.lookup_path(&root, d).unwrap();
        let attr = c.getattr(&fh).unwrap().unwrap();
        assert_eq!(attr.ftype, NF3DIR, "{d} type");
    }
}

/// A directory of 100,000 entries: `nfs-ls` (READDIRPLUS pages) and a raw
/// READDIR walk with small pages each list every name exactly once.
fn hundred_thousand_entry_directory_lists_completely(backend: Backend) {
    const N: usize = 100_000;
    let mut fx = Fixture::new(backend);
    let mut names = BTreeSet::new();
    for i in 0..N {
        // Varying lengths, so entries straddle page boundaries differently.
        let name = if i % 7 == 0 {
            format!("entry-{i:06}-{}", "x".repeat(i % 180))
        } else {
            format!("entry-{i:06}")
        };
        std::fs::File::create(fx.source_dir().join(&name)).unwrap();
        names.insert(name);
    }
    assert_eq!(names.len(), N);
    let server = fx.start();

    let listed = ls_root(&server, false, Duration::from_secs(300));
    let mut seen = BTreeSet::new();
    for e in &listed {
        assert!(
            seen.insert(e.path.clone()),
            "nfs-ls listed {:?} more than once",
            e.path
        );
        assert_eq!((e.kind, e.size), ('-', 0), "{:?}", e.path);
    }
    assert_eq!(seen.len(), N, "nfs-ls listed {} of {N} entries", seen.len());
    assert!(
        seen == names,
        "nfs-ls names differ from the source directory"
    );

    // The same with READDIR and ~4 KiB pages: on the order of a thousand
    // pages, each cookie taken from the previous page.
    let mut c = NfsClient::connect(server.addr()).unwrap();
    let root = c.mount_root().unwrap();
    let (entries, pages) = c.list_dir(&root, false, 4096, 20_000).unwrap();
    let mut seen = BTreeSet::new();
    for e in &entries {
        let n = String::from_utf8(e.name.clone()).unwrap();
        if n == "." || n == ".." {
            continue;
        }
        assert!(
            seen.insert(n.clone()),
            "READDIR returned {n:?} more than once"
        );
    }
    assert!(pages > 10, "expected many READDIR pages, got {pages}");
    assert_eq!(
        seen.len(),
        N,
        "READDIR listed {} of {N} entries",
        seen.len()
    );
    assert!(
        seen == names,
        "READDIR names differ from the source directory"
    );
}
