//! Directory sweeps, end to end: the first (cold) epoch of an ImageNet-like
//! dataset — one directory of small files, listed, then read whole in a
//! shuffled order by a few loader connections — through a proxy that adds
//! S3's first-byte latency, with and without `--prefetch-dir-sweep`.
//!
//! What is claimed: with the sweep, the gateway fetches the files the
//! loaders have not reached yet, in parallel, while they read, so most
//! first reads find their file already fetched; every byte is still right,
//! nothing is fetched twice, and without it no sweep happens. The epoch
//! times of both runs are printed; speed itself is the benchmark's claim,
//! not this test's.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tidegate_tests::cache_rig::{objects, Object, Rig};
use tidegate_tests::data::{fresh_seed, SplitMix64};

/// Files in the dataset directory and their size.
const FILES: usize = 300;
const FILE_BYTES: u64 = 96 * 1024;
/// Loader connections reading at once.
const LOADERS: usize = 4;
/// S3's first-byte latency, added by the proxy.
const FIRST_BYTE_DELAY: Duration = Duration::from_millis(20);

/// Lists the directory, then reads every file whole in a shuffled order
/// with `LOADERS` connections; returns the epoch's wall time.
fn epoch(rig: &Rig, files: &[Object], seed: u64) -> Duration {
    let (mut c, root) = rig.connect();
    let dir = c.lookup_path(&root, "train").expect("LOOKUP train");
    let (entries, _) = c
        .list_dir(&dir, true, 64 * 1024, 1000)
        .expect("READDIRPLUS train");
    assert_eq!(entries.len(), files.len(), "listing of train/");
    let mut order: Vec<&Object> = files.iter().collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let queue = Mutex::new(order);
    let started = Instant::now();
    std::thread::scope(|s| {
        for l in 0..LOADERS {
            let queue = &queue;
            s.spawn(move || {
                let (mut c, root) = rig.connect();
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(o) = next else { return };
                    rig.read_one(&mut c, &root, o, 1 << 20, &format!("loader {l}"));
                }
            });
        }
    });
    started.elapsed()
}

fn run(sweep: &str, files: &[Object], seed: u64) -> (Duration, u64, u64, u64) {
    let mut rig = Rig::s3();
    rig.put(files);
    rig.proxy().set_first_byte_delay(FIRST_BYTE_DELAY);
    let cache = rig.cache_file();
    rig.set_cache(&cache, "256MiB", &["--prefetch-dir-sweep", sweep]);
    rig.start();
    let took = epoch(&rig, files, seed);
    let stats = rig.stats();
    eprintln!(
        "sweep {sweep}: GET latency p50 {} us p99 {} us, NFS READ p50 {} us p99 {} us, prefetch hits {}",
        stats.get("store_get_latency_us_p50"),
        stats.get("store_get_latency_us_p99"),
        stats.get("nfs_read_latency_us_p50"),
        stats.get("nfs_read_latency_us_p99"),
        stats.get("prefetch_hits_total")
    );
    let sweeps = stats.get("prefetch_dir_sweeps_total");
    let swept = stats.get("prefetch_sweep_files_total");
    let gets = rig.proxy().get_count();
    rig.stop();
    (took, sweeps, swept, gets)
}

#[test]
fn directory_sweep_speeds_up_the_cold_epoch() {
    let seed = fresh_seed();
    let files = objects("train/img-", FILES, FILE_BYTES, seed);
    let (off, off_sweeps, _, off_gets) = run("off", &files, seed);
    let (on, on_sweeps, on_swept, on_gets) = run("on", &files, seed);
    let speedup = off.as_secs_f64() / on.as_secs_f64();
    eprintln!(
        "cold epoch of {FILES} files x {} KiB, {LOADERS} loaders, {} ms first byte: \
         sweep off {:.2} s ({off_gets} GETs), sweep on {:.2} s ({on_gets} GETs, {on_sweeps} sweeps) \
         -> {speedup:.2}x",
        FILE_BYTES / 1024,
        FIRST_BYTE_DELAY.as_millis(),
        off.as_secs_f64(),
        on.as_secs_f64(),
    );
    assert_eq!(off_sweeps, 0, "--prefetch-dir-sweep off started a sweep");
    assert!(on_sweeps >= 1, "no sweep started");
    // Every file once, whoever fetched it: the sweep fetches nothing twice.
    assert!(
        on_gets <= FILES as u64,
        "{on_gets} GETs for {FILES} files with the sweep"
    );
    // The sweep, not the loaders, fetched a good share of the directory.
    assert!(
        on_swept >= FILES as u64 / 4,
        "the sweep fetched {on_swept} of {FILES} files ahead of the loaders"
    );
}
