//! Server assembly: the store, the handle table and the vfs, shared by one
//! pinned worker thread per core. Each worker runs a tokio current-thread
//! runtime with its own io_uring and its own SO_REUSEPORT listener, so the
//! kernel spreads connections over the cores and a connection never leaves
//! the core that accepted it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{watch, Notify};

use crate::cache::block::{BlockCache, CacheError, Warmer};
use crate::cache::meta::{MetaCache, MetaTtls};
use crate::config::{Config, Source, RECV_BUFFER_BYTES};
use crate::io::{cpu, net::Listener, ring::Ring};
use crate::nfs::mount::MountTable;
use crate::rpc::conn::{self, ConnLimits};
use crate::rpc::Services;
use crate::store::outage::OutageTracking;
use crate::store::s3::{S3Config, S3Store};
use crate::store::{dir::DirStore, ObjectStore, StoreError};
use crate::telemetry::http::{serve_admin, WarmTarget};
use crate::vfs::handles::{HandleError, HandleTable};
use crate::vfs::Vfs;

/// How often the control thread checks that the cache device is still there.
const DEVICE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown waits for the uploader to wind down.
const UPLOADER_STOP_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for connections to finish their calls.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of descriptors) before retrying.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("source directory {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Handles(#[from] HandleError),
    #[error("staging: {0}")]
    Staging(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 source {source_desc}: {error}")]
    S3 {
        source_desc: String,
        error: StoreError,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("worker {index}: {message}")]
    Worker { index: usize, message: String },
}

/// Prepare the S3 store and check that the bucket answers. An unreachable
/// store is only a warning (cached metadata and later retries may serve);
/// a missing bucket or refused credentials stop the start.
fn open_s3(c: &S3Config) -> Result<S3Store, ServerError> {
    let desc = format!("s3://{}/{}", c.bucket, c.prefix);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::S3 {
            source_desc: desc.clone(),
            error: StoreError::Config {
                message: e.to_string(),
            },
        })?;
    rt.block_on(async {
        let store = S3Store::new(c.clone())
            .await
            .map_err(|error| ServerError::S3 {
                source_desc: desc.clone(),
                error,
            })?;
        match store.check_bucket().await {
            Ok(()) => {}
            Err(StoreError::Unavailable { message, .. }) => {
                tracing::warn!(source = %desc, %message, "S3 does not answer yet; serving anyway")
            }
            Err(error) => {
                return Err(ServerError::S3 {
                    source_desc: desc.clone(),
                    error,
                })
            }
        }
        tracing::info!(source = %desc, region = store.region(), "S3 store ready");
        Ok(store)
    })
}

/// A running gateway.
pub struct Server {
    local_addr: SocketAddr,
    services: Arc<Services>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn start(config: &Config) -> Result<Server, ServerError> {
        let store: Arc<dyn ObjectStore> = match &config.source {
            Source::Dir(p) => {
                Arc::new(DirStore::open(p).map_err(|source| ServerError::Source {
                    path: p.display().to_string(),
                    source,
                })?)
            }
            Source::S3(c) => Arc::new(OutageTracking::new(open_s3(c)?, config.store_outage_bound)),
        };
        let handles = HandleTable::open(&config.state_dir, &config.source.describe())?;
        let write = match &config.write {
            None => None,
            Some(w) => Some(Arc::new(
                crate::write::WriteBack::open(store.clone(), w.clone())
                    .map_err(|e| ServerError::Staging(e.to_string()))?,
            )),
        };
        let cache = match &config.cache {
            None => None,
            Some(c) => {
                let (cache, report) = BlockCache::open(c)?;
                tracing::info!(
                    path = %c.path.display(),
                    capacity_bytes = cache.capacity_bytes(),
                    block_bytes = cache.block_bytes(),
                    formatted = report.formatted,
                    entries = report.entries,
                    cached_bytes = report.bytes,
                    recovery_ms = report.millis as u64,
                    "block cache ready"
                );
                Some(Arc::new(cache))
            }
        };
        let admin = match config.admin {
            None => None,
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .map_err(|source| ServerError::Listen { addr, source })?,
            ),
        };
        let services = Arc::new(Services {
            vfs: Vfs::new(
                store,
                handles,
                MetaCache::new(MetaTtls {
                    attrs: config.meta_ttl,
                    negative: config.negative_ttl,
                    immutable: config.immutable,
                }),
            )
            .with_cache(cache)
            .with_write(write),
            mounts: MountTable::default(),
            drc: crate::rpc::drc::ReplyCache::default(),
        });

        let first = Listener::bind(config.listen).map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = first.local_addr().map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
        let mut listeners = vec![first];
        for _ in 1..config.workers {
            listeners.push(
                Listener::bind(local_addr).map_err(|source| ServerError::Listen {
                    addr: local_addr,
                    source,
                })?,
            );
        }

        let cpus = cpu::allowed_cpus().unwrap_or_default();
        let limits = ConnLimits {
            record_bytes_max: config.record_bytes_max,
            calls_in_flight_max: config.calls_in_flight_max,
            recv_buffer_bytes: RECV_BUFFER_BYTES,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let w = Worker {
                index,
                cpu,
                listener,
                services: services.clone(),
                limits,
                connections_max: config.connections_per_worker_max,
                shutdown: shutdown_rx.clone(),
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tidegate-w{index}"))
                .spawn(move || w.run(ready))
                .map_err(|e| ServerError::Worker {
                    index,
                    message: e.to_string(),
                })?;
            workers.push(handle);
        }
        let control_thread = {
            let control = Control {
                services: services.clone(),
                admin,
                shutdown: shutdown_rx.clone(),
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name("tidegate-ctl".into())
                .spawn(move || control.run(ready))
                .map_err(|e| ServerError::Worker {
                    index: usize::MAX,
                    message: e.to_string(),
                })?;
            Some(handle)
        };
        drop(ready_tx);
        let worker_count = workers.len();
        workers.extend(control_thread);
        let mut server = Server {
            local_addr,
            services,
            shutdown,
            workers,
        };
        for _ in 0..server.workers.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err((index, message))) => {
                    server.stop();
                    return Err(ServerError::Worker { index, message });
                }
                Err(_) => {
                    server.stop();
                    return Err(ServerError::Worker {
                        index: 0,
                        message: "worker exited during start-up".into(),
                    });
                }
            }
        }
        tracing::info!(
            addr = %local_addr,
            workers = worker_count,
            source = %server.services.vfs.store().describe(),
            "serving NFSv3 and MOUNTv3"
        );
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Make handle ids handed out so far durable.
    pub fn flush(&self) -> Result<(), HandleError> {
        self.services.vfs.handles().flush()
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }

    /// Stop accepting, let connections finish their calls, flush state.
    pub fn shutdown(mut self) -> Result<(), HandleError> {
        self.stop();
        self.flush()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    index: usize,
    cpu: Option<usize>,
    listener: Listener,
    services: Arc<Services>,
    limits: ConnLimits,
    connections_max: usize,
    shutdown: watch::Receiver<bool>,
}

type Ready = std::sync::mpsc::Sender<Result<(), (usize, String)>>;

impl Worker {
    fn run(self, ready: Ready) {
        let index = self.index;
        if let Some(cpu) = self.cpu {
            if let Err(e) = cpu::pin_current_thread(cpu) {
                tracing::warn!(worker = index, cpu, error = %e, "could not pin worker");
            }
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err((index, format!("runtime: {e}"))));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.serve(ready));
    }

    async fn serve(self, ready: Ready) {
        let ring = match Ring::start() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err((self.index, format!("io_uring setup: {e}"))));
                return;
            }
        };
        if let Some(cache) = self.services.vfs.cache() {
            cache.init_worker();
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        tracing::debug!(worker = self.index, cpu = ?self.cpu, "worker ready");
        let active = Rc::new(Cell::new(0usize));
        let idle = Rc::new(Notify::new());
        let mut shutdown = self.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept(&ring) => r,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(worker = self.index, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            if active.get() >= self.connections_max {
                tracing::warn!(
                    ?peer,
                    limit = self.connections_max,
                    "too many connections; refusing"
                );
                stream.shutdown();
                continue;
            }
            tracing::debug!(worker = self.index, ?peer, "connection");
            active.set(active.get() + 1);
            let (ring, services, active, idle) = (
                ring.clone(),
                self.services.clone(),
                active.clone(),
                idle.clone(),
            );
            let (limits, shutdown) = (self.limits, self.shutdown.clone());
            tokio::task::spawn_local(async move {
                conn::serve(ring, stream, peer, services, limits, shutdown).await;
                active.set(active.get() - 1);
                if active.get() == 0 {
                    idle.notify_one();
                }
            });
        }
        if active.get() > 0 {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, idle.notified()).await;
        }
        let stats = ring.stats();
        tracing::debug!(
            worker = self.index,
            submitted = stats.submitted_ops,
            completed = stats.completed_ops,
            "worker stopped"
        );
    }
}

/// The control thread: admin HTTP endpoint (metrics, stats, warm) and the
/// periodic cache device check. Never on a data core's ring.
struct Control {
    services: Arc<Services>,
    admin: Option<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
}

impl Control {
    fn run(self, ready: Ready) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err((usize::MAX, format!("control runtime: {e}"))));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.serve(ready));
    }

    async fn serve(self, ready: Ready) {
        // Warming writes cache blocks through a ring of this thread's own
        // (only needed with a cache).
        let _ring = if self.services.vfs.cache().is_some() {
            match Ring::start() {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = ready.send(Err((usize::MAX, format!("control io_uring setup: {e}"))));
                    return;
                }
            }
        } else {
            None
        };
        if let Some(admin) = self.admin {
            let listener = admin
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(admin));
            match listener {
                Ok(l) => {
                    if let Ok(a) = l.local_addr() {
                        tracing::info!(addr = %a, "admin endpoint: /metrics /stats /warm");
                    }
                    let vfs = &self.services.vfs;
                    let warm = vfs.cache().map(|c| {
                        Arc::new(Warmer::new(vfs.store().clone(), c.clone())) as Arc<dyn WarmTarget>
                    });
                    tokio::task::spawn_local(serve_admin(l, warm, self.shutdown.clone()));
                }
                Err(e) => {
                    let _ = ready.send(Err((usize::MAX, format!("admin endpoint: {e}"))));
                    return;
                }
            }
        }
        let mut uploader = None;
        if let Some(w) = self.services.vfs.write_back() {
            uploader = Some(tokio::task::spawn_local(
                w.clone().run_uploader(self.shutdown.clone()),
            ));
            let weak = Arc::downgrade(w);
            crate::telemetry::set_refresher(move || {
                if let Some(w) = weak.upgrade() {
                    w.publish_gauges();
                }
            });
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(DEVICE_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    if let Some(c) = self.services.vfs.cache() {
                        c.check_device();
                    }
                    if let Some(w) = self.services.vfs.write_back() {
                        w.publish_gauges();
                    }
                }
            }
        }
        // Let the uploader abandon interrupted multipart uploads.
        if let Some(u) = uploader {
            let _ = tokio::time::timeout(UPLOADER_STOP_WAIT, u).await;
        }
    }
}
