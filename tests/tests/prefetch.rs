//! Adaptive prefetch, end to end: the gateway serves a SeaweedFS bucket
//! through the counting proxy (see `cache_rig`) with its block cache, and
//! NFSv3 clients read through it. The proxy can hold back the first byte
//! of every S3 answer, as a distant region would; it says which ranges
//! reached S3 and when, and `/stats` says what the prefetcher did. Every
//! byte read is checked against what was uploaded.
//!
//! What is claimed: a single-stream reader that waits for each READ goes
//! at least 5× faster with prefetch than without when every S3 answer
//! takes 20 ms to start (a ratio of two runs in one test, never an
//! absolute speed); random 4 KiB reads fetch at most 1.2× the bytes they
//! read; prefetch stays within its byte budget and the gateway's memory
//! within memory tier + budget + a fixed allowance; objects of at most
//! the small-object size come whole in one GET; two interleaved streams in
//! one file are both prefetched; and `--prefetch off` fetches exactly the
//! blocks read, nothing ahead.

use std::io::Read;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tidegate_tests::cache_rig::{check_content, Object, Rig, Stats, MIB, READ_CHUNK_BYTES};
use tidegate_tests::data::{fresh_seed, SplitMix64};
use tidegate_tests::rpc::{
    args_read, decode_post_op_attr, encode_call, frame, NfsClient, RpcConn, XdrReader,
    LAST_FRAGMENT, MAX_REPLY_BYTES, NFS3_OK, NFSPROC3_READ, NFS_PROGRAM, NFS_V3,
};
use tidegate_tests::s3proxy::Recorded;

const KIB: u64 = 1024;
/// The gateway's cache block (its default).
const BLOCK_BYTES: u64 = MIB;
/// What every S3 answer waits before its first byte in the timed tests.
const FIRST_BYTE_DELAY: Duration = Duration::from_millis(20);

/// The object of the sequential speed test.
const SEQ_OBJECT_BYTES: u64 = 64 * MIB;

/// The object of the random-read test.
const RANDOM_OBJECT_BYTES: u64 = 256 * MIB;
const RANDOM_READS: usize = 500;
const RANDOM_READ_BYTES: u32 = 4096;
/// Most bytes fetched from S3 per byte read by a random reader.
const RANDOM_FETCH_RATIO_MAX: f64 = 1.2;

/// Memory test: the memory tier, the prefetch budgets, the readers.
const MEMORY_TIER_BYTES: u64 = 64 * MIB;
const PREFETCH_BUDGET_BYTES: u64 = 32 * MIB;
const PREFETCH_CLIENT_BUDGET_BYTES: u64 = 16 * MIB;
const MEMORY_READERS: usize = 4;
const MEMORY_OBJECT_BYTES: u64 = 64 * MIB;
/// RSS the gateway may add beyond the memory tier and the prefetch
/// budget while serving: per-worker READ and reply buffers (a READ is up
/// to 1 MiB, pooled), demand fetches in flight (one block per reader),
/// blocks waiting for their background device write, the S3 client's
/// connection buffers, allocator slack and the runtime.
const RSS_ALLOWANCE_BYTES: u64 = 64 * MIB;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The gateway's small-object threshold (its default).
const SMALL_OBJECT_BYTES: u64 = 4 * MIB;

// ------------------------------------------------------------ helpers ----

/// A lock shared by the tests of this file across processes (nextest
/// runs each test in its own): the timed test holds it exclusively, the
/// others shared, so that the two runs it compares do not share the
/// machine's cores with another SeaweedFS-and-gateway test of this file.
/// (Tests of other files may still run beside it.)
struct TimingLock(#[allow(dead_code)] std::fs::File);

fn timing_lock(exclusive: bool) -> TimingLock {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("tidegate-prefetch-tests.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock(2) on a descriptor owned by `f`, open for the
        // call; no memory is passed. The lock goes with the descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return TimingLock(f);
        }
        let e = std::io::Error::last_os_error();
        assert!(
            e.kind() == std::io::ErrorKind::Interrupted,
            "flock {}: {e}",
            path.display()
        );
    }
}

/// A rig over SeaweedFS with `data` uploaded and the gateway started with
/// a cache of `cache_size` and `flags`.
fn start_rig(data: &[Object], cache_size: &str, flags: &[&str]) -> Rig {
    let mut rig = Rig::s3();
    rig.put(data);
    let cache = rig.cache_file();
    rig.set_cache(&cache, cache_size, flags);
    rig.start();
    rig
}

/// Object GETs of exactly `key`, in order of arrival, with their index in
/// the proxy's log (since its last reset).
fn gets_of(rig: &Rig, key: &str) -> Vec<(usize, Recorded)> {
    rig.proxy()
        .requests()
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.is_object_get() && r.key == key)
        .collect()
}

/// The bytes `[first, last]` a GET asked for (a GET without a Range, or
/// with an open one, reaches to the object's end).
fn get_span(r: &Recorded, object_len: u64) -> (u64, u64) {
    match (r.range.as_deref(), r.range_bytes()) {
        (None, _) => (0, object_len.saturating_sub(1)),
        (Some(_), Some((first, Some(last)))) => (first, last.min(object_len.saturating_sub(1))),
        (Some(_), Some((first, None))) => (first, object_len.saturating_sub(1)),
        (Some(range), None) => panic!("a GET with a Range the test cannot read: {range:?}"),
    }
}

/// One READ at `offset`, which must succeed.
fn read_at(c: &mut NfsClient, fh: &[u8], offset: u64, count: u32, what: &str) -> Vec<u8> {
    c.read(fh, offset, count)
        .unwrap_or_else(|e| panic!("{what}: READ at {offset}: {e:#}"))
        .unwrap_or_else(|s| panic!("{what}: READ at {offset}: nfsstat3 {s}"))
        .data
}

/// One READ at `offset` on `conn`, waited for, its data appended to
/// `out`; returns eof. The reply record lands in `record`, reused from
/// call to call: the test crate is built without optimisation, and
/// zero-filling a fresh 1 MiB buffer per READ (as [`NfsClient::read`]
/// does) would cost more than the gateway takes to serve a cached block,
/// so the measured speed would be the client's.
fn read_append(
    conn: &mut RpcConn,
    record: &mut Vec<u8>,
    fh: &[u8],
    offset: u64,
    count: u32,
    out: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    use anyhow::ensure;
    let xid = conn.next_xid();
    let call = encode_call(
        xid,
        NFS_PROGRAM,
        NFS_V3,
        NFSPROC3_READ,
        &conn.cred.clone(),
        &args_read(fh, offset, count),
    );
    conn.send_bytes(&frame(&call))?;
    let mut used = 0;
    loop {
        let mut mark = [0u8; 4];
        conn.stream.read_exact(&mut mark)?;
        let mark = u32::from_be_bytes(mark);
        let len = (mark & !LAST_FRAGMENT) as usize;
        ensure!(used + len <= MAX_REPLY_BYTES, "reply record too large");
        if record.len() < used + len {
            record.resize(used + len, 0);
        }
        conn.stream.read_exact(&mut record[used..used + len])?;
        used += len;
        if mark & LAST_FRAGMENT != 0 {
            break;
        }
    }
    let mut r = XdrReader::new(&record[..used]);
    ensure!(r.u32()? == xid, "reply to another call");
    ensure!(r.u32()? == 1, "not a reply");
    ensure!(r.u32()? == 0, "call denied");
    let _verf_flavor = r.u32()?;
    let _verf = r.opaque(400)?;
    ensure!(r.u32()? == 0, "call not accepted");
    let status = r.u32()?;
    decode_post_op_attr(&mut r)?;
    ensure!(status == NFS3_OK, "nfsstat3 {status}");
    let n = r.u32()?;
    let eof = r.bool()?;
    let data = r.opaque(MAX_REPLY_BYTES)?;
    ensure!(
        n as usize == data.len(),
        "READ count {n}, {} bytes",
        data.len()
    );
    ensure!(
        !data.is_empty() || eof,
        "READ returned nothing before the end"
    );
    out.extend_from_slice(data);
    Ok(eof)
}

/// Reads a whole object with one 1 MiB READ in flight at a time (each
/// waited for before the next is sent) and checks every byte; returns how
/// long the READs took and when each was sent.
fn read_whole_timed(
    rig: &Rig,
    c: &mut NfsClient,
    fh: &[u8],
    o: &Object,
    what: &str,
) -> (Duration, Vec<Duration>) {
    let mut got = Vec::with_capacity(o.len as usize);
    let mut record = vec![0u8; READ_CHUNK_BYTES as usize + 4096];
    let mut starts = Vec::with_capacity(o.blocks(BLOCK_BYTES) as usize);
    let t = Instant::now();
    while (got.len() as u64) < o.len {
        let at = got.len() as u64;
        starts.push(t.elapsed());
        let eof = read_append(&mut c.conn, &mut record, fh, at, READ_CHUNK_BYTES, &mut got)
            .unwrap_or_else(|e| {
                panic!(
                    "{what}: READ at {at}: {e:#}\ngateway stderr:\n{}",
                    rig.stderr()
                )
            });
        if eof {
            break;
        }
    }
    let took = t.elapsed();
    check_content(o, &got, what);
    (took, starts)
}

fn delta(after: &Stats, before: &Stats, name: &str) -> u64 {
    after.get(name).saturating_sub(before.get(name))
}

/// The prefetch counters, for messages.
fn prefetch_brief(s: &Stats) -> String {
    s.values
        .iter()
        .filter(|(k, _)| k.starts_with("prefetch_") || k.starts_with("cache_bypass"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

// -------------------------------------------------------------- tests ----

/// What one timed cold pass saw.
struct Pass {
    took: Duration,
    /// When each READ was sent, since the first.
    read_starts: Vec<Duration>,
    /// The same READs again, every block cached (the reader's own ceiling).
    warm: Duration,
    gets: u64,
    stats: Stats,
}

impl Pass {
    fn mib_per_s(&self) -> f64 {
        mib(SEQ_OBJECT_BYTES) / self.took.as_secs_f64()
    }

    fn warm_mib_per_s(&self) -> f64 {
        mib(SEQ_OBJECT_BYTES) / self.warm.as_secs_f64()
    }

    /// When the READs of blocks 1, 2, 4, 8, … were sent, in ms.
    fn timeline(&self) -> String {
        let mut v = Vec::new();
        let mut i = 1;
        while i < self.read_starts.len() {
            v.push(format!("{i}@{}", self.read_starts[i].as_millis()));
            i *= 2;
        }
        v.join(" ")
    }
}

/// Starts the gateway with a fresh cache file and `flags`, reads `o` once
/// cold with a single waiting stream (timed), once more warm, and stops
/// the gateway.
fn timed_cold_pass(rig: &mut Rig, o: &Object, name: &str, flags: &[&str]) -> Pass {
    let cache = rig.dirs.root.path().join(format!("cache-{name}.bin"));
    rig.set_cache(&cache, "256MiB", flags);
    rig.start();
    let (mut c, root) = rig.connect();
    let fh = c
        .lookup_path(&root, &o.key)
        .unwrap_or_else(|e| panic!("LOOKUP {}: {e:#}", o.key));
    rig.proxy().reset();
    let (took, read_starts) =
        read_whole_timed(rig, &mut c, &fh, o, &format!("cold pass, prefetch {name}"));
    let stats = rig.stats();
    let gets = gets_of(rig, &o.key).len() as u64;
    let (warm, _) = read_whole_timed(rig, &mut c, &fh, o, &format!("warm pass, prefetch {name}"));
    drop(c);
    rig.stop();
    Pass {
        took,
        read_starts,
        warm,
        gets,
        stats,
    }
}

/// One stream, one 1 MiB READ in flight at a time, every S3 answer 20 ms
/// late: with prefetch the reader waits for the store on a handful of
/// blocks at the start and finds the rest already fetched; without it,
/// every block is a miss. Two gateways one after the other (each with a
/// fresh cache file) over the same SeaweedFS and proxy. The speed-up is
/// printed, not asserted: speed is the benchmark's business (`cargo xtask
/// bench --latency-only` compares it side by side).
#[test]
fn cold_sequential_read_is_served_by_prefetch() {
    let _lock = timing_lock(true);
    let o = Object::new("seq/big.bin", SEQ_OBJECT_BYTES, fresh_seed());
    let mut rig = Rig::s3();
    rig.put(std::slice::from_ref(&o));
    rig.proxy().set_first_byte_delay(FIRST_BYTE_DELAY);

    let off = timed_cold_pass(&mut rig, &o, "off", &["--prefetch", "off"]);
    let on = timed_cold_pass(&mut rig, &o, "on", &["--prefetch", "on"]);
    let ratio = on.mib_per_s() / off.mib_per_s();
    let report = format!(
        "cold sequential read of {} MiB, {FIRST_BYTE_DELAY:?} first-byte delay, one 1 MiB READ at a time:\n  \
         prefetch off: {:.2?} = {:.1} MiB/s, {} GETs (warm: {:.0} MiB/s); READ n sent at ms: {}\n  \
         prefetch on:  {:.2?} = {:.1} MiB/s, {} GETs (warm: {:.0} MiB/s); READ n sent at ms: {}\n  \
         prefetch on: cache_misses_total={} {}\n  \
         speed-up {ratio:.2}×",
        mib(SEQ_OBJECT_BYTES),
        off.took,
        off.mib_per_s(),
        off.gets,
        off.warm_mib_per_s(),
        off.timeline(),
        on.took,
        on.mib_per_s(),
        on.gets,
        on.warm_mib_per_s(),
        on.timeline(),
        on.stats.get("cache_misses_total"),
        prefetch_brief(&on.stats),
    );
    eprintln!("{report}");
    assert_eq!(
        off.stats.get("prefetch_blocks_total"),
        0,
        "--prefetch off prefetched: {}",
        prefetch_brief(&off.stats)
    );
    assert!(
        on.stats.get("prefetch_blocks_total") > 0,
        "prefetch on prefetched nothing: {}",
        prefetch_brief(&on.stats)
    );
    let blocks = SEQ_OBJECT_BYTES.div_ceil(1 << 20);
    assert_eq!(
        off.stats.get("cache_misses_total"),
        blocks,
        "without prefetch every block is a miss:\n{report}"
    );
    assert!(
        on.stats.get("cache_misses_total") <= blocks / 8,
        "with prefetch the reader still waited on {} of {blocks} blocks:\n{report}",
        on.stats.get("cache_misses_total")
    );
    assert!(
        on.stats.get("prefetch_hits_total") >= blocks - blocks / 8,
        "prefetched blocks the reader used: {} of {blocks}:\n{report}",
        on.stats.get("prefetch_hits_total")
    );
}

/// 500 random 4 KiB READs at 4 KiB-aligned offsets of a 256 MiB object:
/// S3 sees at most 1.2× the bytes read.
#[test]
fn random_small_reads_fetch_at_most_1_2x_what_they_read() {
    let _lock = timing_lock(false);
    let seed = fresh_seed();
    let o = Object::new("random/big.bin", RANDOM_OBJECT_BYTES, seed);
    let rig = start_rig(std::slice::from_ref(&o), "512MiB", &[]);
    let want = o.bytes();
    let (mut c, root) = rig.connect();
    let fh = c
        .lookup_path(&root, &o.key)
        .unwrap_or_else(|e| panic!("LOOKUP {}: {e:#}", o.key));
    rig.proxy().reset();
    let before = rig.stats();
    let mut rng = SplitMix64::new(seed ^ 0x00ff_00ff);
    let slots = RANDOM_OBJECT_BYTES / RANDOM_READ_BYTES as u64;
    let mut read_bytes = 0u64;
    let mut offsets = Vec::with_capacity(RANDOM_READS);
    // Requests the proxy had logged when each READ was sent.
    let mut logged_before = Vec::with_capacity(RANDOM_READS);
    for i in 0..RANDOM_READS {
        // Offset 0 is left out: a read there is taken for the start of a
        // sequential pass and given a head start, by design.
        let offset = (1 + rng.next_u64() % (slots - 1)) * RANDOM_READ_BYTES as u64;
        logged_before.push(rig.proxy().request_count() as usize);
        let got = read_at(&mut c, &fh, offset, RANDOM_READ_BYTES, "random read");
        let at = offset as usize;
        assert!(
            got == want[at..at + RANDOM_READ_BYTES as usize],
            "random read {i} at {offset}: {} bytes back, not the object's (seed {seed})",
            got.len()
        );
        read_bytes += got.len() as u64;
        offsets.push(offset);
    }
    // Prefetches started by the last READs reach the proxy.
    std::thread::sleep(Duration::from_millis(500));
    let after = rig.stats();
    let gets = gets_of(&rig, &o.key);
    let fetched: u64 = gets
        .iter()
        .map(|(_, r)| {
            let (first, last) = get_span(r, o.len);
            last + 1 - first
        })
        .sum();
    let ratio = fetched as f64 / read_bytes as f64;
    let big: Vec<String> = gets
        .iter()
        .filter(|(_, r)| {
            let (first, last) = get_span(r, o.len);
            last + 1 - first > RANDOM_READ_BYTES as u64
        })
        .map(|(_, r)| format!("{:?}", r.range))
        .collect();
    // The READs during which GETs larger than a read went out, and how
    // far each started from the end of the nearest earlier READ.
    let mut triggers: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (g, r) in &gets {
        let (first, last) = get_span(r, o.len);
        if last + 1 - first <= RANDOM_READ_BYTES as u64 {
            continue;
        }
        let i = logged_before
            .partition_point(|&n| n <= *g)
            .saturating_sub(1);
        if !seen.insert(i) {
            continue;
        }
        let off = offsets[i];
        let nearest = offsets[..i]
            .iter()
            .map(|&p| (off as i64) - (p + RANDOM_READ_BYTES as u64) as i64)
            .min_by_key(|d| d.unsigned_abs());
        triggers.push(format!(
            "READ #{i} at {off} (nearest earlier READ ended {nearest:?} bytes before it)"
        ));
    }
    eprintln!(
        "{RANDOM_READS} random reads of {RANDOM_READ_BYTES} bytes: {read_bytes} bytes read, {} GETs \
         fetched {fetched} bytes: ratio {ratio:.3}; GETs larger than a read: {} {:?}\n  \
         prefetch: blocks +{} bytes +{} grows +{} collapses +{}; bypass reads +{} bytes +{}\n  \
         READs that sent them: {triggers:?}",
        gets.len(),
        big.len(),
        big.iter().take(20).collect::<Vec<_>>(),
        delta(&after, &before, "prefetch_blocks_total"),
        delta(&after, &before, "prefetch_bytes_total"),
        delta(&after, &before, "prefetch_window_grows_total"),
        delta(&after, &before, "prefetch_window_collapses_total"),
        delta(&after, &before, "cache_bypass_reads_total"),
        delta(&after, &before, "cache_bypass_bytes_total"),
    );
    assert!(
        ratio <= RANDOM_FETCH_RATIO_MAX,
        "{RANDOM_READS} random {RANDOM_READ_BYTES}-byte reads of a {} MiB object fetched {fetched} \
         bytes from S3 for {read_bytes} read: {ratio:.3}× (want ≤ {RANDOM_FETCH_RATIO_MAX}); \
         {} of {} GETs were larger than a read: {:?}\nprefetch: {}",
        mib(o.len),
        big.len(),
        gets.len(),
        big,
        prefetch_brief(&after)
    );
}

/// Peaks seen by the memory sampler.
#[derive(Default)]
struct Peaks {
    rss_kib: u64,
    in_flight_bytes: u64,
    streams: u64,
    samples: u64,
}

/// Four clients (four loopback addresses) read four 64 MiB objects at
/// once, each one READ at a time, with S3 answers 20 ms late: the bytes of
/// prefetch in flight never pass the budget and the gateway's RSS grows by
/// at most memory tier + prefetch budget + a fixed allowance.
#[test]
fn prefetch_memory_stays_within_budget() {
    let _lock = timing_lock(false);
    let mut rng = SplitMix64::new(fresh_seed());
    let data: Vec<Object> = (0..MEMORY_READERS)
        .map(|i| {
            Object::new(
                &format!("mem/obj-{i}.bin"),
                MEMORY_OBJECT_BYTES,
                rng.next_u64(),
            )
        })
        .collect();
    let flags = [
        "--cache-memory".to_string(),
        format!("{}MiB", MEMORY_TIER_BYTES / MIB),
        "--prefetch-budget".to_string(),
        format!("{}MiB", PREFETCH_BUDGET_BYTES / MIB),
        "--prefetch-client-budget".to_string(),
        format!("{}MiB", PREFETCH_CLIENT_BUDGET_BYTES / MIB),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rig = start_rig(&data, "512MiB", &flags);
    rig.proxy().set_first_byte_delay(FIRST_BYTE_DELAY);
    let pid = rig.server_pid();
    let rss_kib =
        || tidegate_tests::server::proc_status_kib(pid, "VmRSS:").expect("VmRSS of the gateway");

    // Every client connects and looks its object up before the baseline.
    let clients: Vec<(NfsClient, Vec<u8>)> = (0..MEMORY_READERS)
        .map(|i| {
            let (mut c, root) = rig.connect_from(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
            let fh = c
                .lookup_path(&root, &data[i].key)
                .unwrap_or_else(|e| panic!("LOOKUP {}: {e:#}", data[i].key));
            (c, fh)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let baseline_kib = rss_kib();
    let before = rig.stats();

    let done = AtomicBool::new(false);
    let peaks = Mutex::new(Peaks::default());
    let t = Instant::now();
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let rss = rss_kib();
                let s = rig.stats();
                let mut p = peaks.lock().unwrap();
                p.rss_kib = p.rss_kib.max(rss);
                p.in_flight_bytes = p.in_flight_bytes.max(s.get("prefetch_in_flight_bytes"));
                p.streams = p.streams.max(s.get("prefetch_streams"));
                p.samples += 1;
                drop(p);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let readers: Vec<_> = clients
            .into_iter()
            .zip(&data)
            .enumerate()
            .map(|(i, ((mut c, fh), o))| {
                let rig = &rig;
                scope.spawn(move || {
                    read_whole_timed(rig, &mut c, &fh, o, &format!("reader {i}"));
                })
            })
            .collect();
        for r in readers {
            r.join().expect("reader thread");
        }
        done.store(true, Ordering::SeqCst);
        sampler.join().expect("sampler thread");
    });
    let took = t.elapsed();
    let after = rig.stats();
    let p = peaks.into_inner().unwrap();
    let peak_kib = p.rss_kib.max(rss_kib());
    let growth = (peak_kib.saturating_sub(baseline_kib)) * KIB;
    let limit = MEMORY_TIER_BYTES + PREFETCH_BUDGET_BYTES + RSS_ALLOWANCE_BYTES;
    eprintln!(
        "{MEMORY_READERS} readers × {} MiB in {took:.2?}: RSS baseline {:.1} MiB, peak {:.1} MiB \
         (+{:.1} MiB; limit {:.0} MiB = memory tier {:.0} + prefetch budget {:.0} + allowance {:.0}); \
         peak prefetch_in_flight_bytes {:.1} MiB (budget {:.0} MiB), peak streams {}, {} samples\n  \
         prefetch: blocks +{} hits +{} budget skips +{}; GETs {}",
        mib(MEMORY_OBJECT_BYTES),
        baseline_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        mib(growth),
        mib(limit),
        mib(MEMORY_TIER_BYTES),
        mib(PREFETCH_BUDGET_BYTES),
        mib(RSS_ALLOWANCE_BYTES),
        mib(p.in_flight_bytes),
        mib(PREFETCH_BUDGET_BYTES),
        p.streams,
        p.samples,
        delta(&after, &before, "prefetch_blocks_total"),
        delta(&after, &before, "prefetch_hits_total"),
        delta(&after, &before, "prefetch_budget_skips_total"),
        rig.proxy().get_count(),
    );
    assert!(
        delta(&after, &before, "prefetch_blocks_total") > 0,
        "nothing was prefetched, so the budget was not exercised: {}",
        prefetch_brief(&after)
    );
    assert!(
        p.in_flight_bytes <= PREFETCH_BUDGET_BYTES,
        "prefetch_in_flight_bytes reached {} with --prefetch-budget {PREFETCH_BUDGET_BYTES}",
        p.in_flight_bytes
    );
    assert!(
        growth <= limit,
        "the gateway's RSS grew by {:.1} MiB while serving (baseline {:.1} MiB, peak {:.1} MiB); \
         want ≤ {:.0} MiB (memory tier + prefetch budget + {:.0} MiB allowance)\nprefetch: {}",
        mib(growth),
        baseline_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        mib(limit),
        mib(RSS_ALLOWANCE_BYTES),
        prefetch_brief(&after)
    );
}

/// Objects over one block but within the small-object size come whole in
/// one GET; a larger one takes several.
#[test]
fn small_objects_come_whole_in_one_get() {
    let _lock = timing_lock(false);
    let mut rng = SplitMix64::new(fresh_seed());
    let small = [
        Object::new("small/two-and-a-half.bin", 5 * MIB / 2, rng.next_u64()),
        Object::new("small/three-point-nine.bin", 39 * MIB / 10, rng.next_u64()),
    ];
    let large = Object::new("large/nine.bin", 9 * MIB, rng.next_u64());
    assert!(small
        .iter()
        .all(|o| o.len > BLOCK_BYTES && o.len <= SMALL_OBJECT_BYTES));
    let mut data = small.to_vec();
    data.push(large.clone());
    let rig = start_rig(&data, "128MiB", &[]);
    rig.proxy().reset();
    let (mut c, root) = rig.connect();
    for o in &data {
        rig.read_one(&mut c, &root, o, READ_CHUNK_BYTES, "full read");
    }
    std::thread::sleep(Duration::from_millis(200));
    for o in &small {
        let gets = gets_of(&rig, &o.key);
        let ranges: Vec<_> = gets.iter().map(|(_, r)| r.range.clone()).collect();
        eprintln!("{} ({} bytes): GETs {ranges:?}", o.key, o.len);
        assert_eq!(
            gets.len(),
            1,
            "reading {} ({} bytes, small-object size {SMALL_OBJECT_BYTES}) took {} GETs: {ranges:?}\nstats: {}",
            o.key,
            o.len,
            gets.len(),
            prefetch_brief(&rig.stats())
        );
        assert_eq!(
            get_span(&gets[0].1, o.len),
            (0, o.len - 1),
            "the one GET of {} did not ask for the whole object: {ranges:?}",
            o.key
        );
    }
    let gets = gets_of(&rig, &large.key);
    let ranges: Vec<_> = gets.iter().map(|(_, r)| r.range.clone()).collect();
    eprintln!("{} ({} bytes): GETs {ranges:?}", large.key, large.len);
    assert!(
        gets.len() > 1,
        "reading {} ({} bytes, over the small-object size) took {} GET: {ranges:?}",
        large.key,
        large.len,
        gets.len()
    );
}

/// Two sequential readers of the two halves of one 64 MiB object, from
/// one client, READs alternating between them: each half is fetched ahead
/// of its reader, and both readers hit prefetched blocks.
#[test]
fn two_streams_in_one_file_both_prefetched() {
    let _lock = timing_lock(false);
    const OBJECT_BYTES: u64 = 64 * MIB;
    const HALF: u64 = OBJECT_BYTES / 2;
    /// Blocks at the start of each half that nothing can be ahead of yet.
    const WARMUP_BLOCKS: u64 = 2;
    let o = Object::new("two/streams.bin", OBJECT_BYTES, fresh_seed());
    let rig = start_rig(std::slice::from_ref(&o), "256MiB", &[]);
    rig.proxy().set_first_byte_delay(FIRST_BYTE_DELAY);
    let want = o.bytes();
    let (mut c, root) = rig.connect();
    let fh = c
        .lookup_path(&root, &o.key)
        .unwrap_or_else(|e| panic!("LOOKUP {}: {e:#}", o.key));
    rig.proxy().reset();
    let start = rig.stats();

    let halves = [0, HALF];
    // Per half: prefetch hits during its READs; per block: how many
    // requests the proxy had logged when its READ was sent.
    let mut hits = [0u64; 2];
    let mut logged_before_read = vec![0usize; (OBJECT_BYTES / BLOCK_BYTES) as usize];
    let mut last = start.clone();
    for k in 0..HALF / BLOCK_BYTES {
        for (h, base) in halves.iter().enumerate() {
            let offset = base + k * BLOCK_BYTES;
            logged_before_read[(offset / BLOCK_BYTES) as usize] =
                rig.proxy().request_count() as usize;
            let got = read_at(&mut c, &fh, offset, BLOCK_BYTES as u32, "interleaved read");
            assert!(
                got == want[offset as usize..(offset + BLOCK_BYTES) as usize],
                "reader {h}: READ at {offset} returned {} bytes, not the object's",
                got.len()
            );
            let now = rig.stats();
            hits[h] += delta(&now, &last, "prefetch_hits_total");
            last = now;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let requests = rig.proxy().requests();
    // Per block: the index in the log of the first GET that covered it.
    let mut first_get: Vec<Option<usize>> = vec![None; logged_before_read.len()];
    for (i, r) in requests.iter().enumerate() {
        if !(r.is_object_get() && r.key == o.key) {
            continue;
        }
        let (first, last) = get_span(r, o.len);
        for b in first / BLOCK_BYTES..=last / BLOCK_BYTES {
            let slot = &mut first_get[b as usize];
            if slot.is_none() {
                *slot = Some(i);
            }
        }
    }
    let mut ahead = [0u64; 2];
    let mut never = [0u64; 2];
    for (h, base) in halves.iter().enumerate() {
        for k in WARMUP_BLOCKS..HALF / BLOCK_BYTES {
            let b = ((base + k * BLOCK_BYTES) / BLOCK_BYTES) as usize;
            match first_get[b] {
                Some(i) if i < logged_before_read[b] => ahead[h] += 1,
                Some(_) => {}
                None => never[h] += 1,
            }
        }
    }
    let end = rig.stats();
    let eligible = HALF / BLOCK_BYTES - WARMUP_BLOCKS;
    eprintln!(
        "two interleaved streams: blocks fetched ahead of their READ: first half {}/{eligible}, second half {}/{eligible}; \
         prefetch hits during the READs of each half: {} and {}; {} GETs\n  prefetch: blocks +{} hits +{} grows +{} collapses +{}; \
         bypass reads +{}",
        ahead[0],
        ahead[1],
        hits[0],
        hits[1],
        gets_of(&rig, &o.key).len(),
        delta(&end, &start, "prefetch_blocks_total"),
        delta(&end, &start, "prefetch_hits_total"),
        delta(&end, &start, "prefetch_window_grows_total"),
        delta(&end, &start, "prefetch_window_collapses_total"),
        delta(&end, &start, "cache_bypass_reads_total"),
    );
    assert_eq!(
        never,
        [0, 0],
        "blocks read but never fetched under their own GET range (cache bypass fetches partial ranges?)"
    );
    for h in 0..2 {
        assert!(
            hits[h] > 0 && ahead[h] * 2 >= eligible,
            "half {h} of {}: {} of its {eligible} blocks were fetched before their READ and its READs hit \
             {} prefetched blocks (want at least half and some); per half ahead {ahead:?}, hits {hits:?}\nprefetch: {}",
            o.key,
            ahead[h],
            hits[h],
            prefetch_brief(&end)
        );
    }
}

/// With `--prefetch off`, a sequential read makes one GET per block read,
/// of that block, and nothing is prefetched; small objects are read by
/// block too.
#[test]
fn prefetch_off_fetches_nothing_ahead() {
    let _lock = timing_lock(false);
    let mut rng = SplitMix64::new(fresh_seed());
    let data = [
        Object::new("off/twelve.bin", 12 * MIB, rng.next_u64()),
        Object::new("off/two-and-a-half.bin", 5 * MIB / 2, rng.next_u64()),
    ];
    let rig = start_rig(&data, "128MiB", &["--prefetch", "off"]);
    rig.proxy().reset();
    let (mut c, root) = rig.connect();
    for o in &data {
        rig.read_one(
            &mut c,
            &root,
            o,
            READ_CHUNK_BYTES,
            "sequential read, prefetch off",
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = rig.stats();
    for o in &data {
        let gets = gets_of(&rig, &o.key);
        let mut spans: Vec<(u64, u64)> = gets.iter().map(|(_, r)| get_span(r, o.len)).collect();
        eprintln!("{} ({} bytes): {} GETs", o.key, o.len, gets.len());
        spans.sort_unstable();
        let want: Vec<(u64, u64)> = (0..o.blocks(BLOCK_BYTES))
            .map(|b| (b * BLOCK_BYTES, ((b + 1) * BLOCK_BYTES).min(o.len) - 1))
            .collect();
        assert_eq!(
            spans,
            want,
            "with --prefetch off, reading {} ({} blocks) should GET each block once, nothing more",
            o.key,
            o.blocks(BLOCK_BYTES)
        );
    }
    assert_eq!(
        (
            stats.get("prefetch_blocks_total"),
            stats.get("prefetch_bytes_total")
        ),
        (0, 0),
        "--prefetch off prefetched: {}",
        prefetch_brief(&stats)
    );
}
