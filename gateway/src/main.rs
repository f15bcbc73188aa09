//! The `tidegate` command: parse flags, merge them over the config file,
//! start the server, wait for Ctrl-C or SIGTERM, shut down cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tidegate::config::{self, Config, FileConfig, Source};
use tidegate::server::Server;

/// How often handle ids handed out are made durable.
const HANDLE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "S3-backed caching NFS gateway for ML training clusters",
    long_about = "tidegate serves a bucket (or a local directory standing in for one) as an NFSv3 \
export that the stock Linux kernel NFS client mounts. MOUNT and NFS share one TCP port, so no \
rpcbind is needed:\n\n    mount -t nfs -o vers=3,proto=tcp,port=2049,mountport=2049,nolock HOST:/ /mnt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SOURCE over NFSv3 until Ctrl-C or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Pull every object under PREFIX into a running gateway's block cache.
    Warm(tidegate::tools::warm::WarmArgs),
    /// Inspect a running gateway's block cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show what a running gateway has not yet uploaded to the store (or wait until it
    /// has, with --wait-drained).
    Status(tidegate::tools::status::StatusArgs),
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Print hit ratio, fill, errors and latencies from a running gateway.
    Stats(tidegate::tools::stats::StatsArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// What to export: `s3://bucket[/prefix]`, or a local directory used as a bucket
    /// (files are objects, keys are relative paths). Without it, a demo directory is
    /// created under the data directory and served.
    source: Option<String>,

    /// Endpoint of an S3-compatible store, e.g. http://127.0.0.1:8333 [default: AWS, or
    /// $AWS_ENDPOINT_URL]. Credentials come from the standard AWS chain (environment,
    /// profile files, instance metadata) and are never logged.
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,

    /// Address buckets as ENDPOINT/BUCKET/KEY (most S3-compatible stores want this)
    #[arg(long)]
    path_style: bool,

    /// S3 region [default: the standard AWS chain, then us-east-1]
    #[arg(long, value_name = "REGION")]
    region: Option<String>,

    /// Address and port to listen on (MOUNT and NFS share it) [default: 127.0.0.1:2049]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,

    /// Worker threads, one per core, each pinned with its own io_uring [default: online CPUs]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// Directory for persistent state (the file handle table) [default: a directory per source
    /// under $XDG_DATA_HOME/tidegate/state]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// TOML file with the same keys as these flags (kebab-case); flags win
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// How long attributes and directory listings are trusted before they are revalidated
    /// against the source, e.g. 3s or 500ms [default: 3s]
    #[arg(long, value_name = "DURATION")]
    meta_ttl: Option<String>,

    /// How long a lookup that found nothing is remembered, e.g. 1s; 0 turns it off
    /// [default: 1s]
    #[arg(long, value_name = "DURATION")]
    negative_ttl: Option<String>,

    /// The source never changes (a published dataset): trust attributes and listings
    /// forever instead of revalidating them after --meta-ttl
    #[arg(long)]
    immutable: bool,

    /// While the store fails, clients are told to retry later (NFS3ERR_JUKEBOX); after it
    /// has failed continuously for this long they get I/O errors instead [default: 60s]
    #[arg(long, value_name = "DURATION")]
    store_outage_bound: Option<String>,

    /// Connections each worker accepts at once; more are closed at once [default: 4096]
    #[arg(long, value_name = "N")]
    connections_per_worker_max: Option<usize>,

    /// RPC calls processed at once per connection; the connection is not read past that
    /// [default: 128]
    #[arg(long, value_name = "N")]
    calls_in_flight_max: Option<usize>,

    /// Largest RPC record accepted, in bytes; a larger one closes the connection
    /// [default: 1114112]
    #[arg(long, value_name = "BYTES")]
    record_bytes_max: Option<usize>,

    /// Block cache on local NVMe: a raw block device or a file (created and preallocated
    /// when missing). Blocks are read and written O_DIRECT and survive restarts. Without it,
    /// every read goes to the source.
    #[arg(long, value_name = "PATH")]
    cache: Option<PathBuf>,

    /// Bytes of the cache device to use, e.g. 500GiB [default: the whole device, or the
    /// existing file's size; required for a new file]
    #[arg(long, value_name = "BYTES")]
    cache_size: Option<String>,

    /// Unit of caching and of S3 ranged GETs; objects smaller than a block are stored at their
    /// own size. Changing it starts the cache empty [default: 1MiB]
    #[arg(long, value_name = "BYTES")]
    cache_block_size: Option<String>,

    /// RAM for the hottest cached blocks, served without any device I/O; 0 turns the memory
    /// tier off [default: 1/8 of physical memory, at most 8GiB]
    #[arg(long, value_name = "BYTES")]
    cache_memory: Option<String>,

    /// Fetch ahead of readers that go through files sequentially or at a stride (into the
    /// block cache); `off` fetches only what is read [default: on]
    #[arg(long, value_name = "on|off")]
    prefetch: Option<String>,

    /// Largest readahead window of one stream [default: 64MiB]
    #[arg(long, value_name = "BYTES")]
    prefetch_window_max: Option<String>,

    /// Bytes of prefetch in flight across all clients [default: 512MiB]
    #[arg(long, value_name = "BYTES")]
    prefetch_budget: Option<String>,

    /// Bytes of prefetch in flight for one client [default: 128MiB]
    #[arg(long, value_name = "BYTES")]
    prefetch_client_budget: Option<String>,

    /// When one client reads many files of a directory in a short while (a training epoch in
    /// shuffled order), fetch the rest of the directory's small files in the background while
    /// it keeps reading there [default: on; needs --prefetch on]
    #[arg(long, value_name = "on|off")]
    prefetch_dir_sweep: Option<String>,

    /// Objects up to this size are fetched whole, in one GET, on their first read
    /// [default: 4MiB]
    #[arg(long, value_name = "BYTES")]
    small_object_size: Option<String>,

    /// Serve Prometheus metrics (/metrics), cache statistics (/stats, read by `tidegate cache
    /// stats`) and cache warming (/warm, used by `tidegate warm`) over HTTP on this address.
    /// Keep it on loopback or a management network: it has no authentication
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,

    /// Refuse every change (NFS3ERR_ROFS); without it clients may create, write, rename
    /// and remove, and the gateway uploads their changes to the store
    #[arg(long)]
    read_only: bool,

    /// Where written data waits for upload, with the write journal [default:
    /// STATE_DIR/staging]. Use a local disk with room for the checkpoints in flight
    #[arg(long, value_name = "DIR")]
    staging_dir: Option<PathBuf>,

    /// Bytes of written data waiting for upload past which writes are told to retry later
    /// (NFS3ERR_JUKEBOX) until uploads catch up [default: 64GiB]
    #[arg(long, value_name = "BYTES")]
    staging_size: Option<String>,

    /// Quiet time after a file's last COMMIT (sent on close and fsync) before it is uploaded
    /// [default: 2s]
    #[arg(long, value_name = "DURATION")]
    upload_delay: Option<String>,

    /// Part size of multipart uploads; files up to it go in one PUT [default: 16MiB]
    #[arg(long, value_name = "BYTES")]
    upload_part_size: Option<String>,

    /// Log filter (tracing EnvFilter syntax), e.g. info, debug, tidegate=trace
    /// [env: TIDEGATE_LOG, then RUST_LOG] [default: info]
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("TIDEGATE_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let env = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .init();
}

/// Cache file size and admin address of the demo (no SOURCE given).
const DEMO_CACHE_SIZE: &str = "256MiB";
const DEMO_ADMIN: &str = "127.0.0.1:9180";

/// Create a small demo bucket the first time `serve` runs without a source.
fn demo_source() -> Result<PathBuf> {
    let dir = config::data_dir().join("demo-bucket");
    if dir.exists() {
        return Ok(dir);
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let ds = tmp.join("datasets/tiny");
    std::fs::create_dir_all(&ds).with_context(|| format!("creating {}", ds.display()))?;
    std::fs::write(
        tmp.join("README.txt"),
        "This directory stands in for an S3 bucket: every file is an object.\n",
    )?;
    for i in 0..16u32 {
        let data: Vec<u8> = (0..64 * 1024u32)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
            .collect();
        std::fs::write(ds.join(format!("shard-{i:05}.bin")), data)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn resolve(args: ServeArgs) -> Result<Config> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut demo = false;
    let source_text = match args.source.or(file.source) {
        Some(s) => s,
        None => {
            let d = demo_source()?;
            tracing::info!(dir = %d.display(), "no SOURCE given; serving the demo directory");
            demo = true;
            d.display().to_string()
        }
    };
    let s3 = config::S3Options {
        endpoint_url: args.endpoint_url.or(file.endpoint_url),
        path_style: args.path_style || file.path_style.unwrap_or(false),
        region: args.region.or(file.region),
    };
    let source = Source::parse(&source_text, &s3)?;
    if let Source::Dir(p) = &source {
        if !Path::new(p).is_dir() {
            bail!("source {} is not a directory", p.display());
        }
    }
    let listen = match args.listen.or(file.listen) {
        Some(a) => a,
        None => config::DEFAULT_LISTEN.parse()?,
    };
    let workers = args
        .workers
        .or(file.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| config::default_state_dir(&source));
    let meta_ttl = match args.meta_ttl.or(file.meta_ttl) {
        Some(s) => config::parse_duration(&s)?,
        None => config::DEFAULT_META_TTL,
    };
    let negative_ttl = match args.negative_ttl.or(file.negative_ttl) {
        Some(s) => config::parse_duration(&s)?,
        None => config::DEFAULT_NEGATIVE_TTL,
    };
    let cfg = Config {
        source,
        listen,
        workers,
        state_dir,
        meta_ttl,
        negative_ttl,
        immutable: args.immutable || file.immutable.unwrap_or(false),
        store_outage_bound: match args.store_outage_bound.or(file.store_outage_bound) {
            Some(s) => config::parse_duration(&s)?,
            None => config::DEFAULT_STORE_OUTAGE_BOUND,
        },
        connections_per_worker_max: args
            .connections_per_worker_max
            .or(file.connections_per_worker_max)
            .unwrap_or(config::DEFAULT_CONNECTIONS_PER_WORKER_MAX),
        calls_in_flight_max: args
            .calls_in_flight_max
            .or(file.calls_in_flight_max)
            .unwrap_or(config::DEFAULT_CALLS_IN_FLIGHT_MAX),
        record_bytes_max: args
            .record_bytes_max
            .or(file.record_bytes_max)
            .unwrap_or(config::DEFAULT_RECORD_BYTES_MAX),
        cache: None,
        admin: None,
        write: None,
    };
    let mut cache_path = args.cache.or(file.cache);
    let mut cache_size = args.cache_size.or(file.cache_size);
    let mut admin = args.admin.or(file.admin);
    if demo && cache_path.is_none() {
        // The demo shows the whole path: a small cache file and the admin
        // endpoint that `tidegate cache stats` reads.
        cache_path = Some(config::data_dir().join("demo-cache.img"));
        cache_size = cache_size.or(Some(DEMO_CACHE_SIZE.to_string()));
        admin = admin.or(Some(DEMO_ADMIN.parse()?));
    }
    let mut prefetch = tidegate::prefetch::PrefetchConfig::default();
    match args.prefetch.or(file.prefetch).as_deref() {
        None | Some("on") => {}
        Some("off") => prefetch.enabled = false,
        Some(other) => bail!("--prefetch takes on or off, not {other:?}"),
    }
    match args
        .prefetch_dir_sweep
        .or(file.prefetch_dir_sweep)
        .as_deref()
    {
        None | Some("on") => {}
        Some("off") => prefetch.sweep.enabled = false,
        Some(other) => bail!("--prefetch-dir-sweep takes on or off, not {other:?}"),
    }
    if let Some(s) = args.prefetch_window_max.or(file.prefetch_window_max) {
        prefetch.tracker.window_max_bytes =
            config::parse_bytes(&s)?.max(prefetch.tracker.window_min_bytes);
    }
    if let Some(s) = args.prefetch_budget.or(file.prefetch_budget) {
        prefetch.budget_bytes = config::parse_bytes(&s)?;
    }
    if let Some(s) = args.prefetch_client_budget.or(file.prefetch_client_budget) {
        prefetch.client_budget_bytes = config::parse_bytes(&s)?;
    }
    if let Some(s) = args.small_object_size.or(file.small_object_size) {
        prefetch.small_object_bytes = config::parse_bytes(&s)?;
    }
    let cache = match cache_path {
        None => None,
        Some(path) => Some(tidegate::cache::block::CacheConfig {
            path,
            size_bytes: cache_size.map(|s| config::parse_bytes(&s)).transpose()?,
            block_bytes: match args.cache_block_size.or(file.cache_block_size) {
                Some(s) => config::parse_bytes(&s)?,
                None => tidegate::cache::block::BLOCK_BYTES_DEFAULT,
            },
            memory_bytes: match args.cache_memory.or(file.cache_memory) {
                Some(s) => config::parse_bytes(&s)?,
                None => config::default_cache_memory_bytes(),
            },
            prefetch: Some(prefetch),
        }),
    };
    let write = if args.read_only || file.read_only.unwrap_or(false) {
        None
    } else {
        let dir = args
            .staging_dir
            .or(file.staging_dir)
            .unwrap_or_else(|| cfg.state_dir.join("staging"));
        let mut w = tidegate::write::WriteConfig::new(dir);
        if let Some(s) = args.staging_size.or(file.staging_size) {
            w.staged_bytes_max = config::parse_bytes(&s)?;
        }
        if let Some(s) = args.upload_delay.or(file.upload_delay) {
            w.upload_delay = config::parse_duration(&s)?;
        }
        if let Some(s) = args.upload_part_size.or(file.upload_part_size) {
            w.part_bytes = config::parse_bytes(&s)?;
        }
        Some(w)
    };
    let cfg = Config {
        cache,
        admin,
        write,
        ..cfg
    };
    cfg.validate()?;
    Ok(cfg)
}

fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.log.as_deref());
    let cfg = resolve(args)?;
    tracing::info!(state_dir = %cfg.state_dir.display(), "state");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    // Before the server accepts anything: a SIGTERM from then on is a
    // clean shutdown, never the default action.
    let mut term = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")
    })?;
    let server = Server::start(&cfg).context("starting the gateway")?;
    let addr = server.local_addr();
    tracing::info!(
        "mount with: mount -t nfs -o vers=3,proto=tcp,port={p},mountport={p},nolock {ip}:/ /mnt",
        p = addr.port(),
        ip = addr.ip()
    );
    rt.block_on(async {
        let mut tick = tokio::time::interval(HANDLE_FLUSH_INTERVAL);
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; break; }
                _ = term.recv() => break,
                _ = tick.tick() => {
                    if let Err(e) = server.flush() {
                        tracing::error!(error = %e, "flushing the handle table failed");
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down");
    server.shutdown().context("flushing state at shutdown")?;
    tracing::info!("stopped");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Warm(args) => tidegate::tools::warm::run(args),
        Command::Cache(CacheCommand::Stats(args)) => tidegate::tools::stats::run(args),
        Command::Status(args) => tidegate::tools::status::run(args),
    };
    if let Err(e) = r {
        eprintln!("tidegate: error: {e:#}");
        std::process::exit(1);
    }
}
