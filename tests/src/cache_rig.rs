//! The rig of the block-cache tests: SeaweedFS behind a counting proxy
//! ([`S3Proxy`]), the gateway serving its bucket with a cache device and
//! the admin endpoint, and datasets whose every byte is checked when read
//! back through NFS.
//!
//! A [`Rig`] owns its processes and folders: the gateway is stopped first,
//! then the proxy, then SeaweedFS, then the folders go. Objects are written
//! straight to SeaweedFS (not through the proxy), so the proxy counts only
//! what the gateway asks for. A directory rig ([`Rig::dir`]) serves a local
//! folder instead and has no proxy: there, only `/stats` tells hits from
//! misses.
//!
//! Object contents are pseudo-random from a seed, so they can be made
//! again to find where a read went wrong; an object may carry a marker at
//! the start of each 1 MiB block (a text unique to the object and the
//! block), for tests that look for cached blocks in the cache device.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::data::{fingerprint, Fingerprint, SplitMix64};
use crate::json::{parse_first_object, Json};
use crate::rpc::NfsClient;
use crate::s3::{Seaweed, REGION};
use crate::s3proxy::S3Proxy;
use crate::server::{Dirs, Server, StartOptions};
use crate::sigv4;

pub const MIB: u64 = 1 << 20;
/// The bucket an S3 rig serves.
pub const BUCKET: &str = "tidegate-cache";
/// Where markers go in a marked object: at the start of every block of
/// this size.
pub const MARKER_BLOCK_BYTES: u64 = MIB;
/// READ size of [`Rig::read_pass`] (the gateway's largest).
pub const READ_CHUNK_BYTES: u32 = 1 << 20;
/// How long the admin endpoint may take to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest admin answer read.
const ADMIN_BODY_BYTES_MAX: usize = 1 << 20;
/// Uploader threads, each with its own connection.
const UPLOAD_THREADS: usize = 4;

// ------------------------------------------------------------ objects ----

/// One object of a dataset.
#[derive(Clone, Debug)]
pub struct Object {
    pub key: String,
    pub len: u64,
    pub seed: u64,
    /// With a marker: the prefix of the text at the start of each block
    /// (see [`Object::marker_at`]).
    pub marker: Option<String>,
    pub fp: Fingerprint,
}

impl Object {
    pub fn new(key: &str, len: u64, seed: u64) -> Object {
        Self::build(key, len, seed, None)
    }

    /// An object with a marker at the start of each
    /// [`MARKER_BLOCK_BYTES`] block: `{prefix}{block:04}#`.
    pub fn marked(key: &str, len: u64, seed: u64, prefix: &str) -> Object {
        Self::build(key, len, seed, Some(prefix.to_string()))
    }

    fn build(key: &str, len: u64, seed: u64, marker: Option<String>) -> Object {
        let mut o = Object {
            key: key.to_string(),
            len,
            seed,
            marker,
            fp: fingerprint(&[]),
        };
        o.fp = fingerprint(&o.bytes());
        o
    }

    /// The marker text of block `block`, if the object is marked.
    pub fn marker_at(&self, block: u64) -> Option<String> {
        self.marker.as_ref().map(|p| format!("{p}{block:04}#"))
    }

    /// The object's content.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = SplitMix64::new(self.seed).bytes(self.len as usize);
        if self.marker.is_some() {
            let mut block = 0;
            while block * MARKER_BLOCK_BYTES < self.len {
                let m = self.marker_at(block).expect("marked");
                let at = (block * MARKER_BLOCK_BYTES) as usize;
                if at + m.len() <= v.len() {
                    v[at..at + m.len()].copy_from_slice(m.as_bytes());
                }
                block += 1;
            }
        }
        v
    }

    /// Blocks of `block_bytes` the object spans.
    pub fn blocks(&self, block_bytes: u64) -> u64 {
        self.len.div_ceil(block_bytes)
    }
}

/// Objects named `{prefix}{i:03}.bin`, `count` of them, `len` bytes each,
/// seeds drawn from `seed`.
pub fn objects(prefix: &str, count: usize, len: u64, seed: u64) -> Vec<Object> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|i| Object::new(&format!("{prefix}{i:03}.bin"), len, rng.next_u64()))
        .collect()
}

/// Total bytes of a set of objects.
pub fn total_bytes(objects: &[Object]) -> u64 {
    objects.iter().map(|o| o.len).sum()
}

// -------------------------------------------------------------- stats ----

/// One answer of `GET /stats`: a flat JSON object of numbers.
#[derive(Clone, Debug)]
pub struct Stats {
    pub values: BTreeMap<String, f64>,
    pub text: String,
}

impl Stats {
    /// An integer counter or gauge; panics (naming the keys there are)
    /// when it is missing or not a non-negative integer.
    pub fn get(&self, name: &str) -> u64 {
        let Some(&v) = self.values.get(name) else {
            panic!("/stats has no {name:?}; it said: {}", self.text);
        };
        assert!(
            v >= 0.0 && v.fract() == 0.0,
            "/stats {name} = {v} is not a non-negative integer"
        );
        v as u64
    }

    /// A number as sent (e.g. `cache_hit_ratio`).
    pub fn float(&self, name: &str) -> f64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("/stats has no {name:?}; it said: {}", self.text))
    }

    /// The counters named `cache_*` and `store_*`, for messages.
    pub fn brief(&self) -> String {
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with("cache_") || k.starts_with("store_"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `GET path` on the admin endpoint: (status, body). Retries the connect
/// for [`ADMIN_TIMEOUT`] (the endpoint may come up after the NFS port).
pub fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(e).with_context(|| format!("connect to the admin endpoint {addr}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    s.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.take(ADMIN_BODY_BYTES_MAX as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .with_context(|| format!("read the answer to GET {path}"))?;
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "GET {path}: no complete head in {:?}",
            String::from_utf8_lossy(&raw)
        );
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).with_context(|| format!("GET {path}: chunked body"))?;
    } else if let Some(len) = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    }) {
        ensure!(
            body.len() >= len,
            "GET {path}: body of {} bytes, Content-Length {len}",
            body.len()
        );
        body.truncate(len);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("no chunk-size line")?;
        let line = String::from_utf8_lossy(&b[..i]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        b = &b[i + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(b.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// `GET /stats`, parsed.
pub fn fetch_stats(addr: SocketAddr) -> Result<Stats> {
    let (status, text) = admin_get(addr, "/stats")?;
    ensure!(status == 200, "GET /stats answered {status}: {text}");
    let json = parse_first_object(&text).with_context(|| format!("/stats is not JSON: {text}"))?;
    let Json::Obj(map) = json else {
        bail!("/stats is not a JSON object: {text}");
    };
    let mut values = BTreeMap::new();
    for (k, v) in map {
        match v {
            Json::Num(n) => {
                values.insert(k, n);
            }
            Json::Bool(b) => {
                values.insert(k, if b { 1.0 } else { 0.0 });
            }
            other => bail!("/stats {k} is not a number: {other:?}"),
        }
    }
    Ok(Stats { values, text })
}

// ---------------------------------------------------------------- rig ----

/// The gateway with a block cache over SeaweedFS-behind-a-proxy, or over
/// a local directory. Fields drop in order: gateway, proxy, S3, folders.
pub struct Rig {
    server: Option<Server>,
    proxy: Option<S3Proxy>,
    seaweed: Option<Seaweed>,
    pub dirs: Dirs,
    /// The cache arguments every start passes (`--cache …`).
    pub cache_args: Vec<String>,
    /// Further arguments every start passes.
    pub extra_args: Vec<String>,
}

impl Rig {
    /// SeaweedFS with an empty [`BUCKET`], and the proxy in front of it.
    pub fn s3() -> Rig {
        let seaweed = Seaweed::start(&[BUCKET]);
        let proxy = S3Proxy::start(seaweed.s3_addr());
        Rig {
            server: None,
            proxy: Some(proxy),
            seaweed: Some(seaweed),
            dirs: Dirs::new(),
            cache_args: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// A local directory source (`dirs.source`).
    pub fn dir() -> Rig {
        Rig {
            server: None,
            proxy: None,
            seaweed: None,
            dirs: Dirs::new(),
            cache_args: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// A path for a cache file inside the rig's temporary folder.
    pub fn cache_file(&self) -> PathBuf {
        self.dirs.root.path().join("cache.bin")
    }

    /// Use `path` as the cache, of `size` (e.g. `64MiB`), with further
    /// cache flags.
    pub fn set_cache(&mut self, path: &Path, size: &str, more: &[&str]) {
        self.cache_args = vec![
            "--cache".to_string(),
            path.display().to_string(),
            "--cache-size".to_string(),
            size.to_string(),
        ];
        self.cache_args.extend(more.iter().map(|s| s.to_string()));
    }

    pub fn proxy(&self) -> &S3Proxy {
        self.proxy
            .as_ref()
            .expect("a directory rig has no S3 proxy")
    }

    pub fn seaweed(&self) -> &Seaweed {
        self.seaweed
            .as_ref()
            .expect("a directory rig has no S3 server")
    }

    /// The S3 server, to stop and restart it.
    pub fn seaweed_mut(&mut self) -> &mut Seaweed {
        self.seaweed
            .as_mut()
            .expect("a directory rig has no S3 server")
    }

    /// Writes the objects to the source: straight to SeaweedFS (never
    /// through the proxy), or as files under the source directory.
    pub fn put(&self, objects: &[Object]) {
        match &self.seaweed {
            None => {
                for o in objects {
                    let p = self.dirs.source.join(&o.key);
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).unwrap();
                    }
                    std::fs::write(&p, o.bytes())
                        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
                }
            }
            Some(sw) => {
                let target = sigv4::Target {
                    addr: sw.s3_addr(),
                    bucket: BUCKET.to_string(),
                    region: REGION.to_string(),
                    access_key_id: sw.access_key_id().to_string(),
                    secret_access_key: sw.secret_access_key().to_string(),
                };
                let queue = Mutex::new(objects.iter().collect::<Vec<_>>());
                std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..UPLOAD_THREADS.min(objects.len()))
                        .map(|_| {
                            scope.spawn(|| -> Result<()> {
                                let mut c = sigv4::Client::new(target.clone());
                                loop {
                                    let next = queue.lock().unwrap().pop();
                                    let Some(o) = next else { return Ok(()) };
                                    c.put(&o.key, &o.bytes())
                                        .with_context(|| format!("PUT {}", o.key))?;
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.join()
                            .expect("upload thread panicked")
                            .unwrap_or_else(|e| panic!("upload to SeaweedFS: {e:#}"));
                    }
                });
            }
        }
    }

    /// Starts the gateway (with the cache and admin flags); panics with
    /// its stderr when it does not come up.
    pub fn start(&mut self) -> &mut Server {
        if let Err(e) = self.try_start() {
            panic!("{e:#}");
        }
        self.server()
    }

    pub fn try_start(&mut self) -> Result<()> {
        assert!(
            self.server.is_none(),
            "the gateway is running already: stop it first"
        );
        let mut args: Vec<String> = Vec::new();
        let mut env: Vec<(&str, String)> = Vec::new();
        let source: OsString = match (&self.seaweed, &self.proxy) {
            (Some(sw), Some(proxy)) => {
                args.extend([
                    "--endpoint-url".to_string(),
                    proxy.endpoint(),
                    "--path-style".to_string(),
                    "--region".to_string(),
                    REGION.to_string(),
                ]);
                for (k, v) in sw.client_env() {
                    let v = if k == "AWS_ENDPOINT_URL" {
                        proxy.endpoint()
                    } else {
                        v
                    };
                    env.push((k, v));
                }
                // Nothing from the machine's own AWS profile.
                let nowhere = self.dirs.root.path().join("no-aws-profile");
                env.push(("AWS_CONFIG_FILE", nowhere.display().to_string()));
                env.push(("AWS_SHARED_CREDENTIALS_FILE", nowhere.display().to_string()));
                OsString::from(format!("s3://{BUCKET}"))
            }
            _ => self.dirs.source.clone().into_os_string(),
        };
        args.extend(self.cache_args.iter().cloned());
        args.extend(self.extra_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::try_start_opts(
            &source,
            &self.dirs.state,
            &args,
            &env,
            &StartOptions { admin: true },
        )?;
        self.server = Some(server);
        Ok(())
    }

    /// The running gateway.
    pub fn server(&mut self) -> &mut Server {
        self.server.as_mut().expect("the gateway is not running")
    }

    fn server_ref(&self) -> &Server {
        self.server.as_ref().expect("the gateway is not running")
    }

    /// SIGTERM; panics unless the gateway exits successfully.
    pub fn stop(&mut self) {
        let mut server = self.server.take().expect("the gateway is not running");
        let status = server.stop();
        assert!(
            status.success(),
            "tidegate exited with {status} after SIGTERM; stderr:\n{}",
            server.stderr_text()
        );
    }

    /// SIGKILL.
    pub fn kill_hard(&mut self) -> ExitStatus {
        let mut server = self.server.take().expect("the gateway is not running");
        server.kill_hard()
    }

    /// The gateway's stderr so far (empty when it is not running).
    pub fn stderr(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.stderr_text())
            .unwrap_or_default()
    }

    /// `GET /stats` of the running gateway.
    pub fn stats(&self) -> Stats {
        let s = self.server_ref();
        fetch_stats(s.admin_addr())
            .unwrap_or_else(|e| panic!("GET /stats: {e:#}\ngateway stderr:\n{}", s.stderr_text()))
    }

    /// A client with the export root mounted.
    pub fn connect(&self) -> (NfsClient, Vec<u8>) {
        let s = self.server_ref();
        let mut c = NfsClient::connect(s.addr())
            .unwrap_or_else(|e| panic!("connect: {e:#}\nstderr:\n{}", s.stderr_text()));
        let root = c
            .mount_root()
            .unwrap_or_else(|e| panic!("MNT /: {e:#}\nstderr:\n{}", s.stderr_text()));
        (c, root)
    }

    /// As [`Rig::connect`], from the local address `local` (e.g.
    /// 127.0.0.2): to the gateway, another client than 127.0.0.1.
    pub fn connect_from(&self, local: std::net::Ipv4Addr) -> (NfsClient, Vec<u8>) {
        let s = self.server_ref();
        let addr = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, s.addr().port());
        let mut c = NfsClient::connect_from(local, addr).unwrap_or_else(|e| {
            panic!("connect from {local}: {e:#}\nstderr:\n{}", s.stderr_text())
        });
        let root = c
            .mount_root()
            .unwrap_or_else(|e| panic!("MNT / from {local}: {e:#}\nstderr:\n{}", s.stderr_text()));
        (c, root)
    }

    /// The gateway's process id.
    pub fn server_pid(&self) -> u32 {
        self.server_ref().pid()
    }

    /// Reads every object through the gateway on one connection, in
    /// order, with READs of `chunk` bytes, and checks every byte; panics
    /// (saying which object, where it first differs, and the gateway's
    /// stderr) on any failure. `what` names the pass in messages.
    pub fn read_pass(&self, objects: &[Object], chunk: u32, what: &str) {
        let (mut c, root) = self.connect();
        for o in objects {
            self.read_one(&mut c, &root, o, chunk, what);
        }
    }

    /// Reads one object on `c` and checks it (see [`Rig::read_pass`]).
    pub fn read_one(&self, c: &mut NfsClient, root: &[u8], o: &Object, chunk: u32, what: &str) {
        let s = self.server_ref();
        let fh = c.lookup_path(root, &o.key).unwrap_or_else(|e| {
            panic!(
                "{what}: LOOKUP {}: {e:#}\ngateway stderr:\n{}",
                o.key,
                s.stderr_text()
            )
        });
        let got = c
            .read_all(&fh, chunk, o.len + chunk as u64)
            .unwrap_or_else(|e| {
                panic!(
                    "{what}: READ {}: {e:#}\ngateway stderr:\n{}",
                    o.key,
                    s.stderr_text()
                )
            });
        check_content(o, &got, what);
    }
}

/// Panics unless `got` is the object's content, saying where it differs.
pub fn check_content(o: &Object, got: &[u8], what: &str) {
    let fp = fingerprint(got);
    if fp == o.fp {
        return;
    }
    let want = o.bytes();
    let first_diff = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    panic!(
        "{what}: {} read back wrong: got {} bytes, want {}; first difference at byte {first_diff} \
         (block {} of 1 MiB, offset {} in it); got {fp:?}, want {:?}",
        o.key,
        got.len(),
        want.len(),
        first_diff as u64 / MIB,
        first_diff as u64 % MIB,
        o.fp
    );
}
