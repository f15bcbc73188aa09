//! Listing scale: one directory of a million keys served from S3.
//!
//! `sidebyside --listing [--keys N]` (or `cargo xtask bench --listing`):
//!
//! 1. SeaweedFS runs in the sandbox with its data under
//!    `<work-dir>/listing-store/`; the bucket `bench` gets N empty objects
//!    named like an ImageNet class directory,
//!    `train/n01440764/n01440764_<i>.JPEG` for i in 1..=N, all in one
//!    directory (the worst case for a listing). Filling runs with many
//!    connections in parallel, is bounded in time (`--fill-limit-secs`;
//!    what was filled is kept and the next run continues), and the filled
//!    store is kept between runs, so only the first run pays for it.
//! 2. For reference, the prefix is listed once directly with
//!    ListObjectsV2 (1000 keys a page).
//! 3. tidegate starts with a fresh state directory over `s3://bench`, and
//!    a raw READDIRPLUS walker (one call in flight, as a client reading a
//!    directory) walks the directory twice. Reported: the time to the
//!    first reply (must be one LIST page, not all of them), the time of
//!    each full walk, the S3 LIST requests each walk caused (SeaweedFS's
//!    own counters), and tidegate's resident memory before and after —
//!    the growth divided by the entries is the memory per cached entry.
//! 4. Cookies: every name must come exactly once per walk, and the second
//!    walk must return the same names with the same cookies in the same
//!    order.
//!
//! tidegate runs with `--meta-ttl` long enough (default 1h) that the
//! listing fetched by the first walk is still trusted by the second; with
//! the default TTL of a few seconds a later walk would list again.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};

use crate::clock;
use crate::json::{object, Value};
use crate::nfs3::{self, NfsClient};
use crate::s3::S3Client;
use crate::sandbox::{self, Sandbox};
use crate::seaweed::{self, Seaweed};
use crate::servers::{self, TidegateS3};

pub const USAGE: &str = "\
sidebyside --listing: one directory of N keys in S3 (SeaweedFS), walked with
READDIRPLUS through tidegate

Usage: sidebyside --listing [OPTIONS]   (as root; or `cargo xtask bench --listing [OPTIONS]`)

Options:
  --keys N              keys in the directory [default: 1000000]
  --fill-threads N      parallel connections while filling [default: 24]
  --fill-limit-secs N   stop filling after this long and measure what is
                        there (the next run continues) [default: 1800]
  --refill              discard the kept store and fill it again
  --page-bytes N        READDIRPLUS dircount and maxcount [default: 131072]
  --meta-ttl DURATION   tidegate's --meta-ttl [default: 1h]
  --walk2-pause-ms N    pause between the second walk's calls, as a slow
                        reader (with a short --meta-ttl the listing
                        expires in the middle of the walk) [default: 0]
  --workers N           pass --workers N to tidegate [default: its own]
  --tidegate-env K=V    extra environment for tidegate (repeatable), e.g.
                        MALLOC_ARENA_MAX=1
  --tidegate-wrapper CMD
                        run tidegate under CMD (split at spaces), e.g.
                        \"heaptrack -o target/bench/tidegate\"
  --work-dir DIR        store, logs and results [default: <workspace>/target/bench]
  --tidegate-bin PATH   [default: $TIDEGATE_BIN, else <workspace>/target/release/tidegate]
  -h, --help            print this text
";

const BUCKET: &str = "bench";
const DIR_PREFIX: &str = "train/n01440764/";
const NAME_STEM: &str = "n01440764_";
const NAME_EXT: &str = ".JPEG";
const TIDEGATE_PORT: u16 = 20493;
const SERVICE: &str = "tidegate-listing";
/// Version of the key scheme recorded with a filled store.
const SCHEME: &str = "imagenet-flat-empty-v1";
/// Progress lines while filling, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);
/// Socket timeout of one NFS call (the first walk's calls wait for LIST
/// pages).
const NFS_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound of one walk.
const WALK_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct Options {
    pub keys: u64,
    pub fill_threads: usize,
    pub fill_limit: Duration,
    pub refill: bool,
    pub page_bytes: u32,
    pub meta_ttl: String,
    pub walk2_pause: Duration,
    pub workers: Option<u32>,
    pub tidegate_env: Vec<(String, String)>,
    pub tidegate_wrapper: Vec<String>,
    pub work_dir: PathBuf,
    pub tidegate_bin: PathBuf,
}

/// Parses the arguments after `--listing`; `None` for `--help`.
pub fn parse_args(args: &[String]) -> Result<Option<Options>> {
    let root = crate::workspace_root();
    let mut o = Options {
        keys: 1_000_000,
        fill_threads: 24,
        fill_limit: Duration::from_secs(1800),
        refill: false,
        page_bytes: 131_072,
        meta_ttl: "1h".to_owned(),
        walk2_pause: Duration::ZERO,
        workers: None,
        tidegate_env: Vec::new(),
        tidegate_wrapper: Vec::new(),
        work_dir: root.join("target/bench"),
        tidegate_bin: std::env::var_os("TIDEGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/tidegate")),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        let num = |text: String, min: u64| -> Result<u64> {
            let n: u64 = text
                .parse()
                .with_context(|| format!("{flag}: not a number: {text:?}"))?;
            ensure!(n >= min, "{flag} must be at least {min}");
            Ok(n)
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--listing" => {}
            "--keys" => o.keys = num(value()?, 1)?,
            "--fill-threads" => o.fill_threads = num(value()?, 1)?.min(256) as usize,
            "--fill-limit-secs" => o.fill_limit = Duration::from_secs(num(value()?, 1)?),
            "--refill" => o.refill = true,
            "--page-bytes" => o.page_bytes = num(value()?, 1024)?.min(1 << 20) as u32,
            "--meta-ttl" => o.meta_ttl = value()?,
            "--walk2-pause-ms" => o.walk2_pause = Duration::from_millis(num(value()?, 0)?),
            "--workers" => o.workers = Some(num(value()?, 1)? as u32),
            "--tidegate-env" => {
                let v = value()?;
                let (k, v) = v
                    .split_once('=')
                    .with_context(|| format!("--tidegate-env takes K=V, not {v:?}"))?;
                o.tidegate_env.push((k.to_owned(), v.to_owned()));
            }
            "--tidegate-wrapper" => {
                o.tidegate_wrapper = value()?.split_whitespace().map(str::to_owned).collect()
            }
            "--work-dir" => o.work_dir = PathBuf::from(value()?),
            "--tidegate-bin" => o.tidegate_bin = PathBuf::from(value()?),
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(o))
}

pub fn key_name(i: u64) -> String {
    format!("{NAME_STEM}{i}{NAME_EXT}")
}

/// The index in a name made by [`key_name`].
pub fn name_index(name: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(name).ok()?;
    let digits = s.strip_prefix(NAME_STEM)?.strip_suffix(NAME_EXT)?;
    if digits.starts_with('0') || digits.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// What a filled store holds: keys 1..=count of [`SCHEME`].
fn read_marker(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != SCHEME {
        return None;
    }
    lines.next()?.strip_prefix("keys ")?.parse().ok()
}

fn write_marker(path: &Path, count: u64) -> Result<()> {
    fs::write(path, format!("{SCHEME}\nkeys {count}\n"))
        .with_context(|| format!("write {}", path.display()))
}

/// The outcome of filling.
struct Fill {
    /// Keys present (1..=count).
    count: u64,
    /// Keys uploaded by this run and how long it took.
    uploaded: u64,
    elapsed: Duration,
    complete: bool,
}

/// Uploads keys `from+1..=to` with `threads` connections; stops at the time
/// limit. Returns the highest index below which every key exists.
fn fill(sb: &Sandbox, sw: &Seaweed, from: u64, to: u64, opts: &Options) -> Result<Fill> {
    let next = AtomicU64::new(from + 1);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let start = Instant::now();
    let deadline = start + opts.fill_limit;
    let target = sw.target.clone();
    let total = to - from;
    println!(
        "filling s3://{BUCKET}/{DIR_PREFIX}: keys {}..={to} ({total} empty objects, {} connections, limit {}s)",
        from + 1,
        opts.fill_threads,
        opts.fill_limit.as_secs()
    );
    sb.in_netns(|| {
        std::thread::scope(|scope| {
            for _ in 0..opts.fill_threads {
                let target = target.clone();
                let (next, done, stop, first_failure) = (&next, &done, &stop, &first_failure);
                scope.spawn(move || {
                    let mut c = S3Client::new(target);
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i > to {
                            break;
                        }
                        let key = format!("{DIR_PREFIX}{}", key_name(i));
                        if let Err(e) = c.put(BUCKET, &key, b"") {
                            let mut f = first_failure.lock().expect("poisoned");
                            if f.as_ref().is_none_or(|(j, _)| i < *j) {
                                *f = Some((i, format!("{e:#}")));
                            }
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let mut last_report = Instant::now();
            let mut last_done = 0u64;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let d = done.load(Ordering::Relaxed);
                if d >= total || stop.load(Ordering::Relaxed) {
                    break;
                }
                if sandbox::interrupted() || Instant::now() >= deadline {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                if last_report.elapsed() >= PROGRESS_EVERY {
                    let rate = (d - last_done) as f64 / last_report.elapsed().as_secs_f64();
                    let left = (total - d) as f64 / rate.max(1.0);
                    println!(
                        "  {d}/{total} keys after {:.0}s ({rate:.0} keys/s now; about {left:.0}s left)",
                        start.elapsed().as_secs_f64()
                    );
                    last_report = Instant::now();
                    last_done = d;
                }
            }
        });
        Ok(())
    })?;
    sandbox::check_interrupted()?;
    let elapsed = start.elapsed();
    let assigned_end = next.load(Ordering::Relaxed).min(to + 1); // first index not handed out
    let failure = first_failure.into_inner().expect("poisoned");
    let count = match &failure {
        Some((i, _)) => i - 1,
        None => assigned_end - 1,
    };
    if let Some((i, e)) = &failure {
        if count == from {
            bail!("filling failed at key {i}: {e}");
        }
        println!("filling stopped at key {i}: {e}");
    }
    Ok(Fill {
        count,
        uploaded: done.load(Ordering::Relaxed),
        elapsed,
        complete: count == to,
    })
}

/// One READDIRPLUS walk of the directory.
#[derive(Debug, Default)]
pub struct Walk {
    pub entries: u64,
    pub calls: u64,
    pub first_reply: Duration,
    pub first_reply_entries: u64,
    /// The slowest single call.
    pub max_call: Duration,
    pub total: Duration,
    /// (index from the name, cookie), in the order returned.
    pub order: Vec<(u64, u64)>,
    pub duplicates: u64,
    pub unknown_names: u64,
    pub missing: u64,
    pub bad_attrs: u64,
}

/// Walks `dir` with READDIRPLUS pages of `page_bytes`, pausing `pause`
/// between calls; checks every name of 1..=expected comes exactly once.
pub fn walk(
    c: &mut NfsClient,
    dir: &[u8],
    page_bytes: u32,
    expected: u64,
    pause: Duration,
) -> Result<Walk> {
    let mut w = Walk::default();
    let mut seen = vec![false; expected as usize + 1];
    let mut cookie = 0u64;
    let mut verf = [0u8; 8];
    let start = Instant::now();
    // Each call returns at least one entry; a bound on calls keeps a
    // misbehaving server from looping the walker.
    let calls_max = expected + 1000;
    loop {
        ensure!(
            w.calls < calls_max,
            "no eof after {calls_max} READDIRPLUS calls"
        );
        ensure!(
            start.elapsed() < WALK_TIMEOUT,
            "walk took longer than {}s",
            WALK_TIMEOUT.as_secs()
        );
        let call_start = Instant::now();
        let page = match c.readdir_page(dir, true, cookie, verf, page_bytes)? {
            Ok(p) => p,
            Err(nfs3::Status(s)) => bail!(
                "READDIRPLUS call {} (cookie {cookie:#x}) failed with nfsstat3 {s}",
                w.calls
            ),
        };
        w.calls += 1;
        w.max_call = w.max_call.max(call_start.elapsed());
        if w.calls == 1 {
            w.first_reply = start.elapsed();
            w.first_reply_entries = page.entries.len() as u64;
        }
        ensure!(
            !page.entries.is_empty() || page.eof,
            "READDIRPLUS reply without entries and without eof"
        );
        for e in &page.entries {
            w.entries += 1;
            match name_index(&e.name).filter(|&i| i >= 1 && i <= expected) {
                Some(i) => {
                    if seen[i as usize] {
                        w.duplicates += 1;
                    }
                    seen[i as usize] = true;
                    w.order.push((i, e.cookie));
                }
                None => w.unknown_names += 1,
            }
            let attr_ok = e
                .attr
                .is_some_and(|a| a.ftype == nfs3::NF3REG && a.size == 0 && a.fileid == e.fileid);
            if !attr_ok || e.fh.is_none() {
                w.bad_attrs += 1;
            }
        }
        if let Some(last) = page.entries.last() {
            cookie = last.cookie;
        }
        verf = page.verf;
        if page.eof {
            break;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    w.total = start.elapsed();
    w.missing = seen[1..].iter().filter(|s| !**s).count() as u64;
    Ok(w)
}

/// A direct ListObjectsV2 pass over the prefix.
struct RawList {
    keys: u64,
    pages: u64,
    first_page: Duration,
    total: Duration,
}

fn raw_list(sw: &Seaweed) -> Result<RawList> {
    let mut c = S3Client::new(sw.target.clone());
    let start = Instant::now();
    let mut r = RawList {
        keys: 0,
        pages: 0,
        first_page: Duration::ZERO,
        total: Duration::ZERO,
    };
    let mut token: Option<String> = None;
    loop {
        sandbox::check_interrupted()?;
        let page = c.list_page(BUCKET, DIR_PREFIX, token.as_deref(), 1000)?;
        r.pages += 1;
        if r.pages == 1 {
            r.first_page = start.elapsed();
        }
        r.keys += page.keys.len() as u64;
        token = page.next_token;
        if token.is_none() {
            break;
        }
        ensure!(r.pages < 100_000, "LIST did not end within 100000 pages");
    }
    r.total = start.elapsed();
    Ok(r)
}

/// Runs the listing benchmark; returns whether every check passed.
pub fn run(opts: &Options) -> Result<bool> {
    ensure!(
        opts.tidegate_bin.is_file(),
        "tidegate not found at {} (cargo build --release -p tidegate)",
        opts.tidegate_bin.display()
    );
    let weed = seaweed::weed_bin()?;
    let stamp = clock::utc_stamp(SystemTime::now());
    let run_dir = opts.work_dir.join(format!("listing-run-{stamp}"));
    fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    let store_dir = opts.work_dir.join("listing-store");
    let marker = store_dir.join("filled");
    let mut have = read_marker(&marker);
    if opts.refill || have.is_some_and(|n| n > opts.keys) || (have.is_none() && store_dir.exists())
    {
        if store_dir.exists() {
            println!("discarding the kept store {}", store_dir.display());
            fs::remove_dir_all(&store_dir)
                .with_context(|| format!("remove {}", store_dir.display()))?;
        }
        have = None;
    }
    fs::create_dir_all(&store_dir).with_context(|| format!("create {}", store_dir.display()))?;

    let mut sb = Sandbox::create()?;
    println!("network namespace {} (lo only)", sb.name());
    let t = Instant::now();
    let sw = Seaweed::start(&mut sb, &weed, &store_dir, BUCKET)?;
    println!(
        "SeaweedFS ready in {:.1}s ({})",
        t.elapsed().as_secs_f64(),
        store_dir.display()
    );

    // 1. Fill (or continue filling) the directory.
    let have = have.unwrap_or(0);
    let mut fill_json = Value::Null;
    let keys = if have < opts.keys {
        let f = fill(&sb, &sw, have, opts.keys, opts)?;
        write_marker(&marker, f.count)?;
        let rate = f.uploaded as f64 / f.elapsed.as_secs_f64().max(1e-9);
        println!(
            "filled {} keys in {:.1}s ({rate:.0} keys/s); the directory holds {}",
            f.uploaded,
            f.elapsed.as_secs_f64(),
            f.count
        );
        if !f.complete {
            println!(
                "time limit reached: measuring {} keys instead of {} (at this rate the rest takes about {:.0}s more; the next run continues)",
                f.count,
                opts.keys,
                (opts.keys - f.count) as f64 / rate.max(1.0)
            );
        }
        fill_json = object([
            ("uploaded", Value::from(f.uploaded)),
            ("secs", Value::from(f.elapsed.as_secs_f64())),
            ("keys_per_s", Value::from(rate)),
            ("complete", Value::Bool(f.complete)),
        ]);
        f.count
    } else {
        println!("store already holds {have} keys (kept from an earlier run)");
        have
    };

    // 2. Reference: list the prefix directly.
    let sw_ref = &sw;
    let raw = sb.in_netns(|| raw_list(sw_ref))?;
    ensure!(
        raw.keys == keys,
        "S3 lists {} keys under {DIR_PREFIX}, expected {keys}",
        raw.keys
    );
    println!(
        "S3 LIST of the prefix: {} keys in {} pages, {:.2}s (first page {:.1} ms)",
        raw.keys,
        raw.pages,
        raw.total.as_secs_f64(),
        ms(raw.first_page)
    );

    // 3. tidegate and the walks.
    let state_dir = run_dir.join("tidegate-state");
    let log = run_dir.join("tidegate.log");
    let extra = vec!["--meta-ttl".to_owned(), opts.meta_ttl.clone()];
    let tg = TidegateS3 {
        bin: &opts.tidegate_bin,
        bucket: BUCKET,
        port: TIDEGATE_PORT,
        state_dir: &state_dir,
        workers: opts.workers,
        extra_args: &extra,
        wrapper: &opts.tidegate_wrapper,
        env: &opts.tidegate_env,
    };
    servers::start_tidegate_s3(&mut sb, SERVICE, &tg, &sw, &log)?;
    servers::wait_nfs_ready(&mut sb, SERVICE, TIDEGATE_PORT, "train", &log)?;
    let service_pid = sb
        .service_mut(SERVICE)
        .context("tidegate not started")?
        .pid();
    let pid = servers::find_process(service_pid, "tidegate")
        .with_context(|| format!("no tidegate process at or under pid {service_pid}"))?;
    println!(
        "tidegate serving s3://{BUCKET} (pid {pid}, --meta-ttl {})",
        opts.meta_ttl
    );

    let page_bytes = opts.page_bytes;
    let walk2_pause = opts.walk2_pause;
    let measured = sb.in_netns(|| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], TIDEGATE_PORT));
        let mut c = NfsClient::connect(addr, NFS_CALL_TIMEOUT)?;
        let root = c.mount("/")?;
        let dir = c.lookup_path(&root, DIR_PREFIX)?;
        // Let the start-up allocations settle before the baseline.
        std::thread::sleep(Duration::from_millis(500));
        let rss0 = crate::rss_bytes(pid)?;
        let s3_0 = seaweed::s3_request_counts()?;
        let w1 = walk(&mut c, &dir, page_bytes, keys, Duration::ZERO)?;
        let rss1 = crate::rss_bytes(pid)?;
        let s3_1 = seaweed::s3_request_counts()?;
        let w2 = walk(&mut c, &dir, page_bytes, keys, walk2_pause)?;
        let rss2 = crate::rss_bytes(pid)?;
        let s3_2 = seaweed::s3_request_counts()?;
        Ok((rss0, rss1, rss2, s3_0, s3_1, s3_2, w1, w2))
    });
    let (rss0, rss1, rss2, s3_0, s3_1, s3_2, w1, w2) = match measured {
        Ok(m) => m,
        Err(e) => {
            bail!(
                "{e:#}; last lines of {}:\n{}",
                log.display(),
                sandbox::log_tail(&log, 20)
            )
        }
    };
    sb.service_mut(SERVICE)
        .context("tidegate not started")?
        .check_alive()?;
    let lists = |a: &[(String, u64)], b: &[(String, u64)]| {
        seaweed::count_of(b, "LIST").saturating_sub(seaweed::count_of(a, "LIST"))
    };
    let all = |a: &[(String, u64)], b: &[(String, u64)]| {
        let sum = |x: &[(String, u64)]| x.iter().map(|(_, n)| n).sum::<u64>();
        sum(b).saturating_sub(sum(a))
    };
    let lists1 = lists(&s3_0, &s3_1);
    let lists2 = lists(&s3_1, &s3_2);
    let other1 = all(&s3_0, &s3_1) - lists1;
    let other2 = all(&s3_1, &s3_2) - lists2;

    let same_order = w1.order == w2.order;
    let names_ok = [&w1, &w2]
        .iter()
        .all(|w| w.entries == keys && w.duplicates + w.unknown_names + w.missing == 0);
    let mut problems = Vec::new();
    for (n, w) in [(1, &w1), (2, &w2)] {
        if w.entries != keys || w.duplicates + w.unknown_names + w.missing > 0 {
            problems.push(format!(
                "walk {n}: {} entries for {keys} keys ({} duplicates, {} unknown names, {} missing)",
                w.entries, w.duplicates, w.unknown_names, w.missing
            ));
        }
        if w.bad_attrs > 0 {
            problems.push(format!(
                "walk {n}: {} entries without a handle or with wrong attributes",
                w.bad_attrs
            ));
        }
    }
    if !same_order {
        problems.push("walk 2 returned other names or cookies than walk 1".to_owned());
    }
    let list_pages = keys.div_ceil(1000);
    if lists2 > 0 {
        problems.push(format!(
            "walk 2 sent {lists2} LIST requests: not served from memory (a listing is trusted \
             for --meta-ttl {} after its last page was fetched)",
            opts.meta_ttl
        ));
    }
    let per_entry = |a: u64, b: u64| b.saturating_sub(a) as f64 / keys as f64;

    println!();
    println!(
        "one directory of {keys} keys (train/n01440764/n01440764_<i>.JPEG, empty objects) in SeaweedFS;"
    );
    println!(
        "raw READDIRPLUS walker, one call in flight, dircount = maxcount = {page_bytes} bytes{}",
        if walk2_pause.is_zero() {
            String::new()
        } else {
            format!(
                "; walk 2 pauses {} ms between calls",
                walk2_pause.as_millis()
            )
        }
    );
    println!();
    println!(
        "{:<34} {:>14} {:>14}",
        "", "walk 1 (cold)", "walk 2 (memory)"
    );
    println!("{}", "-".repeat(64));
    println!(
        "{:<34} {:>14.2} {:>14.2}",
        "full walk (s)",
        w1.total.as_secs_f64(),
        w2.total.as_secs_f64()
    );
    println!(
        "{:<34} {:>14.0} {:>14.0}",
        "entries/s",
        keys as f64 / w1.total.as_secs_f64(),
        keys as f64 / w2.total.as_secs_f64()
    );
    println!(
        "{:<34} {:>14.1} {:>14.1}",
        "first reply (ms)",
        ms(w1.first_reply),
        ms(w2.first_reply)
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "entries in the first reply", w1.first_reply_entries, w2.first_reply_entries
    );
    println!(
        "{:<34} {:>14.1} {:>14.1}",
        "slowest call (ms)",
        ms(w1.max_call),
        ms(w2.max_call)
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "READDIRPLUS calls", w1.calls, w2.calls
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "S3 LIST requests (other requests)",
        format!("{lists1} ({other1})"),
        format!("{lists2} ({other2})")
    );
    println!(
        "{:<34} {:>14.1} {:>14.1}",
        "tidegate RSS after (MiB)",
        rss1 as f64 / 1048576.0,
        rss2 as f64 / 1048576.0
    );
    println!();
    println!(
        "S3 LIST of the prefix directly: {:.2}s for {} pages (first page {:.1} ms)",
        raw.total.as_secs_f64(),
        raw.pages,
        ms(raw.first_page)
    );
    println!(
        "tidegate RSS before the walks: {:.1} MiB; growth over walk 1: {:.1} MiB = {:.0} bytes per entry (target <= 200)",
        rss0 as f64 / 1048576.0,
        rss1.saturating_sub(rss0) as f64 / 1048576.0,
        per_entry(rss0, rss1)
    );
    println!(
        "cookies: {} names each exactly once in both walks; walk 2 same names, cookies and order: {}",
        if names_ok { "all" } else { "NOT all" },
        if same_order { "yes" } else { "NO" }
    );
    println!(
        "walk 1 LIST requests: {lists1} for {list_pages} pages of 1000 keys \
         (the rest are one-key existence checks of the directory, one per --meta-ttl)"
    );
    if lists1 >= 2 * list_pages {
        problems.push(format!(
            "walk 1 sent {lists1} LIST requests for {list_pages} pages: the prefix was listed more than once"
        ));
    }
    for p in &problems {
        println!("PROBLEM: {p}");
    }

    let walk_json = |w: &Walk, lists: u64, other: u64, rss: u64| {
        object([
            ("secs", Value::from(w.total.as_secs_f64())),
            ("first_reply_ms", Value::from(ms(w.first_reply))),
            ("first_reply_entries", Value::from(w.first_reply_entries)),
            ("max_call_ms", Value::from(ms(w.max_call))),
            ("entries", Value::from(w.entries)),
            ("calls", Value::from(w.calls)),
            ("duplicates", Value::from(w.duplicates)),
            ("unknown_names", Value::from(w.unknown_names)),
            ("missing", Value::from(w.missing)),
            ("bad_attrs", Value::from(w.bad_attrs)),
            ("s3_list_requests", Value::from(lists)),
            ("s3_other_requests", Value::from(other)),
            ("rss_bytes_after", Value::from(rss)),
        ])
    };
    let doc = object([
        ("timestamp_utc", Value::from(stamp.as_str())),
        ("keys", Value::from(keys)),
        ("keys_requested", Value::from(opts.keys)),
        (
            "key_example",
            Value::from(format!("{DIR_PREFIX}{}", key_name(keys))),
        ),
        ("page_bytes", Value::from(u64::from(page_bytes))),
        ("meta_ttl", Value::from(opts.meta_ttl.as_str())),
        (
            "walk2_pause_ms",
            Value::from(walk2_pause.as_millis() as u64),
        ),
        ("fill", fill_json),
        (
            "s3_list_direct",
            object([
                ("secs", Value::from(raw.total.as_secs_f64())),
                ("pages", Value::from(raw.pages)),
                ("first_page_ms", Value::from(ms(raw.first_page))),
            ]),
        ),
        ("rss_bytes_before", Value::from(rss0)),
        ("walk1", walk_json(&w1, lists1, other1, rss1)),
        ("walk2", walk_json(&w2, lists2, other2, rss2)),
        ("rss_bytes_per_entry", Value::from(per_entry(rss0, rss1))),
        ("same_order_and_cookies", Value::Bool(same_order)),
        (
            "problems",
            Value::Array(problems.iter().map(|p| Value::from(p.as_str())).collect()),
        ),
        ("run_dir", Value::from(run_dir.display().to_string())),
    ]);
    drop(sb);
    let _ = fs::remove_dir_all(&state_dir);
    let path = opts.work_dir.join(format!("listing-{stamp}.json"));
    fs::write(&path, doc.to_json_pretty()).with_context(|| format!("write {}", path.display()))?;
    println!("\nresults: {}", path.display());
    println!("logs:    {}", run_dir.display());
    Ok(problems.is_empty())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(key_name(10026), "n01440764_10026.JPEG");
        assert_eq!(name_index(b"n01440764_10026.JPEG"), Some(10026));
        assert_eq!(name_index(b"n01440764_010026.JPEG"), None);
        assert_eq!(name_index(b"n01440764_.JPEG"), None);
        assert_eq!(name_index(b"x"), None);
    }

    #[test]
    fn marker_round_trip() {
        let dir = std::env::temp_dir().join(format!("tg-bench-marker-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("filled");
        assert_eq!(read_marker(&p), None);
        write_marker(&p, 1234).unwrap();
        assert_eq!(read_marker(&p), Some(1234));
        fs::write(&p, "other-scheme\nkeys 5\n").unwrap();
        assert_eq!(read_marker(&p), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
