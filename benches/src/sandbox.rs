//! The benchmark's sandbox: a private network namespace holding only `lo`,
//! the server processes started inside it, and the guarantee that both are
//! gone when the harness exits — normally, on error, or on Ctrl-C/SIGTERM.
//!
//! Children run in their own process groups so that a Ctrl-C on the
//! terminal reaches only the harness; it notices through [`interrupted`],
//! unwinds with an error, and the [`Sandbox`] drop kills every process in
//! the namespace (found through `ip netns pids`, which also catches
//! grandchildren such as rpcbind) and deletes the namespace. A harness that
//! was SIGKILLed leaves a namespace behind; [`Sandbox::create`] removes such
//! leftovers whose owning process is gone.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Namespaces are named `<prefix><harness pid>`.
const NETNS_PREFIX: &str = "tg-bench-";
/// How long processes get between SIGTERM and SIGKILL at teardown.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Poll interval while waiting for a child or a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to a flag instead of killing the harness.
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `on_signal` has the C ABI `signal` expects.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails when the harness was interrupted; call between steps.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with an error) on interrupt.
pub fn sleep_interruptible(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep(POLL_INTERVAL.min(end - now));
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A long-running process in the sandbox (a server).
pub struct Service {
    pub name: String,
    child: Child,
}

impl Service {
    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waitpid")? {
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct Sandbox {
    netns: String,
    services: Vec<Service>,
}

impl Sandbox {
    /// Creates the namespace `tg-bench-<pid>` with `lo` up.
    pub fn create() -> Result<Self> {
        remove_stale_namespaces();
        let netns = format!("{NETNS_PREFIX}{}", std::process::id());
        run_quiet(Command::new("ip").args(["netns", "add", &netns]))?;
        let sandbox = Self {
            netns,
            services: Vec::new(),
        };
        run_quiet(Command::new("ip").args(["-n", &sandbox.netns, "link", "set", "lo", "up"]))?;
        Ok(sandbox)
    }

    pub fn name(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` inside the namespace, in its own
    /// process group.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(program)
            .stdin(Stdio::null())
            .process_group(0);
        cmd
    }

    /// A command that runs `program` in the namespace's network but in
    /// the harness's own mount namespace (`nsenter --net`), in its own
    /// process group. Unlike [`Sandbox::command`] (whose `ip netns exec`
    /// makes a private mount namespace), a file system it mounts — a FUSE
    /// daemon's — is visible to the harness; its owner must unmount it.
    pub fn command_net_only(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null())
            .process_group(0);
        cmd
    }

    /// Starts a server in the sandbox with output to `log`; it is killed
    /// at teardown.
    pub fn spawn_service(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<()> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("dup {}", log.display()))?;
        cmd.stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {}", describe(&cmd)))?;
        self.services.push(Service {
            name: name.to_owned(),
            child,
        });
        Ok(())
    }

    pub fn service_mut(&mut self, name: &str) -> Option<&mut Service> {
        self.services.iter_mut().find(|s| s.name == name)
    }

    /// Stops one service (SIGTERM to its process group, SIGKILL after the
    /// grace period) and forgets it, so that it can be started afresh.
    pub fn stop_service(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.services.iter().position(|s| s.name == name) else {
            bail!("no service {name}");
        };
        let mut service = self.services.remove(i);
        let pid = service.pid() as i32;
        let group_alive = || {
            // SAFETY: signal 0 only checks that the group has a member.
            unsafe { libc::kill(-pid, 0) == 0 }
        };
        // SAFETY: signals the process group our own child leads.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if service.child.try_wait().context("waitpid")?.is_some() && !group_alive() {
                return Ok(());
            }
            thread::sleep(POLL_INTERVAL);
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = service.child.wait();
        Ok(())
    }

    /// Runs `f` on a thread that has entered the namespace, so that the
    /// sockets it (and any thread it spawns) opens live there. The calling
    /// thread stays where it is.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.netns);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).with_context(|| format!("open {path}"))?;
                    // SAFETY: setns on a namespace file descriptor we hold
                    // open; it changes only this thread's namespace.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("setns {path}"));
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|_| bail!("thread in namespace {} panicked", self.netns))
        })
    }

    /// Bytes sent on the namespace's `lo` so far. Every packet between
    /// client and server crosses it exactly once, so the difference over a
    /// run bounds what really moved.
    pub fn lo_tx_bytes(&self) -> Result<u64> {
        let mut cmd = self.command("cat");
        cmd.arg("/sys/class/net/lo/statistics/tx_bytes");
        let out = output_checked(&mut cmd)?;
        let text = String::from_utf8_lossy(&out);
        text.trim()
            .parse()
            .with_context(|| format!("parse lo tx_bytes {text:?}"))
    }

    fn teardown(&mut self) {
        let mut pids: Vec<i32> = self.services.iter().map(|s| s.pid() as i32).collect();
        pids.extend(netns_pids(&self.netns));
        pids.sort_unstable();
        pids.dedup();
        terminate(&pids);
        for service in &mut self.services {
            let _ = service.child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// SIGTERM to each pid, then SIGKILL to whatever is still alive after the
/// grace period.
fn terminate(pids: &[i32]) {
    let alive = |pid: i32| {
        // SAFETY: signal 0 only checks that the pid exists.
        unsafe { libc::kill(pid, 0) == 0 }
    };
    for &pid in pids {
        // SAFETY: sending a signal to a pid we started or that lives in our
        // own namespace; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p) && !is_zombie(p)) {
        thread::sleep(POLL_INTERVAL);
    }
    for &pid in pids {
        if alive(pid) && !is_zombie(pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn netns_pids(netns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", netns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes namespaces left by harness runs whose process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Ok(owner) = owner.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        eprintln!("removing stale network namespace {name}");
        terminate(&netns_pids(name));
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

/// Runs a short command, failing with its stderr if it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    output_checked(cmd).map(|_| ())
}

/// Runs a short command and returns its stdout; fails with its stderr.
pub fn output_checked(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Waits for a child, polling so that an interrupt is noticed; on interrupt
/// or timeout the child is killed.
pub fn wait_child(child: &mut Child, what: &str, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("wait for {what}"))?
        {
            return Ok(status);
        }
        if interrupted() || Instant::now() >= deadline {
            kill_group(child);
            let _ = child.wait();
            if interrupted() {
                bail!("interrupted while waiting for {what}");
            }
            bail!("{what} did not finish within {}s", timeout.as_secs());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILLs the child's process group (children are spawned as group
/// leaders by [`Sandbox::command`]), so that forked helpers such as fio's
/// job processes go with it.
fn kill_group(child: &mut Child) {
    let pid = child.id() as i32;
    // SAFETY: signals the process group led by our own child; no memory is
    // involved.
    let rc = unsafe { libc::kill(-pid, libc::SIGKILL) };
    if rc != 0 {
        let _ = child.kill();
    }
}

/// Renders a command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(err) => format!("({}: {err})", path.display()),
    }
}
