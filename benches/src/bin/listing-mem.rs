//! Where the memory of a cached directory listing goes, structure by
//! structure, using the gateway's own types.
//!
//! `listing-mem [--keys N] [--key-prefix P]` builds, for N keys named like
//! the listing benchmark's (`train/n01440764/n01440764_<i>.JPEG`), what
//! tidegate builds while a client walks the directory:
//!
//! - the handle table ([`HandleTable::ensure_ids`], one call per LIST page
//!   of 1000 keys, as the listing fetch does), which records every key in
//!   redb (its page cache bounded by `HANDLE_DB_CACHE_BYTES`);
//! - the listing ([`ListingState::append`] of one [`DirEntry`] per key,
//!   with the key's ETag, as S3 LIST gives it);
//! - separately, what each node costs that the table keeps in memory
//!   ([`HandleTable::ensure`], as LOOKUP does): the node, its key and its
//!   entries in the id → node and key → id maps;
//! - for comparison, the attribute cache filled for every key
//!   ([`MetaCache::put_attr`] with an ETag, as LOOKUP/GETATTR of each file
//!   would), which a READDIRPLUS walk alone does not fill.
//!
//! It reports, per entry, the bytes each structure asked the allocator
//! for, the heap bytes malloc holds for them (its usable size, which rounds
//! each request up, plus its 8-byte chunk header), and the growth of the
//! process's resident memory. The handle table's in-memory maps are
//! private, so they are rebuilt here with the same types to show their
//! share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use tidegate::cache::meta::{MetaCache, MetaTtls};
use tidegate::vfs::{Attr, DirEntry, HandleTable, ListedEtag, ListingState, Node, NodeKind};
use tidegate_benches::json::{object, Value};
use tidegate_benches::listing::key_name;

/// Counts live bytes: as requested, and as malloc holds them.
struct Counting;

static REQUESTED: AtomicU64 = AtomicU64::new(0);
static USABLE: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
/// glibc's per-chunk header on 64-bit: the usable size plus this is what a
/// live allocation occupies in the heap.
const CHUNK_HEADER_BYTES: u64 = 8;

fn usable(ptr: *mut u8) -> u64 {
    // SAFETY: `ptr` was returned by the system allocator (glibc malloc for
    // the alignments Rust's System allocator serves with malloc, and
    // memalign otherwise, which malloc_usable_size also accepts) and is
    // live.
    unsafe { libc::malloc_usable_size(ptr as *mut libc::c_void) as u64 }
}

// SAFETY: forwards every call to `System` unchanged and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            REQUESTED.fetch_add(layout.size() as u64, Ordering::Relaxed);
            USABLE.fetch_add(usable(p), Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        COUNT.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = usable(ptr);
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            REQUESTED.fetch_add(new_size as u64, Ordering::Relaxed);
            REQUESTED.fetch_sub(layout.size() as u64, Ordering::Relaxed);
            USABLE.fetch_add(usable(p), Ordering::Relaxed);
            USABLE.fetch_sub(before, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Default)]
struct Snapshot {
    requested: u64,
    usable: u64,
    count: u64,
    rss: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        requested: REQUESTED.load(Ordering::Relaxed),
        usable: USABLE.load(Ordering::Relaxed),
        count: COUNT.load(Ordering::Relaxed),
        rss: tidegate_benches::rss_bytes(std::process::id()).unwrap_or(0),
    }
}

/// Growth between two snapshots, accumulated over many steps.
#[derive(Clone, Copy, Default)]
struct Growth {
    requested: i64,
    usable: i64,
    count: i64,
    rss: i64,
}

impl Growth {
    fn add(&mut self, a: Snapshot, b: Snapshot) {
        self.requested += b.requested as i64 - a.requested as i64;
        self.usable += b.usable as i64 - a.usable as i64;
        self.count += b.count as i64 - a.count as i64;
        self.rss += b.rss as i64 - a.rss as i64;
    }

    fn per(&self, n: u64) -> (f64, f64, f64) {
        let n = n as f64;
        let heap = self.usable + self.count * CHUNK_HEADER_BYTES as i64;
        (
            self.requested as f64 / n,
            heap as f64 / n,
            self.rss as f64 / n,
        )
    }
}

const USAGE: &str = "\
listing-mem: memory per cached directory entry, by structure (gateway types)

Usage: listing-mem [--keys N] [--key-prefix PREFIX] [--flush-every-ms MS] [--json PATH]

  --keys N            entries [default: 1000000]
  --key-prefix P      directory of the keys [default: train/n01440764/]
  --flush-every-ms MS make the handle table durable this often while
                      filling, as the server does [default: 1000; 0: never]
  --json PATH         also write the numbers as JSON
";

const PAGE_KEYS: usize = 1000;

fn main() {
    if let Err(e) = run() {
        eprintln!("listing-mem: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut keys_n: u64 = 1_000_000;
    let mut prefix = "train/n01440764/".to_owned();
    let mut json_path: Option<String> = None;
    let mut flush_every = Duration::from_secs(1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--keys" => {
                keys_n = args
                    .next()
                    .context("--keys needs a value")?
                    .parse()
                    .context("--keys")?;
            }
            "--key-prefix" => prefix = args.next().context("--key-prefix needs a value")?,
            "--json" => json_path = Some(args.next().context("--json needs a value")?),
            "--flush-every-ms" => {
                let ms: u64 = args
                    .next()
                    .context("--flush-every-ms needs a value")?
                    .parse()
                    .context("--flush-every-ms")?;
                flush_every = Duration::from_millis(ms);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if keys_n == 0 {
        bail!("--keys must be at least 1");
    }

    // The keys themselves stand for the LIST responses: allocated before
    // any baseline.
    let keys: Vec<String> = (1..=keys_n)
        .map(|i| format!("{prefix}{}", key_name(i)))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    drop(keys);
    let keys = sorted;
    let avg_key = keys.iter().map(|k| k.len()).sum::<usize>() as f64 / keys_n as f64;
    let avg_name = avg_key - prefix.len() as f64;

    let state = std::env::temp_dir().join(format!("tg-listing-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);

    // 1. Handle table and listing, page by page as the listing fetch does
    // (ids recorded with `ensure_ids`, which keeps no node in memory).
    let t0 = snapshot();
    let table = HandleTable::open(&state, "bench:listing-mem").context("open handle table")?;
    let t1 = snapshot();
    let mut open_growth = Growth::default();
    open_growth.add(t0, t1);
    let mut handles = Growth::default();
    let mut listing = Growth::default();
    let mut handles_time = Duration::ZERO;
    let mut listing_time = Duration::ZERO;
    let mut st = ListingState::default();
    let started = Instant::now();
    let mtime = SystemTime::now();
    let mut last_flush = Instant::now();
    for page in keys.chunks(PAGE_KEYS) {
        // The server makes the table durable once a second; between
        // flushes, commits are non-durable.
        if !flush_every.is_zero() && last_flush.elapsed() >= flush_every {
            let (a, t) = (snapshot_fast(), Instant::now());
            table.flush().context("flush")?;
            handles_time += t.elapsed();
            handles.add(a, snapshot_fast());
            last_flush = Instant::now();
        }
        let (a, t) = (snapshot_fast(), Instant::now());
        let ids = table.ensure_ids(page).context("ensure_ids")?;
        handles_time += t.elapsed();
        let b = snapshot_fast();
        handles.add(a, b);
        // `ids` is transient: allocated in this step and freed in the next;
        // move it out of both.
        let ids_bytes = (ids.capacity() * std::mem::size_of::<u64>()) as i64;
        handles.requested -= ids_bytes;
        handles.usable -= ids_bytes;
        handles.count -= 1;
        listing.requested += ids_bytes;
        listing.usable += ids_bytes;
        listing.count += 1;
        let t = Instant::now();
        let entries: Vec<DirEntry> = page
            .iter()
            .zip(ids)
            .map(|(k, id)| DirEntry {
                suffix: k[prefix.len()..].into(),
                id,
                size: 0,
                mtime,
                // S3 LIST gives every key's ETag and the listing keeps it.
                etag: Some(ListedEtag::new(&format!("{id:032x}"))),
            })
            .collect();
        let last = page.last().map(|k| &k[prefix.len()..]);
        st.append(entries, last, Some("token".to_owned()), 0);
        listing_time += t.elapsed();
        listing.add(b, snapshot_fast());
    }
    let c = snapshot_fast();
    st.append(Vec::new(), None, None, 0);
    listing.add(c, snapshot_fast());
    let build_secs = started.elapsed().as_secs_f64();
    // RSS by phase (the fast snapshots above skip /proc).
    let t2 = snapshot();
    table.flush().context("flush")?;
    let t3 = snapshot();
    let mut total = Growth::default();
    total.add(t1, t2);
    let mut flush = Growth::default();
    flush.add(t2, t3);
    assert_eq!(st.visible as u64, keys_n);

    // 2. What each node costs that the table does keep in memory (those
    // named by LOOKUP, GETATTR by handle, cookies): `ensure` on a fresh
    // table, and its two maps and nodes rebuilt with the same types
    // (HandleTable keeps them private).
    let state2 = state.with_extension("nodes");
    let _ = std::fs::remove_dir_all(&state2);
    let table2 = HandleTable::open(&state2, "bench:listing-mem").context("open handle table")?;
    let e0 = snapshot();
    let ensure_started = Instant::now();
    for page in keys.chunks(PAGE_KEYS) {
        drop(table2.ensure(page).context("ensure")?);
    }
    let ensure_secs = ensure_started.elapsed().as_secs_f64();
    let e1 = snapshot();
    let mut ensure_growth = Growth::default();
    ensure_growth.add(e0, e1);
    drop(table2);
    let _ = std::fs::remove_dir_all(&state2);

    let m0 = snapshot();
    let nodes: Vec<Arc<Node>> = keys
        .iter()
        .map(|k| {
            Arc::new(Node {
                id: tidegate::vfs::handles::derived_id(k),
                key: Arc::from(k.as_str()),
            })
        })
        .collect();
    let m1 = snapshot();
    let mut by_id: HashMap<u64, Arc<Node>> = HashMap::new();
    for n in &nodes {
        by_id.insert(n.id, n.clone());
    }
    let m2 = snapshot();
    let mut by_key: HashMap<Arc<str>, u64> = HashMap::new();
    for n in &nodes {
        by_key.insert(n.key.clone(), n.id);
    }
    let m3 = snapshot();
    let vec_bytes = (nodes.capacity() * std::mem::size_of::<Arc<Node>>()) as i64;
    let mut node_growth = Growth::default();
    node_growth.add(m0, m1);
    // The Vec holding the Arcs is not part of the table.
    node_growth.requested -= vec_bytes;
    node_growth.usable -= vec_bytes;
    node_growth.count -= 1;
    let mut by_id_growth = Growth::default();
    by_id_growth.add(m1, m2);
    let mut by_key_growth = Growth::default();
    by_key_growth.add(m2, m3);
    drop(by_key);
    drop(by_id);
    drop(nodes);

    // 3. The attribute cache, filled for every key.
    let meta = MetaCache::new(MetaTtls {
        attrs: Duration::from_secs(3600),
        negative: Duration::from_secs(1),
        immutable: false,
    });
    let a0 = snapshot();
    for (i, k) in keys.iter().enumerate() {
        meta.put_attr(Attr::plain(
            tidegate::vfs::handles::derived_id(k) ^ i as u64,
            NodeKind::File,
            110_000,
            mtime,
            Some(Arc::from(
                format!("{:032x}", i as u128 * 0x9e37_79b9).as_str(),
            )),
        ));
    }
    let a1 = snapshot();
    let mut attrs = Growth::default();
    attrs.add(a0, a1);

    let db_file = std::fs::metadata(state.join("handles.redb")).map_or(0, |m| m.len());

    println!(
        "{keys_n} keys like {:?} (average key {avg_key:.1} bytes, name {avg_name:.1} bytes)",
        keys.last().map(String::as_str).unwrap_or("")
    );
    println!(
        "listing built in {build_secs:.1}s: handle table (ensure_ids + flushes) {:.1}s, listing entries {:.1}s",
        handles_time.as_secs_f64(),
        listing_time.as_secs_f64()
    );
    println!();
    println!(
        "{:<56} {:>10} {:>10} {:>10}",
        "bytes per entry", "requested", "heap", "RSS"
    );
    println!("{}", "-".repeat(89));
    let row = |label: &str, g: &Growth, rss: bool| {
        let (r, u, s) = g.per(keys_n);
        let rss_text = if rss {
            format!("{s:>10.1}")
        } else {
            format!("{:>10}", "-")
        };
        println!("{label:<56} {r:>10.1} {u:>10.1} {rss_text}");
    };
    println!("a READDIRPLUS walk (listing fetch as the gateway does it):");
    row("  listing: Vec<DirEntry> + name strings", &listing, false);
    row(
        "  handle table: redb (ensure_ids per page, flushes)",
        &handles,
        false,
    );
    row("  both (what a walk adds)", &total, true);
    row("  redb flush (durable commit) afterwards", &flush, true);
    println!("per node kept in memory (LOOKUP, GETATTR by handle):");
    row(
        "  HandleTable::ensure on a fresh table, total",
        &ensure_growth,
        true,
    );
    row("  nodes: Arc<Node> + Arc<str> key", &node_growth, false);
    row("  by_id: HashMap<u64, Arc<Node>>", &by_id_growth, false);
    row("  by_key: HashMap<Arc<str>, u64>", &by_key_growth, false);
    println!("per file in the attribute cache (stat of every file):");
    row(
        "  MetaCache attrs: (Attr + ETag, Instant) by id",
        &attrs,
        true,
    );
    println!();
    println!(
        "DirEntry is {} bytes, Node {} bytes, Attr {} bytes; redb's page cache is bounded at {} MiB; \
         the redb file holds {:.1} bytes per key on disk; ensure for {keys_n} keys took {ensure_secs:.1}s",
        std::mem::size_of::<DirEntry>(),
        std::mem::size_of::<Node>(),
        std::mem::size_of::<Attr>(),
        tidegate::vfs::handles::HANDLE_DB_CACHE_BYTES >> 20,
        db_file as f64 / keys_n as f64
    );
    println!(
        "(handle table opened: {:.1} MiB resident before the first key)",
        open_growth.rss as f64 / 1048576.0
    );

    if let Some(path) = json_path {
        let g = |g: &Growth| {
            let (r, u, s) = g.per(keys_n);
            object([
                ("requested", Value::from(r)),
                ("heap", Value::from(u)),
                ("rss", Value::from(s)),
            ])
        };
        let doc = object([
            ("keys", Value::from(keys_n)),
            ("avg_key_bytes", Value::from(avg_key)),
            ("build_secs", Value::from(build_secs)),
            ("handles_secs", Value::from(handles_time.as_secs_f64())),
            ("listing_secs", Value::from(listing_time.as_secs_f64())),
            ("listing", g(&listing)),
            ("handles_redb", g(&handles)),
            ("walk_total", g(&total)),
            ("node_ensure_total", g(&ensure_growth)),
            ("node_nodes", g(&node_growth)),
            ("node_by_id", g(&by_id_growth)),
            ("node_by_key", g(&by_key_growth)),
            ("attr_cache", g(&attrs)),
            (
                "redb_file_bytes_per_key",
                Value::from(db_file as f64 / keys_n as f64),
            ),
        ]);
        std::fs::write(&path, doc.to_json_pretty()).with_context(|| format!("write {path}"))?;
    }
    drop(table);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// A snapshot without reading /proc (used inside the page loop).
fn snapshot_fast() -> Snapshot {
    Snapshot {
        requested: REQUESTED.load(Ordering::Relaxed),
        usable: USABLE.load(Ordering::Relaxed),
        count: COUNT.load(Ordering::Relaxed),
        rss: 0,
    }
}
