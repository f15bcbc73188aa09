//! `tidegate warm PREFIX`: pull everything under a prefix into a running
//! gateway's block cache before training starts.
//!
//! Two phases, so progress can show a total and an ETA:
//!
//! 1. **List.** The tool opens the same source the gateway serves
//!    ([`super::open_store`]) and walks PREFIX. Store listings are
//!    `/`-delimited, so the walk lists a prefix, queues the sub-prefixes it
//!    finds and lists those too, up to `--parallel` listings at once. The
//!    queue of prefixes and the list of objects are both bounded
//!    ([`PREFIXES_PENDING_MAX`], [`WARM_OBJECTS_MAX`]); past either the tool
//!    stops and asks for a narrower prefix. PREFIX is a path relative to the
//!    export root: a directory (everything under it), one object, or both
//!    when S3 holds an object and a "directory" of the same name; `""` or
//!    `/` is everything.
//! 2. **Warm.** `--parallel` workers, each with its own keep-alive
//!    connection to the admin endpoint, take the next object from the
//!    sorted list and `POST /warm?key=...`. The gateway reads the object
//!    through its cache, so the work (and the S3 traffic) happens where the
//!    cache lives; the tool only paces it. A failed object is counted and
//!    the walk goes on; after [`CONSECUTIVE_FAILURES_MAX`] failures in a row
//!    (the gateway went away, the cache is off) it stops early. The exit
//!    status is non-zero if any object failed.
//!
//! The admin endpoint serves at most [`CONNECTIONS_MAX`] connections, so
//! more workers than that would only be turned away; `--parallel` is
//! capped there (with a note).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tokio::task::JoinSet;

use super::client::AdminClient;
use super::progress::{Progress, REDRAW_INTERVAL};
use super::{human_bytes, human_duration, open_store, parse_admin_addr, thousands};
use crate::config::{FileConfig, S3Options, Source};
use crate::store::{ObjectStore, StoreError, LIST_PAGE_KEYS_MAX};
use crate::telemetry::http::{CONNECTIONS_MAX, WARM_TIMEOUT};

/// Default number of objects warmed at once.
pub const PARALLEL_DEFAULT: u16 = 8;
/// Most objects warmed at once that `--parallel` accepts.
pub const PARALLEL_MAX: u16 = 256;
/// Most objects one run lists and warms.
pub const WARM_OBJECTS_MAX: usize = 5_000_000;
/// Most prefixes waiting to be listed.
pub const PREFIXES_PENDING_MAX: usize = 1_000_000;
/// Failures in a row after which the run gives up.
pub const CONSECUTIVE_FAILURES_MAX: u64 = 50;
/// Failure messages kept for the summary.
const FAILURE_MESSAGES_MAX: usize = 5;
/// Time allowed for the reachability check before listing.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one warm request: the server's own bound plus slack.
const WARM_REQUEST_TIMEOUT: Duration = Duration::from_secs(WARM_TIMEOUT.as_secs() + 60);

#[derive(Args, Debug, Clone)]
pub struct WarmArgs {
    /// What to warm: a path relative to the export root, either a directory (everything under
    /// it) or one object; "" or "/" warms everything
    #[arg(value_name = "PREFIX")]
    pub prefix: String,

    /// Admin endpoint of the running gateway (the address given to its --admin)
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_admin_addr,
          required_unless_present = "cache", conflicts_with = "cache")]
    pub admin: Option<SocketAddr>,

    /// Warm a stopped gateway's cache device or file directly (the path given to its
    /// --cache); it must not be in use
    #[arg(long, value_name = "PATH")]
    pub cache: Option<PathBuf>,

    /// With --cache: bytes of the device to use, as for `serve` [default: the existing size]
    #[arg(long, value_name = "BYTES", requires = "cache")]
    pub cache_size: Option<String>,

    /// With --cache: block size, as for `serve` (a different one starts the cache empty)
    /// [default: 1MiB]
    #[arg(long, value_name = "BYTES", requires = "cache")]
    pub cache_block_size: Option<String>,

    /// The SOURCE the gateway serves (`s3://bucket[/prefix]` or a directory); the objects to
    /// warm are listed from it [default: `source` from --config]
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,

    /// Endpoint of an S3-compatible store, as for `serve`
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Address buckets as ENDPOINT/BUCKET/KEY, as for `serve`
    #[arg(long)]
    pub path_style: bool,

    /// S3 region, as for `serve`
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// The gateway's TOML config file: its source, endpoint-url, path-style and region are used
    /// where the flags above are not given
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Objects warmed (and prefixes listed) at once
    #[arg(long, value_name = "N", default_value_t = PARALLEL_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=PARALLEL_MAX as i64))]
    pub parallel: u16,
}

/// Warm everything under `args.prefix`; fails if any object failed.
pub fn run(args: WarmArgs) -> anyhow::Result<()> {
    let source = resolve_source(&args)?;
    let store = open_store(&source)?;
    let mut parallel = usize::from(args.parallel);
    if parallel > CONNECTIONS_MAX {
        eprintln!(
            "note: the admin endpoint serves at most {CONNECTIONS_MAX} connections; \
             warming {CONNECTIONS_MAX} objects at once instead of {parallel}"
        );
        parallel = CONNECTIONS_MAX;
    }
    // A stopped gateway's cache is opened here and served to this run
    // through a private admin endpoint on loopback, so both modes share
    // one code path.
    let local = match &args.cache {
        Some(path) => Some(LocalCache::start(path, &args, store.clone())?),
        None => None,
    };
    let admin = match (&local, args.admin) {
        (Some(l), _) => l.addr,
        (None, Some(a)) => a,
        (None, None) => {
            bail!("give --admin ADDR:PORT (running gateway) or --cache PATH (stopped one)")
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let report = rt.block_on(warm_prefix(store, &args.prefix, admin, parallel));
    if let Some(l) = local {
        l.stop();
    }
    let report = report?;
    println!("{}", report.summary());
    if report.failed > 0 {
        eprintln!(
            "{} failed; the first {}:",
            thousands(report.failed),
            report.first_errors.len()
        );
        for (key, message) in &report.first_errors {
            eprintln!("  {key}: {message}");
        }
    }
    if let Some(why) = &report.gave_up {
        bail!(
            "gave up: {why}; {} of {} objects were not tried",
            thousands(report.total_objects - report.tried_objects),
            thousands(report.total_objects)
        );
    }
    if report.failed > 0 {
        bail!(
            "{} of {} objects failed to warm",
            thousands(report.failed),
            thousands(report.total_objects)
        );
    }
    Ok(())
}

/// A cache opened by this process, with an admin endpoint of its own.
struct LocalCache {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl LocalCache {
    fn start(
        path: &std::path::Path,
        args: &WarmArgs,
        store: Arc<dyn ObjectStore>,
    ) -> anyhow::Result<LocalCache> {
        use crate::cache::block::{BlockCache, CacheConfig, Warmer, BLOCK_BYTES_DEFAULT};
        use crate::config::parse_bytes;
        let config = CacheConfig {
            path: path.to_path_buf(),
            size_bytes: args.cache_size.as_deref().map(parse_bytes).transpose()?,
            block_bytes: match &args.cache_block_size {
                Some(s) => parse_bytes(s)?,
                None => BLOCK_BYTES_DEFAULT,
            },
            memory_bytes: 0,
            prefetch: None,
        };
        let (cache, report) = BlockCache::open(&config)?;
        eprintln!(
            "cache {}: {} entries, {} cached{}",
            path.display(),
            thousands(report.entries as u64),
            human_bytes(report.bytes),
            if report.formatted { " (new)" } else { "" }
        );
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let warmer: Arc<dyn crate::telemetry::http::WarmTarget> =
            Arc::new(Warmer::new(store, Arc::new(cache)));
        let thread = std::thread::Builder::new()
            .name("tidegate-warm".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("tidegate: warm runtime: {e}"),
                };
                tokio::task::LocalSet::new().block_on(&rt, async move {
                    let _ring = match crate::io::ring::Ring::start() {
                        Ok(r) => r,
                        Err(e) => return eprintln!("tidegate: io_uring setup: {e}"),
                    };
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            crate::telemetry::http::serve_admin(l, Some(warmer), stop_rx).await
                        }
                        Err(e) => eprintln!("tidegate: warm endpoint: {e}"),
                    }
                })
            })?;
        Ok(LocalCache { addr, stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// The source to list: `--source`, else the config file's, with S3
/// options merged the way `serve` merges them (flags win).
fn resolve_source(args: &WarmArgs) -> anyhow::Result<Source> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let text = args.source.clone().or(file.source).ok_or_else(|| {
        anyhow!(
            "warm lists the objects itself: give --source with the SOURCE the gateway serves \
             (s3://bucket[/prefix] or a directory), or --config with the gateway's config file"
        )
    })?;
    let s3 = S3Options {
        endpoint_url: args.endpoint_url.clone().or(file.endpoint_url),
        path_style: args.path_style || file.path_style.unwrap_or(false),
        region: args.region.clone().or(file.region),
    };
    let source = Source::parse(&text, &s3)?;
    if let Source::Dir(p) = &source {
        if !Path::new(p).is_dir() {
            bail!("source {} is not a directory", p.display());
        }
    }
    Ok(source)
}

/// One object to warm.
struct Item {
    key: Box<str>,
    size_bytes: u64,
}

/// What a warm run did.
#[derive(Debug, Default)]
struct WarmReport {
    total_objects: u64,
    total_bytes: u64,
    /// Objects a warm request was sent for (all of them unless it gave up).
    tried_objects: u64,
    warmed_objects: u64,
    /// Listed size of the objects warmed.
    warmed_bytes: u64,
    /// What the gateway reported as cached for them.
    cached_bytes: u64,
    failed: u64,
    first_errors: Vec<(String, String)>,
    gave_up: Option<String>,
    list_elapsed: Duration,
    warm_elapsed: Duration,
}

impl WarmReport {
    fn summary(&self) -> String {
        let secs = self.warm_elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.warmed_bytes as f64 / secs / (1 << 20) as f64
        } else {
            0.0
        };
        format!(
            "warmed {} of {} objects ({} of {}) in {:.1} s, {:.1} MiB/s; the gateway reports {} \
             cached for them; {} failed (listing took {:.1} s)",
            thousands(self.warmed_objects),
            thousands(self.total_objects),
            human_bytes(self.warmed_bytes),
            human_bytes(self.total_bytes),
            secs,
            rate,
            human_bytes(self.cached_bytes),
            thousands(self.failed),
            self.list_elapsed.as_secs_f64(),
        )
    }
}

/// Check the endpoint, list PREFIX, warm every object.
async fn warm_prefix(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    admin: SocketAddr,
    parallel: usize,
) -> anyhow::Result<WarmReport> {
    let parallel = parallel.clamp(1, CONNECTIONS_MAX);
    // Fail before a long listing if nothing answers.
    let health = AdminClient::new(admin)
        .request("GET", "/healthz", HEALTH_TIMEOUT)
        .await?;
    if health.status != 200 {
        bail!(
            "admin endpoint at {admin} is not healthy: {}",
            health.error_message()
        );
    }

    let mut progress = Progress::new();
    let list_started = Instant::now();
    let items = list_objects(&store, prefix, parallel, &mut progress).await?;
    let list_elapsed = list_started.elapsed();
    if items.is_empty() {
        progress.finish();
        bail!(
            "nothing to warm: no objects under {prefix:?} in {}",
            store.describe()
        );
    }
    let items = Arc::new(items);
    let total_objects = items.len() as u64;
    let total_bytes: u64 = items.iter().map(|i| i.size_bytes).sum();
    progress.force(Some(0.0), || {
        format!(
            "listed {} objects ({}) in {:.1} s; warming {parallel} at a time",
            thousands(total_objects),
            human_bytes(total_bytes),
            list_elapsed.as_secs_f64()
        )
    });

    let shared = Arc::new(WarmShared::default());
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..parallel.min(items.len()) {
        workers.spawn(warm_worker(items.clone(), shared.clone(), admin));
    }
    let mut tick = tokio::time::interval(REDRAW_INTERVAL);
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("a warm worker failed: {e}"),
            },
            _ = tick.tick() => {
                let done_objects = shared.tried_objects.load(Ordering::Relaxed);
                let done_bytes = shared.tried_bytes.load(Ordering::Relaxed);
                let failed = shared.failed.load(Ordering::Relaxed);
                let fraction = if total_bytes > 0 {
                    done_bytes as f64 / total_bytes as f64
                } else {
                    done_objects as f64 / total_objects as f64
                };
                progress.update(Some(fraction), || {
                    warm_line(
                        (done_objects, total_objects),
                        (done_bytes, total_bytes),
                        failed,
                        started.elapsed(),
                    )
                });
            }
        }
    }
    progress.finish();

    let first_errors = std::mem::take(&mut *lock(&shared.first_errors));
    let gave_up = lock(&shared.gave_up).take();
    Ok(WarmReport {
        total_objects,
        total_bytes,
        tried_objects: shared.tried_objects.load(Ordering::Relaxed),
        warmed_objects: shared.warmed_objects.load(Ordering::Relaxed),
        warmed_bytes: shared.warmed_bytes.load(Ordering::Relaxed),
        cached_bytes: shared.cached_bytes.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        first_errors,
        gave_up,
        list_elapsed,
        warm_elapsed: started.elapsed(),
    })
}

/// `warming 1,234/5,000 objects  1.20 GiB/4.00 GiB  312.4 MiB/s  ETA 12s`.
fn warm_line(objects: (u64, u64), bytes: (u64, u64), failed: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate_bytes = bytes.0 as f64 / secs;
    let eta = if bytes.1 > 0 && rate_bytes > 0.0 {
        let left = bytes.1.saturating_sub(bytes.0) as f64 / rate_bytes;
        human_duration(Duration::from_secs_f64(left.min(1e9)))
    } else if bytes.1 == 0 && objects.0 > 0 {
        let left = objects.1.saturating_sub(objects.0) as f64 * secs / objects.0 as f64;
        human_duration(Duration::from_secs_f64(left.min(1e9)))
    } else {
        "--".to_string()
    };
    let mut line = format!(
        "warming {}/{} objects  {}/{}  {:.1} MiB/s  ETA {eta}",
        thousands(objects.0),
        thousands(objects.1),
        human_bytes(bytes.0),
        human_bytes(bytes.1),
        rate_bytes / (1 << 20) as f64,
    );
    if failed > 0 {
        line.push_str(&format!("  ({} failed)", thousands(failed)));
    }
    line
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// State the warm workers share (all on one thread; atomics because
/// `JoinSet::spawn` wants `Send`).
#[derive(Default)]
struct WarmShared {
    next: AtomicUsize,
    tried_objects: AtomicU64,
    tried_bytes: AtomicU64,
    warmed_objects: AtomicU64,
    warmed_bytes: AtomicU64,
    cached_bytes: AtomicU64,
    failed: AtomicU64,
    failures_in_a_row: AtomicU64,
    stop: AtomicBool,
    first_errors: Mutex<Vec<(String, String)>>,
    gave_up: Mutex<Option<String>>,
}

async fn warm_worker(items: Arc<Vec<Item>>, shared: Arc<WarmShared>, admin: SocketAddr) {
    let mut client = AdminClient::new(admin);
    while !shared.stop.load(Ordering::Relaxed) {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else {
            break;
        };
        match client.warm(&item.key, WARM_REQUEST_TIMEOUT).await {
            Ok(cached) => {
                shared.failures_in_a_row.store(0, Ordering::Relaxed);
                shared.warmed_objects.fetch_add(1, Ordering::Relaxed);
                shared
                    .warmed_bytes
                    .fetch_add(item.size_bytes, Ordering::Relaxed);
                shared.cached_bytes.fetch_add(cached, Ordering::Relaxed);
            }
            Err(message) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let in_a_row = shared.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= CONSECUTIVE_FAILURES_MAX
                    && !shared.stop.swap(true, Ordering::Relaxed)
                {
                    *lock(&shared.gave_up) = Some(format!(
                        "{CONSECUTIVE_FAILURES_MAX} objects failed in a row, the last with: {message}"
                    ));
                }
                let mut errors = lock(&shared.first_errors);
                if errors.len() < FAILURE_MESSAGES_MAX {
                    errors.push((item.key.to_string(), message));
                }
            }
        }
        shared.tried_objects.fetch_add(1, Ordering::Relaxed);
        shared
            .tried_bytes
            .fetch_add(item.size_bytes, Ordering::Relaxed);
    }
}

/// Every object under PREFIX (see the module doc), sorted by key.
async fn list_objects(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    parallel: usize,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Item>> {
    let path = prefix.trim_start_matches('/');
    let mut items = Vec::new();
    let mut pending: VecDeque<String> = VecDeque::new();
    if path.is_empty() || path.ends_with('/') {
        pending.push_back(path.to_string());
    } else {
        let dir = format!("{path}/");
        match store.head(path).await {
            Ok(meta) => {
                items.push(Item {
                    key: meta.key.into(),
                    size_bytes: meta.size,
                });
                // S3 may also hold keys under "path/"; a directory store
                // cannot (and refuses to list a file as a directory), so
                // here a failed listing only means "no such directory".
                let listed = Arc::new(AtomicU64::new(1));
                if let Ok((found, sub_prefixes)) = list_prefix(store.clone(), dir, listed).await {
                    items.extend(found);
                    pending.extend(sub_prefixes);
                }
            }
            Err(StoreError::NotFound { .. }) => pending.push_back(dir),
            Err(e) => return Err(e).with_context(|| format!("looking up {path:?}")),
        }
    }

    let listed = Arc::new(AtomicU64::new(items.len() as u64));
    let mut prefixes_done = 0u64;
    let mut listings = JoinSet::new();
    let mut tick = tokio::time::interval(REDRAW_INTERVAL);
    loop {
        while listings.len() < parallel {
            let Some(p) = pending.pop_front() else {
                break;
            };
            listings.spawn(list_prefix(store.clone(), p, listed.clone()));
        }
        if listings.is_empty() {
            break;
        }
        tokio::select! {
            joined = listings.join_next() => {
                let Some(joined) = joined else { break };
                let (found, sub_prefixes) = joined.map_err(|e| anyhow!("a listing task failed: {e}"))??;
                items.extend(found);
                if pending.len() + sub_prefixes.len() > PREFIXES_PENDING_MAX {
                    bail!(
                        "more than {PREFIXES_PENDING_MAX} directories waiting to be listed under \
                         {prefix:?}; warm a narrower prefix"
                    );
                }
                pending.extend(sub_prefixes);
                prefixes_done += 1;
            }
            _ = tick.tick() => {
                let n = listed.load(Ordering::Relaxed);
                progress.update(None, || {
                    format!(
                        "listing… {} objects in {} directories ({} to go)",
                        thousands(n),
                        thousands(prefixes_done),
                        thousands((pending.len() + listings.len()) as u64)
                    )
                });
            }
        }
    }
    items.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    items.dedup_by(|a, b| a.key == b.key);
    Ok(items)
}

/// All pages of one prefix: its objects, and its sub-prefixes to list next.
async fn list_prefix(
    store: Arc<dyn ObjectStore>,
    prefix: String,
    listed: Arc<AtomicU64>,
) -> anyhow::Result<(Vec<Item>, Vec<String>)> {
    let mut items = Vec::new();
    let mut prefixes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list(&prefix, token.as_deref(), LIST_PAGE_KEYS_MAX)
            .await
            .with_context(|| format!("listing {prefix:?} in {}", store.describe()))?;
        let n = listed.fetch_add(page.objects.len() as u64, Ordering::Relaxed)
            + page.objects.len() as u64;
        if n > WARM_OBJECTS_MAX as u64 {
            bail!("more than {WARM_OBJECTS_MAX} objects to warm; warm a narrower prefix");
        }
        for o in page.objects {
            // Directory markers ("d/") are not objects to warm.
            if !o.key.ends_with('/') {
                items.push(Item {
                    key: o.key.into(),
                    size_bytes: o.size,
                });
            }
        }
        // Only strictly deeper prefixes: a store that answered a prefix
        // with itself would otherwise make the walk loop forever.
        prefixes.extend(
            page.prefixes
                .into_iter()
                .filter(|p| p.len() > prefix.len() && p.starts_with(prefix.as_str())),
        );
        match page.next_token {
            Some(t) if token.as_deref() == Some(t.as_str()) => {
                bail!("listing {prefix:?}: the store returned the same continuation token twice")
            }
            Some(t) => token = Some(t),
            None => break,
        }
    }
    Ok((items, prefixes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::DirStore;
    use crate::telemetry::http::{serve_admin, WarmTarget};
    use std::future::Future;
    use std::pin::Pin;
    use tokio::sync::watch;

    /// Records every key asked for; fails the keys in `fail`.
    struct Recorder {
        keys: Mutex<Vec<String>>,
        fail: Vec<&'static str>,
        fail_all: bool,
    }

    impl WarmTarget for Recorder {
        fn warm<'a>(
            &'a self,
            key: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + 'a>> {
            Box::pin(async move {
                lock(&self.keys).push(key.to_string());
                if self.fail_all || self.fail.contains(&key) {
                    Err(format!("cannot warm {key}"))
                } else {
                    Ok(7)
                }
            })
        }
    }

    struct Gateway {
        addr: SocketAddr,
        target: Arc<Recorder>,
        stop: watch::Sender<bool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Gateway {
        fn start(fail: Vec<&'static str>, fail_all: bool) -> Gateway {
            let target = Arc::new(Recorder {
                keys: Mutex::new(Vec::new()),
                fail,
                fail_all,
            });
            let (stop, rx) = watch::channel(false);
            let (tx, addr_rx) = std::sync::mpsc::channel();
            let t: Arc<dyn WarmTarget> = target.clone();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(l.local_addr().unwrap()).unwrap();
                    serve_admin(l, Some(t), rx).await;
                });
            });
            Gateway {
                addr: addr_rx.recv().unwrap(),
                target,
                stop,
                thread: Some(thread),
            }
        }

        fn keys(&self) -> Vec<String> {
            let mut k = lock(&self.target.keys).clone();
            k.sort();
            k
        }
    }

    impl Drop for Gateway {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn bucket() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("d/y")).unwrap();
        std::fs::create_dir_all(p.join("empty")).unwrap();
        std::fs::create_dir_all(p.join("e")).unwrap();
        std::fs::write(p.join("a.txt"), b"hello").unwrap();
        std::fs::write(p.join("d/x"), b"xyz").unwrap();
        std::fs::write(p.join("d/y/z"), b"").unwrap();
        std::fs::write(p.join("d/y/w.bin"), vec![1u8; 1000]).unwrap();
        std::fs::write(p.join("e/f g+h"), vec![2u8; 10]).unwrap();
        d
    }

    fn warm(dir: &Path, prefix: &str, gw: &Gateway, parallel: usize) -> anyhow::Result<WarmReport> {
        let store: Arc<dyn ObjectStore> = Arc::new(DirStore::open(dir).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(warm_prefix(store, prefix, gw.addr, parallel))
    }

    fn args(dir: &Path, prefix: &str, admin: SocketAddr) -> WarmArgs {
        WarmArgs {
            prefix: prefix.to_string(),
            admin: Some(admin),
            cache: None,
            cache_size: None,
            cache_block_size: None,
            source: Some(dir.display().to_string()),
            endpoint_url: None,
            path_style: false,
            region: None,
            config: None,
            parallel: 3,
        }
    }

    #[test]
    fn warms_every_object_under_a_prefix_once() {
        let dir = bucket();
        let gw = Gateway::start(vec![], false);
        let r = warm(dir.path(), "d", &gw, 2).unwrap();
        assert_eq!(gw.keys(), ["d/x", "d/y/w.bin", "d/y/z"]);
        assert_eq!((r.total_objects, r.total_bytes), (3, 1003));
        assert_eq!(
            (r.warmed_objects, r.warmed_bytes, r.cached_bytes),
            (3, 1003, 21)
        );
        assert_eq!((r.failed, r.tried_objects), (0, 3));
        assert!(r.gave_up.is_none());
        assert!(
            r.summary()
                .starts_with("warmed 3 of 3 objects (1003 B of 1003 B) in "),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn prefixes_mean_paths() {
        let dir = bucket();
        for (prefix, want) in [
            ("", &["a.txt", "d/x", "d/y/w.bin", "d/y/z", "e/f g+h"][..]),
            ("/", &["a.txt", "d/x", "d/y/w.bin", "d/y/z", "e/f g+h"]),
            ("/d/y/", &["d/y/w.bin", "d/y/z"]),
            ("a.txt", &["a.txt"]),
            ("e", &["e/f g+h"]),
        ] {
            let gw = Gateway::start(vec![], false);
            let r = warm(dir.path(), prefix, &gw, 8).unwrap();
            assert_eq!(gw.keys(), want, "prefix {prefix:?}");
            assert_eq!(r.warmed_objects, want.len() as u64);
        }
        let gw = Gateway::start(vec![], false);
        for nothing in ["empty", "nope", "d/q/"] {
            let e = warm(dir.path(), nothing, &gw, 8).unwrap_err();
            assert!(e.to_string().contains("nothing to warm"), "{e:#}");
        }
    }

    #[test]
    fn failures_are_reported_and_fail_the_run() {
        let dir = bucket();
        let gw = Gateway::start(vec!["d/x"], false);
        let r = warm(dir.path(), "", &gw, 4).unwrap();
        assert_eq!((r.failed, r.warmed_objects, r.tried_objects), (1, 4, 5));
        assert_eq!(
            r.first_errors,
            [(
                "d/x".to_string(),
                "warming d/x: cannot warm d/x".to_string()
            )]
        );
        let e = run(args(dir.path(), "", gw.addr)).unwrap_err();
        assert_eq!(e.to_string(), "1 of 5 objects failed to warm");
        let gw = Gateway::start(vec![], false);
        run(args(dir.path(), "d/", gw.addr)).unwrap();
        assert_eq!(gw.keys().len(), 3);
    }

    #[test]
    fn gives_up_after_failures_in_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let n = CONSECUTIVE_FAILURES_MAX as usize + 30;
        for i in 0..n {
            std::fs::write(dir.path().join(format!("f{i:03}")), b"x").unwrap();
        }
        let gw = Gateway::start(vec![], true);
        let r = warm(dir.path(), "", &gw, 1).unwrap();
        assert_eq!(r.tried_objects, CONSECUTIVE_FAILURES_MAX);
        assert_eq!(r.first_errors.len(), FAILURE_MESSAGES_MAX);
        assert!(r.gave_up.as_deref().unwrap().contains("cannot warm f049"));
        let e = run(args(dir.path(), "", gw.addr)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("gave up: 50 objects failed in a row"),
            "{e}"
        );
    }

    #[test]
    fn clear_errors_for_missing_pieces() {
        let dir = bucket();
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = run(args(dir.path(), "", addr)).unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!(
                "no gateway admin endpoint at {addr}: connection refused"
            )),
            "{e:#}"
        );
        let mut a = args(dir.path(), "", addr);
        a.source = None;
        let e = run(a).unwrap_err();
        assert!(e.to_string().contains("give --source"), "{e}");
        let mut a = args(dir.path(), "", addr);
        a.source = Some(dir.path().join("nope").display().to_string());
        assert!(run(a)
            .unwrap_err()
            .to_string()
            .contains("is not a directory"));
        // --source from the config file.
        let cfg = dir.path().join("gw.toml");
        std::fs::write(
            &cfg,
            format!("source = {:?}\n", dir.path().display().to_string()),
        )
        .unwrap();
        let gw = Gateway::start(vec![], false);
        let mut a = args(dir.path(), "d/y", gw.addr);
        a.source = None;
        a.config = Some(cfg);
        run(a).unwrap();
        assert_eq!(gw.keys(), ["d/y/w.bin", "d/y/z"]);
    }

    #[test]
    fn progress_line() {
        let l = warm_line((10, 40), (10 << 20, 40 << 20), 0, Duration::from_secs(2));
        assert_eq!(
            l,
            "warming 10/40 objects  10.0 MiB/40.0 MiB  5.0 MiB/s  ETA 6s"
        );
        let l = warm_line((0, 4), (0, 0), 2, Duration::from_secs(1));
        assert!(l.ends_with("ETA --  (2 failed)"), "{l}");
    }
}
