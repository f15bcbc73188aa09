//! The systems of the suite, each started fresh for a workload and stopped
//! after it: tidegate and `rclone serve nfs` (NFSv3 over the bucket),
//! NFS-Ganesha (NFSv3 over a local copy of the same data), and s3fs and
//! `rclone mount` (FUSE mounts of the bucket).
//!
//! Every S3 client reaches SeaweedFS through the suite's counting proxy,
//! so the bytes each system fetched from S3 are known (the hit ratio of the
//! cyclic sweep) and one knob delays every answer (the cold read of (e)).
//! The NFS servers run in the namespace with only `lo`; the FUSE daemons
//! run in its network but in the harness's mount namespace, so their
//! mounts are visible to the harness's readers.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::sandbox::{self, Sandbox};
use crate::seaweed::Seaweed;
use crate::servers::{self, TidegateS3};
use crate::{ganesha, nfs3};

/// The bucket every S3-backed system serves.
pub const BUCKET: &str = "bench";
/// Ports inside the namespace.
const TIDEGATE_PORT: u16 = 20490;
const TIDEGATE_ADMIN_PORT: u16 = 20491;
const RCLONE_PORT: u16 = 20492;
/// Ganesha's NFS port (its MOUNT port comes from rpcbind).
const GANESHA_NFS_PORT: u16 = 2049;
/// tidegate trusts attributes and listings as long as the peers do by
/// default: rclone's `--dir-cache-time` is 5 minutes (s3fs keeps stat
/// entries for 15). tidegate's own default is 3 s.
pub const TIDEGATE_META_TTL: &str = "5m";
/// How long a FUSE daemon may take to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a FUSE daemon may take to exit after its unmount.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// A way of serving the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sys {
    Tidegate,
    /// tidegate with `--prefetch off` (the cold read of (e) only).
    TidegateNoPrefetch,
    Ganesha,
    RcloneNfs,
    S3fs,
    RcloneMount,
}

impl Sys {
    pub fn name(self) -> &'static str {
        match self {
            Sys::Tidegate => "tidegate",
            Sys::TidegateNoPrefetch => "tidegate, prefetch off",
            Sys::Ganesha => "NFS-Ganesha (local copy)",
            Sys::RcloneNfs => "rclone serve nfs",
            Sys::S3fs => "s3fs (FUSE)",
            Sys::RcloneMount => "rclone mount (FUSE)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Sys::Tidegate => "tidegate",
            Sys::TidegateNoPrefetch => "tidegate-noprefetch",
            Sys::Ganesha => "ganesha",
            Sys::RcloneNfs => "rclone-nfs",
            Sys::S3fs => "s3fs",
            Sys::RcloneMount => "rclone-mount",
        }
    }

    pub fn is_tidegate(self) -> bool {
        matches!(self, Sys::Tidegate | Sys::TidegateNoPrefetch)
    }

    /// Whether it reads the bucket (all but Ganesha).
    pub fn uses_s3(self) -> bool {
        self != Sys::Ganesha
    }

    /// Whether it is reached through a FUSE mount (else NFS).
    pub fn is_fuse(self) -> bool {
        matches!(self, Sys::S3fs | Sys::RcloneMount)
    }

    /// The process whose CPU and memory are the system's.
    fn comm(self) -> &'static str {
        match self {
            Sys::Tidegate | Sys::TidegateNoPrefetch => "tidegate",
            Sys::Ganesha => ganesha::NFSD_COMM,
            Sys::RcloneNfs | Sys::RcloneMount => "rclone",
            Sys::S3fs => "s3fs",
        }
    }
}

/// Programs the systems run.
#[derive(Debug, Clone)]
pub struct Bins {
    pub tidegate: PathBuf,
    pub rclone: PathBuf,
    pub s3fs: PathBuf,
}

/// How a workload asks for a system to be set up.
#[derive(Debug, Clone, Default)]
pub struct StartSpec {
    /// Bytes of data cache (tidegate's NVMe cache with its memory tier
    /// off, rclone's `--vfs-cache-max-size`); `None` leaves them at what
    /// the suite uses elsewhere (large enough for every data set).
    pub cache_bytes: Option<u64>,
    /// Upload as soon as possible after a file is closed or committed
    /// (tidegate `--upload-delay 0s`, rclone `--vfs-write-back 0s`).
    pub eager_upload: bool,
}

/// How clients reach a running system.
#[derive(Debug, Clone)]
pub enum Access {
    /// NFSv3: the NFS and MOUNT addresses (in the namespace) and a libnfs
    /// URL of the export root for fio.
    Nfs {
        nfs: SocketAddr,
        mount: SocketAddr,
        url: String,
    },
    /// A FUSE mount on this folder.
    Mount(PathBuf),
}

/// A started system.
pub struct Running {
    pub sys: Sys,
    pub access: Access,
    /// The server (or FUSE daemon) process.
    pub pid: u32,
    /// tidegate's admin address port (`/stats`) in the namespace.
    pub admin_port: Option<u16>,
    pub log: PathBuf,
    /// State, caches and logs of this start.
    dir: PathBuf,
    service: Option<String>,
    fuse: Option<FuseMount>,
}

impl Running {
    /// Fails when the server or daemon has exited.
    pub fn check_alive(&mut self, sb: &mut Sandbox) -> Result<()> {
        if let Some(f) = self.fuse.as_mut() {
            return f.check_alive().with_context(|| {
                format!(
                    "{}; last lines of {}:\n{}",
                    self.sys.name(),
                    self.log.display(),
                    sandbox::log_tail(&self.log, 10)
                )
            });
        }
        if let Some(name) = &self.service {
            if let Some(s) = sb.service_mut(name) {
                return s.check_alive().with_context(|| {
                    format!(
                        "{}; last lines of {}:\n{}",
                        self.sys.name(),
                        self.log.display(),
                        sandbox::log_tail(&self.log, 10)
                    )
                });
            }
        }
        Ok(())
    }

    /// Bytes allocated on disk under this start's folder, logs aside: the
    /// system's state and caches (tidegate's cache file, rclone's VFS
    /// cache, s3fs's temporary files).
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = fs::symlink_metadata(p) else {
                return 0;
            };
            if m.is_dir() {
                fs::read_dir(p)
                    .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                    .unwrap_or(0)
            } else if p.extension().is_some_and(|x| x == "log") {
                0
            } else {
                m.blocks() * 512
            }
        }
        match &self.fuse {
            // The mount point itself is the system's view of the bucket.
            Some(f) => fs::read_dir(&self.dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path() != f.mnt)
                        .map(|e| walk(&e.path()))
                        .sum()
                })
                .unwrap_or(0),
            None => walk(&self.dir),
        }
    }

    /// CPU seconds the process has used so far.
    pub fn cpu_secs(&self) -> f64 {
        crate::cpu_secs(self.pid).unwrap_or(f64::NAN)
    }

    /// Peak resident memory so far (VmHWM).
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        crate::peak_rss_bytes(self.pid).ok()
    }
}

/// What the systems share: the sandbox's store, the folders.
pub struct World<'a> {
    pub bins: &'a Bins,
    /// SeaweedFS as the systems reach it (through the proxy).
    pub s3: &'a Seaweed,
    /// The local copy Ganesha exports (the bucket's layout).
    pub local_dir: &'a Path,
    /// Per-system state, caches and logs are made under here.
    pub run_dir: &'a Path,
    pub workers: Option<u32>,
    /// Further flags for tidegate.
    pub tidegate_args: &'a [String],
}

/// Starts `sys` fresh (empty state and caches) and waits until `probe`
/// (a path in the export) can be looked up or stat'ed.
pub fn start(
    sb: &mut Sandbox,
    w: &World<'_>,
    sys: Sys,
    spec: &StartSpec,
    tag: &str,
    probe: &str,
) -> Result<Running> {
    let dir = w.run_dir.join(format!("{}-{tag}", sys.short()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.join("").display()))?;
    let service = format!("{}-{tag}", sys.short());
    let log = dir.join("server.log");
    let nfs_access = |port: u16| Access::Nfs {
        nfs: SocketAddr::from(([127, 0, 0, 1], port)),
        mount: SocketAddr::from(([127, 0, 0, 1], port)),
        // No MOUNT EXPORT after MNT: rclone has no such procedure and
        // libnfs cannot parse its error reply.
        url: format!("{}&auto-traverse-mounts=0", nfs3::libnfs_url(port)),
    };
    match sys {
        Sys::Tidegate | Sys::TidegateNoPrefetch => {
            let mut extra = vec![
                "--admin".to_owned(),
                format!("127.0.0.1:{TIDEGATE_ADMIN_PORT}"),
                "--meta-ttl".to_owned(),
                TIDEGATE_META_TTL.to_owned(),
            ];
            match spec.cache_bytes {
                Some(b) => extra.extend([
                    "--cache-size".to_owned(),
                    b.to_string(),
                    "--cache-memory".to_owned(),
                    "0".to_owned(),
                ]),
                None => extra.extend(["--cache-size".to_owned(), "4GiB".to_owned()]),
            }
            extra.extend(w.tidegate_args.iter().cloned());
            if sys == Sys::TidegateNoPrefetch {
                extra.extend(["--prefetch".to_owned(), "off".to_owned()]);
            }
            if spec.eager_upload {
                extra.extend(["--upload-delay".to_owned(), "0s".to_owned()]);
            }
            let t = TidegateS3 {
                bin: &w.bins.tidegate,
                bucket: BUCKET,
                port: TIDEGATE_PORT,
                state_dir: &dir.join("state"),
                workers: w.workers,
                extra_args: &extra,
                wrapper: &[],
                env: &[],
            };
            servers::start_tidegate_s3(sb, &service, &t, w.s3, &log)?;
            servers::wait_nfs_ready(sb, &service, TIDEGATE_PORT, probe, &log)?;
            let pid = service_pid(sb, &service, sys)?;
            Ok(Running {
                sys,
                access: nfs_access(TIDEGATE_PORT),
                pid,
                admin_port: Some(TIDEGATE_ADMIN_PORT),
                log,
                dir: dir.clone(),
                service: Some(service),
                fuse: None,
            })
        }
        Sys::RcloneNfs => {
            let mut cmd = sb.command(&w.bins.rclone);
            cmd.args(["serve", "nfs"])
                .arg(format!("{RCLONE_REMOTE}:{BUCKET}"))
                .args(["--addr", &format!("127.0.0.1:{RCLONE_PORT}")]);
            rclone_common(&mut cmd, w, spec, &dir)?;
            sb.spawn_service(&service, cmd, &log)?;
            servers::wait_nfs_ready(sb, &service, RCLONE_PORT, probe, &log)?;
            let pid = service_pid(sb, &service, sys)?;
            Ok(Running {
                sys,
                access: nfs_access(RCLONE_PORT),
                pid,
                admin_port: None,
                log,
                dir: dir.clone(),
                service: Some(service),
                fuse: None,
            })
        }
        Sys::Ganesha => {
            ganesha::start(sb, &service, &dir, w.local_dir)?;
            let glog = ganesha::log_path(&dir);
            let url = ganesha::export_url();
            // The probe's first component in the export root: listing its
            // own folder could take long (the metadata workload's).
            let top = probe.split('/').next().unwrap_or(probe);
            servers::wait_listed(sb, &service, &url, top, &glog)?;
            let pid = service_pid(sb, &service, sys)?;
            let mount_port = sb
                .in_netns(|| crate::write::rpcbind_getport(nfs3::MOUNT_PROGRAM, 3))
                .context("Ganesha's MOUNT port from rpcbind")?;
            Ok(Running {
                sys,
                access: Access::Nfs {
                    nfs: SocketAddr::from(([127, 0, 0, 1], GANESHA_NFS_PORT)),
                    mount: SocketAddr::from(([127, 0, 0, 1], mount_port)),
                    url,
                },
                pid,
                admin_port: None,
                log: glog,
                dir: dir.clone(),
                service: Some(service),
                fuse: None,
            })
        }
        Sys::S3fs => {
            let passwd = dir.join("passwd");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&passwd)
                    .with_context(|| format!("create {}", passwd.display()))?;
                writeln!(
                    f,
                    "{}:{}",
                    w.s3.target.access_key_id, w.s3.target.secret_access_key
                )?;
            }
            let tmpdir = dir.join("tmp");
            fs::create_dir_all(&tmpdir)?;
            let mnt = dir.join("mnt");
            let mut cmd = sb.command_net_only(&w.bins.s3fs);
            cmd.arg(BUCKET)
                .arg(fs::canonicalize(&dir)?.join("mnt"))
                .arg("-f")
                .args(["-o", &format!("url={}", w.s3.target.endpoint())])
                .args(["-o", "use_path_request_style"])
                .args(["-o", &format!("passwd_file={}", passwd.display())])
                .args(["-o", &format!("tmpdir={}", tmpdir.display())])
                .args(["-o", &format!("endpoint={}", w.s3.target.region)])
                .args(["-o", "dbglevel=warn"])
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_SESSION_TOKEN");
            let fuse = FuseMount::start(cmd, &mnt, &log, "s3fs")?;
            wait_visible(&fuse.mnt.join(probe), &log)?;
            let pid = fuse.pid;
            Ok(Running {
                sys,
                access: Access::Mount(fuse.mnt.clone()),
                pid,
                admin_port: None,
                log,
                dir: dir.clone(),
                service: None,
                fuse: Some(fuse),
            })
        }
        Sys::RcloneMount => {
            let mnt = dir.join("mnt");
            fs::create_dir_all(&mnt)?;
            let mut cmd = sb.command_net_only(&w.bins.rclone);
            cmd.arg("mount")
                .arg(format!("{RCLONE_REMOTE}:{BUCKET}"))
                .arg(fs::canonicalize(&mnt)?);
            rclone_common(&mut cmd, w, spec, &dir)?;
            fusermount3_shim(&mut cmd, &dir)?;
            let fuse = FuseMount::start(cmd, &mnt, &log, "rclone mount")?;
            wait_visible(&fuse.mnt.join(probe), &log)?;
            let pid = fuse.pid;
            Ok(Running {
                sys,
                access: Access::Mount(fuse.mnt.clone()),
                pid,
                admin_port: None,
                log,
                dir: dir.clone(),
                service: None,
                fuse: Some(fuse),
            })
        }
    }
}

/// Stops a system: FUSE mounts are unmounted cleanly, servers get SIGTERM.
/// Then everything of the start but its logs is removed (caches are
/// gigabytes).
pub fn stop(sb: &mut Sandbox, r: Running) -> Result<()> {
    let Running {
        service, fuse, dir, ..
    } = r;
    let unmounted = match fuse {
        Some(f) => f.unmount(),
        None => Ok(()),
    };
    let stopped = match service {
        Some(name) => sb.stop_service(&name),
        None => Ok(()),
    };
    unmounted?;
    stopped?;
    remove_all_but_logs(&dir)
}

fn remove_all_but_logs(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(&p).with_context(|| format!("remove {}", p.display()))?;
        } else if p.extension().is_none_or(|x| x != "log") {
            fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
        }
    }
    Ok(())
}

/// The rclone remote the environment defines.
const RCLONE_REMOTE: &str = "seaweed";

/// Flags and environment `rclone serve nfs` and `rclone mount` share: the
/// remote (SeaweedFS through the proxy), `--vfs-cache-mode full`, an empty
/// cache folder and config file.
fn rclone_common(cmd: &mut Command, w: &World<'_>, spec: &StartSpec, dir: &Path) -> Result<()> {
    let cache = dir.join("cache");
    fs::create_dir_all(&cache)?;
    let config = dir.join("rclone.conf");
    fs::write(&config, "").with_context(|| format!("write {}", config.display()))?;
    cmd.args(["--vfs-cache-mode", "full"])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--config")
        .arg(&config);
    if let Some(b) = spec.cache_bytes {
        cmd.args(["--vfs-cache-max-size", &b.to_string()]);
    }
    if spec.eager_upload {
        cmd.args(["--vfs-write-back", "0s"]);
    }
    let upper = RCLONE_REMOTE.to_uppercase();
    let var = |field: &str| format!("RCLONE_CONFIG_{upper}_{field}");
    cmd.env(var("TYPE"), "s3")
        .env(var("PROVIDER"), "Other")
        .env(var("ENDPOINT"), w.s3.target.endpoint())
        .env(var("REGION"), &w.s3.target.region)
        .env(var("ACCESS_KEY_ID"), &w.s3.target.access_key_id)
        .env(var("SECRET_ACCESS_KEY"), &w.s3.target.secret_access_key)
        .env_remove("AWS_CA_BUNDLE");
    Ok(())
}

/// rclone mounts with `fusermount3`; where only FUSE 2's `fusermount` is
/// installed (Debian's s3fs depends on it, and its package conflicts with
/// fuse3's), a `fusermount3` that is `fusermount` goes first on rclone's
/// PATH. The mount protocol rclone speaks to it is the same.
fn fusermount3_shim(cmd: &mut Command, dir: &Path) -> Result<()> {
    if crate::find_tool("fusermount3").is_some() {
        return Ok(());
    }
    let fusermount = crate::find_tool("fusermount")
        .context("neither fusermount3 nor fusermount found (apt-get install fuse3 or fuse)")?;
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    let shim = bin.join("fusermount3");
    let _ = fs::remove_file(&shim);
    std::os::unix::fs::symlink(&fusermount, &shim)
        .with_context(|| format!("link {}", shim.display()))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![fs::canonicalize(&bin)?];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs)?);
    Ok(())
}

fn service_pid(sb: &mut Sandbox, service: &str, sys: Sys) -> Result<u32> {
    let pid = sb
        .service_mut(service)
        .map(|s| s.pid())
        .with_context(|| format!("{service} not started"))?;
    // Ganesha's pid is the child of a shell that started rpcbind first.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = servers::find_process(pid, sys.comm()) {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            bail!("no {} process under pid {pid}", sys.comm());
        }
        sandbox::sleep_interruptible(Duration::from_millis(50))?;
    }
}

/// Waits until `path` in a FUSE mount can be stat'ed.
fn wait_visible(path: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        match fs::symlink_metadata(path) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!(
                "{} not visible within {}s ({e}); last lines of {}:\n{}",
                path.display(),
                MOUNT_TIMEOUT.as_secs(),
                log.display(),
                sandbox::log_tail(log, 20)
            ),
            Err(_) => sandbox::sleep_interruptible(Duration::from_millis(100))?,
        }
    }
}

/// A FUSE daemon in the foreground with its mount; unmounted and stopped
/// on drop when [`FuseMount::unmount`] was not called.
pub struct FuseMount {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub pid: u32,
    what: &'static str,
}

impl FuseMount {
    /// Spawns `cmd` (which mounts on `mnt` and stays in the foreground)
    /// with output to `log`, and waits until `mnt` is a mount point.
    pub fn start(mut cmd: Command, mnt: &Path, log: &Path, what: &'static str) -> Result<Self> {
        fs::create_dir_all(mnt).with_context(|| format!("create {}", mnt.display()))?;
        let mnt = fs::canonicalize(mnt)?;
        ensure!(
            !is_mounted(&mnt)?,
            "{} is already a mount point",
            mnt.display()
        );
        let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", sandbox::describe(&cmd)))?;
        let pid = child.id();
        let mut m = Self {
            child: Some(child),
            mnt,
            pid,
            what,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_mounted(&m.mnt)? {
                return Ok(m);
            }
            if let Some(c) = m.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    m.child = None;
                    bail!(
                        "{what} exited ({status}) before mounting; last lines of {}:\n{}",
                        log.display(),
                        sandbox::log_tail(log, 20)
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what} did not mount {} within {}s; last lines of {}:\n{}",
                    m.mnt.display(),
                    MOUNT_TIMEOUT.as_secs(),
                    log.display(),
                    sandbox::log_tail(log, 20)
                );
            }
            sandbox::sleep_interruptible(Duration::from_millis(100))?;
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.as_mut().map(Child::try_wait).transpose()? {
            Some(None) => Ok(()),
            Some(Some(status)) => bail!("{} exited ({status})", self.what),
            None => bail!("{} is not running", self.what),
        }
    }

    /// Unmounts (`fusermount -u`) and waits for the daemon to exit.
    pub fn unmount(mut self) -> Result<()> {
        let status = Command::new("fusermount")
            .arg("-u")
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .status()
            .context("run fusermount -u")?;
        ensure!(
            status.success(),
            "fusermount -u {} failed",
            self.mnt.display()
        );
        if let Some(mut c) = self.child.take() {
            sandbox::wait_child(&mut c, "the FUSE daemon to exit", UNMOUNT_TIMEOUT)?;
        }
        Ok(())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A dead daemon aborts the FUSE connection, which frees any
            // process stuck on the mount; then detach the mount.
            // SAFETY: signals the process group our own child leads.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
        if is_mounted(&self.mnt).unwrap_or(true) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether `mnt` (canonical) is a mount point of this mount namespace.
pub fn is_mounted(mnt: &Path) -> Result<bool> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    Ok(text
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_str())))
}

/// Detaches FUSE mounts under `dir` that a killed earlier run left behind.
pub fn remove_stale_mounts(dir: &Path) {
    let Ok(dir) = fs::canonicalize(dir) else {
        return;
    };
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in text.lines() {
        let Some(mnt) = line.split_whitespace().nth(4) else {
            continue;
        };
        let mnt = Path::new(mnt);
        if mnt.starts_with(&dir) {
            eprintln!("bench: detaching stale mount {}", mnt.display());
            let _ = Command::new("umount")
                .arg("-l")
                .arg(mnt)
                .stdin(Stdio::null())
                .status();
        }
    }
}
