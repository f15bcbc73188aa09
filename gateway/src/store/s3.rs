//! S3 (or any S3-compatible store) as the storage of record.
//!
//! [`S3Store`] answers the [`ObjectStore`] questions with the S3 REST API
//! through aws-sdk-s3, and adds the write-side calls the journal uploader
//! needs (single PUT, multipart upload, server-side copy, delete). The
//! choices below are the ones that matter for a gateway sitting in front of
//! a bucket that other writers may change at any time.
//!
//! **One client per worker runtime.** Workers are threads, each driving its
//! own current-thread tokio runtime. An SDK client is bound to the runtime
//! that first used it: its HTTP connection pool spawns one task per
//! connection on the runtime that opened the connection, and a task on a
//! runtime that is not being driven (or was dropped) makes every request
//! over that connection stall or fail. So the store never hands one client
//! to several runtimes. It keeps the shared, immutable part (region,
//! credentials provider with its identity cache, endpoint, retry and
//! timeout policy) once, and each thread lazily builds its own client, with
//! its own HTTPS connector and pool, the first time it talks to S3. Clients
//! live in a small thread-local table keyed by store; next to each sits a
//! flag owned by a never-finishing sentinel task spawned on the runtime that
//! built it. When that runtime shuts down it drops its tasks, the flag goes
//! down and the next call on that thread builds a fresh client on the
//! runtime it now runs on. The one case this cannot tell apart is a thread
//! that alternates between two live runtimes; workers never do that.
//!
//! **Bounded retries, bounded time.** The SDK's standard retry strategy
//! (exponential backoff with full jitter, a retry quota) retries 5xx,
//! throttling (`SlowDown`, 503, 429), timeouts and connection failures, at
//! most [`S3Config::attempts_max`] attempts. Every attempt has a timeout
//! and the whole operation has one, so an unreachable or stuck store turns
//! into [`StoreError::Unavailable`] within a known bound and never into a
//! hang; the NFS layer maps that to "try again later" or an I/O error.
//! Response bodies are read chunk by chunk, each chunk under its own
//! timeout, because the SDK's timeouts end when the response headers
//! arrive.
//!
//! **Ranged reads into the caller's buffer.** `get_range` sends
//! `Range: bytes=a-b` for exactly the caller's buffer and copies each body
//! chunk into it as it arrives; nothing holds a whole object. A read at or
//! past the end (S3 answers 416) returns 0. If the connection breaks in the
//! middle of a body, the rest is fetched again with `If-Match` set to the
//! ETag of the first response, so a resumed read never splices two
//! versions; the caller's own `If-Match` (the ETag its attributes came from)
//! turns a changed object into [`StoreError::PreconditionFailed`]. A server
//! that ignores `Range` and sends the whole object is handled by skipping to
//! the offset.
//!
//! **ETags.** S3 sends ETags quoted (`"9b2c…"`, or `"…-12"` for multipart
//! uploads). [`ObjectMeta::etag`] holds them without the quotes (and
//! without a weak `W/` marker, which S3 never sends but proxies might);
//! requests that carry an ETag (`If-Match`, `x-amz-copy-source-if-match`,
//! completed parts) put the quotes back.
//!
//! **Keys.** A store may be confined to a prefix of the bucket; keys given
//! to and returned by the trait are relative to it, so nothing outside the
//! prefix is reachable. Listings ask for URL-encoded keys
//! (`encoding-type=url`), because XML 1.0 cannot carry every character a
//! key may hold, and decode them when the server says it encoded them.
//! Directory markers (`dir/` objects) are returned as they are; the
//! namespace layer decides what to show.
//!
//! **Compatibility.** Request checksums are computed only where the API
//! requires them and response checksums are not validated (ETags and
//! `If-Match` guard consistency), because several S3-compatible stores
//! reject or mishandle the newer default checksum headers. TLS is rustls
//! with the ring provider and the system's root certificates.
//!
//! **Credentials** come from the standard chain (environment variables,
//! shared profile files, web identity, container and instance metadata)
//! unless [`S3Config::credentials`] names static keys. They are never
//! logged: [`S3Credentials`] redacts its secret in `Debug`, and error
//! messages are built from S3's error code and message only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, EncodingType, MetadataDirective,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use thiserror::Error;

use super::{ListPage, ObjectMeta, ObjectStore, PartDone, PosixMeta, StoreError, StoreFuture};

/// Attempts per operation, the first one included.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 4;
/// Backoff before the first retry (the SDK draws a random fraction of it).
const BACKOFF_INITIAL_MS: u64 = 100;
/// Largest backoff between two attempts.
const BACKOFF_MAX_MS: u64 = 2_000;
/// Time to establish a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Time for one attempt, up to the response headers.
pub const ATTEMPT_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Time for a whole operation, retries and backoff included.
pub const OPERATION_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Longest wait for the next chunk of a response body.
pub const BODY_CHUNK_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Times a ranged read resumes after its body broke off.
const BODY_RESUMES_MAX: u32 = 2;
/// Region used when neither the configuration nor the environment names one
/// (S3-compatible stores usually accept any region).
pub const REGION_FALLBACK: &str = "us-east-1";
/// Keys per LIST request (S3's own maximum).
const LIST_KEYS_MAX: u32 = 1000;
/// Keys per DeleteObjects request (S3's own maximum).
const DELETE_BATCH_KEYS_MAX: usize = 1000;
/// Largest object a single CopyObject may copy.
pub const COPY_SINGLE_BYTES_MAX: u64 = 5 << 30;
/// Part size for multipart copies of larger objects.
pub const COPY_PART_BYTES_DEFAULT: u64 = 512 << 20;
/// Largest part an UploadPartCopy may copy.
const COPY_PART_BYTES_MAX: u64 = 5 << 30;
/// Smallest part of a multipart upload, the last one excepted.
pub const PART_BYTES_MIN: u64 = 5 << 20;
/// Parts per multipart upload (S3's own maximum).
pub const PARTS_MAX: u64 = 10_000;
/// Clients kept per thread (one per live store and runtime).
const LOCAL_CLIENTS_MAX: usize = 16;

/// Static access keys, used instead of the standard credential chain.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// Where the bucket is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// The part of the bucket the store is confined to: empty, or a key
    /// prefix ending with `/`.
    pub prefix: String,
    /// `http(s)://host[:port]` of an S3-compatible store; `None` for AWS
    /// (or whatever `AWS_ENDPOINT_URL` says).
    pub endpoint_url: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of
    /// `bucket.endpoint/key` (most S3-compatible stores need this).
    pub path_style: bool,
    /// `None`: the standard chain (`AWS_REGION`, profile, and for AWS
    /// itself instance metadata), then [`REGION_FALLBACK`].
    pub region: Option<String>,
    /// `None`: the standard credential chain.
    pub credentials: Option<S3Credentials>,
    /// Attempts per operation, the first one included (at least 1).
    pub attempts_max: u32,
    pub connect_timeout: Duration,
    /// Per attempt, up to the response headers.
    pub attempt_timeout: Duration,
    /// Per operation, all attempts and backoff included.
    pub operation_timeout: Duration,
    /// Per chunk of a response body.
    pub body_chunk_timeout: Duration,
}

/// Why an `s3://` URL or an [`S3Config`] was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum S3ConfigError {
    #[error("{0:?} is not an s3:// URL (expected s3://bucket[/prefix])")]
    NotS3Url(String),
    #[error(
        "bucket name {0:?} is not valid (1 to 255 characters of a-z, A-Z, 0-9, '.', '-', '_')"
    )]
    BadBucket(String),
    #[error("prefix {0:?} is not valid: {1}")]
    BadPrefix(String, &'static str),
    #[error("endpoint URL {0:?} must start with http:// or https:// and name a host")]
    BadEndpoint(String),
    #[error("attempts_max must be at least 1")]
    NoAttempts,
}

impl S3Config {
    /// A configuration for `bucket` with default policy: no prefix, AWS
    /// endpoint, virtual-hosted addressing, standard region and
    /// credential chains.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint_url: None,
            path_style: false,
            region: None,
            credentials: None,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            attempt_timeout: Duration::from_millis(ATTEMPT_TIMEOUT_MS_DEFAULT),
            operation_timeout: Duration::from_millis(OPERATION_TIMEOUT_MS_DEFAULT),
            body_chunk_timeout: Duration::from_millis(BODY_CHUNK_TIMEOUT_MS_DEFAULT),
        }
    }

    /// Parses `s3://bucket[/prefix]`. A prefix gets a trailing `/` when it
    /// lacks one (`s3://b/data` exports the keys under `data/`).
    pub fn from_url(url: &str) -> Result<S3Config, S3ConfigError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| S3ConfigError::NotS3Url(url.to_string()))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p),
            None => (rest, ""),
        };
        let mut config = S3Config::new(bucket);
        config.prefix = normalize_prefix(prefix)?;
        config.validate()?;
        Ok(config)
    }

    /// Sets an S3-compatible endpoint and its addressing style.
    pub fn with_endpoint(mut self, endpoint_url: impl Into<String>, path_style: bool) -> Self {
        self.endpoint_url = Some(endpoint_url.into());
        self.path_style = path_style;
        self
    }

    /// Checks the fields that can be checked without talking to the store.
    pub fn validate(&self) -> Result<(), S3ConfigError> {
        let b = &self.bucket;
        if b.is_empty()
            || b.len() > 255
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        {
            return Err(S3ConfigError::BadBucket(b.clone()));
        }
        if !self.prefix.is_empty() && normalize_prefix(&self.prefix)? != self.prefix {
            return Err(S3ConfigError::BadPrefix(
                self.prefix.clone(),
                "must end with '/'",
            ));
        }
        if let Some(e) = &self.endpoint_url {
            let host = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return Err(S3ConfigError::BadEndpoint(e.clone()));
            }
        }
        if self.attempts_max == 0 {
            return Err(S3ConfigError::NoAttempts);
        }
        Ok(())
    }
}

/// `""` stays empty; anything else must have no empty, `.` or `..`
/// segment and gets a trailing `/`.
fn normalize_prefix(p: &str) -> Result<String, S3ConfigError> {
    if p.is_empty() {
        return Ok(String::new());
    }
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    for seg in trimmed.split('/') {
        let why = match seg {
            "" => "empty segment",
            "." | ".." => "'.' or '..' segment",
            _ => continue,
        };
        return Err(S3ConfigError::BadPrefix(p.to_string(), why));
    }
    Ok(format!("{trimmed}/"))
}

/// The part every per-runtime client is built from.
struct Shared {
    bucket: String,
    prefix: String,
    region: String,
    describe: String,
    /// Everything but the HTTP client, which each runtime gets its own of.
    sdk: aws_sdk_s3::config::Builder,
    body_chunk_timeout: Duration,
    clients_built: AtomicU64,
}

/// A bucket (or a prefix of one) in S3 or an S3-compatible store.
pub struct S3Store {
    shared: Arc<Shared>,
}

/// One thread's client for one store, valid while the runtime that built it
/// is alive.
struct LocalClient {
    owner: Weak<Shared>,
    runtime_alive: Arc<AtomicBool>,
    client: Client,
}

thread_local! {
    static LOCAL_CLIENTS: RefCell<Vec<LocalClient>> = const { RefCell::new(Vec::new()) };
}

/// Lowers its flag when dropped, i.e. when the runtime holding the sentinel
/// task that owns it shuts down.
struct RuntimeAlive(Arc<AtomicBool>);

impl Drop for RuntimeAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl S3Store {
    /// Resolves region and credentials (environment and profile files; on a
    /// cloud host the metadata service when nothing else names them) and
    /// prepares the client configuration. Sends no request to S3: a bucket
    /// that is missing or unreachable shows on first use, or through
    /// [`S3Store::check_bucket`]. Call it from within a tokio runtime.
    pub async fn new(config: S3Config) -> Result<S3Store, StoreError> {
        config.validate().map_err(|e| StoreError::Config {
            message: e.to_string(),
        })?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.body_chunk_timeout)
            .operation_attempt_timeout(config.attempt_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(config.attempts_max)
            .with_initial_backoff(Duration::from_millis(BACKOFF_INITIAL_MS))
            .with_max_backoff(Duration::from_millis(BACKOFF_MAX_MS));

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .retry_config(retries.clone())
            .timeout_config(timeouts.clone());
        if let Some(r) = &config.region {
            loader = loader.region(Region::new(r.clone()));
        } else if config.endpoint_url.is_some() {
            // An S3-compatible store: its region comes from the environment
            // or the profile, never from a cloud's instance metadata.
            loader = loader.region(
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(ProfileFileRegionProvider::new()),
            );
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "tidegate-config",
            ));
        }
        let sdk_config = loader.load().await;
        let region = sdk_config
            .region()
            .cloned()
            .unwrap_or_else(|| Region::from_static(REGION_FALLBACK));

        let mut sdk = aws_sdk_s3::config::Builder::from(&sdk_config)
            .region(region.clone())
            .force_path_style(config.path_style)
            .retry_config(retries)
            .timeout_config(timeouts)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &config.endpoint_url {
            sdk = sdk.endpoint_url(e.clone());
        }
        let endpoint = match &config.endpoint_url {
            Some(e) => format!(" at {e}"),
            None => String::new(),
        };
        let describe = format!("s3://{}/{}{endpoint}", config.bucket, config.prefix);
        tracing::debug!(
            store = %describe,
            region = %region,
            path_style = config.path_style,
            "S3 store configured"
        );
        Ok(S3Store {
            shared: Arc::new(Shared {
                bucket: config.bucket,
                prefix: config.prefix,
                region: region.to_string(),
                describe,
                sdk,
                body_chunk_timeout: config.body_chunk_timeout,
                clients_built: AtomicU64::new(0),
            }),
        })
    }

    /// The bucket this store reads.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// The prefix this store is confined to (empty or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// How many SDK clients this store has built so far (one per runtime
    /// and thread that used it).
    pub fn clients_built(&self) -> u64 {
        self.shared.clients_built.load(Ordering::Relaxed)
    }

    /// This thread's client for the runtime it runs on, built on first use.
    fn client(&self) -> Result<Client, StoreError> {
        LOCAL_CLIENTS.with(|cell| {
            let mut clients = cell.borrow_mut();
            let me = Arc::as_ptr(&self.shared);
            if let Some(i) = clients.iter().position(|c| c.owner.as_ptr() == me) {
                if clients[i].runtime_alive.load(Ordering::Acquire) {
                    return Ok(clients[i].client.clone());
                }
                clients.swap_remove(i);
            }
            let handle = tokio::runtime::Handle::try_current().map_err(|_| StoreError::Config {
                message: "the S3 store is used outside a tokio runtime".to_string(),
            })?;
            clients
                .retain(|c| c.owner.strong_count() > 0 && c.runtime_alive.load(Ordering::Acquire));
            if clients.len() >= LOCAL_CLIENTS_MAX {
                clients.remove(0);
            }
            let config = self.shared.sdk.clone().http_client(https_client()).build();
            let client = Client::from_conf(config);
            let alive = Arc::new(AtomicBool::new(true));
            let sentinel = RuntimeAlive(alive.clone());
            handle.spawn(async move {
                let _sentinel = sentinel;
                std::future::pending::<()>().await
            });
            clients.push(LocalClient {
                owner: Arc::downgrade(&self.shared),
                runtime_alive: alive,
                client: client.clone(),
            });
            self.shared.clients_built.fetch_add(1, Ordering::Relaxed);
            Ok(client)
        })
    }

    /// The bucket key of a store key or listing prefix. Keys with `.` or
    /// `..` segments are refused: servers and proxies may resolve them as
    /// path steps, which could reach outside the store's prefix.
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if key.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                why: "'.' and '..' segments cannot be addressed reliably",
            });
        }
        Ok(format!("{}{key}", self.shared.prefix))
    }

    /// As [`Self::full_key`], for an object (a non-empty key).
    fn object_key(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey {
                key: String::new(),
                why: "an object key cannot be empty",
            });
        }
        self.full_key(key)
    }

    /// Checks that the bucket exists and the credentials may use it.
    pub async fn check_bucket(&self) -> Result<(), StoreError> {
        let client = self.client()?;
        client
            .head_bucket()
            .bucket(&self.shared.bucket)
            .send()
            .await
            .map_err(|e| self.error("head_bucket", "", e))?;
        Ok(())
    }

    /// Stores `data` as `key` with one PUT, with `posix` as its user
    /// metadata; returns the new ETag.
    pub async fn put_object(
        &self,
        key: &str,
        data: Vec<u8>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        let client = self.client()?;
        let out = client
            .put_object()
            .bucket(&self.shared.bucket)
            .key(self.object_key(key)?)
            .set_metadata(user_metadata(posix))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(out.e_tag().map(normalize_etag).unwrap_or_default())
    }

    /// Starts a multipart upload of `key`, whose object will carry `posix`
    /// as its user metadata; returns the upload id.
    pub async fn create_multipart_upload(
        &self,
        key: &str,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        let client = self.client()?;
        let out = client
            .create_multipart_upload()
            .bucket(&self.shared.bucket)
            .key(self.object_key(key)?)
            .set_metadata(user_metadata(posix))
            .send()
            .await
            .map_err(|e| self.error("create_multipart", key, e))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| other("create_multipart", key, "no upload id in the reply"))
    }

    /// Uploads part `part_number` (1 to 10000) of an upload. Every part but
    /// the last must be at least 5 MiB on AWS.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        data: Vec<u8>,
    ) -> Result<UploadedPart, StoreError> {
        let client = self.client()?;
        let out = client
            .upload_part()
            .bucket(&self.shared.bucket)
            .key(self.object_key(key)?)
            .upload_id(upload_id)
            .part_number(part_number)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("upload_part", key, e))?;
        Ok(UploadedPart {
            part_number,
            etag: out.e_tag().map(normalize_etag).unwrap_or_default(),
        })
    }

    /// Completes an upload from its parts (in part-number order); the object
    /// appears whole. Returns its ETag.
    pub async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<String, StoreError> {
        let client = self.client()?;
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.part_number)
                            .e_tag(quote_etag(&p.etag))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = client
            .complete_multipart_upload()
            .bucket(&self.shared.bucket)
            .key(self.object_key(key)?)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| self.error("complete_multipart", key, e))?;
        Ok(out.e_tag().map(normalize_etag).unwrap_or_default())
    }

    /// Abandons an upload and frees its parts. An upload S3 does not know
    /// (already completed or aborted) is not an error.
    pub async fn abort_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let client = self.client()?;
        let sent = client
            .abort_multipart_upload()
            .bucket(&self.shared.bucket)
            .key(self.object_key(key)?)
            .upload_id(upload_id)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if is_no_such_upload(&e) => Ok(()),
            Err(e) => Err(self.error("abort_multipart", key, e)),
        }
    }

    /// Server-side copy of `src` to `dst` (both relative to the store's
    /// prefix). With `src_etag`, the copy fails with
    /// [`StoreError::PreconditionFailed`] unless the source still has that
    /// ETag. With `posix`, the copy's user metadata is replaced by it;
    /// without, the source's is kept. Objects over 5 GiB are copied in
    /// parts of [`COPY_PART_BYTES_DEFAULT`], pinned to the source's ETag so
    /// that a source changed mid-copy fails instead of producing a mixed
    /// object. Returns the new object's ETag.
    pub async fn copy_object(
        &self,
        src: &str,
        dst: &str,
        src_etag: Option<&str>,
        posix: Option<&PosixMeta>,
    ) -> Result<String, StoreError> {
        let source = self.head(src).await?;
        if source.size <= COPY_SINGLE_BYTES_MAX {
            self.copy_single(&source, dst, src_etag, posix).await
        } else {
            self.copy_multipart(&source, dst, COPY_PART_BYTES_DEFAULT, src_etag, posix)
                .await
        }
    }

    /// A multipart copy with parts of `part_bytes` (raised to
    /// [`PART_BYTES_MIN`], and as needed to stay within [`PARTS_MAX`]
    /// parts). [`S3Store::copy_object`] uses it above 5 GiB; tests call it
    /// with small parts.
    pub async fn copy_object_multipart(
        &self,
        src: &str,
        dst: &str,
        part_bytes: u64,
        src_etag: Option<&str>,
        posix: Option<&PosixMeta>,
    ) -> Result<String, StoreError> {
        let source = self.head(src).await?;
        self.copy_multipart(&source, dst, part_bytes, src_etag, posix)
            .await
    }

    /// One CopyObject. Pinned to `src_etag` only when the caller asks: a
    /// single copy cannot mix two versions.
    async fn copy_single(
        &self,
        source: &ObjectMeta,
        dst: &str,
        src_etag: Option<&str>,
        posix: Option<&PosixMeta>,
    ) -> Result<String, StoreError> {
        let client = self.client()?;
        let mut req = client
            .copy_object()
            .bucket(&self.shared.bucket)
            .key(self.object_key(dst)?)
            .copy_source(self.copy_source(&source.key)?)
            .set_copy_source_if_match(src_etag.map(quote_etag));
        if let Some(p) = posix {
            req = req
                .metadata_directive(MetadataDirective::Replace)
                .set_metadata(user_metadata(p));
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.error("copy", &source.key, e))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(normalize_etag)
            .unwrap_or_default())
    }

    async fn copy_multipart(
        &self,
        source: &ObjectMeta,
        dst: &str,
        part_bytes: u64,
        src_etag: Option<&str>,
        posix: Option<&PosixMeta>,
    ) -> Result<String, StoreError> {
        if source.size == 0 {
            // A multipart upload needs at least one non-empty range.
            return self.copy_single(source, dst, src_etag, posix).await;
        }
        // Every part comes from the same version: the caller's, or the one
        // the size was read from.
        let pinned = quote_etag(src_etag.unwrap_or(&source.etag));
        let ranges = copy_part_ranges(source.size, part_bytes);
        let client = self.client()?;
        let create = client
            .create_multipart_upload()
            .bucket(&self.shared.bucket)
            .key(self.object_key(dst)?);
        let create = match posix {
            Some(p) => create.set_metadata(user_metadata(p)),
            None => {
                // Carry the source's content type and user metadata over, as
                // a single CopyObject does.
                let head = client
                    .head_object()
                    .bucket(&self.shared.bucket)
                    .key(self.object_key(&source.key)?)
                    .if_match(&pinned)
                    .send()
                    .await
                    .map_err(|e| self.error("head", &source.key, e))?;
                create
                    .set_content_type(head.content_type().map(str::to_owned))
                    .set_metadata(head.metadata().cloned())
            }
        };
        let created = create
            .send()
            .await
            .map_err(|e| self.error("create_multipart", dst, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| other("create_multipart", dst, "no upload id in the reply"))?
            .to_string();
        let copied = async {
            let mut parts = Vec::with_capacity(ranges.len());
            for (i, (first, last)) in ranges.iter().enumerate() {
                let part_number = i as i32 + 1;
                let out = client
                    .upload_part_copy()
                    .bucket(&self.shared.bucket)
                    .key(self.object_key(dst)?)
                    .upload_id(&upload_id)
                    .part_number(part_number)
                    .copy_source(self.copy_source(&source.key)?)
                    .copy_source_range(range_header(*first, *last))
                    .copy_source_if_match(&pinned)
                    .send()
                    .await
                    .map_err(|e| self.error("upload_part_copy", &source.key, e))?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(normalize_etag)
                    .ok_or_else(|| other("upload_part_copy", dst, "no ETag in the reply"))?;
                parts.push(UploadedPart { part_number, etag });
            }
            self.complete_multipart_upload(dst, &upload_id, &parts)
                .await
        }
        .await;
        if copied.is_err() {
            if let Err(e) = self.abort_multipart_upload(dst, &upload_id).await {
                tracing::warn!(key = dst, error = %e, "could not abort a failed multipart copy");
            }
        }
        copied
    }

    /// `x-amz-copy-source` for a key of this store.
    fn copy_source(&self, key: &str) -> Result<String, StoreError> {
        Ok(format!(
            "{}/{}",
            self.shared.bucket,
            percent_encode_key(&self.object_key(key)?)
        ))
    }

    /// Deletes `key`; deleting a missing key succeeds (as in S3).
    pub async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let client = self.client()?;
        let sent = client
            .delete_object()
            .bucket(&self.shared.bucket)
            .key(self.object_key(key)?)
            .send()
            .await;
        match sent.map_err(|e| self.error("delete", key, e)) {
            // Some S3-compatible stores answer 404 where S3 answers 204.
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes many keys, up to 1000 per request. Fails with the first key
    /// the store refused to delete (after trying all of them).
    pub async fn delete_objects(&self, keys: &[&str]) -> Result<(), StoreError> {
        let client = self.client()?;
        let mut refused: Option<StoreError> = None;
        for batch in keys.chunks(DELETE_BATCH_KEYS_MAX) {
            let objects = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(self.object_key(k)?)
                        .build()
                        .map_err(|e| other("delete_objects", k, &e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| other("delete_objects", batch[0], &e.to_string()))?;
            let out = client
                .delete_objects()
                .bucket(&self.shared.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("delete_objects", batch[0], e))?;
            if let Some(e) = out.errors().first() {
                let key = e.key().unwrap_or_default();
                let key = key.strip_prefix(&self.shared.prefix).unwrap_or(key);
                let message = format!(
                    "{} keys not deleted; first: {}: {}",
                    out.errors().len(),
                    e.code().unwrap_or("?"),
                    e.message().unwrap_or("")
                );
                refused.get_or_insert_with(|| other("delete_objects", key, &message));
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Turns an SDK error into a [`StoreError`] for `key`.
    fn error<E>(&self, op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (failure, message) = describe_sdk_error(&err);
        failure.into_error(op, key, message)
    }

    async fn get_range_impl(
        &self,
        key: &str,
        offset: u64,
        buf: &mut [u8],
        if_match: Option<&str>,
    ) -> Result<usize, StoreError> {
        // An empty read sends no request (and so checks no precondition).
        if buf.is_empty() {
            return Ok(0);
        }
        let client = self.client()?;
        let full_key = self.object_key(key)?;
        let last = offset.saturating_add(buf.len() as u64 - 1);
        let mut done = 0usize;
        // The version being read: the caller's, or that of the first reply.
        let mut pinned: Option<String> = if_match.map(normalize_etag);
        let mut resumes = 0u32;
        loop {
            let first = offset + done as u64;
            let mut req = client
                .get_object()
                .bucket(&self.shared.bucket)
                .key(&full_key)
                .range(range_header(first, last));
            if let Some(e) = &pinned {
                req = req.if_match(quote_etag(e));
            }
            let out = match req.send().await {
                Ok(out) => out,
                Err(err) => {
                    let (failure, message) = describe_sdk_error(&err);
                    if failure == Failure::RangeNotSatisfiable {
                        return Ok(done);
                    }
                    return Err(failure.into_error("get", key, message));
                }
            };
            // Where the body starts in the object, and how much of the
            // request it can cover.
            let (body_first, object_size) = match out.content_range() {
                Some(cr) => {
                    let r = parse_content_range(cr).ok_or_else(|| {
                        other("get", key, &format!("unparsable Content-Range {cr:?}"))
                    })?;
                    (r.first, r.size)
                }
                // The whole object (the server ignored the range).
                None => (0, out.content_length().map(|l| l.max(0) as u64)),
            };
            if body_first > first {
                return Err(other(
                    "get",
                    key,
                    &format!("asked for bytes from {first}, got bytes from {body_first}"),
                ));
            }
            if pinned.is_none() {
                pinned = out.e_tag().map(normalize_etag);
            }
            let expected_end = match object_size {
                Some(size) => size.min(last + 1),
                None => last + 1,
            };
            let mut skip = first - body_first;
            let mut body = out.body;
            let broke = loop {
                let chunk =
                    match tokio::time::timeout(self.shared.body_chunk_timeout, body.next()).await {
                        Err(_) => break "the response body stalled".to_string(),
                        Ok(None) => {
                            if object_size.is_none() || offset + done as u64 >= expected_end {
                                return Ok(done);
                            }
                            break "the response body ended early".to_string();
                        }
                        Ok(Some(Err(e))) => break format!("reading the response body: {e}"),
                        Ok(Some(Ok(chunk))) => chunk,
                    };
                let mut data = &chunk[..];
                if skip > 0 {
                    let s = (skip.min(data.len() as u64)) as usize;
                    data = &data[s..];
                    skip -= s as u64;
                }
                let n = data.len().min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&data[..n]);
                done += n;
                if done == buf.len() {
                    return Ok(done);
                }
            };
            resumes += 1;
            if resumes > BODY_RESUMES_MAX || pinned.is_none() {
                return Err(StoreError::Unavailable {
                    op: "get",
                    key: key.to_string(),
                    message: broke,
                });
            }
            tracing::debug!(key, done, reason = %broke, "resuming a broken ranged read");
        }
    }
}

/// A part of a multipart upload, as needed to complete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub part_number: i32,
    /// Without quotes, like every ETag this module returns.
    pub etag: String,
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// What kind of failure an S3 error is, independent of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    Denied,
    /// Worth trying again later: timeouts, connection failures, 5xx,
    /// throttling. The SDK has already retried it.
    Unavailable,
    Other,
}

impl Failure {
    fn into_error(self, op: &'static str, key: &str, message: String) -> StoreError {
        let key = key.to_string();
        match self {
            Failure::NotFound => StoreError::NotFound { key },
            Failure::PreconditionFailed => StoreError::PreconditionFailed { key },
            Failure::Denied => StoreError::Denied { op, key, message },
            Failure::Unavailable => StoreError::Unavailable { op, key, message },
            // A range error outside a ranged read (e.g. a bad copy range).
            Failure::RangeNotSatisfiable | Failure::Other => StoreError::Io {
                op,
                key,
                source: io::Error::other(message),
            },
        }
    }
}

/// Classifies an error reply by HTTP status and S3 error code.
fn classify_reply(status: u16, code: Option<&str>) -> Failure {
    match code {
        Some("NoSuchKey" | "NotFound") => return Failure::NotFound,
        // Not "no such object": the bucket or the upload is missing, which
        // the namespace must not show as a missing file.
        Some("NoSuchBucket" | "NoSuchUpload") => return Failure::Other,
        Some("PreconditionFailed") => return Failure::PreconditionFailed,
        Some("InvalidRange") => return Failure::RangeNotSatisfiable,
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled"
            | "AccountProblem",
        ) => return Failure::Denied,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestLimitExceeded",
        ) => return Failure::Unavailable,
        _ => {}
    }
    match status {
        404 => Failure::NotFound,
        412 => Failure::PreconditionFailed,
        416 => Failure::RangeNotSatisfiable,
        401 | 403 => Failure::Denied,
        408 | 429 | 500..=599 => Failure::Unavailable,
        _ => Failure::Other,
    }
}

/// Whether the request never got a reply, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// The request could not be built (bad input, no credentials).
    Construction,
    /// A timeout fired (attempt or operation).
    Timeout,
    /// Connecting or sending failed.
    Dispatch,
    /// A reply arrived but could not be read.
    Response,
}

fn classify_transport(t: Transport) -> Failure {
    match t {
        Transport::Construction => Failure::Other,
        Transport::Timeout | Transport::Dispatch | Transport::Response => Failure::Unavailable,
    }
}

/// The failure kind and a message that carries no credentials: S3's code
/// and message for replies, the transport error chain otherwise.
fn describe_sdk_error<E>(err: &SdkError<E, HttpResponse>) -> (Failure, String)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transport = match err {
        SdkError::ConstructionFailure(_) => Transport::Construction,
        SdkError::TimeoutError(_) => Transport::Timeout,
        SdkError::DispatchFailure(_) => Transport::Dispatch,
        SdkError::ResponseError(_) => Transport::Response,
        SdkError::ServiceError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let code = err.code();
            let message = format!(
                "HTTP {status} {}{}{}",
                code.unwrap_or("(no error code)"),
                if err.message().is_some() { ": " } else { "" },
                err.message().unwrap_or("")
            );
            return (classify_reply(status, code), message);
        }
        _ => Transport::Construction,
    };
    (
        classify_transport(transport),
        DisplayErrorContext(err).to_string(),
    )
}

/// User metadata for a request (names without the `x-amz-meta-` prefix,
/// which the SDK adds); `None` when there is nothing to send.
fn user_metadata(posix: &PosixMeta) -> Option<HashMap<String, String>> {
    let pairs = posix.to_pairs();
    (!pairs.is_empty()).then(|| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// POSIX attributes from the user metadata of a HEAD reply.
fn posix_of(metadata: Option<&HashMap<String, String>>) -> Option<PosixMeta> {
    PosixMeta::from_pairs(metadata?.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Whether S3 says the multipart upload does not exist (404 NoSuchUpload;
/// a bare 404 too, unless the bucket is what is missing).
fn is_no_such_upload<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let SdkError::ServiceError(_) = err else {
        return false;
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err.code() {
        Some("NoSuchUpload") => true,
        Some("NoSuchBucket") => false,
        _ => status == Some(404),
    }
}

fn other(op: &'static str, key: &str, message: &str) -> StoreError {
    StoreError::Io {
        op,
        key: key.to_string(),
        source: io::Error::other(message.to_string()),
    }
}

/// `bytes=first-last` (both inclusive).
fn range_header(first: u64, last: u64) -> String {
    format!("bytes={first}-{last}")
}

/// A parsed `Content-Range: bytes first-last/size` (size may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    size: Option<u64>,
}

fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, size) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let size = match size.trim() {
        "*" => None,
        s => Some(s.parse().ok()?),
    };
    if last < first || size.is_some_and(|s| last >= s) {
        return None;
    }
    Some(ContentRange { first, last, size })
}

/// An ETag as this module stores it: no surrounding quotes, no weak marker.
fn normalize_etag(e: &str) -> String {
    let e = e.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    let e = e
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(e);
    e.to_string()
}

/// An ETag as HTTP headers carry it.
fn quote_etag(e: &str) -> String {
    format!("\"{}\"", normalize_etag(e))
}

/// Percent-encodes a key for `x-amz-copy-source`, leaving the unreserved
/// characters and `/` as they are.
fn percent_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a key from a listing made with `encoding-type=url`: `%XX`
/// escapes, and `+` for a space (S3 form-encodes). `None` when the result
/// is not UTF-8 or an escape is malformed.
fn decode_listed_key(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Inclusive byte ranges of a multipart copy of `size` bytes in parts of
/// `part_bytes`, raised to [`PART_BYTES_MIN`] and as needed to stay within
/// [`PARTS_MAX`] parts, and capped at 5 GiB.
fn copy_part_ranges(size: u64, part_bytes: u64) -> Vec<(u64, u64)> {
    let part = part_bytes
        .max(PART_BYTES_MIN)
        .max(size.div_ceil(PARTS_MAX))
        .min(COPY_PART_BYTES_MAX);
    let mut ranges = Vec::with_capacity(size.div_ceil(part) as usize);
    let mut first = 0;
    while first < size {
        let last = (first + part).min(size) - 1;
        ranges.push((first, last));
        first = last + 1;
    }
    ranges
}

fn system_time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.shared.describe.clone()
    }

    fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta> {
        Box::pin(async move {
            let client = self.client()?;
            let out = client
                .head_object()
                .bucket(&self.shared.bucket)
                .key(self.object_key(key)?)
                .send()
                .await
                .map_err(|e| self.error("head", key, e))?;
            Ok(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().map(normalize_etag).unwrap_or_default(),
                mtime: system_time(out.last_modified()),
                posix: posix_of(out.metadata()),
            })
        })
    }

    fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let client = self.client()?;
            let out = client
                .list_objects_v2()
                .bucket(&self.shared.bucket)
                .prefix(self.full_key(prefix)?)
                .delimiter("/")
                .max_keys(1)
                .send()
                .await
                .map_err(|e| self.error("list", prefix, e))?;
            Ok(out.key_count().unwrap_or(0) > 0
                || !out.contents().is_empty()
                || !out.common_prefixes().is_empty())
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> StoreFuture<'a, ListPage> {
        Box::pin(async move {
            let client = self.client()?;
            let out = client
                .list_objects_v2()
                .bucket(&self.shared.bucket)
                .prefix(self.full_key(prefix)?)
                .delimiter("/")
                .encoding_type(EncodingType::Url)
                .max_keys(max_keys.clamp(1, LIST_KEYS_MAX) as i32)
                .set_continuation_token(token.map(str::to_owned))
                .send()
                .await
                .map_err(|e| self.error("list", prefix, e))?;
            let encoded = out.encoding_type() == Some(&EncodingType::Url);
            let own_prefix = self.shared.prefix.as_str();
            // Keys relative to the store's prefix; a key that cannot be
            // decoded or lies outside the prefix is left out.
            let relative = |raw: &str| -> Option<String> {
                let key = if encoded {
                    decode_listed_key(raw)?
                } else {
                    raw.to_string()
                };
                key.strip_prefix(own_prefix).map(str::to_owned)
            };
            let mut page = ListPage::default();
            for o in out.contents() {
                let Some(key) = o.key().and_then(relative) else {
                    tracing::debug!(key = ?o.key(), "listed key left out (undecodable)");
                    continue;
                };
                page.objects.push(ObjectMeta {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(normalize_etag).unwrap_or_default(),
                    mtime: system_time(o.last_modified()),
                    posix: None,
                });
            }
            for p in out.common_prefixes() {
                if let Some(p) = p.prefix().and_then(relative) {
                    page.prefixes.push(p);
                }
            }
            if out.is_truncated() == Some(true) {
                page.next_token = out.next_continuation_token().map(str::to_owned);
            }
            Ok(page)
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        buf: &'a mut [u8],
        if_match: Option<&'a str>,
    ) -> StoreFuture<'a, usize> {
        Box::pin(self.get_range_impl(key, offset, buf, if_match))
    }

    fn part_bytes_min(&self) -> u64 {
        PART_BYTES_MIN
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Vec<u8>,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.put_object(key, data, posix))
    }

    fn multipart_start<'a>(
        &'a self,
        key: &'a str,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.create_multipart_upload(key, posix))
    }

    fn multipart_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Vec<u8>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            if !(1..=PARTS_MAX).contains(&u64::from(number)) {
                return Err(other(
                    "upload_part",
                    key,
                    &format!("part number {number} is not within 1 to {PARTS_MAX}"),
                ));
            }
            let part = self
                .upload_part(key, upload_id, number as i32, data)
                .await?;
            Ok(part.etag)
        })
    }

    fn multipart_complete<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [PartDone],
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let parts: Vec<UploadedPart> = parts
                .iter()
                .map(|p| UploadedPart {
                    part_number: p.number as i32,
                    etag: p.etag.clone(),
                })
                .collect();
            self.complete_multipart_upload(key, upload_id, &parts).await
        })
    }

    fn multipart_abort<'a>(&'a self, key: &'a str, upload_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.abort_multipart_upload(key, upload_id))
    }

    fn copy<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        src_etag: Option<&'a str>,
        posix: Option<&'a PosixMeta>,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.copy_object(src, dst, src_etag, posix))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.delete_object(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let c = S3Config::from_url("s3://bucket").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", ""));
        let c = S3Config::from_url("s3://bucket/").unwrap();
        assert_eq!(c.prefix, "");
        let c = S3Config::from_url("s3://my.bucket-1/data/train").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my.bucket-1", "data/train/")
        );
        let c = S3Config::from_url("s3://b/data/").unwrap();
        assert_eq!(c.prefix, "data/");
        assert!(!c.path_style && c.endpoint_url.is_none() && c.region.is_none());

        assert!(matches!(
            S3Config::from_url("http://b/x"),
            Err(S3ConfigError::NotS3Url(_))
        ));
        assert!(matches!(
            S3Config::from_url("s3://"),
            Err(S3ConfigError::BadBucket(_))
        ));
        assert!(matches!(
            S3Config::from_url("s3://bad bucket"),
            Err(S3ConfigError::BadBucket(_))
        ));
        for bad in ["s3://b//x", "s3://b/a//", "s3://b/./x", "s3://b/a/../x"] {
            assert!(
                matches!(S3Config::from_url(bad), Err(S3ConfigError::BadPrefix(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_validation() {
        let c = S3Config::new("b").with_endpoint("http://127.0.0.1:8333", true);
        assert!(c.validate().is_ok() && c.path_style);
        for bad in ["127.0.0.1:8333", "http://", "ftp://x", "https:///x"] {
            let c = S3Config::new("b").with_endpoint(bad, true);
            assert!(
                matches!(c.validate(), Err(S3ConfigError::BadEndpoint(_))),
                "{bad}"
            );
        }
        let mut c = S3Config::new("b");
        c.prefix = "x".into();
        assert!(matches!(c.validate(), Err(S3ConfigError::BadPrefix(..))));
        let mut c = S3Config::new("b");
        c.attempts_max = 0;
        assert_eq!(c.validate(), Err(S3ConfigError::NoAttempts));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let mut c = S3Config::new("b");
        c.credentials = Some(S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: Some("session-secret".into()),
        });
        let s = format!("{c:?}");
        assert!(s.contains("AKIDEXAMPLE"));
        assert!(!s.contains("very-secret-value") && !s.contains("session-secret"));
    }

    #[test]
    fn ranges() {
        assert_eq!(range_header(0, 0), "bytes=0-0");
        assert_eq!(range_header(5, 1_048_580), "bytes=5-1048580");
        assert_eq!(
            parse_content_range("bytes 1-4/5"),
            Some(ContentRange {
                first: 1,
                last: 4,
                size: Some(5)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some(ContentRange {
                first: 0,
                last: 9,
                size: None
            })
        );
        for bad in [
            "bytes */5",
            "items 0-1/2",
            "bytes 4-1/5",
            "bytes 0-5/5",
            "bytes 0-x/5",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn copy_parts() {
        const MIB: u64 = 1 << 20;
        assert_eq!(
            copy_part_ranges(12 * MIB, 5 * MIB),
            vec![
                (0, 5 * MIB - 1),
                (5 * MIB, 10 * MIB - 1),
                (10 * MIB, 12 * MIB - 1)
            ]
        );
        assert_eq!(
            copy_part_ranges(10 * MIB, 5 * MIB),
            vec![(0, 5 * MIB - 1), (5 * MIB, 10 * MIB - 1)]
        );
        assert_eq!(copy_part_ranges(3, 5 * MIB), vec![(0, 2)]);
        assert!(copy_part_ranges(0, 5 * MIB).is_empty());
        // Raised to the smallest part S3 accepts.
        assert_eq!(copy_part_ranges(6 * MIB, 1).len(), 2);
        // Raised to stay within the part limit.
        let r = copy_part_ranges(100_000 * MIB, 5 * MIB);
        assert_eq!(r.len(), PARTS_MAX as usize);
        assert_eq!(r.last(), Some(&(99_990 * MIB, 100_000 * MIB - 1)));
        // 6 GiB in default parts.
        let r = copy_part_ranges(6 << 30, COPY_PART_BYTES_DEFAULT);
        assert_eq!(r.len(), 12);
        assert!(r.iter().all(|(a, b)| b - a < COPY_PART_BYTES_MAX));
    }

    #[test]
    fn etags() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
        assert_eq!(normalize_etag("W/\"abc-3\""), "abc-3");
        assert_eq!(normalize_etag(" \"x\" "), "x");
        assert_eq!(normalize_etag("\""), "\"");
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
    }

    #[test]
    fn key_encoding() {
        assert_eq!(percent_encode_key("a/b c+d%.txt"), "a/b%20c%2Bd%25.txt");
        assert_eq!(percent_encode_key("ü"), "%C3%BC");
        assert_eq!(decode_listed_key("a/b+c%2Bd%25"), Some("a/b c+d%".into()));
        assert_eq!(decode_listed_key("%C3%BC"), Some("ü".into()));
        assert_eq!(decode_listed_key("%01x"), Some("\u{1}x".into()));
        assert_eq!(decode_listed_key("%FF"), None);
        assert_eq!(decode_listed_key("%4"), None);
        assert_eq!(decode_listed_key("%zz"), None);
    }

    #[test]
    fn reply_classification() {
        assert_eq!(classify_reply(404, Some("NoSuchKey")), Failure::NotFound);
        assert_eq!(classify_reply(404, None), Failure::NotFound);
        assert_eq!(classify_reply(404, Some("NoSuchBucket")), Failure::Other);
        assert_eq!(classify_reply(404, Some("NoSuchUpload")), Failure::Other);
        assert_eq!(classify_reply(412, None), Failure::PreconditionFailed);
        assert_eq!(
            classify_reply(412, Some("PreconditionFailed")),
            Failure::PreconditionFailed
        );
        assert_eq!(
            classify_reply(416, Some("InvalidRange")),
            Failure::RangeNotSatisfiable
        );
        assert_eq!(classify_reply(403, Some("AccessDenied")), Failure::Denied);
        assert_eq!(
            classify_reply(403, Some("SignatureDoesNotMatch")),
            Failure::Denied
        );
        assert_eq!(classify_reply(400, Some("ExpiredToken")), Failure::Denied);
        assert_eq!(classify_reply(503, Some("SlowDown")), Failure::Unavailable);
        assert_eq!(classify_reply(500, None), Failure::Unavailable);
        assert_eq!(classify_reply(502, None), Failure::Unavailable);
        assert_eq!(classify_reply(429, None), Failure::Unavailable);
        assert_eq!(
            classify_reply(400, Some("RequestTimeout")),
            Failure::Unavailable
        );
        assert_eq!(classify_reply(400, Some("InvalidArgument")), Failure::Other);
        assert_eq!(classify_transport(Transport::Timeout), Failure::Unavailable);
        assert_eq!(
            classify_transport(Transport::Dispatch),
            Failure::Unavailable
        );
        assert_eq!(
            classify_transport(Transport::Response),
            Failure::Unavailable
        );
        assert_eq!(classify_transport(Transport::Construction), Failure::Other);
    }

    #[test]
    fn failures_become_store_errors() {
        let e = Failure::Unavailable.into_error("get", "k", "HTTP 503 SlowDown".into());
        assert!(matches!(e, StoreError::Unavailable { op: "get", .. }));
        assert!(matches!(
            Failure::NotFound.into_error("head", "k", String::new()),
            StoreError::NotFound { .. }
        ));
        assert!(matches!(
            Failure::PreconditionFailed.into_error("get", "k", String::new()),
            StoreError::PreconditionFailed { .. }
        ));
        assert!(matches!(
            Failure::Denied.into_error("list", "", String::new()),
            StoreError::Denied { .. }
        ));
        assert!(matches!(
            Failure::Other.into_error("list", "", String::new()),
            StoreError::Io { .. }
        ));
    }

    /// The client needs a runtime; outside one the store says so instead
    /// of panicking.
    #[test]
    fn outside_a_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = S3Config {
            region: Some("us-east-1".into()),
            credentials: Some(S3Credentials {
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                session_token: None,
            }),
            ..S3Config::new("bucket").with_endpoint("http://127.0.0.1:9", true)
        };
        let store = rt.block_on(S3Store::new(config)).unwrap();
        assert_eq!(store.describe(), "s3://bucket/ at http://127.0.0.1:9");
        assert!(matches!(store.client(), Err(StoreError::Config { .. })));
    }
}
