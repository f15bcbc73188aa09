//! The block cache, end to end: the gateway serves a SeaweedFS bucket
//! through a counting proxy with `--cache FILE --cache-size N --admin
//! ADDR`, and NFS clients read datasets through it. The proxy says what
//! reached S3 (object GETs per key, their ranges); `/stats` says what the
//! cache thinks happened. Every byte read is checked against what was
//! uploaded.
//!
//! What is claimed: a second pass over a dataset that fits makes no GET;
//! the cache stays warm across a clean stop and a SIGKILL; damaged blocks
//! in the cache file are detected and fetched again, not served; the cache
//! file never outgrows its size; a cyclic sweep over twice the cache still
//! hits about half the time (plain LRU would hit never); cold concurrent
//! readers of one block cause one GET; and the directory backend goes
//! through the same cache.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use tidegate_tests::cache_rig::{
    objects, total_bytes, Object, Rig, Stats, MARKER_BLOCK_BYTES, MIB, READ_CHUNK_BYTES,
};
use tidegate_tests::data::{fresh_seed, SplitMix64};

const KIB: u64 = 1024;
/// The superblock the cache file may hold beyond `--cache-size`.
const SUPERBLOCK_BYTES_MAX: u64 = MIB;
/// A READ size that puts block boundaries inside READs.
const ODD_READ_BYTES: u32 = 200_000;
/// Lowest hit ratio accepted for passes 2 and 3 of the cyclic sweep.
const SWEEP_HIT_RATIO_MIN: f64 = 0.35;
/// Concurrent cold readers of one block.
const COLD_READERS: usize = 32;
/// The first-byte delay while the cold readers pile up on one GET.
const COLD_READ_DELAY: Duration = Duration::from_millis(300);
/// Idle time before the SIGKILL (cache writes under way may finish).
const IDLE_BEFORE_KILL: Duration = Duration::from_secs(2);

// ------------------------------------------------------------ helpers ----

/// 40 objects: 30 of 100 KiB, 8 of 3 MiB, an empty one, one of 1 MiB + 1.
fn mixed_dataset(seed: u64) -> Vec<Object> {
    let mut rng = SplitMix64::new(seed);
    let mut v = objects("small/obj-", 30, 100 * KIB, rng.next_u64());
    v.extend(objects("large/obj-", 8, 3 * MIB, rng.next_u64()));
    v.push(Object::new("edge/empty.bin", 0, rng.next_u64()));
    v.push(Object::new(
        "edge/one-mib-plus-one.bin",
        MIB + 1,
        rng.next_u64(),
    ));
    v
}

/// Object GETs per key, for messages.
fn gets_text(rig: &Rig) -> String {
    format!(
        "{}; per key: {:?}",
        rig.proxy().summary(),
        rig.proxy().gets_by_key()
    )
}

/// Panics unless every non-empty object was fetched at least once: the
/// proxy sees the gateway's traffic (a cold pass cannot be served
/// otherwise).
fn assert_cold_pass_fetched(rig: &Rig, data: &[Object]) {
    let per_key = rig.proxy().gets_by_key();
    for o in data.iter().filter(|o| o.len > 0) {
        assert!(
            per_key.get(&o.key).copied().unwrap_or(0) >= 1,
            "cold pass: no GET of {} reached the proxy ({}); is the gateway talking to it?",
            o.key,
            gets_text(rig)
        );
    }
}

fn delta(after: &Stats, before: &Stats, name: &str) -> u64 {
    after.get(name).saturating_sub(before.get(name))
}

// -------------------------------------------------------------- tests ----

/// A second and a third pass over a dataset that fits in the cache make
/// no GET, with aligned and with unaligned READs; the memory tier is off,
/// so the hits come from the cache device.
#[test]
fn second_pass_makes_no_gets() {
    second_pass_body(&["--cache-memory", "0"]);
}

/// As [`second_pass_makes_no_gets`], with the memory tier at its default
/// size in front of the device.
#[test]
fn second_pass_makes_no_gets_with_memory_tier() {
    second_pass_body(&[]);
}

fn second_pass_body(cache_flags: &[&str]) {
    let mut rig = Rig::s3();
    let data = mixed_dataset(fresh_seed());
    rig.put(&data);
    let cache = rig.cache_file();
    rig.set_cache(&cache, "256MiB", cache_flags);
    rig.start();

    rig.read_pass(&data, READ_CHUNK_BYTES, "pass 1 (cold)");
    assert_cold_pass_fetched(&rig, &data);
    let cold_gets = rig.proxy().get_count();
    let s1 = rig.stats();

    rig.proxy().reset();
    rig.read_pass(&data, READ_CHUNK_BYTES, "pass 2");
    let s2 = rig.stats();
    eprintln!(
        "pass 1: {cold_gets} GETs for {} bytes; pass 2: {} GETs, hits +{}, misses +{}",
        total_bytes(&data),
        rig.proxy().get_count(),
        delta(&s2, &s1, "cache_hits_total"),
        delta(&s2, &s1, "cache_misses_total")
    );
    assert_eq!(
        rig.proxy().get_count(),
        0,
        "pass 2 over a dataset of {} bytes in a 256 MiB cache reached S3: {}\nstats: {}",
        total_bytes(&data),
        gets_text(&rig),
        s2.brief()
    );
    assert!(
        s2.get("cache_hits_total") > s1.get("cache_hits_total"),
        "pass 2 did not raise cache_hits_total: before {}, after {}",
        s1.brief(),
        s2.brief()
    );
    assert_eq!(
        s2.get("cache_misses_total"),
        s1.get("cache_misses_total"),
        "pass 2 raised cache_misses_total: before {}, after {}",
        s1.brief(),
        s2.brief()
    );
    assert_eq!(
        s2.get("store_get_requests_total"),
        s1.get("store_get_requests_total"),
        "pass 2 raised store_get_requests_total while the proxy saw none: before {}, after {}",
        s1.brief(),
        s2.brief()
    );

    rig.proxy().reset();
    rig.read_pass(&data, ODD_READ_BYTES, "pass 3 (READs of 200000 bytes)");
    assert_eq!(
        rig.proxy().get_count(),
        0,
        "pass 3 (READs straddling block boundaries) reached S3: {}",
        gets_text(&rig)
    );
}

/// The cache stays warm across a clean stop (SIGTERM) and across a
/// SIGKILL while idle, blocks cached just before the kill included.
#[test]
fn restart_keeps_cache_warm() {
    let mut rig = Rig::s3();
    let mut rng = SplitMix64::new(fresh_seed());
    let mut a = objects("a/obj-", 12, 100 * KIB, rng.next_u64());
    a.extend(objects("a/big-", 3, 3 * MIB, rng.next_u64()));
    a.push(Object::new(
        "a/one-mib-plus-one.bin",
        MIB + 1,
        rng.next_u64(),
    ));
    let mut b = objects("b/obj-", 6, 100 * KIB, rng.next_u64());
    b.extend(objects("b/big-", 2, 2 * MIB, rng.next_u64()));
    rig.put(&a);
    rig.put(&b);
    let cache = rig.cache_file();
    rig.set_cache(&cache, "128MiB", &[]);

    rig.start();
    rig.read_pass(&a, READ_CHUNK_BYTES, "pass 1 (cold)");
    assert_cold_pass_fetched(&rig, &a);
    rig.stop();
    assert!(
        cache.is_file(),
        "no cache file at {} after a run",
        cache.display()
    );

    // Clean stop, restart: A is served from the cache.
    rig.start();
    let s = rig.stats();
    eprintln!(
        "after SIGTERM and restart: cache_entries={} cache_bytes_cached={}",
        s.get("cache_entries"),
        s.get("cache_bytes_cached")
    );
    rig.proxy().reset();
    rig.read_pass(&a, READ_CHUNK_BYTES, "pass after SIGTERM and restart");
    assert_eq!(
        rig.proxy().get_count(),
        0,
        "after a clean stop and restart with the same cache file and state dir, reading A reached S3: {}\nstats: {}\nstderr:\n{}",
        gets_text(&rig),
        rig.stats().brief(),
        rig.stderr()
    );

    // B cached now, then idle, then SIGKILL.
    rig.read_pass(&b, READ_CHUNK_BYTES, "pass over B (cold)");
    std::thread::sleep(IDLE_BEFORE_KILL);
    let status = rig.kill_hard();
    eprintln!("gateway killed: {status}");

    rig.start();
    let s = rig.stats();
    eprintln!(
        "after SIGKILL and restart: cache_entries={} cache_bytes_cached={}",
        s.get("cache_entries"),
        s.get("cache_bytes_cached")
    );
    rig.proxy().reset();
    let mut all = a.clone();
    all.extend(b.iter().cloned());
    rig.read_pass(&all, READ_CHUNK_BYTES, "pass after SIGKILL and restart");
    let per_key = rig.proxy().gets_by_key();
    let gets_a: u64 = per_key
        .iter()
        .filter(|(k, _)| k.starts_with("a/"))
        .map(|(_, n)| n)
        .sum();
    let gets_b: u64 = per_key
        .iter()
        .filter(|(k, _)| k.starts_with("b/"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        (gets_a, gets_b),
        (0, 0),
        "after a SIGKILL while idle and a restart, reading reached S3: {gets_a} GETs for A (cached before the \
         clean stop), {gets_b} for B (cached {IDLE_BEFORE_KILL:?} before the kill); {}\nstats: {}\nstderr:\n{}",
        gets_text(&rig),
        rig.stats().brief(),
        rig.stderr()
    );
}

/// Where each marker text occurs in `hay`: marker text → offsets.
fn find_markers(hay: &[u8], common_prefix: &[u8]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let first = common_prefix[0];
    let mut i = 0;
    while i + common_prefix.len() <= hay.len() {
        match hay[i..].iter().position(|&b| b == first) {
            None => break,
            Some(p) => i += p,
        }
        if hay[i..].starts_with(common_prefix) {
            // `{prefix}{object:04}-{block:04}#`
            let end = (i + common_prefix.len() + 10).min(hay.len());
            if let Some(hash) = hay[i..end].iter().position(|&b| b == b'#') {
                let text = String::from_utf8_lossy(&hay[i..i + hash + 1]).into_owned();
                out.entry(text).or_default().push(i as u64);
            }
        }
        i += 1;
    }
    out
}

/// Bytes flipped in the cache file are caught by the block checksums: the
/// damaged blocks are fetched again and every byte read is right.
#[test]
fn flipped_bytes_are_refetched() {
    let mut rig = Rig::s3();
    let seed = fresh_seed();
    let nonce = SplitMix64::new(seed ^ 0x5eed).next_u64();
    let common = format!("TGMARK-{nonce:016x}-");
    let mut rng = SplitMix64::new(seed);
    let mut data: Vec<Object> = (0..10)
        .map(|i| {
            Object::marked(
                &format!("obj-{i:02}.bin"),
                100 * KIB,
                rng.next_u64(),
                &format!("{common}{i:04}-"),
            )
        })
        .collect();
    data.push(Object::marked(
        "big.bin",
        3 * MIB,
        rng.next_u64(),
        &format!("{common}{:04}-", 10),
    ));
    rig.put(&data);
    let cache = rig.cache_file();
    rig.set_cache(&cache, "32MiB", &[]);
    rig.start();
    rig.read_pass(&data, READ_CHUNK_BYTES, "pass 1 (cold)");
    assert_cold_pass_fetched(&rig, &data);
    rig.stop();

    let image = std::fs::read(&cache).expect("read the cache file");
    let found = find_markers(&image, common.as_bytes());
    drop(image);
    for o in &data {
        for block in 0..o.blocks(MARKER_BLOCK_BYTES) {
            let m = o.marker_at(block).unwrap();
            assert!(
                found.contains_key(&m),
                "block {block} of {} (marker {m:?}) is nowhere in the cache file after a clean stop: \
                 blocks are not stored raw, or were not written (markers found: {})",
                o.key,
                found.len()
            );
        }
    }

    // Damage: three small objects, and the middle block of the big one.
    let damaged: Vec<(usize, u64)> = vec![(1, 0), (4, 0), (7, 0), (10, 1)];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cache)
        .expect("open the cache file");
    let mut flipped = 0;
    for &(i, block) in &damaged {
        let m = data[i].marker_at(block).unwrap();
        for &pos in &found[&m] {
            for off in [1000u64, 1001, 50_000] {
                let at = pos + off;
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at).expect("read a cache byte");
                b[0] ^= 0xff;
                f.write_all_at(&b, at).expect("flip a cache byte");
                flipped += 1;
            }
        }
    }
    f.sync_all().expect("fsync the cache file");
    drop(f);
    eprintln!("flipped {flipped} bytes in {} blocks", damaged.len());

    rig.start();
    rig.proxy().reset();
    rig.read_pass(&data, READ_CHUNK_BYTES, "pass after flipping bytes");
    let per_key = rig.proxy().gets_by_key();
    let stats = rig.stats();
    eprintln!(
        "after the damage: {}; cache_checksum_failures_total={}",
        gets_text(&rig),
        stats.get("cache_checksum_failures_total")
    );
    let damaged_keys: Vec<&str> = damaged.iter().map(|&(i, _)| data[i].key.as_str()).collect();
    for k in &damaged_keys {
        assert!(
            per_key.get(*k).copied().unwrap_or(0) >= 1,
            "{k} was damaged in the cache but not fetched again: {}\nstats: {}",
            gets_text(&rig),
            stats.brief()
        );
    }
    let big_ranges: Vec<_> = rig
        .proxy()
        .requests()
        .iter()
        .filter(|r| r.is_object_get() && r.key == "big.bin")
        .map(|r| r.range.clone())
        .collect();
    eprintln!("GETs of big.bin (block 1 damaged): {big_ranges:?}");
    for o in &data {
        if !damaged_keys.contains(&o.key.as_str()) {
            assert_eq!(
                per_key.get(&o.key).copied().unwrap_or(0),
                0,
                "{} was not damaged but was fetched again: {}",
                o.key,
                gets_text(&rig)
            );
        }
    }
    assert!(
        stats.get("cache_checksum_failures_total") > 0,
        "damaged blocks were read without a checksum failure: {}",
        stats.brief()
    );

    // The damaged blocks were cached again.
    rig.proxy().reset();
    rig.read_pass(&data, READ_CHUNK_BYTES, "pass after the refetch");
    eprintln!("pass after the refetch: {}", gets_text(&rig));
    assert_eq!(rig.proxy().get_count(), 0, "{}", gets_text(&rig));
}

/// Reading four times the cache's size never makes the cache file (or
/// what `/stats` counts) larger than `--cache-size`.
#[test]
fn capacity_is_never_exceeded() {
    const CACHE_BYTES: u64 = 16 * MIB;
    let mut rig = Rig::s3();
    let data = objects("cap/obj-", 16, 4 * MIB, fresh_seed());
    rig.put(&data);
    let cache = rig.cache_file();
    rig.set_cache(&cache, "16MiB", &[]);
    rig.start();
    let limit = CACHE_BYTES + SUPERBLOCK_BYTES_MAX;
    let check_file = |when: &str| -> (u64, u64) {
        let m = std::fs::metadata(&cache)
            .unwrap_or_else(|e| panic!("stat {} {when}: {e}", cache.display()));
        let allocated = m.blocks() * 512;
        assert!(
            m.len() <= limit && allocated <= limit,
            "{when}: the cache file is {} bytes long with {allocated} allocated; --cache-size is {CACHE_BYTES} \
             (+ {SUPERBLOCK_BYTES_MAX} for the superblock)",
            m.len()
        );
        (m.len(), allocated)
    };
    let check_stats = |rig: &Rig, when: &str| {
        let s = rig.stats();
        let cached = s.get("cache_bytes_cached");
        let capacity = s.get("cache_bytes_capacity");
        assert!(
            cached <= capacity && capacity <= CACHE_BYTES,
            "{when}: cache_bytes_cached={cached} cache_bytes_capacity={capacity}, --cache-size {CACHE_BYTES}; {}",
            s.brief()
        );
        s
    };
    check_file("after start");
    check_stats(&rig, "after start");
    let (mut len_max, mut alloc_max) = (0, 0);
    let (mut c, root) = rig.connect();
    for (i, o) in data.iter().enumerate() {
        rig.read_one(&mut c, &root, o, READ_CHUNK_BYTES, "reading 64 MiB");
        let (len, alloc) = check_file(&format!("after reading {}", o.key));
        len_max = len_max.max(len);
        alloc_max = alloc_max.max(alloc);
        if i % 4 == 3 {
            check_stats(&rig, &format!("after reading {}", o.key));
        }
    }
    // And again, from the start (some from the cache, the rest fetched).
    rig.read_pass(&data, READ_CHUNK_BYTES, "second pass over 64 MiB");
    check_file("after the second pass");
    let s = check_stats(&rig, "after the second pass");
    eprintln!(
        "cache file: at most {len_max} bytes long, {alloc_max} allocated; stats: {}",
        s.brief()
    );
}

/// A dataset of twice the cache read in the same order three times: passes
/// 2 and 3 still hit (an LRU cache would evict every block just before it
/// is needed again).
#[test]
fn cyclic_sweep_hit_ratio() {
    const BLOCKS: u64 = 64;
    let mut rig = Rig::s3();
    let data = objects("sweep/obj-", BLOCKS as usize, MIB, fresh_seed());
    rig.put(&data);
    let cache = rig.cache_file();
    // The memory tier (by default far larger than the dataset) is off: the
    // device's admission and eviction are what is measured.
    rig.set_cache(
        &cache,
        "32MiB",
        &["--cache-block-size", "1MiB", "--cache-memory", "0"],
    );
    rig.start();
    rig.read_pass(&data, READ_CHUNK_BYTES, "sweep 1 (cold)");
    eprintln!("sweep 1: {} GETs", rig.proxy().get_count());
    let mut ratios = Vec::new();
    for pass in 2..=3 {
        rig.proxy().reset();
        let before = rig.stats();
        rig.read_pass(&data, READ_CHUNK_BYTES, &format!("sweep {pass}"));
        let after = rig.stats();
        let gets = rig.proxy().get_count();
        let by_proxy = 1.0 - gets as f64 / BLOCKS as f64;
        let hits = delta(&after, &before, "cache_hits_total");
        let misses = delta(&after, &before, "cache_misses_total");
        let by_stats = if hits + misses == 0 {
            f64::NAN
        } else {
            hits as f64 / (hits + misses) as f64
        };
        eprintln!(
            "sweep {pass}: hit ratio {by_proxy:.3} by the proxy ({gets} GETs for {BLOCKS} blocks), \
             {by_stats:.3} by /stats (hits +{hits}, misses +{misses}, cache_hit_ratio {:.3}, \
             evictions +{}, admission rejects +{})",
            after.float("cache_hit_ratio"),
            delta(&after, &before, "cache_evictions_total"),
            delta(&after, &before, "cache_admission_rejects_total"),
        );
        ratios.push((pass, by_proxy, by_stats));
    }
    for (pass, by_proxy, by_stats) in ratios {
        assert!(
            by_proxy >= SWEEP_HIT_RATIO_MIN,
            "sweep {pass}: hit ratio {by_proxy:.3} by the proxy (/stats: {by_stats:.3}) is below \
             {SWEEP_HIT_RATIO_MIN} for a 64 MiB cyclic sweep through a 32 MiB cache"
        );
    }
}

/// 32 concurrent cold READs of one 1 MiB block cause one GET, and all get
/// the right bytes.
#[test]
fn concurrent_cold_readers_single_flight() {
    let mut rig = Rig::s3();
    let obj = Object::new("hot/one-mib.bin", MIB, fresh_seed());
    rig.put(std::slice::from_ref(&obj));
    let cache = rig.cache_file();
    rig.set_cache(&cache, "64MiB", &[]);
    rig.start();

    // Everyone connects and looks the file up first (no GET), then all
    // READ at once while the proxy holds the answer back.
    let ready = Arc::new(Barrier::new(COLD_READERS + 1));
    let go = Arc::new(Barrier::new(COLD_READERS + 1));
    let results: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..COLD_READERS)
            .map(|_| {
                let (ready, go) = (ready.clone(), go.clone());
                let rig = &rig;
                let obj = &obj;
                scope.spawn(move || {
                    let (mut c, root) = rig.connect();
                    let fh = c.lookup_path(&root, &obj.key);
                    ready.wait();
                    go.wait();
                    let fh = fh.expect("LOOKUP");
                    let r = c
                        .read(&fh, 0, MIB as u32)
                        .expect("READ")
                        .unwrap_or_else(|s| panic!("READ: nfsstat3 {s}"));
                    r.data
                })
            })
            .collect();
        ready.wait();
        rig.proxy().reset();
        rig.proxy().set_first_byte_delay(COLD_READ_DELAY);
        go.wait();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    rig.proxy().set_first_byte_delay(Duration::ZERO);
    for (i, data) in results.iter().enumerate() {
        tidegate_tests::cache_rig::check_content(&obj, data, &format!("cold reader {i}"));
    }
    let stats = rig.stats();
    eprintln!(
        "{COLD_READERS} cold readers: {} GETs; cache_single_flight_joins_total={} cache_hits_total={} cache_misses_total={}",
        rig.proxy().gets_for(&obj.key),
        stats.get("cache_single_flight_joins_total"),
        stats.get("cache_hits_total"),
        stats.get("cache_misses_total")
    );
    assert_eq!(
        rig.proxy().gets_for(&obj.key),
        1,
        "{COLD_READERS} concurrent cold READs of one block: {:#?}\nstats: {}",
        rig.proxy().requests(),
        stats.brief()
    );
    // One GET could also mean the readers ran one after another.
    assert!(
        stats.get("cache_single_flight_joins_total") >= 1,
        "no reader joined another's fetch: {}",
        stats.brief()
    );
}

/// The directory backend goes through the cache as well: a second pass
/// only hits.
#[test]
fn second_pass_hits_over_directory_source() {
    let mut rig = Rig::dir();
    let mut rng = SplitMix64::new(fresh_seed());
    let mut data = objects("small/obj-", 10, 100 * KIB, rng.next_u64());
    data.extend(objects("large/obj-", 2, 3 * MIB, rng.next_u64()));
    data.push(Object::new("edge/empty.bin", 0, rng.next_u64()));
    data.push(Object::new(
        "edge/one-mib-plus-one.bin",
        MIB + 1,
        rng.next_u64(),
    ));
    rig.put(&data);
    let cache = rig.cache_file();
    // Memory tier off: the hits come from the device.
    rig.set_cache(&cache, "64MiB", &["--cache-memory", "0"]);
    rig.start();
    let s0 = rig.stats();
    rig.read_pass(&data, READ_CHUNK_BYTES, "pass 1 (cold)");
    let s1 = rig.stats();
    rig.read_pass(&data, READ_CHUNK_BYTES, "pass 2");
    let s2 = rig.stats();
    eprintln!(
        "directory source: pass 1 hits +{} misses +{}; pass 2 hits +{} misses +{}",
        delta(&s1, &s0, "cache_hits_total"),
        delta(&s1, &s0, "cache_misses_total"),
        delta(&s2, &s1, "cache_hits_total"),
        delta(&s2, &s1, "cache_misses_total")
    );
    assert!(
        s1.get("cache_misses_total") > s0.get("cache_misses_total"),
        "a cold pass over a directory source counted no cache miss: is the cache in the read path? {}",
        s1.brief()
    );
    assert!(
        s2.get("cache_hits_total") > s1.get("cache_hits_total"),
        "pass 2 did not raise cache_hits_total: before {}, after {}",
        s1.brief(),
        s2.brief()
    );
    assert_eq!(
        s2.get("cache_misses_total"),
        s1.get("cache_misses_total"),
        "pass 2 raised cache_misses_total: before {}, after {}",
        s1.brief(),
        s2.brief()
    );
}
