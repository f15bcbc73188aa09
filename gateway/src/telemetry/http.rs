//! The admin endpoint: a deliberately small HTTP/1.1 server for metrics,
//! stats and cache warming.
//!
//! | route                 | answer                                             |
//! |-----------------------|----------------------------------------------------|
//! | `GET /metrics`        | Prometheus text 0.0.4 ([`super::render_prometheus`]) |
//! | `GET /stats`          | flat JSON ([`super::render_json`])                 |
//! | `POST /warm?key=K`    | warms object `K` (percent-encoded), `{"bytes":N}`  |
//! | `GET /healthz`        | `ok`                                               |
//!
//! **Why hand-written.** The endpoint serves a scraper every few seconds
//! and an operator's tool now and then. A general HTTP stack would be
//! most of the gateway's dependency tree for that; the subset needed here
//! (request line, a few headers, no request bodies, Content-Length
//! responses, keep-alive) fits in a page and is easy to bound.
//!
//! **Where it runs.** On a control thread's current-thread runtime, never
//! on a data core: [`serve_admin`] runs its own [`LocalSet`] and spawns one
//! local task per connection, so [`WarmTarget`] futures need not be `Send`
//! (a warm may drive state that is not `Send`). Scrapes take each thread's
//! histogram lock briefly; that cost lands here, not on the data path.
//!
//! **Limits.** Everything a client controls is bounded by a named
//! constant: request head size ([`REQUEST_HEAD_BYTES_MAX`], 431 past it),
//! header count ([`REQUEST_HEADERS_MAX`], 431), concurrent connections
//! ([`CONNECTIONS_MAX`], extras get a 503 with `Retry-After` and are
//! closed), time to send a request head ([`REQUEST_READ_TIMEOUT`], 408 if
//! it was started, a silent close if the connection sat idle), time to
//! take a response ([`RESPONSE_WRITE_TIMEOUT`]), time to warm one object
//! ([`WARM_TIMEOUT`], 504), and request bodies: none is accepted (a
//! `Content-Length` other than 0 or any `Transfer-Encoding` gets 413).
//! Keep-alive is the HTTP/1.1 default; `Connection: close` (or HTTP/1.0
//! without `keep-alive`) closes after the response. After an error
//! response the connection is closed gracefully (write side shut, unread
//! input drained for a moment) so the client reads the answer instead of a
//! reset. A failed warm is a 500 with `{"error": message}`; with no
//! [`WarmTarget`] (no block cache) `/warm` answers 503 without
//! `Retry-After`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::LocalSet;
use tokio::time::Instant;

use super::{render_json, render_prometheus, snapshot};

/// Largest request head (request line and headers) accepted.
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most header lines accepted in one request.
pub const REQUEST_HEADERS_MAX: usize = 100;
/// Connections served at once; more are answered 503 and closed.
pub const CONNECTIONS_MAX: usize = 64;
/// Time allowed to deliver one request head, from when the server starts
/// waiting for it (so also the keep-alive idle time).
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a client to take one response.
pub const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one warm request may take before it is answered 504.
pub const WARM_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest object key accepted by `/warm` (S3's own limit).
pub const WARM_KEY_BYTES_MAX: usize = 1024;
/// How long a connection closed after an error keeps reading (and
/// discarding) the client's input so it can read the response.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES_MAX: usize = 64 * 1024;
/// How long shutdown waits for responses in progress.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes read from a socket per read call.
const READ_CHUNK_BYTES: usize = 4096;
/// `Retry-After` sent with the 503 for a connection over the limit.
pub const BUSY_RETRY_AFTER_SECS: u32 = 1;

/// Something that can pull one object into the block cache.
pub trait WarmTarget: Send + Sync {
    /// Warm the object `key` (relative to the export root) and return the
    /// bytes of it now cached. An error is a message for the operator.
    fn warm<'a>(&'a self, key: &'a str) -> Pin<Box<dyn Future<Output = Result<u64, String>> + 'a>>;
}

/// The limits one server runs with; the constants above, or smaller ones
/// in tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    head_bytes_max: usize,
    connections_max: usize,
    read_timeout: Duration,
}

const LIMITS: Limits = Limits {
    head_bytes_max: REQUEST_HEAD_BYTES_MAX,
    connections_max: CONNECTIONS_MAX,
    read_timeout: REQUEST_READ_TIMEOUT,
};

/// Serve the admin routes on `listener` until `shutdown` turns true (or
/// its sender is dropped). Runs its own [`LocalSet`]: call it from a
/// current-thread runtime (`rt.block_on(serve_admin(..))`), typically on a
/// dedicated control thread. On shutdown it stops accepting, closes idle
/// connections and gives responses in progress up to 2 s to finish.
/// `warm: None` makes `/warm` answer 503 (no block cache).
pub async fn serve_admin(
    listener: TcpListener,
    warm: Option<Arc<dyn WarmTarget>>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, warm, shutdown, LIMITS).await
}

async fn serve_with(
    listener: TcpListener,
    warm: Option<Arc<dyn WarmTarget>>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let local = LocalSet::new();
    local
        .run_until(accept_loop(listener, warm, shutdown, limits))
        .await;
}

/// Counts a live connection; decrements when the connection task ends
/// (also when it is dropped unfinished).
struct ActiveGuard(Rc<Cell<usize>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    warm: Option<Arc<dyn WarmTarget>>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let active = Rc::new(Cell::new(0usize));
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if active.get() >= limits.connections_max {
                        tracing::debug!(%peer, "admin endpoint busy; connection refused");
                        refuse(stream);
                        continue;
                    }
                    active.set(active.get() + 1);
                    let guard = ActiveGuard(active.clone());
                    let conn = Connection {
                        stream,
                        warm: warm.clone(),
                        shutdown: shutdown.clone(),
                        limits,
                    };
                    tokio::task::spawn_local(async move {
                        let _guard = guard;
                        if let Err(e) = conn.run().await {
                            tracing::debug!(%peer, error = %e, "admin connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while active.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Best-effort 503 to a connection over the limit, without waiting.
fn refuse(stream: TcpStream) {
    let mut resp = Response::error(503, "too many admin connections; try again");
    resp.retry_after_secs = Some(BUSY_RETRY_AFTER_SECS);
    let resp = resp.bytes(false);
    // A plain non-blocking write: tokio's `try_write` would report
    // WouldBlock until the reactor has seen the new socket writable.
    if let Ok(mut std) = stream.into_std() {
        let _ = std::io::Write::write(&mut std, &resp);
        let _ = std.shutdown(Shutdown::Both);
    }
}

/// Read whatever is available (at least one byte, or 0 at end of stream).
pub(crate) async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Write all of `data`.
pub(crate) async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where the blank line ending an HTTP head is in `buf` (accepting bare
/// `\n` line ends as well as `\r\n`); the returned index is just past it.
/// Searching starts at `from` so that a head arriving byte by byte is not
/// rescanned from the start each time.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match (buf.get(i + 1), buf.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Decode `%XX` escapes (`+` stays a plus: object keys may contain one).
/// `None` for a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-encode an object key for a query string: everything but
/// unreserved characters and `/` is escaped.
pub fn percent_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3 / 2);
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// `Allow` header for 405.
    allow: Option<&'static str>,
    /// `Retry-After` header: set only when trying again soon will help
    /// (the connection limit), so clients can tell "busy" from "off".
    retry_after_secs: Option<u32>,
    /// Close the connection after this response whatever the client asked.
    close: bool,
}

const JSON: &str = "application/json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.into(),
            allow: None,
            retry_after_secs: None,
            close: false,
        }
    }

    /// A JSON error `{"error": message}`.
    fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: JSON,
            body: format!("{{\"error\":{}}}", json_string(message)).into_bytes(),
            allow: None,
            retry_after_secs: None,
            close: false,
        }
    }

    /// An error after which the request stream cannot be trusted.
    fn fatal(status: u16, message: &str) -> Response {
        Response {
            close: true,
            ..Response::error(status, message)
        }
    }

    fn bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            let _ = write!(head, "Allow: {allow}\r\n");
        }
        if let Some(secs) = self.retry_after_secs {
            let _ = write!(head, "Retry-After: {secs}\r\n");
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The parts of a request head the routes look at.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    keep_alive: bool,
    /// Content-Length, 0 when absent.
    content_length: u64,
    chunked_or_other_encoding: bool,
}

/// Parse a request head (everything up to and including the blank line).
/// The error is the response to send.
fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let text = std::str::from_utf8(head)
        .map_err(|_| Response::fatal(400, "request head is not valid UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::fatal(
            400,
            "malformed request line (expected METHOD /path HTTP/1.1)",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Response::fatal(400, "malformed request method"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => {
            return Err(Response::fatal(
                505,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ))
        }
        _ => return Err(Response::fatal(400, "malformed HTTP version")),
    };
    if !target.starts_with('/') {
        return Err(Response::fatal(
            400,
            "request target must be a path starting with /",
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut content_length: Option<u64> = None;
    let mut encoded = false;
    let mut headers_n = 0;
    for line in lines {
        if line.is_empty() {
            continue; // the terminating blank line(s)
        }
        headers_n += 1;
        if headers_n > REQUEST_HEADERS_MAX {
            return Err(Response::fatal(431, "too many header lines"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::fatal(400, "malformed header line (no colon)"));
        };
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Response::fatal(400, "malformed header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| Response::fatal(400, "malformed Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(Response::fatal(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
        }
    }
    let keep_alive = !conn_close && (!http10 || conn_keep_alive);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        keep_alive,
        content_length: content_length.unwrap_or(0),
        chunked_or_other_encoding: encoded,
    })
}

/// One query parameter's raw (still encoded) value.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Why reading a request head stopped without one.
enum HeadError {
    /// End of stream (between requests, or inside a head: either way
    /// there is nobody left to answer).
    Closed,
    TooLarge,
    Io(io::Error),
}

struct Connection {
    stream: TcpStream,
    warm: Option<Arc<dyn WarmTarget>>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
}

impl Connection {
    async fn run(self) -> io::Result<()> {
        // Bytes received and not yet consumed: at most one head plus
        // whatever a pipelining client sent after it, never more than the
        // head limit.
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
        loop {
            let mut shutdown = self.shutdown.clone();
            let head = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                r = tokio::time::timeout(self.limits.read_timeout, self.read_head(&mut buf)) => r,
            };
            let head_end = match head {
                Err(_elapsed) if buf.is_empty() => return Ok(()), // idle keep-alive
                Err(_elapsed) => {
                    let resp = Response::fatal(408, "request head not received in time");
                    return self.respond(resp, false).await;
                }
                Ok(Ok(end)) => end,
                Ok(Err(HeadError::Closed)) => return Ok(()),
                Ok(Err(HeadError::TooLarge)) => {
                    let msg = format!(
                        "request head larger than {} bytes",
                        self.limits.head_bytes_max
                    );
                    return self.respond(Response::fatal(431, &msg), false).await;
                }
                Ok(Err(HeadError::Io(e))) => return Err(e),
            };
            let parsed = parse_head(&buf[..head_end]);
            buf.drain(..head_end);
            let req = match parsed {
                Ok(r) => r,
                Err(resp) => return self.respond(resp, false).await,
            };
            if req.chunked_or_other_encoding || req.content_length != 0 {
                let resp = Response::fatal(413, "request bodies are not accepted");
                return self.respond(resp, false).await;
            }
            let resp = self.route(&req).await;
            let keep_alive = req.keep_alive && !resp.close && !*self.shutdown.borrow();
            if keep_alive {
                self.write_response(&resp, true).await?;
            } else {
                return self.respond(resp, false).await;
            }
        }
    }

    /// Read until `buf` holds a whole head; returns the head's length.
    async fn read_head(&self, buf: &mut Vec<u8>) -> Result<usize, HeadError> {
        let max = self.limits.head_bytes_max;
        let mut scanned = 0;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            if let Some(end) = find_head_end(buf, scanned).filter(|&e| e <= max) {
                return Ok(end);
            }
            if buf.len() >= max {
                return Err(HeadError::TooLarge);
            }
            // Resume the search just before the new bytes: the blank line
            // may straddle two reads.
            scanned = buf.len().saturating_sub(2);
            let room = (max - buf.len()).min(READ_CHUNK_BYTES);
            let n = read_some(&self.stream, &mut chunk[..room])
                .await
                .map_err(HeadError::Io)?;
            if n == 0 {
                return Err(HeadError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn route(&self, req: &Request) -> Response {
        let method = req.method.as_str();
        let allow = match req.path.as_str() {
            "/metrics" | "/stats" | "/healthz" => "GET",
            "/warm" => "POST",
            _ => return Response::error(404, &format!("no route {}", req.path)),
        };
        if method != allow {
            let mut r = Response::error(
                405,
                &format!("{} {} is not served; use {allow}", method, req.path),
            );
            r.allow = Some(allow);
            return r;
        }
        match req.path.as_str() {
            "/metrics" => Response::ok(PROMETHEUS_TEXT, render_prometheus(&snapshot())),
            "/stats" => Response::ok(JSON, render_json(&snapshot())),
            "/healthz" => Response::ok(PLAIN_TEXT, "ok"),
            _ => self.warm(&req.query).await,
        }
    }

    async fn warm(&self, query: &str) -> Response {
        let Some(raw) = query_param(query, "key") else {
            return Response::error(400, "missing ?key=<percent-encoded object key>");
        };
        let Some(bytes) = percent_decode(raw) else {
            return Response::error(400, "malformed percent-encoding in key");
        };
        let Ok(key) = String::from_utf8(bytes) else {
            return Response::error(400, "key is not valid UTF-8");
        };
        let key = key.trim_start_matches('/');
        if key.is_empty() || key.ends_with('/') {
            return Response::error(400, "key must name an object, not a directory");
        }
        if key.len() > WARM_KEY_BYTES_MAX {
            return Response::error(400, &format!("key longer than {WARM_KEY_BYTES_MAX} bytes"));
        }
        let Some(target) = &self.warm else {
            return Response::error(503, "warming is not available: the block cache is off");
        };
        match tokio::time::timeout(WARM_TIMEOUT, target.warm(key)).await {
            Ok(Ok(bytes)) => Response::ok(JSON, format!("{{\"bytes\":{bytes}}}")),
            Ok(Err(message)) => {
                tracing::debug!(key, %message, "warm failed");
                Response::error(500, &format!("warming {key}: {message}"))
            }
            Err(_) => Response::error(
                504,
                &format!(
                    "warming {key} took longer than {} s",
                    WARM_TIMEOUT.as_secs()
                ),
            ),
        }
    }

    async fn write_response(&self, resp: &Response, keep_alive: bool) -> io::Result<()> {
        let bytes = resp.bytes(keep_alive);
        match tokio::time::timeout(RESPONSE_WRITE_TIMEOUT, write_all(&self.stream, &bytes)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not take the response in time",
            )),
        }
    }

    /// Send a last response and close gracefully: shut the write side,
    /// then read and discard what the client still sends (bounded in time
    /// and bytes), so a client still writing sees the answer, not a reset.
    async fn respond(self, resp: Response, keep_alive: bool) -> io::Result<()> {
        self.write_response(&resp, keep_alive).await?;
        let std = self.stream.into_std()?;
        let _ = std.shutdown(Shutdown::Write);
        let stream = TcpStream::from_std(std)?;
        let mut discarded = 0usize;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
            while discarded < LINGER_BYTES_MAX {
                match read_some(&stream, &mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => discarded += n,
                }
            }
        })
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::SocketAddr;

    struct FakeWarm;

    impl WarmTarget for FakeWarm {
        fn warm<'a>(
            &'a self,
            key: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + 'a>> {
            // Not Send on purpose: the server must run it on its LocalSet.
            let marker = Rc::new(());
            Box::pin(async move {
                tokio::task::yield_now().await;
                let _keep = marker;
                match key {
                    "missing" => Err("no such object: missing".to_string()),
                    k => Ok(k.len() as u64 * 1000),
                }
            })
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start(warm: Option<Arc<dyn WarmTarget>>, limits: Limits) -> Server {
            let (stop, rx) = watch::channel(false);
            let (addr_tx, addr_rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addr_tx.send(l.local_addr().unwrap()).unwrap();
                    serve_with(l, warm, rx, limits).await;
                });
            });
            Server {
                addr: addr_rx.recv().unwrap(),
                stop,
                thread: Some(thread),
            }
        }

        fn connect(&self) -> std::net::TcpStream {
            let s = std::net::TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    struct Reply {
        status_line: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn status(&self) -> u16 {
            self.status_line.split(' ').nth(1).unwrap().parse().unwrap()
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn read_reply(r: &mut impl BufRead) -> Reply {
        let mut status_line = String::new();
        r.read_line(&mut status_line).unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "Content-Length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        Reply {
            status_line: status_line.trim_end().to_string(),
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    }

    /// One request on a fresh connection; the server must close it after.
    fn once(server: &Server, request: &[u8]) -> Reply {
        let mut s = server.connect();
        s.write_all(request).unwrap();
        let mut r = BufReader::new(s);
        let reply = read_reply(&mut r);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "bytes after the response");
        reply
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
    }

    #[test]
    fn routes_and_keep_alive() {
        let server = Server::start(None, LIMITS);
        let s = server.connect();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        // Several requests on one connection, the first two pipelined.
        w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
            .unwrap();
        let h = read_reply(&mut r);
        assert_eq!(h.status(), 200);
        assert_eq!(h.body, "ok");
        assert_eq!(h.header("Connection"), Some("keep-alive"));
        let m = read_reply(&mut r);
        assert_eq!(m.status(), 200);
        assert_eq!(
            m.header("Content-Type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(m
            .body
            .contains("# TYPE tidegate_cache_hits_total counter\n"));
        assert!(m
            .body
            .contains("tidegate_nfs_read_latency_us{quantile=\"0.99\"} "));
        w.write_all(b"GET /stats HTTP/1.1\n\n").unwrap(); // bare LFs are accepted
        let st = read_reply(&mut r);
        assert_eq!(st.status(), 200);
        assert_eq!(st.header("Content-Type"), Some("application/json"));
        assert!(st.body.starts_with('{') && st.body.contains("\"cache_hit_ratio\":"));
        // Connection: close is honoured.
        w.write_all(&get("/healthz")).unwrap();
        let last = read_reply(&mut r);
        assert_eq!(last.header("Connection"), Some("close"));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // HTTP/1.0 closes by default.
        let old = once(&server, b"GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!((old.status(), old.body.as_str()), (200, "ok"));
    }

    #[test]
    fn errors() {
        let server = Server::start(None, LIMITS);
        let nf = once(&server, &get("/nope"));
        assert_eq!(nf.status(), 404);
        assert!(nf.body.contains("\"error\""));
        let m = once(
            &server,
            b"POST /metrics HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(m.status(), 405);
        assert_eq!(m.header("Allow"), Some("GET"));
        let w = once(&server, &get("/warm?key=a"));
        assert_eq!(w.status(), 405);
        assert_eq!(w.header("Allow"), Some("POST"));

        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nX: \xff\r\n\r\n",
        ] {
            let r = once(&server, bad);
            assert_eq!(r.status(), 400, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(r.header("Connection"), Some("close"));
            assert!(r.body.starts_with("{\"error\":"));
        }
        assert_eq!(once(&server, b"GET / HTTP/2.0\r\n\r\n").status(), 505);

        let body = once(
            &server,
            b"POST /warm?key=a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(body.status(), 413);
        let chunked = once(
            &server,
            b"POST /warm?key=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(chunked.status(), 413);
    }

    #[test]
    fn oversized_head_gets_431() {
        let server = Server::start(None, LIMITS);
        // A head that never ends within the limit, sent in one go and
        // followed by more: the client still reads the 431.
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        req.resize(REQUEST_HEAD_BYTES_MAX + 4096, b'a');
        let r = once(&server, &req);
        assert_eq!(r.status(), 431);
        // Just under the limit is fine.
        let mut req = b"GET /healthz HTTP/1.1\r\nConnection: close\r\nX-Filler: ".to_vec();
        req.resize(REQUEST_HEAD_BYTES_MAX - 4, b'a');
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req.len(), REQUEST_HEAD_BYTES_MAX);
        assert_eq!(once(&server, &req).status(), 200);
        // Too many header lines.
        let mut req = b"GET /healthz HTTP/1.1\r\n".to_vec();
        for i in 0..=REQUEST_HEADERS_MAX {
            req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(once(&server, &req).status(), 431);
    }

    #[test]
    fn warm_route() {
        let server = Server::start(Some(Arc::new(FakeWarm)), LIMITS);
        let post = |target: &str| {
            once(
                &server,
                format!("POST {target} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            )
        };
        let ok = post(&format!("/warm?key={}", percent_encode("dir/a b+c.bin")));
        assert_eq!(ok.status(), 200, "{}", ok.body);
        assert_eq!(ok.body, "{\"bytes\":13000}");
        assert_eq!(ok.header("Content-Type"), Some("application/json"));
        let ok = post("/warm?x=1&key=%2Fd%2Fe");
        assert_eq!(ok.body, "{\"bytes\":3000}", "leading slash trimmed");
        let fail = post("/warm?key=missing");
        assert_eq!(fail.status(), 500);
        assert_eq!(
            fail.body,
            "{\"error\":\"warming missing: no such object: missing\"}"
        );
        assert_eq!(post("/warm").status(), 400);
        assert_eq!(post("/warm?key=").status(), 400);
        assert_eq!(post("/warm?key=dir/").status(), 400);
        assert_eq!(post("/warm?key=%zz").status(), 400);
        assert_eq!(post("/warm?key=%ff").status(), 400);
        let long = "k".repeat(WARM_KEY_BYTES_MAX + 1);
        assert_eq!(post(&format!("/warm?key={long}")).status(), 400);

        let off = Server::start(None, LIMITS);
        let r = once(
            &off,
            b"POST /warm?key=a HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status(), 503);
        assert!(r.body.contains("block cache is off"));
        assert_eq!(r.header("Retry-After"), None);
    }

    #[test]
    fn connection_limit_and_timeouts() {
        let limits = Limits {
            head_bytes_max: REQUEST_HEAD_BYTES_MAX,
            connections_max: 4,
            read_timeout: Duration::from_millis(1000),
        };
        let server = Server::start(None, limits);
        // Fill every slot with a live keep-alive connection.
        let mut held = Vec::new();
        for _ in 0..limits.connections_max {
            let mut s = server.connect();
            s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            assert_eq!(read_reply(&mut r).status(), 200);
            held.push(s);
        }
        let extra = server.connect();
        let mut r = BufReader::new(extra);
        let reply = read_reply(&mut r);
        assert_eq!(reply.status(), 503);
        assert_eq!(reply.header("Retry-After"), Some("1"));
        // The held connections go idle past the read timeout and are
        // closed silently, which frees the slots.
        for s in &mut held {
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
        // A head started but not finished in time gets 408.
        let mut s = server.connect();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_reply(&mut r).status(), 408);
        assert_eq!(once(&server, &get("/healthz")).status(), 200);
    }

    #[test]
    fn shutdown_closes_idle_connections() {
        let server = Server::start(None, LIMITS);
        let mut s = server.connect();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_reply(&mut r).status(), 200);
        let started = std::time::Instant::now();
        drop(server); // sends the stop signal and joins the server thread
        assert!(started.elapsed() < DRAIN_TIMEOUT + Duration::from_secs(1));
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }

    /// The way the gateway runs it: spawned as a local task of a control
    /// thread's own LocalSet (serve_admin nests its LocalSet inside).
    #[test]
    fn runs_spawned_inside_another_local_set() {
        let (stop, rx) = watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let outer = LocalSet::new();
            outer.block_on(&rt, async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                let warm: Arc<dyn WarmTarget> = Arc::new(FakeWarm);
                tokio::task::spawn_local(serve_admin(l, Some(warm), rx))
                    .await
                    .unwrap();
            });
        });
        let server = Server {
            addr: addr_rx.recv().unwrap(),
            stop,
            thread: Some(thread),
        };
        let r = once(
            &server,
            b"POST /warm?key=abc HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!((r.status(), r.body.as_str()), (200, "{\"bytes\":3000}"));
    }

    #[test]
    fn codec_helpers() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        let key = "a dir/ü+%?&=#.bin";
        let enc = percent_encode(key);
        assert!(enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b)));
        assert_eq!(percent_decode(&enc).unwrap(), key.as_bytes());
        assert_eq!(percent_decode("a+b").unwrap(), b"a+b");
        assert!(percent_decode("%4").is_none());
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(query_param("a=1&key=x%20y&b", "key"), Some("x%20y"));
        assert_eq!(query_param("b&a=1", "b"), Some(""));
        assert_eq!(query_param("a=1", "key"), None);
    }
}
