//! One test body, two sources: a local directory, or a bucket of a private
//! SeaweedFS instance served as `s3://bucket`.
//!
//! A test writes its source tree with `std::fs` under
//! [`Fixture::source_dir`] and then starts the gateway with
//! [`Fixture::start`]. For [`Backend::Dir`] that directory is the source
//! itself. For [`Backend::S3`] it is a staging tree: `start` first uploads
//! it through the S3 API (every file becomes an object under its relative
//! path, every empty directory a `dir/` marker object, nothing else), many
//! requests in flight, and serves the bucket. Once uploaded, changes made
//! through [`Fixture::write_random_file`] and [`Fixture::remove_file`] go
//! to the local tree and straight to the bucket, so a body that changes its
//! source between two runs of the gateway reads the same for both.
//!
//! [`for_each_backend!`](crate::for_each_backend) turns one body
//! `fn name(backend: Backend)` into the tests `name::dir` and `name::s3`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidegate::store::s3::{S3Store, UploadedPart};
use tidegate::store::{ObjectStore, PosixMeta, LIST_PAGE_KEYS_MAX};

use crate::data::{fingerprint, fingerprint_file, write_random_file, Fingerprint};
use crate::s3::Seaweed;
use crate::server::{Dirs, Server};
use crate::sigv4;

/// The bucket every S3 fixture serves.
pub const BUCKET: &str = "tidegate-data";
/// Objects larger than this are uploaded in parts of [`UPLOAD_PART_BYTES`].
const UPLOAD_SINGLE_BYTES_MAX: u64 = 32 << 20;
const UPLOAD_PART_BYTES: u64 = 16 << 20;
/// Threads of the uploader, each with its own connection and one request
/// in flight.
const UPLOAD_THREADS: usize = 8;
/// Per-operation bound for the uploader's requests (a 16 MiB part on a busy
/// two-core machine included).
const UPLOAD_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest object [`Fixture::source_entries`] reads back.
const SNAPSHOT_OBJECT_BYTES_MAX: usize = 64 << 20;
/// Listing pages [`Fixture::source_entries`] follows per directory.
const SNAPSHOT_PAGES_MAX: usize = 10_000;

/// Where the gateway's source lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A local directory used as a bucket.
    Dir,
    /// A SeaweedFS bucket served as `s3://`[`BUCKET`].
    S3,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Dir => "dir",
            Backend::S3 => "s3",
        }
    }
}

/// A source of one backend, its state directory, and the means to start
/// the gateway on it.
pub struct Fixture {
    backend: Backend,
    pub dirs: Dirs,
    seaweed: Option<Seaweed>,
    /// S3: the staging tree has been uploaded; later changes go straight
    /// to the bucket.
    uploaded: bool,
}

impl Fixture {
    /// A fresh fixture; for S3 this starts a SeaweedFS instance with an
    /// empty [`BUCKET`].
    pub fn new(backend: Backend) -> Fixture {
        let dirs = Dirs::new();
        let seaweed = match backend {
            Backend::Dir => None,
            Backend::S3 => Some(Seaweed::start(&[BUCKET])),
        };
        Fixture {
            backend,
            dirs,
            seaweed,
            uploaded: false,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The tree tests write their source into (see the module docs).
    pub fn source_dir(&self) -> &Path {
        &self.dirs.source
    }

    pub fn state_dir(&self) -> &Path {
        &self.dirs.state
    }

    /// A scratch folder for client output.
    pub fn scratch(&self) -> PathBuf {
        self.dirs.scratch()
    }

    /// The SeaweedFS instance of an S3 fixture.
    pub fn seaweed(&self) -> &Seaweed {
        self.seaweed
            .as_ref()
            .expect("a directory fixture has no S3 server")
    }

    pub fn seaweed_mut(&mut self) -> &mut Seaweed {
        self.seaweed
            .as_mut()
            .expect("a directory fixture has no S3 server")
    }

    /// A store client for the fixture's bucket (or a prefix of it), with a
    /// generous per-operation bound for bulk uploads. Call it inside a
    /// tokio runtime.
    pub async fn store(&self, prefix: &str) -> S3Store {
        let mut config = self.seaweed().store_config(BUCKET, prefix);
        config.operation_timeout = UPLOAD_OPERATION_TIMEOUT;
        config.attempt_timeout = UPLOAD_OPERATION_TIMEOUT;
        S3Store::new(config)
            .await
            .unwrap_or_else(|e| panic!("S3 store for {BUCKET}: {e}"))
    }

    /// A fast PUT/DELETE client for the fixture's bucket.
    pub fn raw_client(&self) -> sigv4::Client {
        let sw = self.seaweed();
        sigv4::Client::new(sigv4::Target {
            addr: sw.s3_addr(),
            bucket: BUCKET.to_string(),
            region: crate::s3::REGION.to_string(),
            access_key_id: sw.access_key_id().to_string(),
            secret_access_key: sw.secret_access_key().to_string(),
        })
    }

    /// Start the gateway on the source (uploading the staging tree first
    /// for S3).
    pub fn start(&mut self) -> Server {
        self.start_with_args(&[])
    }

    /// As [`Fixture::start`], with extra command-line arguments.
    pub fn start_with_args(&mut self, extra: &[&str]) -> Server {
        self.try_start_prefix("", extra)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// S3 only: serve `s3://BUCKET/prefix` (the staging tree is uploaded
    /// to the bucket's root first, as by [`Fixture::start`]).
    pub fn start_prefix(&mut self, prefix: &str, extra: &[&str]) -> Server {
        assert_eq!(self.backend, Backend::S3, "prefix exports are S3 only");
        self.try_start_prefix(prefix, extra)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The gateway's start, without panicking (for tests that expect a
    /// refusal).
    pub fn try_start_prefix(&mut self, prefix: &str, extra: &[&str]) -> Result<Server> {
        match self.backend {
            Backend::Dir => {
                assert!(prefix.is_empty(), "a directory source has no prefix");
                Server::try_start(&self.dirs.source, &self.dirs.state, extra)
            }
            Backend::S3 => {
                if !self.uploaded {
                    let started = Instant::now();
                    let n = upload_tree(self, &self.dirs.source)?;
                    if n >= 1000 {
                        eprintln!(
                            "uploaded {n} objects to SeaweedFS in {:.1} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    self.uploaded = true;
                }
                let sw = self.seaweed();
                let source = if prefix.is_empty() {
                    format!("s3://{BUCKET}")
                } else {
                    format!("s3://{BUCKET}/{prefix}")
                };
                let mut args: Vec<String> = vec![
                    "--endpoint-url".into(),
                    sw.endpoint(),
                    "--path-style".into(),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut env = sw.client_env();
                // Nothing from the machine's own AWS profile.
                let nowhere = self.dirs.root.path().join("no-aws-profile");
                env.push(("AWS_CONFIG_FILE", nowhere.display().to_string()));
                env.push(("AWS_SHARED_CREDENTIALS_FILE", nowhere.display().to_string()));
                Server::try_start_env(&OsString::from(source), &self.dirs.state, &args, &env)
            }
        }
    }

    /// Write `len_bytes` pseudo-random bytes as `rel` in the source (for
    /// S3 after the upload, straight into the bucket as well).
    pub fn write_random_file(&self, rel: &str, len_bytes: u64, seed: u64) -> Fingerprint {
        let path = self.dirs.source.join(rel);
        let fp = write_random_file(&path, len_bytes, seed)
            .unwrap_or_else(|e| panic!("write {}: {e:#}", path.display()));
        if self.backend == Backend::S3 && self.uploaded {
            upload_file(self, &mut self.raw_client(), rel, &path, len_bytes)
                .unwrap_or_else(|e| panic!("upload {rel}: {e:#}"));
        }
        fp
    }

    /// Remove the file `rel` from the source (for S3 after the upload,
    /// from the bucket as well).
    pub fn remove_file(&self, rel: &str) {
        let path = self.dirs.source.join(rel);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
        if self.backend == Backend::S3 && self.uploaded {
            self.raw_client()
                .delete(rel)
                .unwrap_or_else(|e| panic!("delete {rel} from the bucket: {e:#}"));
        }
    }

    /// What the source holds now, read from the source itself (the bucket
    /// for S3): every object (file) with its fingerprint, and every
    /// directory (a directory, or for S3 a `dir/` marker object) as
    /// `"path/"` with `None`.
    pub fn source_entries(&self) -> BTreeMap<String, Option<Fingerprint>> {
        match self.backend {
            Backend::Dir => {
                let mut out = BTreeMap::new();
                for e in crate::tools::walk_local(&self.dirs.source).expect("walk the source") {
                    if e.kind == 'd' {
                        out.insert(format!("{}/", e.path), None);
                    } else {
                        let fp = fingerprint_file(&self.dirs.source.join(&e.path))
                            .expect("fingerprint a source file");
                        out.insert(e.path, Some(fp));
                    }
                }
                out
            }
            Backend::S3 => block_on(async {
                let store = self.store("").await;
                bucket_entries(&store).await
            })
            .unwrap_or_else(|e| panic!("list the bucket: {e:#}")),
        }
    }
}

/// Every object of a store, recursively: markers (`dir/`) map to `None`,
/// other objects to their content's fingerprint.
async fn bucket_entries(store: &S3Store) -> Result<BTreeMap<String, Option<Fingerprint>>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![String::new()];
    while let Some(prefix) = dirs.pop() {
        let mut token: Option<String> = None;
        for _ in 0..SNAPSHOT_PAGES_MAX {
            let page = store
                .list(&prefix, token.as_deref(), LIST_PAGE_KEYS_MAX)
                .await
                .with_context(|| format!("LIST {prefix:?}"))?;
            for o in &page.objects {
                if o.key.ends_with('/') {
                    out.insert(o.key.clone(), None);
                    continue;
                }
                if o.size > SNAPSHOT_OBJECT_BYTES_MAX as u64 {
                    bail!("{} is larger than {SNAPSHOT_OBJECT_BYTES_MAX} bytes", o.key);
                }
                let mut buf = vec![0u8; o.size as usize];
                let mut got = 0;
                while got < buf.len() {
                    let n = store
                        .get_range(&o.key, got as u64, &mut buf[got..], None)
                        .await
                        .with_context(|| format!("GET {}", o.key))?;
                    if n == 0 {
                        bail!("{} ended after {got} of {} bytes", o.key, o.size);
                    }
                    got += n;
                }
                out.insert(o.key.clone(), Some(fingerprint(&buf)));
            }
            dirs.extend(page.prefixes.iter().cloned());
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        if token.is_some() {
            bail!("LIST {prefix:?} did not end within {SNAPSHOT_PAGES_MAX} pages");
        }
    }
    Ok(out)
}

fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// What to upload: a file (key, path, size) or a marker object (key ending
/// with `/`, no path).
struct Upload {
    key: String,
    path: Option<PathBuf>,
    len_bytes: u64,
}

/// Uploads the tree under `root` to the fixture's bucket; returns the
/// number of objects written.
fn upload_tree(fx: &Fixture, root: &Path) -> Result<usize> {
    let mut jobs = Vec::new();
    let entries = crate::tools::walk_local(root)?;
    for e in &entries {
        if e.kind == 'd' {
            let empty = std::fs::read_dir(root.join(&e.path))?.next().is_none();
            if empty {
                jobs.push(Upload {
                    key: format!("{}/", e.path),
                    path: None,
                    len_bytes: 0,
                });
            }
        } else {
            jobs.push(Upload {
                key: e.path.clone(),
                path: Some(root.join(&e.path)),
                len_bytes: e.size,
            });
        }
    }
    let n = jobs.len();
    if n == 0 {
        return Ok(0);
    }
    let queue = Mutex::new(jobs);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..UPLOAD_THREADS.min(n))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut client = fx.raw_client();
                    loop {
                        let job = queue.lock().expect("upload queue").pop();
                        let Some(job) = job else { return Ok(()) };
                        let done = match &job.path {
                            Some(p) => upload_file(fx, &mut client, &job.key, p, job.len_bytes),
                            None => client.put(&job.key, &[]),
                        };
                        if let Err(e) = done {
                            // Stop the other threads: the upload failed.
                            queue.lock().expect("upload queue").clear();
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("upload thread panicked")))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(n)
}

/// Uploads one local file as `key`: one PUT, or for large files a
/// multipart upload of [`UPLOAD_PART_BYTES`] parts through the SDK client
/// (never more than one part in memory).
fn upload_file(
    fx: &Fixture,
    client: &mut sigv4::Client,
    key: &str,
    path: &Path,
    len_bytes: u64,
) -> Result<()> {
    if len_bytes <= UPLOAD_SINGLE_BYTES_MAX {
        let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        return client.put(key, &data);
    }
    block_on(async {
        let store = fx.store("").await;
        upload_multipart(&store, key, path, len_bytes).await
    })
}

async fn upload_multipart(store: &S3Store, key: &str, path: &Path, len_bytes: u64) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let upload_id = store
        .create_multipart_upload(key, &PosixMeta::default())
        .await
        .with_context(|| format!("CreateMultipartUpload {key}"))?;
    let mut parts: Vec<UploadedPart> = Vec::new();
    let mut left = len_bytes;
    let mut number = 1;
    let outcome: Result<()> = async {
        while left > 0 {
            let n = left.min(UPLOAD_PART_BYTES) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf)
                .with_context(|| format!("read {}", path.display()))?;
            parts.push(
                store
                    .upload_part(key, &upload_id, number, buf)
                    .await
                    .with_context(|| format!("UploadPart {number} of {key}"))?,
            );
            left -= n as u64;
            number += 1;
        }
        store
            .complete_multipart_upload(key, &upload_id, &parts)
            .await
            .with_context(|| format!("CompleteMultipartUpload {key}"))?;
        Ok(())
    }
    .await;
    if outcome.is_err() {
        let _ = store.abort_multipart_upload(key, &upload_id).await;
    }
    outcome
}

/// One test per backend from one body: for each `name`, a function
/// `fn name(backend: Backend)` in scope becomes the tests `name::dir` and
/// `name::s3`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn dir() {
                    super::$name($crate::backend::Backend::Dir)
                }
                #[test]
                fn s3() {
                    super::$name($crate::backend::Backend::S3)
                }
            }
        )*
    };
}
