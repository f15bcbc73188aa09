//! The `tidegate` server process under test.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// How long a freshly started server may take to accept a TCP connection.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Worker threads the tests ask for (the machine has two cores).
pub const WORKERS: u32 = 2;

/// The `tidegate` binary: `$TIDEGATE_BIN`, else `target/release/tidegate`,
/// else `target/debug/tidegate` (under `$CARGO_TARGET_DIR` when set).
/// Panics with a clear message when none exists: the tests never skip.
pub fn tidegate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_BIN") {
        let mut p = PathBuf::from(p);
        if p.is_relative() && !p.exists() {
            p = workspace_root().join(p);
        }
        assert!(
            p.is_file(),
            "TIDEGATE_BIN={} does not name a file; build the server first (cargo build --release -p tidegate)",
            p.display()
        );
        return p;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_relative() {
                workspace_root().join(t)
            } else {
                t
            }
        }
        None => workspace_root().join("target"),
    };
    let candidates = [
        target.join("release/tidegate"),
        target.join("debug/tidegate"),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "tidegate binary not found (looked at $TIDEGATE_BIN, {} and {}); \
         build it with `cargo build --release -p tidegate` or run the suite with `cargo xtask test`",
        candidates[0].display(),
        candidates[1].display()
    );
}

/// A loopback port that was free a moment ago. The listener is dropped
/// before returning, so another process can take the port in between: the
/// caller retries on "address in use" (see [`Server::start`]).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// What [`Server::try_start_opts`] adds to the command line beyond the
/// caller's own arguments.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Serve the admin HTTP endpoint: `--admin 127.0.0.1:PORT` on a freshly
    /// drawn port (drawn again with the NFS port when a start fails with an
    /// address in use); see [`Server::admin_addr`].
    pub admin: bool,
}

/// A running `tidegate serve` process. SIGTERM then SIGKILL on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// The admin endpoint's port, when started with [`StartOptions::admin`].
    pub admin_port: Option<u16>,
    pub source_dir: PathBuf,
    pub state_dir: PathBuf,
    stderr_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Start `tidegate serve SOURCE --listen 127.0.0.1:PORT --workers 2
    /// --state-dir STATE` and wait until it accepts TCP connections.
    pub fn start(source_dir: &Path, state_dir: &Path) -> Server {
        Self::try_start(source_dir, state_dir, &[]).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// As [`Server::start`], with extra command-line arguments.
    pub fn start_with_args(source_dir: &Path, state_dir: &Path, extra: &[&str]) -> Server {
        Self::try_start(source_dir, state_dir, extra).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_start(source_dir: &Path, state_dir: &Path, extra: &[&str]) -> Result<Server> {
        Self::try_start_env(source_dir.as_os_str(), state_dir, extra, &[])
    }

    /// As [`Server::try_start`] with a source given as text (a directory or
    /// `s3://bucket[/prefix]`) and extra environment variables for the
    /// server process (e.g. [`crate::s3::Seaweed::client_env`]).
    pub fn try_start_env(
        source: &std::ffi::OsStr,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Result<Server> {
        Self::try_start_opts(source, state_dir, extra, env, &StartOptions::default())
    }

    /// As [`Server::try_start_env`], with the [`StartOptions`].
    pub fn try_start_opts(
        source: &std::ffi::OsStr,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
        opts: &StartOptions,
    ) -> Result<Server> {
        let source_dir = Path::new(source);
        let bin = tidegate_bin();
        let mut last_err = None;
        // A few attempts: the port picked by free_port can be taken by
        // another test's process before the server binds it.
        for _attempt in 0..4 {
            let port = free_port();
            let admin_port = opts.admin.then(|| loop {
                let p = free_port();
                if p != port {
                    break p;
                }
            });
            let log_dir = tempfile::Builder::new().prefix("tidegate-log-").tempdir()?;
            let stderr_path = log_dir.path().join("stderr.log");
            let stderr_file = File::create(&stderr_path)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .arg(source_dir)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--workers")
                .arg(WORKERS.to_string())
                .arg("--state-dir")
                .arg(state_dir)
                .args(extra);
            if let Some(p) = admin_port {
                cmd.arg("--admin").arg(format!("127.0.0.1:{p}"));
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(stderr_file));
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            let mut server = Server {
                child: Some(child),
                port,
                admin_port,
                source_dir: source_dir.to_path_buf(),
                state_dir: state_dir.to_path_buf(),
                stderr_path,
                _log_dir: log_dir,
            };
            match server.wait_ready() {
                Ok(()) if server.owns_its_port() => return Ok(server),
                Ok(()) => {
                    // Another process listens on the same port (possible
                    // with SO_REUSEPORT): start over on another port.
                    last_err = Some(anyhow::anyhow!(
                        "port {port} is shared with another process"
                    ));
                    continue;
                }
                Err(e) => {
                    let log = server.stderr_text();
                    let in_use = log.contains("in use") || log.contains("AddrInUse");
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = self.addr();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "tidegate exited during start-up with {status} (port {}); stderr:\n{}",
                    self.port,
                    self.stderr_text()
                );
            }
            let admin_up = || {
                self.admin_port.is_none_or(|p| {
                    let admin = SocketAddr::from(([127, 0, 0, 1], p));
                    TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok()
                })
            };
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && admin_up() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tidegate did not accept connections on {addr} (and the admin port {:?}) within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.admin_port,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every socket listening on our port belongs to our server process.
    fn owns_its_port(&self) -> bool {
        let pid = self.child.as_ref().unwrap().id();
        let ours = socket_inodes(pid);
        let listening = listening_inodes(self.port);
        !listening.is_empty() && listening.iter().all(|i| ours.contains(i))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The admin endpoint (started with [`StartOptions::admin`]).
    pub fn admin_addr(&self) -> SocketAddr {
        let port = self
            .admin_port
            .expect("the server was started without the admin endpoint");
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.stderr_path) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        // Keep failure messages readable.
        const KEEP: usize = 20_000;
        if s.len() > KEEP {
            let mut cut = s.len() - KEEP;
            while !s.is_char_boundary(cut) {
                cut += 1;
            }
            s = format!("[... {cut} bytes cut ...]\n{}", &s[cut..]);
        }
        s
    }

    /// Panics (with the server's stderr) when the process has exited.
    pub fn assert_alive(&mut self, context: &str) {
        let child = self.child.as_mut().expect("server already stopped");
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => panic!(
                "tidegate died ({status}) {context}; stderr:\n{}",
                self.stderr_text()
            ),
            Err(e) => panic!("try_wait on tidegate failed: {e}"),
        }
    }

    /// Resident set size of the server process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:").expect("read VmRSS of the server")
    }

    /// Peak resident set size of the server process, in KiB (VmHWM).
    pub fn rss_peak_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:").expect("read VmHWM of the server")
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                Err(e) => panic!("wait for tidegate: {e}"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tidegate did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Server {
    /// SIGKILL (a crash, as far as the server can tell), then reap it.
    pub fn kill_hard(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        let _ = child.kill();
        child.wait().expect("wait for the killed tidegate")
    }

    /// Whether the process is still running (false once stopped).
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                signal(child.id(), libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory
    // of ours; the pid is that of a child we have not reaped yet, so it
    // cannot have been reused by another process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Inodes of the TCP sockets in LISTEN state on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                if let Ok(inode) = f[9].parse() {
                    out.push(inode);
                }
            }
        }
    }
    out
}

/// Inodes of the sockets a process holds open.
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let mut out = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    if let Ok(inode) = n.parse() {
                        out.insert(inode);
                    }
                }
            }
        }
    }
    out
}

/// A `kB` field of /proc/PID/status.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A source directory and a state directory in fresh temporary folders.
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub source: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::Builder::new()
            .prefix("tidegate-test-")
            .tempdir()
            .expect("tempdir");
        let source = root.path().join("source");
        let state = root.path().join("state");
        std::fs::create_dir_all(&source).expect("mkdir source");
        std::fs::create_dir_all(&state).expect("mkdir state");
        Dirs {
            root,
            source,
            state,
        }
    }

    /// A scratch folder for client output, beside source and state.
    pub fn scratch(&self) -> PathBuf {
        let p = self.root.path().join("scratch");
        std::fs::create_dir_all(&p).expect("mkdir scratch");
        p
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}
