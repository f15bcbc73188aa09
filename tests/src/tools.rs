//! External NFS clients (libnfs-utils, fio with the nfs engine) and running
//! them with a time limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::data::{Fingerprint, Hasher};
use crate::INSTALL_HINT;

/// Default location of the fio built with the nfs engine by the install script.
pub const DEFAULT_FIO: &str = "/usr/local/lib/tidegate-tools/bin/fio";

/// Find an executable on PATH; panic with the install hint when missing.
pub fn require_on_path(name: &str) -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if is_executable(&p) {
                return p;
            }
        }
    }
    panic!("`{name}` not found on PATH (it comes with Debian's libnfs-utils); {INSTALL_HINT}");
}

pub fn nfs_ls() -> PathBuf {
    require_on_path("nfs-ls")
}

pub fn nfs_cat() -> PathBuf {
    require_on_path("nfs-cat")
}

pub fn nfs_cp() -> PathBuf {
    require_on_path("nfs-cp")
}

/// fio with the nfs engine: `$TIDEGATE_FIO`, else [`DEFAULT_FIO`]. Panics
/// with the install hint when it is missing or lacks the nfs engine.
pub fn fio() -> PathBuf {
    let p = std::env::var_os("TIDEGATE_FIO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FIO));
    assert!(
        is_executable(&p),
        "fio with the nfs engine not found at {} (set TIDEGATE_FIO to override); {INSTALL_HINT}",
        p.display()
    );
    let out = run(
        Command::new(&p).arg("--enghelp=nfs"),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("running {} --enghelp=nfs failed: {e:#}", p.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr);
    assert!(
        out.status.success() && text.contains("nfs_url"),
        "{} has no nfs engine (`fio --enghelp=nfs` said: {text}); it must be built against libnfs-dev; {INSTALL_HINT}",
        p.display()
    );
    p
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

/// Escape a path for a libnfs URL. libnfs decodes `%XX` everywhere in the
/// URL before splitting it, so only `%` itself needs escaping; `?` and `&`
/// cannot be expressed at all and are rejected.
fn url_escape(path: &str) -> String {
    assert!(
        !path.contains('?') && !path.contains('&'),
        "libnfs URLs cannot carry '?' or '&' in a path: {path:?}"
    );
    path.replace('%', "%25")
}

fn url_options(port: u16) -> String {
    format!("nfsport={port}&mountport={port}&version=3")
}

/// URL of the export root `/`, for `nfs-ls` and fio's `nfs_url`.
/// libnfs sends MNT with the path after the host: here `/`.
pub fn nfs_root_url(port: u16) -> String {
    format!("nfs://127.0.0.1/?{}", url_options(port))
}

/// URL of a directory below the export root, for `nfs-ls`. libnfs mounts the
/// whole path (MNT `//dir`), so this relies on the server accepting MNT of a
/// directory below `/`.
pub fn nfs_dir_url(port: u16, rel_dir: &str) -> String {
    let rel = rel_dir.trim_matches('/');
    if rel.is_empty() {
        return nfs_root_url(port);
    }
    format!("nfs://127.0.0.1//{}?{}", url_escape(rel), url_options(port))
}

/// URL of a file, for `nfs-cat` and `nfs-cp`. libnfs splits at the last '/':
/// it mounts what precedes it and opens the last component. The double
/// slash makes a top-level file mount `/` (a single slash would mount the
/// empty path); a nested file mounts `//dir/sub`, which the server must
/// resolve as a directory below the export `/`.
pub fn nfs_file_url(port: u16, rel_path: &str) -> String {
    let rel = rel_path.trim_start_matches('/');
    format!("nfs://127.0.0.1//{}?{}", url_escape(rel), url_options(port))
}

/// What a finished command left behind.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Run a command to completion within `timeout`, capturing stdout and stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let (status, stdout, stderr) = run_with(cmd, timeout, |mut r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    })?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Run a command within `timeout`, hashing its stdout as it streams (for
/// large reads through `nfs-cat`).
pub fn run_hash_stdout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(ExitStatus, Fingerprint, String)> {
    run_with(cmd, timeout, |mut r| {
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish())
    })
}

fn run_with<T: Send + 'static>(
    cmd: &mut Command,
    timeout: Duration,
    consume_stdout: impl FnOnce(std::process::ChildStdout) -> std::io::Result<T> + Send + 'static,
) -> Result<(ExitStatus, T, String)> {
    use std::os::unix::process::CommandExt;
    let desc = format!("{cmd:?}");
    // Its own process group, so a timeout also reaches processes it forked
    // (fio runs each job in a child), which would otherwise hold the output
    // pipes open.
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {desc}"))?;
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || consume_stdout(stdout));
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().with_context(|| format!("wait {desc}"))? {
            break s;
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            let err = err_thread.join().unwrap_or_default();
            bail!("{desc} did not finish within {timeout:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out_thread
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader of {desc} panicked"))?
        .with_context(|| format!("read stdout of {desc}"))?;
    let err = err_thread.join().unwrap_or_default();
    Ok((status, out, err))
}

fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group we
    // created for this command; it is called before the leader (our child)
    // is reaped, so the group id cannot have been reused. No memory is
    // touched.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
}

/// One line of `nfs-ls` output: `-rw-r--r--  1     0     0         1234 dir/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsEntry {
    /// First character of the mode column: `-`, `d`, `l`, ...
    pub kind: char,
    pub size: u64,
    /// Path relative to the listed directory, '/'-separated.
    pub path: String,
}

/// Parse `nfs-ls` output. The name is everything after the fifth field and
/// one space, so names with spaces survive.
pub fn parse_nfs_ls(stdout: &str) -> Result<Vec<LsEntry>> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        if line.is_empty() {
            continue;
        }
        let mut rest = line;
        let mut fields = Vec::with_capacity(5);
        for _ in 0..5 {
            rest = rest.trim_start_matches(' ');
            let end = rest
                .find(' ')
                .with_context(|| format!("short nfs-ls line: {line:?}"))?;
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let path = rest
            .strip_prefix(' ')
            .with_context(|| format!("no name in nfs-ls line: {line:?}"))?;
        let mode = fields[0];
        if mode.len() != 10 {
            bail!("unexpected mode column in nfs-ls line: {line:?}");
        }
        let kind = mode.chars().next().unwrap();
        let size = fields[4]
            .parse()
            .with_context(|| format!("size column in nfs-ls line: {line:?}"))?;
        out.push(LsEntry {
            kind,
            size,
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// Walk a local directory: (relative path, kind '-' or 'd', size) for every
/// entry below it, in the shape `nfs-ls -R` prints.
pub fn walk_local(root: &Path) -> Result<Vec<LsEntry>> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<LsEntry>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("read_dir {}", dir.display()))? {
            let e = e?;
            let md = e.metadata()?;
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .context("non-UTF-8 test file name")?
                .to_string();
            if md.is_dir() {
                out.push(LsEntry {
                    kind: 'd',
                    size: md.len(),
                    path: rel,
                });
                go(root, &e.path(), out)?;
            } else {
                out.push(LsEntry {
                    kind: '-',
                    size: md.len(),
                    path: rel,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(root, root, &mut out)?;
    Ok(out)
}
