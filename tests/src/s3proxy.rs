//! A counting, latency-injecting HTTP/1.1 proxy in front of an S3 server.
//!
//! The gateway under test is pointed at [`S3Proxy::endpoint`] instead of the
//! S3 server itself. Every accepted connection gets its own connection to
//! the upstream, and bytes go through unchanged in both directions (the
//! `Host` header included), so SigV4 signatures made for the proxy's
//! address stay valid: the upstream checks them against the `Host` it
//! receives, which is the one that was signed.
//!
//! The proxy only watches. It frames the byte stream of each direction
//! (request and response heads, `Content-Length` and chunked bodies,
//! interim `1xx` answers, bodiless answers to `HEAD`, `204` and `304`), so
//! that on kept-alive connections every request is seen once and every
//! response is matched to its request. For each request it records the
//! method, the bucket and object key (path-style addressing: the first path
//! segment is the bucket), the query, the `Range` header and, when the
//! answer's head arrives, the status.
//!
//! One knob changes timing, never bytes: [`S3Proxy::set_first_byte_delay`]
//! holds back the first byte of each answer for a while, as a distant S3
//! region would.
//!
//! One knob injects failures: [`S3Proxy::set_upload_fault`] makes the proxy
//! answer uploads (PUT and POST: PutObject, CopyObject, the steps of a
//! multipart upload) itself with a chosen status and S3 XML error, without
//! forwarding them, as a store that is overloaded, refuses the credentials
//! or lost the bucket would. The request's body is read and dropped, the
//! connection stays usable (unless the request expected a `100 Continue`:
//! then the error goes out at once and the connection is closed).
//!
//! Everything is bounded: [`CONNECTIONS_MAX`] connections at once (more
//! wait in the accept queue until one ends), heads of at most
//! [`HEAD_BYTES_MAX`] bytes (a larger one closes the connection and is
//! reported by [`S3Proxy::errors`]), [`RECORDS_MAX`] requests kept in the
//! log (the counters keep counting past it). Threads: one accepting, two
//! per connection (one per direction). Dropping the proxy shuts every
//! socket down and joins every thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Connections served at once; further ones wait (accepted, unread) until
/// one ends.
pub const CONNECTIONS_MAX: usize = 256;
/// Largest request or response head (request line or status line and
/// headers), and largest trailer block of a chunked body.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest chunk-size line of a chunked body (extensions included).
const CHUNK_LINE_BYTES_MAX: usize = 4096;
/// Requests kept in the log; past it, requests are counted but not logged.
pub const RECORDS_MAX: usize = 100_000;
/// Protocol errors kept for [`S3Proxy::errors`].
const ERRORS_MAX: usize = 100;
/// Read buffer of each direction of each connection.
const PUMP_BUF_BYTES: usize = 256 * 1024;
/// How long connecting to the upstream may take before the client's
/// connection is closed.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest first-byte delay accepted.
pub const FIRST_BYTE_DELAY_MAX: Duration = Duration::from_secs(60);
/// Sleeps are cut into slices this long so that a dropped proxy does not
/// wait for a long delay to pass.
const SLEEP_SLICE: Duration = Duration::from_millis(10);
/// How often the acceptor rechecks the stop flag while every connection
/// slot is taken.
const SLOT_WAIT_SLICE: Duration = Duration::from_millis(100);

/// Numbers proxies of this process, for thread names.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// One request as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Order of arrival (over all connections) since the proxy started;
    /// [`S3Proxy::reset`] does not restart it.
    pub seq: u64,
    /// The proxy's number for the client connection.
    pub conn: u64,
    /// When the request head was complete, since the proxy started.
    pub at: Duration,
    pub method: String,
    /// The request target as sent (path and query, still percent-encoded).
    pub target: String,
    /// The first path segment (path-style addressing), percent-decoded.
    pub bucket: String,
    /// The rest of the path after `bucket/`, percent-decoded; empty for
    /// requests on the bucket itself.
    pub key: String,
    /// The query without `?`, as sent.
    pub query: String,
    /// The `Range` header's value, e.g. `bytes=0-1048575`.
    pub range: Option<String>,
    /// The final status of the answer, once its head went through.
    pub status: Option<u16>,
}

impl Recorded {
    /// A GET of an object (not of the bucket).
    pub fn is_object_get(&self) -> bool {
        self.method == "GET" && !self.key.is_empty()
    }

    /// A listing: a GET of the bucket itself that is not a request for
    /// one of its sub-resources (`?location`, `?versioning`, …).
    pub fn is_list(&self) -> bool {
        if self.method != "GET" || !self.key.is_empty() {
            return false;
        }
        self.query.is_empty()
            || self.query.split('&').any(|p| {
                let name = p.split('=').next().unwrap_or("");
                matches!(
                    name,
                    "list-type"
                        | "prefix"
                        | "delimiter"
                        | "marker"
                        | "max-keys"
                        | "continuation-token"
                        | "start-after"
                        | "encoding-type"
                        | "fetch-owner"
                )
            })
    }

    /// The byte range asked for: `bytes=FIRST-LAST` as (first, Some(last)),
    /// `bytes=FIRST-` as (first, None). Suffix ranges and lists of ranges
    /// give `None`.
    pub fn range_bytes(&self) -> Option<(u64, Option<u64>)> {
        let spec = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let first = first.trim().parse().ok()?;
        let last = match last.trim() {
            "" => None,
            l => Some(l.parse().ok()?),
        };
        Some((first, last))
    }
}

/// Which uploads [`S3Proxy::set_upload_fault`] rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultScope {
    /// Every PUT and POST.
    Uploads,
    /// Only the parts of multipart uploads (`PUT ?partNumber=…`): uploads
    /// start, their parts fail.
    Parts,
}

/// An answer the proxy gives itself to the uploads it rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadFault {
    pub status: u16,
    /// The S3 error code, e.g. `SlowDown`, `AccessDenied`, `NoSuchBucket`.
    pub code: String,
    pub message: String,
    pub scope: FaultScope,
}

impl UploadFault {
    pub fn new(status: u16, code: &str, message: &str) -> UploadFault {
        UploadFault {
            status,
            code: code.to_string(),
            message: message.to_string(),
            scope: FaultScope::Uploads,
        }
    }

    /// 503 SlowDown: the store is overloaded.
    pub fn slow_down() -> UploadFault {
        Self::new(503, "SlowDown", "Please reduce your request rate.")
    }

    /// 500 InternalError.
    pub fn internal_error() -> UploadFault {
        Self::new(
            500,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }

    /// 403 InvalidAccessKeyId: wrong credentials.
    pub fn invalid_access_key() -> UploadFault {
        Self::new(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    }

    /// 403 AccessDenied.
    pub fn access_denied() -> UploadFault {
        Self::new(403, "AccessDenied", "Access Denied")
    }

    /// 404 NoSuchBucket: the bucket is gone.
    pub fn no_such_bucket() -> UploadFault {
        Self::new(404, "NoSuchBucket", "The specified bucket does not exist")
    }

    /// The same answer, only for parts of multipart uploads.
    pub fn parts_only(mut self) -> UploadFault {
        self.scope = FaultScope::Parts;
        self
    }

    /// Whether a request with this method and query is rejected.
    fn applies(&self, method: &str, query: &str) -> bool {
        match self.scope {
            FaultScope::Uploads => method == "PUT" || method == "POST",
            FaultScope::Parts => {
                method == "PUT"
                    && query
                        .split('&')
                        .any(|p| p.split('=').next() == Some("partNumber"))
            }
        }
    }

    /// The whole HTTP answer to a request on `resource` (`/bucket/key`).
    fn response(&self, resource: &str, request_id: u64, close: bool) -> Vec<u8> {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code>\
             <Message>{}</Message><Resource>{}</Resource>\
             <RequestId>tidegate-proxy-{request_id}</RequestId></Error>",
            xml_escape(&self.code),
            xml_escape(&self.message),
            xml_escape(resource)
        );
        let reason = match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nx-amz-request-id: tidegate-proxy-{request_id}\r\n",
            self.status,
            body.len()
        );
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What the proxy saw since the last reset.
#[derive(Default)]
struct Log {
    records: Vec<Recorded>,
    records_dropped: u64,
    requests: u64,
    object_gets: u64,
    lists: u64,
    heads: u64,
    /// Requests answered by the proxy itself (see [`UploadFault`]).
    faulted: u64,
}

/// State shared by the handle, the acceptor and the connection threads.
struct Shared {
    instance: u64,
    upstream: SocketAddr,
    listen: SocketAddr,
    started: Instant,
    stop: AtomicBool,
    first_byte_delay_ns: AtomicU64,
    upload_fault: Mutex<Option<UploadFault>>,
    next_seq: AtomicU64,
    next_conn: AtomicU64,
    connections_total: AtomicU64,
    log: Mutex<Log>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    slot_freed: Condvar,
    errors: Mutex<Vec<String>>,
}

/// What it takes to end a connection from outside: its sockets, and its
/// thread to join.
struct ConnEntry {
    sockets: Vec<TcpStream>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the counters with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn note_error(&self, message: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < ERRORS_MAX {
            errors.push(message);
        }
    }

    fn first_byte_delay(&self) -> Duration {
        Duration::from_nanos(self.first_byte_delay_ns.load(Ordering::SeqCst))
    }

    /// Sleeps `d`, or less when the proxy is being dropped.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopping() {
                return;
            }
            std::thread::sleep(left.min(SLEEP_SLICE));
        }
    }

    /// Logs a request whose head is complete; returns what was logged.
    fn record(&self, conn: u64, head: &Head) -> Result<Recorded> {
        let mut parts = head.first_line.split(' ').filter(|s| !s.is_empty());
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            bail!("bad request line {:?}", head.first_line);
        };
        let (bucket, key, query) = split_target(target);
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let rec = Recorded {
            seq,
            conn,
            at: self.started.elapsed(),
            method: method.to_string(),
            target: target.to_string(),
            bucket,
            key,
            query,
            range: head.header("range").map(str::to_string),
            status: None,
        };
        let mut log = lock(&self.log);
        log.requests += 1;
        if rec.is_object_get() {
            log.object_gets += 1;
        } else if rec.is_list() {
            log.lists += 1;
        } else if rec.method == "HEAD" {
            log.heads += 1;
        }
        if log.records.len() < RECORDS_MAX {
            log.records.push(rec.clone());
        } else {
            log.records_dropped += 1;
        }
        Ok(rec)
    }

    /// The fault to answer a request with, if any (and counts it).
    fn fault_for(&self, rec: &Recorded) -> Option<UploadFault> {
        let fault = lock(&self.upload_fault)
            .clone()
            .filter(|f| f.applies(&rec.method, &rec.query))?;
        lock(&self.log).faulted += 1;
        self.set_status(rec.seq, fault.status);
        Some(fault)
    }

    fn set_status(&self, seq: u64, status: u16) {
        let mut log = lock(&self.log);
        // Answers come soon after their request: search from the end.
        if let Some(r) = log.records.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = Some(status);
        }
    }

    fn remove_conn(&self, id: u64) {
        lock(&self.conns).remove(&id);
        self.slot_freed.notify_all();
    }
}

/// The proxy. Dropping it closes every connection and joins every thread.
pub struct S3Proxy {
    shared: Arc<Shared>,
    /// A second handle on the listening socket, to wake the acceptor.
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
}

impl S3Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to
    /// `upstream`. Panics when it cannot listen.
    pub fn start(upstream: SocketAddr) -> S3Proxy {
        Self::try_start(upstream).unwrap_or_else(|e| panic!("S3 proxy: {e:#}"))
    }

    pub fn try_start(upstream: SocketAddr) -> Result<S3Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let listen = listener.local_addr()?;
        let instance = INSTANCES.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::new(Shared {
            instance,
            upstream,
            listen,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            first_byte_delay_ns: AtomicU64::new(0),
            upload_fault: Mutex::new(None),
            next_seq: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            log: Mutex::new(Log::default()),
            conns: Mutex::new(HashMap::new()),
            slot_freed: Condvar::new(),
            errors: Mutex::new(Vec::new()),
        });
        let accepting = listener.try_clone()?;
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("s3p{instance}-acc"))
            .spawn(move || accept_loop(sh, accepting))
            .context("spawn the proxy's acceptor")?;
        Ok(S3Proxy {
            shared,
            listener,
            acceptor: Some(acceptor),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// The upstream every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// `http://127.0.0.1:PORT`, for `--endpoint-url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.listen)
    }

    /// GET requests on object keys since the last reset (listings and
    /// other requests on the bucket itself are not counted).
    pub fn get_count(&self) -> u64 {
        lock(&self.shared.log).object_gets
    }

    /// Listings (GET on the bucket, see [`Recorded::is_list`]) since the
    /// last reset.
    pub fn list_count(&self) -> u64 {
        lock(&self.shared.log).lists
    }

    /// HEAD requests since the last reset.
    pub fn head_count(&self) -> u64 {
        lock(&self.shared.log).heads
    }

    /// Requests of any kind since the last reset.
    pub fn request_count(&self) -> u64 {
        lock(&self.shared.log).requests
    }

    /// Object GETs whose key contains `key_substring`, since the last reset
    /// (from the log, see [`S3Proxy::records_dropped`]).
    pub fn gets_for(&self, key_substring: &str) -> u64 {
        lock(&self.shared.log)
            .records
            .iter()
            .filter(|r| r.is_object_get() && r.key.contains(key_substring))
            .count() as u64
    }

    /// Object GETs per key since the last reset.
    pub fn gets_by_key(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in lock(&self.shared.log).records.iter() {
            if r.is_object_get() {
                *out.entry(r.key.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Every logged request since the last reset, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).records.clone()
    }

    /// Requests counted but not logged since the last reset (past
    /// [`RECORDS_MAX`]).
    pub fn records_dropped(&self) -> u64 {
        lock(&self.shared.log).records_dropped
    }

    /// Forgets every request seen so far (counters and log). Connections
    /// stay open; an answer still under way to a forgotten request is not
    /// counted again.
    pub fn reset(&self) {
        *lock(&self.shared.log) = Log::default();
    }

    /// Holds back the first byte of every answer (of each request) by `d`
    /// from now on. `Duration::ZERO` turns it off.
    pub fn set_first_byte_delay(&self, d: Duration) {
        assert!(
            d <= FIRST_BYTE_DELAY_MAX,
            "first-byte delay {d:?} is over {FIRST_BYTE_DELAY_MAX:?}"
        );
        self.shared
            .first_byte_delay_ns
            .store(d.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn first_byte_delay(&self) -> Duration {
        self.shared.first_byte_delay()
    }

    /// From now on, answers the uploads `fault` covers (see
    /// [`UploadFault`]) itself with its status and S3 error, without
    /// forwarding them; `None` forwards everything again.
    pub fn set_upload_fault(&self, fault: Option<UploadFault>) {
        *lock(&self.shared.upload_fault) = fault;
    }

    pub fn upload_fault(&self) -> Option<UploadFault> {
        lock(&self.shared.upload_fault).clone()
    }

    /// Requests the proxy answered itself with an [`UploadFault`] since
    /// the last reset.
    pub fn faulted_count(&self) -> u64 {
        lock(&self.shared.log).faulted
    }

    /// Client connections open now.
    pub fn connections_active(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Client connections accepted since the proxy started.
    pub fn connections_total(&self) -> u64 {
        self.shared.connections_total.load(Ordering::SeqCst)
    }

    /// Protocol and connection errors seen (unparseable or oversized
    /// heads, an unreachable upstream), at most 100.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// A one-line summary of the counters, for assertion messages.
    pub fn summary(&self) -> String {
        let log = lock(&self.shared.log);
        format!(
            "{} requests: {} object GETs, {} listings, {} HEADs, {} answered with a fault",
            log.requests, log.object_gets, log.lists, log.heads, log.faulted
        )
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.stop.store(true, Ordering::SeqCst);
        sh.slot_freed.notify_all();
        // Wake the acceptor out of accept(2): shutting a listening socket
        // down makes a blocked accept fail on Linux; a connection of our
        // own wakes it as well should that ever change.
        // SAFETY: shutdown(2) on a descriptor this struct owns (the
        // listener stays open until the struct is gone); no memory is
        // passed.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        let _ = TcpStream::connect_timeout(&sh.listen, Duration::from_millis(200));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // No connection starts any more: end every one and join them.
        let entries: Vec<ConnEntry> = lock(&sh.conns).drain().map(|(_, e)| e).collect();
        let mut threads = Vec::new();
        for mut e in entries {
            for s in &e.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
            if let Some(t) = e.thread.take() {
                threads.push(t);
            }
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if sh.stopping() {
            return;
        }
        let client = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    sh.note_error(format!("accept: {e}"));
                    // Out of descriptors and the like: do not spin.
                    std::thread::sleep(SLOT_WAIT_SLICE);
                }
                continue;
            }
        };
        let Ok(client_handle) = client.try_clone() else {
            sh.note_error("could not clone an accepted socket".to_string());
            continue;
        };
        let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
        {
            let mut conns = lock(&sh.conns);
            while conns.len() >= CONNECTIONS_MAX && !sh.stopping() {
                conns = sh
                    .slot_freed
                    .wait_timeout(conns, SLOT_WAIT_SLICE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if sh.stopping() {
                return;
            }
            conns.insert(
                id,
                ConnEntry {
                    sockets: vec![client_handle],
                    thread: None,
                },
            );
        }
        sh.connections_total.fetch_add(1, Ordering::SeqCst);
        let conn_sh = sh.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("s3p{}-c{id}", sh.instance))
            .spawn(move || {
                serve_conn(&conn_sh, id, client);
                conn_sh.remove_conn(id);
            });
        match spawned {
            Ok(t) => {
                // Gone already when the connection ended at once: the
                // thread is finishing and needs no join.
                if let Some(e) = lock(&sh.conns).get_mut(&id) {
                    e.thread = Some(t);
                }
            }
            Err(e) => {
                sh.note_error(format!("spawn a connection thread: {e}"));
                sh.remove_conn(id);
            }
        }
    }
}

/// Requests sent on one connection whose answer has not begun yet:
/// (sequence number, whether it was a HEAD).
type Pending = Arc<Mutex<VecDeque<(u64, bool)>>>;

fn serve_conn(sh: &Arc<Shared>, id: u64, client: TcpStream) {
    let upstream = match TcpStream::connect_timeout(&sh.upstream, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            sh.note_error(format!("connection {id}: connect to {}: {e}", sh.upstream));
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if let (Some(e), Ok(u)) = (lock(&sh.conns).get_mut(&id), upstream.try_clone()) {
        e.sockets.push(u);
    }
    // Checked after registering: either the drop saw the upstream socket,
    // or we see the flag.
    if sh.stopping() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }
    let (Ok(client_w), Ok(upstream_r)) = (client.try_clone(), upstream.try_clone()) else {
        sh.note_error(format!("connection {id}: could not clone its sockets"));
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    };
    let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
    let resp_sh = sh.clone();
    let resp_pending = pending.clone();
    let responses = std::thread::Builder::new()
        .name(format!("s3p{}-r{id}", sh.instance))
        .spawn(move || pump_responses(&resp_sh, id, upstream_r, client_w, &resp_pending));
    let responses = match responses {
        Ok(t) => t,
        Err(e) => {
            sh.note_error(format!("connection {id}: spawn its response thread: {e}"));
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return;
        }
    };
    pump_requests(sh, id, client, upstream, &pending);
    let _ = responses.join();
}

/// Client to upstream: frame, log, forward (or answer a rejected upload
/// here, see [`UploadFault`]).
///
/// A rejected request's answer is written to the client from this thread.
/// That cannot interleave with an upstream answer: HTTP/1.1 clients (the
/// SDK's hyper among them) send the next request on a connection only
/// after the previous answer has arrived whole.
fn pump_requests(
    sh: &Shared,
    id: u64,
    mut client: TcpStream,
    mut upstream: TcpStream,
    pending: &Pending,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; PUMP_BUF_BYTES];
    let fail = |why: String, client: &TcpStream, upstream: &TcpStream| {
        sh.note_error(format!("connection {id}: request stream: {why}"));
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    };
    // The answer to the rejected request whose body is being dropped.
    let mut rejected: Option<Vec<u8>> = None;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut pos = 0;
        while pos < n {
            let (used, event) = match framer.advance(&buf[pos..n]) {
                Ok(x) => x,
                Err(e) => return fail(format!("{e:#}"), &client, &upstream),
            };
            // Bytes of a rejected request (its head and body) stay here.
            let mut forward = rejected.is_none();
            let mut answer_now = None;
            match event {
                Some(Event::Head(bytes)) => {
                    let outcome = parse_head(&bytes).and_then(|head| {
                        let rec = sh.record(id, &head)?;
                        let framing = head.body_framing()?.unwrap_or(Framing::Empty);
                        let Some(fault) = sh.fault_for(&rec) else {
                            let is_head = head.first_line.starts_with("HEAD ");
                            lock(pending).push_back((rec.seq, is_head));
                            return Ok((framing, None));
                        };
                        let expects_continue = head
                            .header("expect")
                            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
                        let resource = format!("/{}/{}", rec.bucket, rec.key);
                        let answer = fault.response(&resource, rec.seq, expects_continue);
                        Ok((framing, Some((answer, expects_continue))))
                    });
                    match outcome {
                        Ok((f, None)) => framer.set_framing(f),
                        Ok((f, Some((answer, close)))) => {
                            forward = false;
                            if close {
                                // The client waits for a go-ahead: the
                                // error is the answer, and the body (if
                                // it comes anyway) goes nowhere.
                                let _ = (&client).write_all(&answer);
                                let _ = client.shutdown(Shutdown::Both);
                                let _ = upstream.shutdown(Shutdown::Both);
                                return;
                            }
                            framer.set_framing(f);
                            if framer.at_message_start() {
                                answer_now = Some(answer);
                            } else {
                                rejected = Some(answer);
                            }
                        }
                        Err(e) => return fail(format!("{e:#}"), &client, &upstream),
                    }
                }
                Some(Event::End) => answer_now = rejected.take(),
                None => {}
            }
            if forward && upstream.write_all(&buf[pos..pos + used]).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            if let Some(answer) = answer_now {
                if (&client).write_all(&answer).is_err() {
                    let _ = upstream.shutdown(Shutdown::Both);
                    return;
                }
            }
            pos += used;
        }
    }
    // The client is done sending: let the upstream finish its answers.
    let _ = upstream.shutdown(Shutdown::Write);
}

/// Upstream to client: frame, match answers to requests, delay, forward.
fn pump_responses(
    sh: &Shared,
    id: u64,
    mut upstream: TcpStream,
    mut client: TcpStream,
    pending: &Pending,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; PUMP_BUF_BYTES];
    // The last head was an interim (1xx) answer: the final answer to the
    // same request follows without another delay.
    let mut after_interim = false;
    let fail = |why: String, client: &TcpStream, upstream: &TcpStream| {
        sh.note_error(format!("connection {id}: response stream: {why}"));
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    };
    loop {
        let n = match upstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut pos = 0;
        while pos < n {
            if framer.at_message_start() && !after_interim {
                let d = sh.first_byte_delay();
                if !d.is_zero() {
                    sh.sleep(d);
                }
            }
            let (used, event) = match framer.advance(&buf[pos..n]) {
                Ok(x) => x,
                Err(e) => return fail(format!("{e:#}"), &client, &upstream),
            };
            if let Some(Event::Head(bytes)) = event {
                let head = match parse_head(&bytes) {
                    Ok(h) => h,
                    Err(e) => return fail(format!("{e:#}"), &client, &upstream),
                };
                let Some(status) = head.status() else {
                    return fail(
                        format!("bad status line {:?}", head.first_line),
                        &client,
                        &upstream,
                    );
                };
                if (100..200).contains(&status) && status != 101 {
                    after_interim = true;
                    framer.set_framing(Framing::Empty);
                } else {
                    after_interim = false;
                    let (seq, was_head) = lock(pending).pop_front().unwrap_or((u64::MAX, false));
                    if seq != u64::MAX {
                        sh.set_status(seq, status);
                    }
                    let framing = if was_head || status == 204 || status == 304 {
                        Ok(Framing::Empty)
                    } else if status == 101 {
                        Ok(Framing::UntilClose)
                    } else {
                        head.body_framing()
                            .map(|f| f.unwrap_or(Framing::UntilClose))
                    };
                    match framing {
                        Ok(f) => framer.set_framing(f),
                        Err(e) => return fail(format!("{e:#}"), &client, &upstream),
                    }
                }
            }
            if client.write_all(&buf[pos..pos + used]).is_err() {
                let _ = upstream.shutdown(Shutdown::Both);
                return;
            }
            pos += used;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

// ------------------------------------------------------------ framing ----

/// How the body of a message whose head was just read is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes (a response without length).
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a head (or about to).
    Head,
    Length(u64),
    ChunkLine,
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes of it still to come.
    ChunkEnd(u8),
    Trailer,
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A complete head (up to and including the blank line): the caller
    /// parses it and calls [`Framer::set_framing`].
    Head(Vec<u8>),
    /// The message (its body) ended.
    End,
}

/// Finds message boundaries in one direction of an HTTP/1.1 connection.
struct Framer {
    state: State,
    /// The head, chunk-size line or trailer line being collected.
    line: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            state: State::Head,
            line: Vec::new(),
        }
    }
}

impl Framer {
    /// Nothing of the next message has been seen yet.
    fn at_message_start(&self) -> bool {
        self.state == State::Head && self.line.is_empty()
    }

    /// After a head: how its body is delimited.
    fn set_framing(&mut self, f: Framing) {
        self.state = match f {
            Framing::Empty | Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkLine,
            Framing::UntilClose => State::UntilClose,
        };
    }

    /// Consumes a prefix of `data` (at least one byte when `data` is not
    /// empty) and stops right after a complete head or the end of a body.
    fn advance(&mut self, data: &[u8]) -> Result<(usize, Option<Event>)> {
        match self.state {
            State::Head => {
                for (i, &b) in data.iter().enumerate() {
                    self.line.push(b);
                    if self.line == b"\r\n" {
                        // A stray empty line between messages.
                        self.line.clear();
                        continue;
                    }
                    if self.line.ends_with(b"\r\n\r\n") {
                        let head = std::mem::take(&mut self.line);
                        return Ok((i + 1, Some(Event::Head(head))));
                    }
                    if self.line.len() > HEAD_BYTES_MAX {
                        bail!("head longer than {HEAD_BYTES_MAX} bytes");
                    }
                }
                Ok((data.len(), None))
            }
            State::Length(left) => {
                let n = left.min(data.len() as u64);
                let left = left - n;
                if left == 0 {
                    self.state = State::Head;
                    Ok((n as usize, Some(Event::End)))
                } else {
                    self.state = State::Length(left);
                    Ok((n as usize, None))
                }
            }
            State::ChunkLine => {
                for (i, &b) in data.iter().enumerate() {
                    self.line.push(b);
                    if self.line.ends_with(b"\r\n") {
                        let line = std::mem::take(&mut self.line);
                        let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                        let size_text = text.split(';').next().unwrap_or("").trim();
                        let size = u64::from_str_radix(size_text, 16)
                            .with_context(|| format!("bad chunk-size line {text:?}"))?;
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::ChunkData(size)
                        };
                        return Ok((i + 1, None));
                    }
                    if self.line.len() > CHUNK_LINE_BYTES_MAX {
                        bail!("chunk-size line longer than {CHUNK_LINE_BYTES_MAX} bytes");
                    }
                }
                Ok((data.len(), None))
            }
            State::ChunkData(left) => {
                let n = left.min(data.len() as u64);
                let left = left - n;
                self.state = if left == 0 {
                    State::ChunkEnd(2)
                } else {
                    State::ChunkData(left)
                };
                Ok((n as usize, None))
            }
            State::ChunkEnd(left) => {
                let n = (left as usize).min(data.len());
                let left = left - n as u8;
                self.state = if left == 0 {
                    State::ChunkLine
                } else {
                    State::ChunkEnd(left)
                };
                Ok((n, None))
            }
            State::Trailer => {
                for (i, &b) in data.iter().enumerate() {
                    self.line.push(b);
                    if self.line.ends_with(b"\r\n") {
                        if self.line == b"\r\n" {
                            self.line.clear();
                            self.state = State::Head;
                            return Ok((i + 1, Some(Event::End)));
                        }
                        // A trailer field: only its length matters.
                        self.line.clear();
                    }
                    if self.line.len() > HEAD_BYTES_MAX {
                        bail!("trailer longer than {HEAD_BYTES_MAX} bytes");
                    }
                }
                Ok((data.len(), None))
            }
            State::UntilClose => Ok((data.len(), None)),
        }
    }
}

/// A parsed head: the first line and the header fields (names in lower
/// case).
struct Head {
    first_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The status code of a response head.
    fn status(&self) -> Option<u16> {
        let mut parts = self.first_line.split(' ');
        let version = parts.next()?;
        if !version.starts_with("HTTP/") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// The body framing the headers declare, if any: chunked wins over a
    /// length (RFC 9112 §6.3).
    fn body_framing(&self) -> Result<Option<Framing>> {
        if let Some(te) = self.header("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                return Ok(Some(Framing::Chunked));
            }
            bail!("transfer-encoding {te:?} without chunked last");
        }
        match self.header("content-length") {
            Some(v) => {
                let n = v
                    .trim()
                    .parse()
                    .with_context(|| format!("bad content-length {v:?}"))?;
                Ok(Some(Framing::Length(n)))
            }
            None => Ok(None),
        }
    }
}

fn parse_head(bytes: &[u8]) -> Result<Head> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or("").to_string();
    if first_line.is_empty() {
        bail!("empty first line in head");
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        first_line,
        headers,
    })
}

/// (bucket, key, query) of a request target in origin form (`/b/k?q`) or
/// absolute form (`http://host/b/k?q`).
fn split_target(target: &str) -> (String, String, String) {
    let mut rest = target;
    for scheme in ["http://", "https://"] {
        if let Some(after) = rest.strip_prefix(scheme) {
            rest = after.find('/').map_or("/", |i| &after[i..]);
        }
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    (
        percent_decode(bucket),
        percent_decode(key),
        query.to_string(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` to a framer in pieces of `piece` bytes; returns the
    /// heads' first lines and the number of ends, with framing decided by
    /// `decide`.
    fn frame_all(
        stream: &[u8],
        piece: usize,
        mut decide: impl FnMut(&Head) -> Framing,
    ) -> (Vec<String>, usize) {
        let mut f = Framer::default();
        let mut heads = Vec::new();
        let mut ends = 0;
        for chunk in stream.chunks(piece) {
            let mut pos = 0;
            while pos < chunk.len() {
                let (used, ev) = f.advance(&chunk[pos..]).unwrap();
                assert!(used > 0, "no progress");
                pos += used;
                match ev {
                    Some(Event::Head(h)) => {
                        let head = parse_head(&h).unwrap();
                        heads.push(head.first_line.clone());
                        let fr = decide(&head);
                        f.set_framing(fr);
                        if matches!(fr, Framing::Empty | Framing::Length(0)) {
                            ends += 1;
                        }
                    }
                    Some(Event::End) => ends += 1,
                    None => {}
                }
            }
        }
        assert!(f.at_message_start(), "stream ended inside a message");
        (heads, ends)
    }

    fn request_framing(h: &Head) -> Framing {
        h.body_framing().unwrap().unwrap_or(Framing::Empty)
    }

    #[test]
    fn requests_on_a_kept_alive_connection() {
        let mut s = Vec::new();
        s.extend_from_slice(b"PUT /b/k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        s.extend_from_slice(b"GET /b/k2 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n");
        s.extend_from_slice(
            b"PUT /b/k3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        s.extend_from_slice(b"\r\nHEAD /b/k4 HTTP/1.1\r\n\r\n");
        for piece in [1, 2, 3, 7, 64, s.len()] {
            let (heads, ends) = frame_all(&s, piece, request_framing);
            assert_eq!(
                heads,
                [
                    "PUT /b/k1 HTTP/1.1",
                    "GET /b/k2 HTTP/1.1",
                    "PUT /b/k3 HTTP/1.1",
                    "HEAD /b/k4 HTTP/1.1"
                ],
                "piece {piece}"
            );
            assert_eq!(ends, 4, "piece {piece}");
        }
    }

    #[test]
    fn responses_with_and_without_bodies() {
        let mut s = Vec::new();
        // Interim, then the final answer with a body.
        s.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        s.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        // An answer to HEAD: a length, no body.
        s.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        s.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        s.extend_from_slice(
            b"HTTP/1.1 206 Partial Content\r\ntransfer-encoding: chunked\r\n\r\n\
              3\r\nxyz\r\n0\r\n\r\n",
        );
        for piece in [1, 5, s.len()] {
            let mut n = 0;
            let (heads, ends) = frame_all(&s, piece, |h| {
                n += 1;
                let status = h.status().unwrap();
                if status == 100 || status == 204 || n == 3 {
                    Framing::Empty
                } else {
                    h.body_framing().unwrap().unwrap_or(Framing::UntilClose)
                }
            });
            assert_eq!(heads.len(), 5, "piece {piece}: {heads:?}");
            assert_eq!(ends, 5, "piece {piece}");
        }
    }

    #[test]
    fn oversized_head_is_refused() {
        let mut f = Framer::default();
        let mut s = b"GET /b/k HTTP/1.1\r\nX: ".to_vec();
        s.extend(std::iter::repeat_n(b'a', HEAD_BYTES_MAX));
        assert!(f.advance(&s).is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            split_target("/bkt/a%20b/c.bin?x-id=GetObject"),
            (
                "bkt".to_string(),
                "a b/c.bin".to_string(),
                "x-id=GetObject".to_string()
            )
        );
        assert_eq!(
            split_target("/bkt?list-type=2&prefix=a%2F"),
            (
                "bkt".to_string(),
                String::new(),
                "list-type=2&prefix=a%2F".to_string()
            )
        );
        assert_eq!(
            split_target("http://h:1/bkt/k"),
            ("bkt".to_string(), "k".to_string(), String::new())
        );
        assert_eq!(percent_decode("%e2%82%ac%2"), "€%2");
        let r = Recorded {
            seq: 0,
            conn: 0,
            at: Duration::ZERO,
            method: "GET".into(),
            target: String::new(),
            bucket: "b".into(),
            key: String::new(),
            query: "list-type=2".into(),
            range: Some("bytes=5-".into()),
            status: None,
        };
        assert!(r.is_list() && !r.is_object_get());
        assert_eq!(r.range_bytes(), Some((5, None)));
        let r = Recorded {
            query: "location".into(),
            ..r
        };
        assert!(!r.is_list());
    }

    /// Names of this process's threads that belong to proxy `instance`.
    fn threads_of(instance: u64) -> Vec<String> {
        let prefix = format!("s3p{instance}-");
        let mut out = Vec::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                if let Ok(name) = std::fs::read_to_string(t.path().join("comm")) {
                    if name.starts_with(&prefix) {
                        out.push(name.trim().to_string());
                    }
                }
            }
        }
        out
    }

    /// The proxy in front of a real SeaweedFS: PUTs with the SigV4 client
    /// and GET, HEAD and LIST with the SDK client go through unchanged and
    /// are counted; the first-byte delay delays; dropping the proxy ends
    /// its threads.
    #[test]
    fn counts_requests_to_seaweedfs() {
        use crate::s3::{Seaweed, REGION};
        use crate::sigv4;
        use tidegate::store::s3::S3Store;
        use tidegate::store::ObjectStore;

        const BUCKET: &str = "proxy-test";
        let sw = Seaweed::start(&[BUCKET]);
        let proxy = S3Proxy::start(sw.s3_addr());
        let instance = proxy.shared.instance;

        let mut put = sigv4::Client::new(sigv4::Target {
            addr: proxy.addr(),
            bucket: BUCKET.to_string(),
            region: REGION.to_string(),
            access_key_id: sw.access_key_id().to_string(),
            secret_access_key: sw.secret_access_key().to_string(),
        });
        let big: Vec<u8> = crate::data::SplitMix64::new(7).bytes(3 << 20);
        put.put("dir/big.bin", &big)
            .expect("PUT big through the proxy");
        put.put("small.txt", b"hello").expect("PUT small");
        put.put("odd key €.txt", b"odd").expect("PUT odd key");
        let reqs = proxy.requests();
        assert_eq!(reqs.len(), 3, "{reqs:#?}");
        assert!(reqs
            .iter()
            .all(|r| r.method == "PUT" && r.status == Some(200)));
        assert_eq!(reqs[2].key, "odd key €.txt");
        assert_eq!(proxy.get_count(), 0);
        proxy.reset();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = sw
            .store_config(BUCKET, "")
            .with_endpoint(proxy.endpoint(), true);
        rt.block_on(async {
            let store = S3Store::new(config)
                .await
                .expect("SDK client via the proxy");
            // Ranged GETs on one kept-alive connection.
            let mut buf = vec![0u8; 1 << 20];
            for block in 0..3u64 {
                let n = store
                    .get_range("dir/big.bin", block << 20, &mut buf, None)
                    .await
                    .expect("GET a block");
                assert_eq!(n, 1 << 20);
                let start = (block << 20) as usize;
                assert!(
                    buf == big[start..start + (1 << 20)],
                    "block {block} differs"
                );
            }
            let mut small = [0u8; 16];
            let n = store
                .get_range("small.txt", 0, &mut small, None)
                .await
                .unwrap();
            assert_eq!(&small[..n], b"hello");
            let meta = store.head("odd key €.txt").await.expect("HEAD");
            assert_eq!(meta.size, 3);
            let page = store.list("", None, 1000).await.expect("LIST");
            assert_eq!(page.objects.len(), 2, "{:?}", page.objects);
            assert_eq!(page.prefixes, ["dir/"]);
        });
        assert_eq!(proxy.get_count(), 4, "{:#?}", proxy.requests());
        assert_eq!(proxy.gets_for("big.bin"), 3);
        assert_eq!(proxy.gets_for("small"), 1);
        assert_eq!(proxy.list_count(), 1, "{:#?}", proxy.requests());
        assert_eq!(proxy.head_count(), 1, "{:#?}", proxy.requests());
        let ranges: Vec<_> = proxy
            .requests()
            .iter()
            .filter(|r| r.key == "dir/big.bin")
            .map(|r| r.range_bytes())
            .collect();
        assert_eq!(
            ranges,
            [
                Some((0, Some((1 << 20) - 1))),
                Some((1 << 20, Some((2 << 20) - 1))),
                Some((2 << 20, Some((3 << 20) - 1)))
            ]
        );
        assert!(proxy
            .requests()
            .iter()
            .all(|r| matches!(r.status, Some(200 | 206))));
        assert_eq!(proxy.gets_by_key().get("small.txt"), Some(&1));
        assert!(proxy.errors().is_empty(), "{:?}", proxy.errors());

        // The first-byte delay holds each answer back.
        proxy.reset();
        let delay = Duration::from_millis(150);
        proxy.set_first_byte_delay(delay);
        let config = sw
            .store_config(BUCKET, "")
            .with_endpoint(proxy.endpoint(), true);
        rt.block_on(async {
            let store = S3Store::new(config).await.unwrap();
            let mut small = [0u8; 16];
            for _ in 0..3 {
                let t = Instant::now();
                let n = store
                    .get_range("small.txt", 0, &mut small, None)
                    .await
                    .unwrap();
                let took = t.elapsed();
                assert_eq!(&small[..n], b"hello");
                assert!(took >= delay, "a GET took {took:?} with a {delay:?} delay");
            }
        });
        assert_eq!(proxy.get_count(), 3);
        proxy.set_first_byte_delay(Duration::ZERO);
        assert!(proxy.connections_total() >= 2);

        drop(rt);
        drop(proxy);
        let left = threads_of(instance);
        assert!(left.is_empty(), "proxy threads left after drop: {left:?}");
    }

    /// The upload fault switch: PUTs and POSTs get the chosen S3 error
    /// without reaching SeaweedFS, on connections that stay usable; with
    /// only parts rejected, a multipart upload starts and its parts fail;
    /// once cleared, uploads go through again.
    #[test]
    fn upload_faults_answer_without_forwarding() {
        use crate::s3::{Seaweed, REGION};
        use crate::sigv4;
        use tidegate::store::s3::S3Store;
        use tidegate::store::{ObjectStore, PosixMeta, StoreError};

        const BUCKET: &str = "proxy-faults";
        let sw = Seaweed::start(&[BUCKET]);
        let proxy = S3Proxy::start(sw.s3_addr());
        let mut raw = sigv4::Client::new(sigv4::Target {
            addr: proxy.addr(),
            bucket: BUCKET.to_string(),
            region: REGION.to_string(),
            access_key_id: sw.access_key_id().to_string(),
            secret_access_key: sw.secret_access_key().to_string(),
        });
        raw.put("before.txt", b"before")
            .expect("PUT without a fault");
        let conns = proxy.connections_total();

        // A raw PUT: the status and the XML error come back, the
        // connection stays open.
        proxy.set_upload_fault(Some(UploadFault::slow_down()));
        let err = raw
            .put("slow.txt", &vec![7u8; 300 << 10])
            .expect_err("PUT during SlowDown");
        let status = err
            .downcast_ref::<sigv4::HttpStatus>()
            .unwrap_or_else(|| panic!("not an HTTP status: {err:#}"));
        assert_eq!(status.status, 503, "{status}");
        assert!(
            status.body.contains("<Code>SlowDown</Code>")
                && status.body.contains("/proxy-faults/slow.txt"),
            "{status}"
        );
        assert_eq!(proxy.faulted_count(), 1);
        proxy.set_upload_fault(None);
        raw.put("after.txt", b"after").expect("PUT after the fault");
        assert_eq!(
            proxy.connections_total(),
            conns,
            "the raw client needed a new connection: {:#?}",
            proxy.requests()
        );
        let statuses: Vec<_> = proxy
            .requests()
            .iter()
            .map(|r| (r.key.clone(), r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("before.txt".to_string(), Some(200)),
                ("slow.txt".to_string(), Some(503)),
                ("after.txt".to_string(), Some(200))
            ]
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let via_proxy = sw
            .store_config(BUCKET, "")
            .with_endpoint(proxy.endpoint(), true);
        let direct = sw.store_config(BUCKET, "");
        rt.block_on(async {
            let store = S3Store::new(via_proxy)
                .await
                .expect("SDK client via the proxy");
            let sw_store = S3Store::new(direct).await.expect("SDK client");
            let posix = PosixMeta::default();
            let data = crate::data::SplitMix64::new(11).bytes(6 << 20);
            let absent = |key: &'static str| {
                let sw_store = &sw_store;
                async move {
                    match sw_store.head(key).await {
                        Err(StoreError::NotFound { .. }) => {}
                        other => panic!("{key} reached SeaweedFS: {other:?}"),
                    }
                }
            };

            proxy.reset();
            proxy.set_upload_fault(Some(UploadFault::internal_error()));
            let r = store.put("k500", data[..1000].to_vec(), &posix).await;
            assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
            assert!(
                proxy.faulted_count() >= 2,
                "the SDK retries 5xx: {}",
                proxy.summary()
            );
            absent("k500").await;

            proxy.set_upload_fault(Some(UploadFault::invalid_access_key()));
            let r = store.put("k403", data[..1000].to_vec(), &posix).await;
            assert!(matches!(r, Err(StoreError::Denied { .. })), "{r:?}");
            let r = store.multipart_start("k403m", &posix).await;
            assert!(matches!(r, Err(StoreError::Denied { .. })), "{r:?}");
            absent("k403").await;

            proxy.set_upload_fault(Some(UploadFault::no_such_bucket()));
            let r = store.put("k404", data[..1000].to_vec(), &posix).await;
            assert!(r.is_err(), "PUT into a missing bucket: {r:?}");
            absent("k404").await;

            // Reads still go through while uploads are refused.
            let mut buf = [0u8; 16];
            let n = store
                .get_range("before.txt", 0, &mut buf, None)
                .await
                .unwrap();
            assert_eq!(&buf[..n], b"before");

            // Only parts refused: the upload starts, its part fails, the
            // abort goes through.
            proxy.reset();
            proxy.set_upload_fault(Some(UploadFault::access_denied().parts_only()));
            let id = store
                .multipart_start("kparts", &posix)
                .await
                .expect("CreateMultipartUpload is not a part");
            let r = store
                .multipart_part("kparts", &id, 1, data[..5 << 20].to_vec())
                .await;
            assert!(matches!(r, Err(StoreError::Denied { .. })), "{r:?}");
            store.multipart_abort("kparts", &id).await.expect("abort");
            let seen: Vec<_> = proxy
                .requests()
                .iter()
                .map(|r| (r.method.clone(), r.status))
                .collect();
            assert_eq!(
                seen,
                [
                    ("POST".to_string(), Some(200)),
                    ("PUT".to_string(), Some(403)),
                    ("DELETE".to_string(), Some(204))
                ]
            );
            absent("kparts").await;

            // Cleared: a multipart upload goes through whole.
            proxy.set_upload_fault(None);
            let id = store.multipart_start("kmulti", &posix).await.unwrap();
            let p1 = store
                .multipart_part("kmulti", &id, 1, data[..5 << 20].to_vec())
                .await
                .unwrap();
            let p2 = store
                .multipart_part("kmulti", &id, 2, data[5 << 20..].to_vec())
                .await
                .unwrap();
            let parts = [
                tidegate::store::PartDone {
                    number: 1,
                    etag: p1,
                },
                tidegate::store::PartDone {
                    number: 2,
                    etag: p2,
                },
            ];
            store
                .multipart_complete("kmulti", &id, &parts)
                .await
                .unwrap();
            let mut back = vec![0u8; data.len()];
            let n = sw_store
                .get_range("kmulti", 0, &mut back, None)
                .await
                .unwrap();
            assert!(n == data.len() && back == data, "kmulti differs");
        });
        assert!(proxy.errors().is_empty(), "{:?}", proxy.errors());
    }

    /// More connections than the bound: they wait and are all served.
    #[test]
    fn connections_beyond_the_bound_wait() {
        // A tiny upstream that answers every request with an empty 200.
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let server = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for s in upstream.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                handlers.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let mut got = Vec::new();
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        while let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..i + 4);
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }));
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        let proxy = S3Proxy::start(up_addr);
        let n = CONNECTIONS_MAX + 20;
        let mut conns = Vec::new();
        for _ in 0..n {
            let s = TcpStream::connect(proxy.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            conns.push(s);
        }
        // The first CONNECTIONS_MAX are served while all stay open.
        for s in conns.iter_mut().take(CONNECTIONS_MAX) {
            s.write_all(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut resp = [0u8; 40];
            s.read_exact(&mut resp).unwrap();
            assert!(resp.starts_with(b"HTTP/1.1 200 OK"));
        }
        assert_eq!(proxy.connections_active(), CONNECTIONS_MAX);
        // Closing some lets the waiting ones in.
        let rest: Vec<_> = conns.drain(CONNECTIONS_MAX..).collect();
        conns.truncate(CONNECTIONS_MAX - 20);
        for mut s in rest {
            s.write_all(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut resp = [0u8; 40];
            s.read_exact(&mut resp).unwrap();
            assert!(resp.starts_with(b"HTTP/1.1 200 OK"));
        }
        assert_eq!(proxy.get_count(), n as u64);
        let instance = proxy.shared.instance;
        drop(proxy);
        drop(conns);
        assert!(threads_of(instance).is_empty());
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(up_addr);
        server.join().unwrap();
    }
}
