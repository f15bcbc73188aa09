//! Write-back through the vfs against the in-memory store: what the store
//! shows, when, and after a crash.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cache::meta::{MetaCache, MetaTtls};
use crate::store::memory::MemoryStore;
use crate::store::{ObjectStore, StoreError};
use crate::vfs::{CreateHow, Cred, HandleTable, SetAttrs, Vfs};

const ROOT: Cred = Cred::ROOT;

fn run<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

struct Rig {
    store: Arc<MemoryStore>,
    vfs: Vfs,
    wb: Arc<WriteBack>,
    stop: tokio::sync::watch::Sender<bool>,
}

fn rig(store: Arc<MemoryStore>, dir: &Path, delay: Duration) -> Rig {
    let h = HandleTable::open(&dir.join("state"), "memory").unwrap();
    let ttls = MetaTtls {
        attrs: Duration::from_secs(0),
        negative: Duration::from_secs(0),
        immutable: false,
    };
    let mut cfg = WriteConfig::new(dir.join("staging"));
    cfg.upload_delay = delay;
    cfg.part_bytes = 1 << 20;
    let wb = Arc::new(WriteBack::open(store.clone(), cfg).unwrap());
    let vfs = Vfs::new(store.clone(), h, MetaCache::new(ttls)).with_write(Some(wb.clone()));
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::task::spawn_local(wb.clone().run_uploader(rx));
    Rig {
        store,
        vfs,
        wb,
        stop,
    }
}

async fn object(s: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    let m = match s.head(key).await {
        Ok(m) => m,
        Err(StoreError::NotFound { .. }) => return None,
        Err(e) => panic!("{e}"),
    };
    let mut b = vec![0u8; m.size as usize];
    let n = s.get_range(key, 0, &mut b, None).await.unwrap();
    b.truncate(n);
    Some(b)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn committed_file_is_uploaded_after_the_quiet_period_and_reads_see_writes_before() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let r = rig(
            Arc::new(MemoryStore::new()),
            t.path(),
            Duration::from_millis(300),
        );
        let root = r.vfs.root();
        let (f, _) = r
            .vfs
            .create(
                &root,
                b"f.bin",
                CreateHow::Unchecked(SetAttrs::default()),
                ROOT,
            )
            .await
            .unwrap();
        let data = pattern(3 << 20, 7);
        for (i, c) in data.chunks(1 << 20).enumerate() {
            r.vfs.write(&f, (i << 20) as u64, c, false).await.unwrap();
        }
        // Read-your-writes before anything reached the store.
        let mut buf = vec![0u8; 100];
        let (n, _, a) = r.vfs.read(&f, (2 << 20) + 5, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], &data[(2 << 20) + 5..(2 << 20) + 105]);
        assert_eq!(a.size, 3 << 20);
        // Not committed: never uploaded, however long it waits (short of
        // the idle bound).
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(object(&r.store, "f.bin").await.is_none());
        r.vfs.commit(&f).await.unwrap();
        assert!(r.wb.drained(Duration::from_secs(10)).await);
        // Multipart (1 MiB parts): whole object, right content.
        assert_eq!(object(&r.store, "f.bin").await.unwrap(), data);
        let m = r.store.head("f.bin").await.unwrap();
        assert_eq!(m.posix.and_then(|p| p.mode), Some(0o100644));
        let _ = r.stop.send(true);
    });
}

#[test]
fn permissions_follow_posix() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let r = rig(
            Arc::new(MemoryStore::new()),
            t.path(),
            Duration::from_secs(3600),
        );
        let root = r.vfs.root();
        let alice = Cred::new(1000, 1000);
        let bob = Cred::new(1001, 1001).with_groups(&[1000]);
        let mode = |m| SetAttrs {
            mode: Some(m),
            ..SetAttrs::default()
        };
        // A sticky, world-writable directory owned by root.
        let (tmp, _) = r
            .vfs
            .mkdir(&root, b"tmp", &mode(0o1777), ROOT)
            .await
            .unwrap();
        let (af, a) = r
            .vfs
            .create(&tmp, b"a", CreateHow::Guarded(mode(0o640)), alice)
            .await
            .unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (1000, 1000, 0o640));
        // Not the owner: no chmod, no chown, no explicit times.
        use crate::vfs::FsError;
        assert!(matches!(
            r.vfs.setattr(&af, &mode(0o777), None, bob).await,
            Err(FsError::Perm)
        ));
        let chown = SetAttrs {
            uid: Some(1001),
            ..SetAttrs::default()
        };
        assert!(matches!(
            r.vfs.setattr(&af, &chown, None, alice).await,
            Err(FsError::Perm)
        ));
        // The owner may give the file to a group she is in... not 1001.
        let chgrp = SetAttrs {
            gid: Some(1001),
            ..SetAttrs::default()
        };
        assert!(matches!(
            r.vfs.setattr(&af, &chgrp, None, alice).await,
            Err(FsError::Perm)
        ));
        // Sticky: bob may not remove alice's file, alice and root may.
        assert!(matches!(
            r.vfs.remove(&tmp, b"a", bob).await,
            Err(FsError::Perm)
        ));
        // A set-user-ID file loses the bit when root gives it away.
        r.vfs
            .setattr(&af, &mode(0o4755), None, alice)
            .await
            .unwrap();
        let a = r.vfs.setattr(&af, &chown, None, ROOT).await.unwrap();
        assert_eq!((a.uid, a.mode), (1001, 0o755));
        // A directory bob cannot write to.
        let (priv_, _) = r
            .vfs
            .mkdir(&tmp, b"priv", &mode(0o755), alice)
            .await
            .unwrap();
        assert!(matches!(
            r.vfs
                .create(&priv_, b"x", CreateHow::Unchecked(SetAttrs::default()), bob)
                .await,
            Err(FsError::Access)
        ));
        // Set-group-ID directories pass their group on.
        let (sg, _) = r
            .vfs
            .mkdir(&root, b"sg", &mode(0o2777), ROOT)
            .await
            .unwrap();
        r.vfs
            .setattr(
                &sg,
                &SetAttrs {
                    gid: Some(42),
                    ..SetAttrs::default()
                },
                None,
                ROOT,
            )
            .await
            .unwrap();
        let (_, f) = r
            .vfs
            .create(&sg, b"f", CreateHow::Unchecked(SetAttrs::default()), alice)
            .await
            .unwrap();
        assert_eq!(f.gid, 42);
        let (_, d) = r.vfs.mkdir(&sg, b"d", &mode(0o755), alice).await.unwrap();
        assert_eq!((d.gid, d.mode & 0o2000), (42, 0o2000));
        r.vfs.remove(&tmp, b"a", ROOT).await.unwrap();
        let _ = r.stop.send(true);
    });
}

#[test]
fn rename_before_upload_goes_straight_to_the_final_key() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let store = Arc::new(MemoryStore::new());
        store.put("ckpt", b"old checkpoint");
        let r = rig(store, t.path(), Duration::from_millis(200));
        let root = r.vfs.root();
        let (f, _) = r
            .vfs
            .create(
                &root,
                b"ckpt.tmp",
                CreateHow::Guarded(SetAttrs::default()),
                ROOT,
            )
            .await
            .unwrap();
        r.vfs.write(&f, 0, b"new checkpoint!", true).await.unwrap();
        r.vfs.commit(&f).await.unwrap();
        r.vfs
            .rename(&root, b"ckpt.tmp", &root, b"ckpt", ROOT)
            .await
            .unwrap();
        // Namespace: atomic, at once.
        assert!(r.vfs.lookup(&root, b"ckpt.tmp").await.is_err());
        let (g, a) = r.vfs.lookup(&root, b"ckpt").await.unwrap();
        assert_eq!(g.id, f.id, "the handle follows the file");
        assert_eq!(a.size, 15);
        assert!(r.wb.drained(Duration::from_secs(10)).await);
        assert_eq!(object(&r.store, "ckpt").await.unwrap(), b"new checkpoint!");
        assert!(object(&r.store, "ckpt.tmp").await.is_none());
        let _ = r.stop.send(true);
    });
}

#[test]
fn rename_of_an_uploaded_file_copies_then_deletes() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let store = Arc::new(MemoryStore::new());
        store.put("d/a", b"aaa");
        let r = rig(store, t.path(), Duration::from_millis(50));
        let root = r.vfs.root();
        let (d, _) = r.vfs.lookup(&root, b"d").await.unwrap();
        let (e, _) = r
            .vfs
            .mkdir(&root, b"e", &SetAttrs::default(), ROOT)
            .await
            .unwrap();
        r.vfs.rename(&d, b"a", &e, b"b", ROOT).await.unwrap();
        let (b, _) = r.vfs.lookup(&e, b"b").await.unwrap();
        let mut buf = [0u8; 8];
        let (n, _, _) = r.vfs.read(&b, 0, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"aaa", "read from the old key until copied");
        assert!(r.wb.drained(Duration::from_secs(10)).await);
        assert_eq!(object(&r.store, "e/b").await.unwrap(), b"aaa");
        assert!(object(&r.store, "d/a").await.is_none());
        assert!(r.store.head("e/").await.is_ok(), "mkdir leaves a marker");
        // The directory d/ is now empty and can go.
        r.vfs.rmdir(&root, b"d", ROOT).await.unwrap();
        assert!(matches!(
            r.vfs.rmdir(&root, b"e", ROOT).await,
            Err(crate::vfs::FsError::NotEmpty)
        ));
        let _ = r.stop.send(true);
    });
}

#[test]
fn a_directory_rename_moves_everything_below_it() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let store = Arc::new(MemoryStore::new());
        for k in ["src/x", "src/sub/y", "src/sub/deep/z"] {
            store.put(k, k.as_bytes());
        }
        let r = rig(store, t.path(), Duration::from_millis(50));
        let root = r.vfs.root();
        let (src, _) = r.vfs.lookup(&root, b"src").await.unwrap();
        let (x, _) = r.vfs.lookup(&src, b"x").await.unwrap();
        let (new_file, _) = r
            .vfs
            .create(
                &src,
                b"new",
                CreateHow::Unchecked(SetAttrs::default()),
                ROOT,
            )
            .await
            .unwrap();
        r.vfs.write(&new_file, 0, b"fresh", true).await.unwrap();
        r.vfs
            .rename(&root, b"src", &root, b"dst", ROOT)
            .await
            .unwrap();
        assert!(r.vfs.lookup(&root, b"src").await.is_err());
        // Old handles follow.
        let xn = r.vfs.node(x.id).unwrap();
        assert_eq!(&*xn.key, "dst/x");
        assert!(r.wb.drained(Duration::from_secs(10)).await);
        for (k, v) in [
            ("dst/x", &b"src/x"[..]),
            ("dst/sub/y", b"src/sub/y"),
            ("dst/sub/deep/z", b"src/sub/deep/z"),
            ("dst/new", b"fresh"),
        ] {
            assert_eq!(object(&r.store, k).await.as_deref(), Some(v), "{k}");
        }
        let left = r.store.list("src/", None, 1000).await.unwrap();
        assert!(left.objects.is_empty() && left.prefixes.is_empty());
        let _ = r.stop.send(true);
    });
}

#[test]
fn a_crash_keeps_committed_bytes_and_cuts_uncommitted_ones() {
    let t = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let id = run(async {
        // A long quiet period: nothing is uploaded before the "crash".
        let r = rig(store.clone(), t.path(), Duration::from_secs(3600));
        let root = r.vfs.root();
        let (f, _) = r
            .vfs
            .create(&root, b"f", CreateHow::Unchecked(SetAttrs::default()), ROOT)
            .await
            .unwrap();
        r.vfs.write(&f, 0, &pattern(1000, 1), false).await.unwrap();
        r.vfs.commit(&f).await.unwrap();
        r.vfs
            .write(&f, 1000, &pattern(500, 2), false)
            .await
            .unwrap();
        let _ = r.stop.send(true);
        f.id
        // Dropped without any shutdown step.
    });
    run(async {
        let r = rig(store.clone(), t.path(), Duration::from_millis(10));
        let f = r.vfs.node(id).unwrap();
        let a = r.vfs.getattr(&f).await.unwrap();
        assert_eq!(a.size, 1000, "only the committed size survives");
        assert!(r.wb.drained(Duration::from_secs(10)).await);
        assert_eq!(object(&store, "f").await.unwrap(), pattern(1000, 1));
        let _ = r.stop.send(true);
    });
}

#[test]
fn writes_during_an_upload_are_never_mixed_into_the_object() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let r = rig(
            Arc::new(MemoryStore::new()),
            t.path(),
            Duration::from_millis(1),
        );
        let root = r.vfs.root();
        let (f, _) = r
            .vfs
            .create(&root, b"f", CreateHow::Unchecked(SetAttrs::default()), ROOT)
            .await
            .unwrap();
        let size = 4 << 20;
        let mut last = Vec::new();
        for round in 0..20u8 {
            last = pattern(size, round);
            r.vfs.write(&f, 0, &last, true).await.unwrap();
            r.vfs.commit(&f).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
            // Whatever the store holds is one whole round.
            if let Some(o) = object(&r.store, "f").await {
                assert!(
                    (0..=round).any(|k| o == pattern(size, k)),
                    "object mixes rounds"
                );
            }
        }
        assert!(r.wb.drained(Duration::from_secs(20)).await);
        assert_eq!(object(&r.store, "f").await.unwrap(), last);
        let _ = r.stop.send(true);
    });
}

#[test]
fn setattr_truncate_mode_and_symlinks() {
    let t = tempfile::tempdir().unwrap();
    run(async {
        let store = Arc::new(MemoryStore::new());
        store.put("big", &pattern(10_000, 3));
        let r = rig(store, t.path(), Duration::from_millis(20));
        let root = r.vfs.root();
        let (f, _) = r.vfs.lookup(&root, b"big").await.unwrap();
        let sa = SetAttrs {
            size: Some(100),
            mode: Some(0o600),
            uid: Some(1000),
            ..SetAttrs::default()
        };
        let a = r.vfs.setattr(&f, &sa, None, ROOT).await.unwrap();
        assert_eq!((a.size, a.mode, a.uid), (100, 0o600, 1000));
        let (l, la) = r
            .vfs
            .symlink(&root, b"ln", b"big", &SetAttrs::default(), ROOT)
            .await
            .unwrap();
        assert_eq!(la.kind, crate::vfs::NodeKind::Symlink);
        assert_eq!(r.vfs.readlink(&l).await.unwrap(), "big");
        assert!(r.wb.drained(Duration::from_secs(10)).await);
        assert_eq!(object(&r.store, "big").await.unwrap(), pattern(100, 3));
        let m = r.store.head("big").await.unwrap();
        let p = m.posix.unwrap();
        assert_eq!((p.mode, p.uid), (Some(0o100600), Some(1000)));
        assert_eq!(object(&r.store, "ln").await.unwrap(), b"big");
        let lm = r.store.head("ln").await.unwrap().posix.unwrap();
        assert_eq!(lm.mode, Some(0o120777));
        let _ = r.stop.send(true);
    });
}
