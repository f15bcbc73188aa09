//! The block cache when its device misbehaves: full, failing writes, gone.
//! In every case the gateway keeps serving, from S3, with every byte
//! right, and says in `/stats` what happened.
//!
//! These tests mount a tmpfs and set up loop devices, so they need root.
//! Without it they fail (they never skip): run them as root, or in the VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_tests::cache_rig::{objects, Object, Rig, Stats, MIB, READ_CHUNK_BYTES};
use tidegate_tests::data::{fresh_seed, SplitMix64};
use tidegate_tests::privileged::{require_root, sh, Tmpfs};

const KIB: u64 = 1024;
/// The memory tier is off in these tests: every cached read and every
/// insert goes to the misbehaving device.
const NO_MEMORY_TIER: &[&str] = &["--cache-memory", "0"];
/// How long the gateway may take to notice that its cache file is gone.
const DEVICE_LOST_BOUND: Duration = Duration::from_secs(15);

/// A loop device over a file; made writable again and detached on drop.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let out = sh(Command::new("losetup").args(["-f", "--show"]).arg(file));
        let dev = PathBuf::from(out.trim());
        assert!(
            dev.starts_with("/dev/"),
            "losetup printed {out:?} instead of a device"
        );
        let dev = LoopDevice { dev };
        // The read-only flag of a loop device outlives its detach: a
        // device left read-only by an earlier run must not fail this one.
        sh(Command::new("blockdev").arg("--setrw").arg(&dev.dev));
        dev
    }

    fn set_read_only(&self) {
        sh(Command::new("blockdev").arg("--setro").arg(&self.dev));
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("blockdev")
            .arg("--setrw")
            .arg(&self.dev)
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn brief(s: &Stats) -> String {
    s.brief()
}

/// The cache file lives on an 8 MiB tmpfs but is told to be 64 MiB: the
/// gateway starts anyway, says so, and serves 40 MiB of reads from S3
/// when cache writes run out of space.
#[test]
fn cache_disk_full_falls_back_to_s3() {
    require_root(
        "cache_disk_full_falls_back_to_s3",
        "it mounts a tmpfs and sets up loop devices",
    );
    let tmpfs = Tmpfs::mount("8m");
    let mut rig = Rig::s3();
    let data = objects("full/obj-", 40, MIB, fresh_seed());
    rig.put(&data);
    let cache = tmpfs.path().join("cache.bin");
    rig.set_cache(&cache, "64MiB", NO_MEMORY_TIER);
    rig.start();
    let stderr = rig.stderr().to_ascii_lowercase();
    assert!(
        stderr.lines().any(|l| l.contains("cache")
            && ["prealloc", "no space", "enospc", "os error 28"]
                .iter()
                .any(|w| l.contains(w))),
        "the gateway started with a 64 MiB cache on an 8 MiB tmpfs without saying that it could not \
         preallocate it; stderr:\n{}",
        rig.stderr()
    );

    rig.read_pass(
        &data,
        READ_CHUNK_BYTES,
        "40 MiB through a cache on a full disk",
    );
    rig.server()
        .assert_alive("after 40 MiB of reads with a full cache disk");
    // The gateway still answers, and what it serves is still right.
    rig.read_pass(&data[..8], READ_CHUNK_BYTES, "second pass");
    let s = rig.stats();
    eprintln!("cache on a full disk: {}", brief(&s));
    assert!(
        s.get("cache_no_space_total") >= 1,
        "40 MiB read through a 64 MiB cache on an 8 MiB tmpfs, and cache_no_space_total is 0: {}",
        brief(&s)
    );
    drop(rig);
}

/// The cache is a loop device; after a warm-up it is made read-only, so
/// cache writes fail: reads of new objects still come back right (from
/// S3), and the failures are counted.
#[test]
fn cache_io_error_falls_back() {
    require_root(
        "cache_io_error_falls_back",
        "it mounts a tmpfs and sets up loop devices",
    );
    let backing_dir = tempfile::Builder::new()
        .prefix("tidegate-loop-")
        .tempdir()
        .expect("tempdir");
    let backing = backing_dir.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("create the loop device's backing file");
    let dev = LoopDevice::attach(&backing);
    let mut rig = Rig::s3();
    let mut rng = SplitMix64::new(fresh_seed());
    let warm = objects("warm/obj-", 8, MIB, rng.next_u64());
    let mut later = objects("later/obj-", 16, MIB, rng.next_u64());
    later.extend(objects("later/small-", 8, 100 * KIB, rng.next_u64()));
    rig.put(&warm);
    rig.put(&later);
    rig.set_cache(&dev.dev, "64MiB", NO_MEMORY_TIER);
    rig.start();

    rig.read_pass(&warm, READ_CHUNK_BYTES, "warm-up");
    let s0 = rig.stats();
    dev.set_read_only();
    rig.read_pass(
        &later,
        READ_CHUNK_BYTES,
        "reads after the device went read-only",
    );
    rig.read_pass(
        &warm,
        READ_CHUNK_BYTES,
        "warm set after the device went read-only",
    );
    rig.server()
        .assert_alive("after cache writes failed on a read-only device");
    let s = rig.stats();
    eprintln!(
        "read-only cache device: before {}\nafter {}",
        brief(&s0),
        brief(&s)
    );
    assert!(
        s.get("cache_write_errors_total") >= 1,
        "{} MiB of new objects read through a read-only cache device, and cache_write_errors_total is 0: {}",
        later.iter().map(|o| o.len).sum::<u64>() / MIB,
        brief(&s)
    );
    // Still serving.
    rig.read_pass(&later[..2], READ_CHUNK_BYTES, "after the failures");
    drop(rig);
    drop(dev);
}

/// The cache file is removed under the running gateway: it notices, turns
/// the cache off (once), and serves everything from S3.
#[test]
fn cache_file_removed_under_gateway() {
    require_root(
        "cache_file_removed_under_gateway",
        "it mounts a tmpfs and sets up loop devices",
    );
    let mut rig = Rig::s3();
    let mut rng = SplitMix64::new(fresh_seed());
    let mut warm = objects("warm/obj-", 8, MIB, rng.next_u64());
    warm.extend(objects("warm/small-", 8, 100 * KIB, rng.next_u64()));
    let fresh = objects("fresh/obj-", 8, MIB, rng.next_u64());
    rig.put(&warm);
    rig.put(&fresh);
    let cache = rig.cache_file();
    rig.set_cache(&cache, "64MiB", NO_MEMORY_TIER);
    rig.start();

    rig.read_pass(&warm, READ_CHUNK_BYTES, "warm-up");
    rig.proxy().reset();
    rig.read_pass(&warm, READ_CHUNK_BYTES, "warm set, before the removal");
    let warm_gets = rig.proxy().get_count();
    eprintln!("warm set read again before the removal: {warm_gets} GETs");
    assert_eq!(
        warm_gets, 0,
        "the warm set was not served from the cache before the removal"
    );

    std::fs::remove_file(&cache).expect("rm the cache file");
    let mut all: Vec<Object> = warm.clone();
    all.extend(fresh.iter().cloned());
    rig.read_pass(
        &all,
        READ_CHUNK_BYTES,
        "everything, after rm of the cache file",
    );

    // The gateway notices (bounded), and says so once.
    let start = Instant::now();
    let s = loop {
        let s = rig.stats();
        if s.get("cache_enabled") == 0 {
            break s;
        }
        if start.elapsed() >= DEVICE_LOST_BOUND {
            panic!(
                "cache_enabled is still 1 {DEVICE_LOST_BOUND:?} after the cache file was removed (and \
                 everything was read since): {}\nstderr:\n{}",
                brief(&s),
                rig.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "cache disabled {:.1} s after the reads that followed the removal: {}",
        start.elapsed().as_secs_f64(),
        brief(&s)
    );
    assert_eq!(
        s.get("cache_device_lost_total"),
        1,
        "cache_device_lost_total after one removal: {}",
        brief(&s)
    );

    // From now on reads go to S3, and stay right.
    rig.proxy().reset();
    rig.read_pass(&all, READ_CHUNK_BYTES, "everything, with the cache off");
    let gets = rig.proxy().get_count();
    eprintln!("with the cache off: {gets} GETs; {}", rig.proxy().summary());
    assert!(
        gets > 0,
        "with the cache off, reading everything again made no GET: {:?}",
        rig.proxy().gets_by_key()
    );
    rig.server()
        .assert_alive("after the cache file was removed");
    let s = rig.stats();
    assert_eq!(
        (s.get("cache_device_lost_total"), s.get("cache_enabled")),
        (1, 0),
        "after more reads with the cache off: {}",
        brief(&s)
    );
}
