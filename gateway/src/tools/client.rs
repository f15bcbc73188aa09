//! A minimal HTTP/1.1 client for the gateway's admin endpoint, and a
//! parser for the flat JSON objects it answers with.
//!
//! One [`AdminClient`] holds at most one keep-alive connection; `warm`
//! runs one client per request in flight. Requests carry no body and
//! responses are read by `Content-Length` (or to end of stream), both
//! bounded. A request on a kept-alive connection that the server closed
//! meanwhile (its idle timeout) is retried once on a fresh connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;

use crate::telemetry::http::{find_head_end, percent_encode, read_some, write_all};

/// Time allowed to connect.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response head accepted.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest response body accepted (a scrape of every metric is a few KiB).
const RESPONSE_BODY_BYTES_MAX: usize = 4 << 20;
/// Bytes read per read call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Times a warm answered "busy, retry" (503 with `Retry-After`) is retried.
const BUSY_RETRIES_MAX: u32 = 5;
/// Longest wait honoured from a `Retry-After`.
const BUSY_RETRY_WAIT_SECS_MAX: u32 = 5;

#[derive(Debug, Error)]
pub(crate) enum ClientError {
    #[error(
        "no gateway admin endpoint at {addr}: {reason} — start the gateway with --admin {addr}"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("admin endpoint at {addr}: {op}: {source}")]
    Io {
        addr: SocketAddr,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("admin endpoint at {addr} did not answer within {seconds} s")]
    Timeout { addr: SocketAddr, seconds: u64 },
    #[error("admin endpoint at {addr} sent a malformed response: {why}")]
    Malformed { addr: SocketAddr, why: String },
}

/// A response: status and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds: the server is busy, not refusing.
    pub retry_after_secs: Option<u32>,
}

impl Reply {
    /// The `error` field of a JSON error body, or the body as text.
    pub fn error_message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        if let Ok(fields) = parse_flat_json(&text) {
            if let Some((_, JsonValue::Str(m))) = fields.iter().find(|(k, _)| k == "error") {
                return m.clone();
            }
        }
        let t = text.trim();
        if t.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {t}", self.status)
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes received past the last response (none from a well-behaved
    /// server).
    buf: Vec<u8>,
}

/// Why reading a response failed.
enum ReadFailure {
    /// The connection ended before any byte of a response: on a reused
    /// connection, the server closed it while idle.
    ClosedBeforeReply,
    Io(io::Error),
    Malformed(String),
}

pub(crate) struct AdminClient {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl AdminClient {
    pub fn new(addr: SocketAddr) -> AdminClient {
        AdminClient { addr, conn: None }
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let addr = self.addr;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(Conn {
                    stream,
                    buf: Vec::new(),
                })
            }
            Ok(Err(e)) => Err(ClientError::Unreachable {
                addr,
                reason: match e.kind() {
                    io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    _ => e.to_string(),
                },
            }),
            Err(_) => Err(ClientError::Unreachable {
                addr,
                reason: format!(
                    "no answer to connect within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// Send `METHOD target` (no body) and read the response within `timeout`.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let addr = self.addr;
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nUser-Agent: tidegate\r\n\r\n"
        );
        // A reused connection may have been closed by the server while
        // idle: then one retry on a fresh one.
        for _attempt in 0..2 {
            let reused = self.conn.is_some();
            let mut conn = match self.conn.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            let exchange = async {
                write_all(&conn.stream, head.as_bytes())
                    .await
                    .map_err(ReadFailure::Io)?;
                read_reply(&mut conn).await
            };
            let outcome = match tokio::time::timeout(timeout, exchange).await {
                Ok(o) => o,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        addr,
                        seconds: timeout.as_secs(),
                    })
                }
            };
            match outcome {
                Ok((reply, keep)) => {
                    if keep {
                        self.conn = Some(conn);
                    }
                    return Ok(reply);
                }
                Err(ReadFailure::ClosedBeforeReply) if reused => continue,
                Err(ReadFailure::Io(e)) if reused && is_stale_connection(&e) => continue,
                Err(ReadFailure::ClosedBeforeReply) => {
                    return Err(ClientError::Io {
                        addr,
                        op: "reading the response",
                        source: io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                Err(ReadFailure::Io(source)) => {
                    return Err(ClientError::Io {
                        addr,
                        op: "talking to the endpoint",
                        source,
                    })
                }
                Err(ReadFailure::Malformed(why)) => {
                    return Err(ClientError::Malformed { addr, why })
                }
            }
        }
        Err(ClientError::Io {
            addr,
            op: "reading the response",
            source: io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the connection closed twice before answering",
            ),
        })
    }

    /// `POST /warm?key=...`: the bytes the gateway now holds of `key`, or
    /// a message saying why not.
    pub async fn warm(&mut self, key: &str, timeout: Duration) -> Result<u64, String> {
        let target = format!("/warm?key={}", percent_encode(key));
        let mut busy_retries = 0;
        let reply = loop {
            let reply = self
                .request("POST", &target, timeout)
                .await
                .map_err(|e| e.to_string())?;
            match reply.retry_after_secs {
                Some(secs) if reply.status == 503 && busy_retries < BUSY_RETRIES_MAX => {
                    busy_retries += 1;
                    let wait_secs = secs.clamp(1, BUSY_RETRY_WAIT_SECS_MAX);
                    tokio::time::sleep(Duration::from_secs(u64::from(wait_secs))).await;
                }
                _ => break reply,
            }
        };
        if reply.status != 200 {
            return Err(reply.error_message());
        }
        let text = String::from_utf8_lossy(&reply.body);
        parse_flat_json(&text)
            .ok()
            .and_then(|fields| {
                fields.into_iter().find_map(|(k, v)| match v {
                    JsonValue::Number(n) if k == "bytes" => n.parse::<u64>().ok(),
                    _ => None,
                })
            })
            .ok_or_else(|| format!("unexpected warm response: {text}"))
    }
}

fn is_stale_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Read one response; the flag says whether the connection may be reused.
async fn read_reply(conn: &mut Conn) -> Result<(Reply, bool), ReadFailure> {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let head_end = loop {
        if let Some(end) = find_head_end(&conn.buf, 0) {
            break end;
        }
        if conn.buf.len() >= RESPONSE_HEAD_BYTES_MAX {
            return Err(ReadFailure::Malformed("response head too large".into()));
        }
        let n = read_some(&conn.stream, &mut chunk)
            .await
            .map_err(ReadFailure::Io)?;
        if n == 0 {
            return Err(if conn.buf.is_empty() {
                ReadFailure::ClosedBeforeReply
            } else {
                ReadFailure::Malformed("connection closed inside the response head".into())
            });
        }
        conn.buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&conn.buf[..head_end])
        .map_err(|_| ReadFailure::Malformed("response head is not UTF-8".into()))?;
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ReadFailure::Malformed(format!(
            "status line {status_line:?}"
        )));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadFailure::Malformed(format!(
            "status line {status_line:?}"
        )));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| ReadFailure::Malformed(format!("status line {status_line:?}")))?;
    let mut content_length: Option<usize> = None;
    let mut retry_after_secs: Option<u32> = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadFailure::Malformed(format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ReadFailure::Malformed(format!("Content-Length {value:?}")))?;
            if n > RESPONSE_BODY_BYTES_MAX {
                return Err(ReadFailure::Malformed(format!(
                    "body of {n} bytes is larger than {RESPONSE_BODY_BYTES_MAX}"
                )));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after_secs = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    conn.buf.drain(..head_end);
    let body = match content_length {
        Some(len) => {
            while conn.buf.len() < len {
                let n = read_some(&conn.stream, &mut chunk)
                    .await
                    .map_err(ReadFailure::Io)?;
                if n == 0 {
                    return Err(ReadFailure::Malformed(
                        "connection closed inside the response body".into(),
                    ));
                }
                conn.buf.extend_from_slice(&chunk[..n]);
            }
            conn.buf.drain(..len).collect()
        }
        None => {
            // No length: the body runs to the end of the stream.
            close = true;
            loop {
                if conn.buf.len() > RESPONSE_BODY_BYTES_MAX {
                    return Err(ReadFailure::Malformed("response body too large".into()));
                }
                let n = read_some(&conn.stream, &mut chunk)
                    .await
                    .map_err(ReadFailure::Io)?;
                if n == 0 {
                    break;
                }
                conn.buf.extend_from_slice(&chunk[..n]);
            }
            std::mem::take(&mut conn.buf)
        }
    };
    Ok((
        Reply {
            status,
            body,
            retry_after_secs,
        },
        !close,
    ))
}

/// A value of a flat JSON object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonValue {
    /// The number as written, so integers keep all 64 bits.
    Number(String),
    Str(String),
    Bool(bool),
    Null,
}

impl JsonValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            JsonValue::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            JsonValue::Number(n) => n.parse().ok(),
            _ => None,
        }
    }
}

/// Parse a JSON object whose values are all scalars (what `/stats` and
/// the warm and error responses are). Nested objects and arrays are an
/// error.
pub(crate) fn parse_flat_json(text: &str) -> Result<Vec<(String, JsonValue)>, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = p.value()?;
            out.push((key, value));
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(format!("expected , or }} at byte {}", p.i)),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at byte {}",
                b as char,
                self.i.saturating_sub(1)
            ))
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad \\u escape at byte {}", self.i))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'"') => out.push(b'"'),
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'/') => out.push(b'/'),
                    Some(b'b') => out.push(8),
                    Some(b'f') => out.push(12),
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'u') => {
                        let mut cp = self.hex4()?;
                        if (0xD800..0xDC00).contains(&cp)
                            && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                        {
                            self.i += 2;
                            let lo = self.hex4()?;
                            cp =
                                0x10000 + ((cp - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                        }
                        let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
                        let mut tmp = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                    }
                    _ => return Err(format!("bad escape at byte {}", self.i)),
                },
                Some(b) => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| "string is not UTF-8".to_string())
    }

    fn value(&mut self) -> Result<JsonValue, String> {
        match self.peek() {
            Some(b'"') => Ok(JsonValue::Str(self.string()?)),
            Some(b'{' | b'[') => Err(format!(
                "nested value at byte {} (flat objects only)",
                self.i
            )),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(JsonValue::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(JsonValue::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(JsonValue::Null)
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                if n.parse::<f64>().is_err() {
                    return Err(format!("bad number {n:?}"));
                }
                Ok(JsonValue::Number(n.to_string()))
            }
            _ => Err(format!("unexpected value at byte {}", self.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry;

    #[test]
    fn parses_what_the_gateway_renders() {
        let json = telemetry::render_json(&telemetry::snapshot());
        let fields = parse_flat_json(&json).unwrap();
        assert_eq!(
            fields.len(),
            telemetry::COUNTER_COUNT + telemetry::GAUGE_COUNT + 3 * telemetry::LATENCY_COUNT + 1
        );
        let ratio = fields.iter().find(|(k, _)| k == "cache_hit_ratio").unwrap();
        assert!(ratio.1.as_f64().is_some());
        let hits = fields
            .iter()
            .find(|(k, _)| k == "cache_hits_total")
            .unwrap();
        assert!(hits.1.as_u64().is_some());
    }

    #[test]
    fn flat_json() {
        let f = parse_flat_json(
            " { \"a\" : 18446744073709551615, \"b\":\"x\\\"y\\u00e9\\ud83d\\ude00\", \"c\":-1.5e3,\"d\":true,\"e\":null } ",
        )
        .unwrap();
        assert_eq!(
            f[0],
            ("a".into(), JsonValue::Number("18446744073709551615".into()))
        );
        assert_eq!(f[0].1.as_u64(), Some(u64::MAX));
        assert_eq!(f[1].1, JsonValue::Str("x\"yé😀".into()));
        assert_eq!(f[2].1.as_f64(), Some(-1500.0));
        assert_eq!(f[3].1, JsonValue::Bool(true));
        assert_eq!(f[4].1, JsonValue::Null);
        assert!(parse_flat_json("{}").unwrap().is_empty());
        for bad in [
            "",
            "[]",
            "{\"a\":{}}",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{\"a\":--}",
            "{\"a\"",
        ] {
            assert!(parse_flat_json(bad).is_err(), "{bad}");
        }
        let r = Reply {
            status: 500,
            body: b"{\"error\":\"disk on fire\"}".to_vec(),
            retry_after_secs: None,
        };
        assert_eq!(r.error_message(), "disk on fire");
        let r = Reply {
            status: 502,
            body: b"bad gateway".to_vec(),
            retry_after_secs: None,
        };
        assert_eq!(r.error_message(), "HTTP 502: bad gateway");
    }

    #[test]
    fn refused_connection_is_explained() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(AdminClient::new(addr).request("GET", "/stats", Duration::from_secs(5)))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no gateway admin endpoint at {addr}: connection refused — start the gateway with --admin {addr}"
            )
        );
    }
}
