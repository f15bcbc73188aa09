//! The S3 store against a real S3 server (SeaweedFS): the conformance
//! bodies every store passes, then what only S3 has (multipart upload,
//! server-side copy, batch delete, ETag preconditions, 416 past the end,
//! broken and stalled bodies, per-runtime clients, outages).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidegate::store::s3::{S3Config, S3Store, PART_BYTES_MIN};
use tidegate::store::{conformance, ObjectStore, PosixMeta, StoreError};
use tidegate_tests::data::SplitMix64;
use tidegate_tests::s3::Seaweed;

const BUCKET: &str = "tidegate-test";
/// No POSIX metadata.
const NONE: PosixMeta = PosixMeta {
    mode: None,
    uid: None,
    gid: None,
    mtime_ns: None,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn store(rt: &tokio::runtime::Runtime, config: S3Config) -> S3Store {
    rt.block_on(S3Store::new(config)).unwrap()
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    SplitMix64::new(seed).bytes(len)
}

/// Reads a whole object through `get_range` in pieces of `piece` bytes.
async fn read_all(s: &dyn ObjectStore, key: &str, piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        let n = s
            .get_range(key, out.len() as u64, &mut buf, None)
            .await
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < piece {
            return out;
        }
    }
}

#[test]
fn conformance_basic_layout() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(async {
        s.put_object("a.txt", b"hello".to_vec(), &NONE)
            .await
            .unwrap();
        s.put_object("d/x", b"xyz".to_vec(), &NONE).await.unwrap();
        s.put_object("d/y/z", Vec::new(), &NONE).await.unwrap();
        conformance::basic_layout(&s).await;
    });
}

/// Every write through the trait: put, multipart, copy, delete, markers,
/// POSIX attributes in user metadata.
#[test]
fn conformance_writes() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(conformance::writes(&s));
}

/// The same under a prefix: nothing lands outside it.
#[test]
fn conformance_writes_under_a_prefix() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let whole = store(&rt, sw.store_config(BUCKET, ""));
    let s = store(&rt, sw.store_config(BUCKET, "p/q"));
    rt.block_on(async {
        conformance::writes(&s).await;
        let root = whole.list("", None, 1000).await.unwrap();
        assert!(root.objects.is_empty());
        assert_eq!(root.prefixes, vec!["p/".to_string()]);
    });
}

/// A store confined to a prefix sees exactly the keys under it, relative
/// to it, and nothing of its siblings.
#[test]
fn conformance_under_a_prefix() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let whole = store(&rt, sw.store_config(BUCKET, ""));
    let s = store(&rt, sw.store_config(BUCKET, "data/set"));
    assert_eq!(s.prefix(), "data/set/");
    rt.block_on(async {
        for (k, v) in [
            ("data/set/a.txt", &b"hello"[..]),
            ("data/set/d/x", b"xyz"),
            ("data/set/d/y/z", b""),
            ("data/set-sibling/leak", b"no"),
            ("data/setx", b"no"),
            ("data/other.txt", b"no"),
            ("top.txt", b"no"),
        ] {
            whole.put_object(k, v.to_vec(), &NONE).await.unwrap();
        }
        conformance::basic_layout(&s).await;
        // Dot segments could step out of the prefix: refused everywhere.
        let mut buf = [0u8; 4];
        assert!(matches!(
            s.head("../setx").await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.get_range("d/../../setx", 0, &mut buf, None).await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.list("../", None, 10).await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.prefix_exists("./").await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.put_object("..", Vec::new(), &NONE).await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.head("").await,
            Err(StoreError::InvalidKey { .. })
        ));
    });
}

#[test]
fn conformance_paging() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(async {
        for i in 0..250 {
            s.put_object(&format!("many/f{i:05}"), Vec::new(), &NONE)
                .await
                .unwrap();
        }
        conformance::paging(&s, 250, 7).await;
        conformance::paging(&s, 250, 1000).await;
    });
}

/// Pages mixing objects and common prefixes, with small `max_keys`: every
/// entry exactly once, in order, no page larger than asked.
#[test]
fn listing_pages_with_small_max_keys() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(async {
        let mut want = Vec::new();
        for i in 0..9 {
            let file = format!("l/f{i}");
            s.put_object(&file, vec![i as u8; i], &NONE).await.unwrap();
            want.push(file);
            let dir = format!("l/g{i}/");
            s.put_object(&format!("{dir}inner"), Vec::new(), &NONE)
                .await
                .unwrap();
            want.push(dir);
        }
        want.sort();
        for max_keys in [1u32, 2, 5] {
            let mut seen = Vec::new();
            let mut token: Option<String> = None;
            let mut pages = 0;
            loop {
                let p = s.list("l/", token.as_deref(), max_keys).await.unwrap();
                pages += 1;
                assert!(p.objects.len() + p.prefixes.len() <= max_keys as usize);
                for o in &p.objects {
                    let i: usize = o.key["l/f".len()..].parse().unwrap();
                    assert_eq!(o.size, i as u64, "{}", o.key);
                    assert!(!o.etag.starts_with('"'));
                }
                seen.extend(p.objects.into_iter().map(|o| o.key));
                seen.extend(p.prefixes);
                token = p.next_token;
                if token.is_none() {
                    break;
                }
                assert!(pages < 100, "listing does not end");
            }
            seen.sort();
            assert_eq!(seen, want, "max_keys {max_keys}");
        }
    });
}

/// Keys with characters that need escaping in URLs or XML come back from
/// listings exactly as written.
#[test]
fn odd_keys_round_trip() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    let keys = [
        "odd/with space",
        "odd/plus+sign",
        "odd/percent%20literal",
        "odd/amp&lt;tag>",
        "odd/quote\"apos'",
        "odd/question?hash#",
        "odd/ünïcödé-日本",
        "odd/tab\there",
        "odd/ctl\u{1}char",
        "odd/sub dir/x",
    ];
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            s.put_object(k, vec![b'a'; i], &NONE).await.unwrap();
        }
        let p = s.list("odd/", None, 1000).await.unwrap();
        let mut got: Vec<_> = p.objects.iter().map(|o| o.key.clone()).collect();
        got.extend(p.prefixes.clone());
        got.sort();
        let mut want: Vec<String> = keys
            .iter()
            .filter(|k| !k.starts_with("odd/sub dir/"))
            .map(|k| k.to_string())
            .collect();
        want.push("odd/sub dir/".to_string());
        want.sort();
        assert_eq!(got, want);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.head(k).await.unwrap().size, i as u64, "{k:?}");
        }
        // Server-side copy escapes the source key.
        s.copy_object("odd/with space", "odd2/copy of space", None, None)
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let n = s
            .get_range("odd2/copy of space", 0, &mut buf, None)
            .await
            .unwrap();
        assert_eq!(n, 0);
        s.copy_object("odd/ünïcödé-日本", "odd2/u", None, None)
            .await
            .unwrap();
        assert_eq!(s.head("odd2/u").await.unwrap().size, 6);
    });
}

#[test]
fn ranged_reads_and_the_end_of_objects() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    let data = bytes(7, 3 * 1024 * 1024 + 17);
    rt.block_on(async {
        s.put_object("big", data.clone(), &NONE).await.unwrap();
        s.put_object("empty", Vec::new(), &NONE).await.unwrap();
        // Whole object in odd-sized pieces.
        assert_eq!(read_all(&s, "big", 1_000_003).await, data);
        // A read running past the end is short; at or past the end, 0 (416).
        let mut buf = vec![0u8; 64];
        let end = data.len() as u64;
        let n = s.get_range("big", end - 10, &mut buf, None).await.unwrap();
        assert_eq!(&buf[..n], &data[data.len() - 10..]);
        assert_eq!(s.get_range("big", end, &mut buf, None).await.unwrap(), 0);
        assert_eq!(
            s.get_range("big", end + 4096, &mut buf, None)
                .await
                .unwrap(),
            0
        );
        assert_eq!(s.get_range("empty", 0, &mut buf, None).await.unwrap(), 0);
        assert_eq!(s.get_range("big", 5, &mut [], None).await.unwrap(), 0);
        assert!(matches!(
            s.get_range("missing", 0, &mut buf, None).await,
            Err(StoreError::NotFound { .. })
        ));
        let meta = s.head("big").await.unwrap();
        assert_eq!(meta.size, data.len() as u64);
        assert!(!meta.etag.is_empty() && !meta.etag.contains('"'));
        assert!(meta.mtime > std::time::SystemTime::UNIX_EPOCH);
    });
}

/// `If-Match` with the ETag the attributes came from: a changed object
/// fails with PreconditionFailed (412) instead of returning new bytes.
#[test]
fn if_match_detects_a_changed_object() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(async {
        let etag = s
            .put_object("v", b"version one".to_vec(), &NONE)
            .await
            .unwrap();
        let meta = s.head("v").await.unwrap();
        assert_eq!(etag, meta.etag);
        let mut buf = [0u8; 32];
        let n = s.get_range("v", 8, &mut buf, Some(&etag)).await.unwrap();
        assert_eq!(&buf[..n], b"one");
        // The quoted form is accepted too.
        let quoted = format!("\"{etag}\"");
        let n = s.get_range("v", 0, &mut buf, Some(&quoted)).await.unwrap();
        assert_eq!(&buf[..n], b"version one");

        s.put_object("v", b"version two".to_vec(), &NONE)
            .await
            .unwrap();
        assert!(matches!(
            s.get_range("v", 0, &mut buf, Some(&etag)).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        // Past the end with a stale ETag: the precondition still wins.
        assert!(matches!(
            s.get_range("v", 1000, &mut buf, Some(&etag)).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        let fresh = s.head("v").await.unwrap().etag;
        assert_ne!(fresh, etag);
        let n = s.get_range("v", 8, &mut buf, Some(&fresh)).await.unwrap();
        assert_eq!(&buf[..n], b"two");
    });
}

#[test]
fn multipart_upload_complete_and_abort() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    const PART_BYTES: usize = 5 * 1024 * 1024;
    let data = bytes(11, 2 * PART_BYTES + 12345);
    rt.block_on(async {
        let id = s.create_multipart_upload("mp/obj", &NONE).await.unwrap();
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(PART_BYTES).enumerate() {
            parts.push(
                s.upload_part("mp/obj", &id, i as i32 + 1, chunk.to_vec())
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(parts.len(), 3);
        // Nothing is visible before completion.
        assert!(matches!(
            s.head("mp/obj").await,
            Err(StoreError::NotFound { .. })
        ));
        let etag = s
            .complete_multipart_upload("mp/obj", &id, &parts)
            .await
            .unwrap();
        let meta = s.head("mp/obj").await.unwrap();
        assert_eq!(meta.size, data.len() as u64);
        assert_eq!(meta.etag, etag);
        // A read across the part boundary.
        let mut buf = vec![0u8; 1000];
        let at = PART_BYTES as u64 - 500;
        let n = s.get_range("mp/obj", at, &mut buf, None).await.unwrap();
        assert_eq!(&buf[..n], &data[at as usize..at as usize + 1000]);
        assert_eq!(read_all(&s, "mp/obj", 4 * 1024 * 1024).await, data);

        // An aborted upload leaves nothing behind, and its id is gone.
        let id = s
            .create_multipart_upload("mp/aborted", &NONE)
            .await
            .unwrap();
        s.upload_part("mp/aborted", &id, 1, b"partial".to_vec())
            .await
            .unwrap();
        s.abort_multipart_upload("mp/aborted", &id).await.unwrap();
        assert!(matches!(
            s.head("mp/aborted").await,
            Err(StoreError::NotFound { .. })
        ));
        let p = s.list("mp/", None, 1000).await.unwrap();
        let keys: Vec<_> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["mp/obj"]);
    });
}

#[test]
fn copy_single_and_multipart() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    let part_bytes = PART_BYTES_MIN;
    let data = bytes(5, 2 * part_bytes as usize + 4321);
    rt.block_on(async {
        s.put_object("c/src", data.clone(), &NONE).await.unwrap();
        s.copy_object("c/src", "c/single", None, None)
            .await
            .unwrap();
        assert_eq!(read_all(&s, "c/single", 1 << 20).await, data);

        // Parts of the smallest size S3 takes: 3 UploadPartCopy ranges,
        // the last short.
        s.copy_object_multipart("c/src", "c/multi", part_bytes, None, None)
            .await
            .unwrap();
        let meta = s.head("c/multi").await.unwrap();
        assert_eq!(meta.size, data.len() as u64);
        assert!(meta.etag.ends_with("-3"), "multipart ETag {}", meta.etag);
        assert_eq!(read_all(&s, "c/multi", 1 << 20).await, data);

        // An empty source falls back to a single copy.
        s.put_object("c/empty", Vec::new(), &NONE).await.unwrap();
        s.copy_object_multipart("c/empty", "c/empty2", part_bytes, None, None)
            .await
            .unwrap();
        assert_eq!(s.head("c/empty2").await.unwrap().size, 0);

        assert!(matches!(
            s.copy_object("c/missing", "c/x", None, None).await,
            Err(StoreError::NotFound { .. })
        ));
        // A copy overwrites its destination.
        s.put_object("c/small", b"small".to_vec(), &NONE)
            .await
            .unwrap();
        s.copy_object("c/small", "c/single", None, None)
            .await
            .unwrap();
        assert_eq!(read_all(&s, "c/single", 1024).await, b"small");
        // Keys with dot segments are refused: they could leave the prefix.
        assert!(matches!(
            s.copy_object("c/../c/small", "c/x", None, None).await,
            Err(StoreError::InvalidKey { .. })
        ));
    });
}

/// Multipart copies keep the source's user metadata or take new metadata,
/// and honour the source ETag, as single copies do.
#[test]
fn multipart_copy_metadata_and_preconditions() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    let part_bytes = PART_BYTES_MIN;
    let data = bytes(6, part_bytes as usize + 999);
    let posix = PosixMeta {
        mode: Some(0o100_644),
        uid: Some(12),
        gid: Some(34),
        mtime_ns: Some(1_600_000_000_500_000_000),
    };
    let other = PosixMeta {
        mode: Some(0o100_600),
        ..NONE
    };
    rt.block_on(async {
        let etag = s.put_object("mc/src", data.clone(), &posix).await.unwrap();
        s.copy_object_multipart("mc/src", "mc/kept", part_bytes, None, None)
            .await
            .unwrap();
        let h = s.head("mc/kept").await.unwrap();
        assert!(h.etag.ends_with("-2"), "multipart ETag {}", h.etag);
        assert_eq!(h.posix, Some(posix));
        s.copy_object_multipart("mc/src", "mc/new", part_bytes, Some(&etag), Some(&other))
            .await
            .unwrap();
        assert_eq!(s.head("mc/new").await.unwrap().posix, Some(other));
        assert_eq!(read_all(&s, "mc/new", 1 << 20).await, data);
        assert!(matches!(
            s.copy_object_multipart("mc/src", "mc/stale", part_bytes, Some("0123"), None)
                .await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        // With new metadata there is no HEAD first: the parts' own
        // `x-amz-copy-source-if-match` fails, and the upload is aborted.
        assert!(matches!(
            s.copy_object_multipart("mc/src", "mc/stale", part_bytes, Some("0123"), Some(&other))
                .await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert!(matches!(
            s.head("mc/stale").await,
            Err(StoreError::NotFound { .. })
        ));
        // A copy onto itself with new metadata (how attributes change).
        s.copy_object("mc/src", "mc/src", Some(&etag), Some(&other))
            .await
            .unwrap();
        let h = s.head("mc/src").await.unwrap();
        assert_eq!(h.posix, Some(other));
        assert_eq!(h.size, data.len() as u64);
        // Aborting an upload id S3 never gave out is not an error either.
        s.abort_multipart_upload("mc/src", "no-such-upload-id")
            .await
            .unwrap();
    });
}

#[test]
fn delete_one_and_many() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(async {
        let keys: Vec<String> = (0..1203).map(|i| format!("del/k{i:05}")).collect();
        for k in keys.iter().take(5) {
            s.put_object(k, b"x".to_vec(), &NONE).await.unwrap();
        }
        s.put_object("del/keep", b"x".to_vec(), &NONE)
            .await
            .unwrap();
        s.delete_object("del/k00000").await.unwrap();
        assert!(matches!(
            s.head("del/k00000").await,
            Err(StoreError::NotFound { .. })
        ));
        // Deleting what is not there succeeds.
        s.delete_object("del/k00000").await.unwrap();
        // More keys than one request takes, most of them missing.
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        s.delete_objects(&refs).await.unwrap();
        let p = s.list("del/", None, 1000).await.unwrap();
        let left: Vec<_> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(left, vec!["del/keep"]);
        assert!(!s.prefix_exists("del/k0").await.unwrap());
        assert!(s.prefix_exists("del/").await.unwrap());
    });
}

/// Two worker threads, each with its own current-thread runtime, share one
/// store: each gets its own client, and a thread whose runtime is replaced
/// builds a new one instead of using a client of a dead runtime.
#[test]
fn one_client_per_worker_runtime() {
    let sw = Seaweed::start(&[BUCKET]);
    let setup = rt();
    let s = Arc::new(store(&setup, sw.store_config(BUCKET, "")));
    let data = bytes(3, 256 * 1024);
    setup.block_on(async {
        for i in 0..4 {
            s.put_object(&format!("w/{i}"), data.clone(), &NONE)
                .await
                .unwrap();
        }
    });
    let built_before = s.clients_built();
    assert_eq!(built_before, 1);
    drop(setup);

    let shared: Arc<dyn ObjectStore> = s.clone();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let store = shared.clone();
            let data = data.clone();
            std::thread::spawn(move || {
                for round in 0..2 {
                    // A fresh runtime per round, as after a worker restart.
                    let rt = rt();
                    rt.block_on(async {
                        for i in 0..4 {
                            let key = format!("w/{}", (i + w) % 4);
                            assert_eq!(read_all(&*store, &key, 100_000).await, data);
                            let p = store.list("w/", None, 2).await.unwrap();
                            assert_eq!(p.objects.len(), 2);
                        }
                        // Concurrent requests on one runtime share its client.
                        let a = read_all(&*store, "w/0", 65536);
                        let b = read_all(&*store, "w/1", 65536);
                        let (a, b) = tokio::join!(a, b);
                        assert_eq!(a, data);
                        assert_eq!(b, data);
                    });
                    drop(rt);
                    let _ = round;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Two threads, two runtimes each.
    assert_eq!(s.clients_built(), built_before + 4);
}

#[test]
fn wrong_keys_are_denied() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let mut config = sw.store_config(BUCKET, "");
    config.credentials.as_mut().unwrap().secret_access_key = "wrong".into();
    let s = store(&rt, config);
    rt.block_on(async {
        let e = s.list("", None, 10).await.unwrap_err();
        assert!(matches!(e, StoreError::Denied { .. }), "{e}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains(sw.secret_access_key()), "{text}");
        let mut buf = [0u8; 4];
        assert!(matches!(
            s.get_range("x", 0, &mut buf, None).await,
            Err(StoreError::Denied { .. })
        ));
    });
}

/// A store that does not answer fails with Unavailable within the
/// configured bound, and works again once S3 is back.
#[test]
fn outage_is_bounded_and_recovers() {
    let mut sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let mut config = sw.store_config(BUCKET, "");
    config.attempts_max = 3;
    config.connect_timeout = Duration::from_millis(500);
    config.attempt_timeout = Duration::from_secs(1);
    config.operation_timeout = Duration::from_secs(4);
    let s = store(&rt, config);
    rt.block_on(async {
        s.put_object("o/k", b"still here".to_vec(), &NONE)
            .await
            .unwrap();
    });
    sw.stop();
    rt.block_on(async {
        let t = Instant::now();
        let e = s.head("o/k").await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        let mut buf = [0u8; 16];
        let e = s.get_range("o/k", 0, &mut buf, None).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        let e = s.list("o/", None, 10).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "three failing calls took {:?}",
            t.elapsed()
        );
    });
    sw.restart().unwrap();
    rt.block_on(async {
        let mut buf = [0u8; 16];
        let n = s.get_range("o/k", 0, &mut buf, None).await.unwrap();
        assert_eq!(&buf[..n], b"still here");
    });
}

/// A port where nothing listens: connection refused, retried, then
/// Unavailable.
#[test]
fn unreachable_endpoint_is_unavailable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let rt = rt();
    let mut config = S3Config::from_url("s3://nowhere")
        .unwrap()
        .with_endpoint(format!("http://127.0.0.1:{port}"), true);
    config.region = Some("us-east-1".into());
    config.credentials = Some(tidegate::store::s3::S3Credentials {
        access_key_id: "k".into(),
        secret_access_key: "s".into(),
        session_token: None,
    });
    config.attempts_max = 2;
    config.operation_timeout = Duration::from_secs(3);
    let s = store(&rt, config);
    rt.block_on(async {
        let t = Instant::now();
        let e = s.head("k").await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    });
}

/// What a [`CuttingProxy`] does to the first response that passes through.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Close both sides after this many response bytes.
    Cut(usize),
    /// Stop forwarding after this many response bytes (and hold on).
    Stall(usize),
}

/// A loopback TCP proxy in front of SeaweedFS that breaks the first
/// response body passing through it; later connections pass untouched.
struct CuttingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl CuttingProxy {
    /// `before_fault` runs once, just before the fault is applied.
    fn start(
        upstream: SocketAddr,
        fault: Fault,
        before_fault: Box<dyn FnOnce() + Send>,
    ) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let hook = Arc::new(Mutex::new(Some(before_fault)));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let nth = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                let hook = hook.clone();
                std::thread::spawn(move || {
                    let (mut s_read, mut c_write) = (server, client);
                    let limit = match fault {
                        Fault::Cut(n) | Fault::Stall(n) if nth == 0 => Some(n),
                        _ => None,
                    };
                    let mut sent = 0usize;
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let take = match limit {
                            Some(l) => n.min(l - sent),
                            None => n,
                        };
                        if c_write.write_all(&buf[..take]).is_err() {
                            break;
                        }
                        sent += take;
                        if limit == Some(sent) {
                            if let Some(f) = hook.lock().unwrap().take() {
                                f();
                            }
                            if let Fault::Stall(_) = fault {
                                std::thread::sleep(Duration::from_secs(30));
                            }
                            let _ = c_write.shutdown(Shutdown::Both);
                            let _ = s_read.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                    let _ = c_write.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingProxy { addr, connections }
    }
}

fn proxied_config(sw: &Seaweed, proxy: &CuttingProxy) -> S3Config {
    let mut config = sw.store_config(BUCKET, "");
    config.endpoint_url = Some(format!("http://{}", proxy.addr));
    config
}

/// A body that breaks off mid-way is resumed from where it stopped, pinned
/// to the first response's ETag.
#[test]
fn broken_body_is_resumed() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let direct = store(&rt, sw.store_config(BUCKET, ""));
    let data = bytes(9, 2 * 1024 * 1024);
    rt.block_on(direct.put_object("r/obj", data.clone(), &NONE))
        .unwrap();

    let proxy = CuttingProxy::start(sw.s3_addr(), Fault::Cut(700_000), Box::new(|| {}));
    let s = store(&rt, proxied_config(&sw, &proxy));
    rt.block_on(async {
        let mut buf = vec![0u8; data.len()];
        let n = s.get_range("r/obj", 0, &mut buf, None).await.unwrap();
        assert_eq!(n, data.len());
        assert!(buf == data, "resumed read returned different bytes");
    });
    assert!(proxy.connections.load(Ordering::SeqCst) >= 2);
}

/// A body that stops arriving is given up after the chunk timeout and
/// resumed on a new connection.
#[test]
fn stalled_body_is_resumed() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let direct = store(&rt, sw.store_config(BUCKET, ""));
    let data = bytes(10, 1024 * 1024);
    rt.block_on(direct.put_object("r/obj", data.clone(), &NONE))
        .unwrap();

    let proxy = CuttingProxy::start(sw.s3_addr(), Fault::Stall(300_000), Box::new(|| {}));
    let mut config = proxied_config(&sw, &proxy);
    config.body_chunk_timeout = Duration::from_millis(700);
    let s = store(&rt, config);
    rt.block_on(async {
        let t = Instant::now();
        let mut buf = vec![0u8; data.len()];
        let n = s.get_range("r/obj", 0, &mut buf, None).await.unwrap();
        assert_eq!(n, data.len());
        assert!(buf == data, "resumed read returned different bytes");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    });
}

/// When the object changes between a broken body and its resumption, the
/// read fails with PreconditionFailed rather than splicing two versions.
#[test]
fn resumed_read_never_splices_versions() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let direct = store(&rt, sw.store_config(BUCKET, ""));
    let old = bytes(1, 2 * 1024 * 1024);
    let new = bytes(2, 2 * 1024 * 1024);
    rt.block_on(direct.put_object("r/obj", old, &NONE)).unwrap();

    // Overwrite the object (through boto3, from the proxy's thread) at the
    // moment the first body is cut.
    let overwrite = {
        let script = format!(
            "s3.put_object(Bucket={BUCKET:?}, Key='r/obj', Body=bytes.fromhex({:?}))",
            tidegate_tests::data::hex(&new[..64])
        );
        let endpoint = sw.endpoint();
        let (key_id, secret) = (
            sw.access_key_id().to_string(),
            sw.secret_access_key().to_string(),
        );
        move || {
            let full = format!(
                "import boto3, botocore.config\n\
                 s3 = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id={key_id:?}, \
                 aws_secret_access_key={secret:?}, region_name='us-east-1', \
                 config=botocore.config.Config(s3={{'addressing_style': 'path'}}))\n{script}\n"
            );
            let st = std::process::Command::new("python3")
                .arg("-c")
                .arg(full)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .status()
                .unwrap();
            assert!(st.success());
        }
    };
    let proxy = CuttingProxy::start(sw.s3_addr(), Fault::Cut(500_000), Box::new(overwrite));
    let s = store(&rt, proxied_config(&sw, &proxy));
    rt.block_on(async {
        let mut buf = vec![0u8; 2 * 1024 * 1024];
        let r = s.get_range("r/obj", 0, &mut buf, None).await;
        assert!(
            matches!(r, Err(StoreError::PreconditionFailed { .. })),
            "{r:?}"
        );
    });
}

/// The prefix a store is confined to bounds `prefix_exists` too.
#[test]
fn prefix_exists_and_markers() {
    let sw = Seaweed::start(&[BUCKET]);
    let rt = rt();
    let s = store(&rt, sw.store_config(BUCKET, ""));
    rt.block_on(async {
        s.put_object("m/marker/", Vec::new(), &NONE).await.unwrap();
        s.put_object("m/deep/a/b/c", b"x".to_vec(), &NONE)
            .await
            .unwrap();
        assert!(s.prefix_exists("m/marker/").await.unwrap());
        assert!(s.prefix_exists("m/deep/").await.unwrap());
        assert!(s.prefix_exists("m/deep/a/b/").await.unwrap());
        assert!(!s.prefix_exists("m/none/").await.unwrap());
        let p = s.list("m/", None, 1000).await.unwrap();
        assert_eq!(p.prefixes, vec!["m/deep/", "m/marker/"]);
        assert!(p.objects.is_empty());
        // The marker itself is listed as an object of its own prefix.
        let p = s.list("m/marker/", None, 1000).await.unwrap();
        let keys: Vec<_> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["m/marker/"]);
    });
}
