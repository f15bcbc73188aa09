//! Helpers for tests that need root: a check that fails loudly without it,
//! a command runner that panics with the command's output, and a tmpfs
//! mounted for the test and unmounted when dropped.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Time limit of one mount/umount/losetup command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Panics unless running as root: `test` needs it because `why`.
pub fn require_root(test: &str, why: &str) {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} needs root ({why}); run it as root, e.g. `sudo -E cargo nextest run -p tidegate-tests`"
    );
}

/// Runs a command; panics with its output unless it succeeds. Returns
/// stdout.
pub fn sh(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = crate::tools::run(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{shown}: {e:#}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}{}",
        out.status,
        out.stdout_text(),
        out.stderr
    );
    out.stdout_text()
}

/// A tmpfs of a given size on a fresh folder; unmounted on drop (lazily
/// if something still holds it), so also when the test fails.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("tidegate-tmpfs-")
            .tempdir()
            .expect("tempdir");
        sh(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(dir.path()));
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free for an unprivileged writer.
    pub fn free_bytes(&self) -> u64 {
        let c = CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is a plain C struct of integers, for which all
        // zero bytes are a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs(3) reads the NUL-terminated path (alive for the
        // call) and fills the struct we own.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(
            rc,
            0,
            "statvfs {}: {}",
            self.path().display(),
            std::io::Error::last_os_error()
        );
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.dir.path();
        let ok = Command::new("umount")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}
