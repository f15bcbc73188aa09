//! A minimal S3 PUT client for filling buckets fast: HTTP/1.1 keep-alive
//! over a plain `TcpStream`, requests signed with AWS Signature Version 4,
//! path-style addressing.
//!
//! The SDK client costs milliseconds of CPU per request in an unoptimised
//! test build, and boto3 about as much, so a bucket of 100,000 objects took
//! minutes through either; this client costs microseconds and leaves the
//! machine's two cores to the S3 server. It speaks only what the fixtures
//! need (PUT of a whole object from memory, DELETE) and is used only for
//! setting up test data, never to check the gateway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::data::hex;

/// Socket read and write timeout of one request.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per request (a kept-alive connection the server closed in the
/// meantime costs one).
const ATTEMPTS_MAX: u32 = 3;
/// Largest response header block and error body read.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
const RESPONSE_BODY_BYTES_MAX: usize = 1 << 20;

/// Where and as whom to send requests.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// One kept-alive connection to the S3 server.
pub struct Client {
    target: Target,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client { target, conn: None }
    }

    /// PUT `body` as `key` (a bucket key, no leading `/`).
    pub fn put(&mut self, key: &str, body: &[u8]) -> Result<()> {
        self.request("PUT", key, body)
    }

    /// DELETE `key` (S3 answers 204 whether or not it existed).
    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.request("DELETE", key, &[])
    }

    fn request(&mut self, method: &str, key: &str, body: &[u8]) -> Result<()> {
        let mut last = None;
        for _ in 0..ATTEMPTS_MAX {
            match self.attempt(method, key, body) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // A broken connection is replaced; an HTTP error answer
                    // is final.
                    if e.downcast_ref::<HttpStatus>().is_some() {
                        return Err(e);
                    }
                    self.conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt")).with_context(|| format!("{method} {key}"))
    }

    fn attempt(&mut self, method: &str, key: &str, body: &[u8]) -> Result<()> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.target.addr, IO_TIMEOUT)
                .with_context(|| format!("connect to {}", self.target.addr))?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let head = self.signed_head(method, key, body, SystemTime::now());
        let conn = self.conn.as_mut().expect("connected above");
        {
            let s = conn.get_mut();
            s.write_all(head.as_bytes())?;
            s.write_all(body)?;
        }
        let (status, close, err_body) = read_response(conn)?;
        if close {
            self.conn = None;
        }
        if !(200..300).contains(&status) {
            return Err(HttpStatus {
                status,
                body: String::from_utf8_lossy(&err_body).into_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// The request line and headers, signed.
    fn signed_head(&self, method: &str, key: &str, body: &[u8], now: SystemTime) -> String {
        let t = &self.target;
        let (date, amz_date) = amz_dates(now);
        let path = format!("/{}/{}", uri_encode(&t.bucket), uri_encode(key));
        let host = t.addr.to_string();
        let payload_hash = hex(&Sha256::digest(body));
        let canonical = format!(
            "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload_hash}\n\
             x-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload_hash}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", t.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let k_date = hmac_sha256(
            format!("AWS4{}", t.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac_sha256(&k_date, t.region.as_bytes());
        let k_service = hmac_sha256(&k_region, b"s3");
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        let signature = hex(&hmac_sha256(&k_signing, to_sign.as_bytes()));
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {amz_date}\r\n\
             x-amz-content-sha256: {payload_hash}\r\nContent-Length: {}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential={}/{scope}, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}\r\n\r\n",
            body.len(),
            t.access_key_id
        )
    }
}

/// An HTTP answer outside 2xx.
#[derive(Debug)]
pub struct HttpStatus {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpStatus {}

/// Reads one response: (status, whether the server closes the connection,
/// body). Bodies are read whole (Content-Length or chunked), bounded.
fn read_response(conn: &mut BufReader<TcpStream>) -> Result<(u16, bool, Vec<u8>)> {
    let mut head_bytes = 0;
    let mut line = String::new();
    let mut next_line = |conn: &mut BufReader<TcpStream>, line: &mut String| -> Result<()> {
        line.clear();
        let n = conn.read_line(line)?;
        ensure!(n > 0, "connection closed before the response ended");
        head_bytes += n;
        ensure!(
            head_bytes <= RESPONSE_HEAD_BYTES_MAX,
            "response head over {RESPONSE_HEAD_BYTES_MAX} bytes"
        );
        Ok(())
    };
    next_line(conn, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = line.starts_with("HTTP/1.0");
    loop {
        next_line(conn, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            bail!("bad header line {l:?}");
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = Some(value.parse::<usize>()?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            next_line(conn, &mut line)?;
            let size_text = line.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text.trim(), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    next_line(conn, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            ensure!(
                body.len() + size <= RESPONSE_BODY_BYTES_MAX,
                "response body over {RESPONSE_BODY_BYTES_MAX} bytes"
            );
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
            next_line(conn, &mut line)?;
        }
    } else if let Some(n) = content_length {
        ensure!(
            n <= RESPONSE_BODY_BYTES_MAX,
            "response body of {n} bytes is over {RESPONSE_BODY_BYTES_MAX}"
        );
        body.resize(n, 0);
        conn.read_exact(&mut body)?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        // No length: the body runs until the server closes.
        conn.take(RESPONSE_BODY_BYTES_MAX as u64)
            .read_to_end(&mut body)?;
        close = true;
    }
    Ok((status, close, body))
}

/// Percent-encoding of a key for the request path and the canonical
/// request: everything but unreserved characters and `/`.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// (`YYYYMMDD`, `YYYYMMDDTHHMMSSZ`) in UTC.
fn amz_dates(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let date = format!("{y:04}{m:02}{d:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    (date, stamp)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(
            amz_dates(t),
            ("20150830".to_string(), "20150830T123600Z".to_string())
        );
    }

    /// RFC 4231 test case 2.
    #[test]
    fn hmac() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/ü+x~.txt"), "a%20b/%C3%BC%2Bx~.txt");
    }
}
