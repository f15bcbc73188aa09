//! `cargo xtask vm`: the real Linux NFS client against tidegate, in a qemu
//! guest.
//!
//! The host kernel has no NFS client, so every kernel-client test runs in a
//! small guest: a Debian kernel and a busybox initramfs (built once by
//! `xtask/scripts/install-vm-deps.sh` and cached outside the checkout), with
//! no network card unless a scenario exports S3 (below). The guest mounts a 9p share from the host that carries
//! everything that changes between runs: the statically linked `tidegate`
//! and helper binaries, the scenario scripts, the dataset the gateway
//! exports, and the expectations the host computed from that dataset. The
//! gateway runs inside the guest on the guest's loopback, so the kernel
//! client talks to it over real TCP without any traffic leaving the guest.
//!
//! One boot runs every selected scenario in order (`tests/vm/runner.sh`).
//! The guest reports progress as marker lines on its serial console; the
//! host turns them into a pass/fail line per step with timings and owns all
//! timeouts. A scenario that overruns its timeout (an NFS hang leaves
//! processes unkillable in the guest) gets qemu killed, counts as failed,
//! and the remaining scenarios run in a fresh boot. qemu is killed whenever
//! the harness ends, also when xtask itself dies (PR_SET_PDEATHSIG).
//!
//! Scenarios are `tests/vm/scenarios/NN-name.sh`: a comment header (the
//! first line describes it; `# timeout: SECONDS`, `# default: no`,
//! `# needs: pjdfstest`, `# source: s3 ...`, `# gateway: ARGS`,
//! `# memory: MIB` are read here, see `scenario.rs`) and a busybox sh body
//! that uses the helpers of `tests/vm/lib.sh`. `NN` orders them; `name`
//! selects them.
//!
//! A scenario with `# source: s3` exports a bucket instead of the dataset
//! copy: the host runs SeaweedFS on its own loopback, fills a bucket per
//! such scenario, and gives the guest a NIC whose only way out is one
//! forwarded port to that S3 (see `s3.rs`). After the scenario, its host
//! check (`NN-name.check.py`, python3 + boto3) looks at what the gateway
//! left in the bucket.

mod qemu;
mod s3;
mod scenario;
mod share;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Workspace;
use scenario::Scenario;

/// The target triple of the static build (the musl target is not available;
/// glibc links statically with `+crt-static`).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

const NFS_VERSIONS: &[&str] = &["3", "4.0", "4.1", "4.2"];

pub const USAGE: &str = "\
cargo xtask vm [OPTIONS] [SCENARIO...]

Boots a qemu guest with the real Linux NFS client, runs tidegate inside it
on the guest's loopback, mounts it and runs the scenarios of
tests/vm/scenarios (all default ones when none is named). Prints a pass/fail
line per step with timings; exits non-zero when any step fails.

Steps: install-vm-deps.sh (qemu, busybox, the cached kernel + initramfs;
with S3 scenarios also SeaweedFS and boto3), static build of tidegate and
tidegate-guest (target/vm-build), the share in target/vm/share (the dataset
is generated once and cached), SeaweedFS on 127.0.0.1 with a bucket per S3
scenario (only when one is selected), boot and run.

Scenarios with `# source: s3` export a bucket of their own (vm-NAME) on a
SeaweedFS that runs on the host's loopback (data and log in target/vm/s3).
The guest's only network path is qemu user networking with restrict=on and
one guestfwd rule, 10.0.2.100:8333 -> 127.0.0.1:<weed S3 port>. Their host
check, NN-name.check.py, runs after the guest part passes.

Options:
  --nfs-version V       3 (default), 4.0, 4.1 or 4.2 (mount option vers=V)
  --all                 also run the scenarios left out of the default set
  --list                list the scenarios and exit
  --timeout-scale F     multiply every timeout by F (default 1, or
                        $TIDEGATE_VM_TIMEOUT_SCALE)
  --tidegate-bin PATH   use this statically linked tidegate instead of
                        building one
  -h, --help            print this text

Environment:
  TIDEGATE_VM_CACHE     where the kernel, initramfs and pjdfstest are cached
                        (default /var/cache/tidegate-vm)
  TIDEGATE_WEED         the SeaweedFS binary (default: weed on PATH)

Results, logs and the console transcript: target/vm/ (each scenario's log,
gateway log, kernel log and host-check log in target/vm/share/out/NAME/).
";

struct Options {
    names: Vec<String>,
    all: bool,
    list: bool,
    nfs_version: String,
    timeout_scale: f64,
    tidegate_bin: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[OsString]) -> Result<Option<Self>> {
        let mut o = Options {
            names: Vec::new(),
            all: false,
            list: false,
            nfs_version: "3".to_owned(),
            timeout_scale: match std::env::var("TIDEGATE_VM_TIMEOUT_SCALE") {
                Ok(v) => parse_scale(&v)?,
                Err(_) => 1.0,
            },
            tidegate_bin: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let arg = arg
                .to_str()
                .with_context(|| format!("argument is not UTF-8: {arg:?}"))?;
            let mut value = |flag: &str| -> Result<String> {
                it.next()
                    .and_then(|v| v.to_str())
                    .map(str::to_owned)
                    .with_context(|| format!("{flag} needs a value"))
            };
            match arg {
                "-h" | "--help" => {
                    print!("{USAGE}");
                    return Ok(None);
                }
                "--all" => o.all = true,
                "--list" => o.list = true,
                "--nfs-version" => o.nfs_version = value(arg)?,
                "--timeout-scale" => o.timeout_scale = parse_scale(&value(arg)?)?,
                "--tidegate-bin" => o.tidegate_bin = Some(PathBuf::from(value(arg)?)),
                _ if arg.starts_with("--nfs-version=") => {
                    o.nfs_version = arg["--nfs-version=".len()..].to_owned()
                }
                _ if arg.starts_with('-') => bail!("unknown option {arg}\n\n{USAGE}"),
                _ => o.names.push(arg.to_owned()),
            }
        }
        if !NFS_VERSIONS.contains(&o.nfs_version.as_str()) {
            bail!(
                "--nfs-version {}: expected one of {}",
                o.nfs_version,
                NFS_VERSIONS.join(", ")
            );
        }
        Ok(Some(o))
    }
}

fn parse_scale(v: &str) -> Result<f64> {
    let f: f64 = v
        .parse()
        .with_context(|| format!("timeout scale {v:?} is not a number"))?;
    if !(0.1..=100.0).contains(&f) {
        bail!("timeout scale {f} is out of range (0.1 to 100)");
    }
    Ok(f)
}

/// Outcome of one reported step (a boot or a scenario).
pub struct StepResult {
    pub name: String,
    pub passed: bool,
    pub secs: f64,
    pub detail: String,
}

pub fn cmd_vm(ws: &Workspace, args: &[OsString]) -> Result<ExitCode> {
    // What qemu runs per guest connection to S3 (internal; see s3.rs).
    if args.first().is_some_and(|a| a == "--relay") {
        let target = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
        s3::relay(target);
    }
    let Some(opts) = Options::parse(args)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let started = Instant::now();
    let all = scenario::discover(&ws.root.join("tests/vm/scenarios"))?;
    if opts.list {
        scenario::print_list(&all);
        return Ok(ExitCode::SUCCESS);
    }
    let selected = scenario::select(&all, &opts.names, opts.all)?;
    if selected.is_empty() {
        bail!("no scenario selected");
    }
    let needs_pjdfstest = selected.iter().any(|s| s.needs("pjdfstest"));
    let needs_s3 = selected.iter().any(|s| s.is_s3());
    let cache = cache_dir();
    let steps = if needs_s3 { 5 } else { 4 };

    ws.header(
        1,
        steps,
        "install VM dependencies (xtask/scripts/install-vm-deps.sh)",
    );
    let mut install = ws.script("install-vm-deps.sh");
    if needs_pjdfstest {
        install.arg("--pjdfstest");
    }
    if needs_s3 {
        install.arg("--s3");
    }
    install.env("TIDEGATE_VM_CACHE", &cache);
    ws.run(install).context("installing VM dependencies")?;

    let build_dir = ws.root.join("target/vm-build");
    let release_dir = build_dir.join(GUEST_TARGET).join("release");
    let tidegate_bin = match &opts.tidegate_bin {
        Some(p) => {
            ws.header(2, steps, "static build of tidegate-guest (tidegate given)");
            ws.run(static_build(ws, &build_dir, &["tidegate-guest"]))
                .context("building tidegate-guest")?;
            p.clone()
        }
        None => {
            ws.header(
                2,
                steps,
                "static build of tidegate and tidegate-guest (target/vm-build)",
            );
            ws.run(static_build(
                ws,
                &build_dir,
                &["tidegate", "tidegate-guest"],
            ))
            .context("building the static binaries")?;
            release_dir.join("tidegate")
        }
    };
    let guest_bin = release_dir.join("tidegate-guest");
    let mut bins = vec![
        ("tidegate", tidegate_bin),
        ("tidegate-guest", guest_bin.clone()),
    ];
    if needs_pjdfstest {
        bins.push((
            "pjdfstest",
            cache.join(format!("pjdfstest-{PJDFSTEST_VERSION}/bin/pjdfstest")),
        ));
    }
    for (_, path) in &bins {
        require_static(path)?;
    }

    ws.header(
        3,
        steps,
        "share: binaries, scenarios, dataset (target/vm/share)",
    );
    let vm_dir = ws.root.join("target/vm");
    let share = share::prepare(&share::Inputs {
        root: &ws.root,
        vm_dir: &vm_dir,
        bins: &bins,
        generator: &guest_bin,
        scenarios: &selected,
    })?;

    let s3 = if needs_s3 {
        ws.header(
            4,
            steps,
            "S3: SeaweedFS on 127.0.0.1, a bucket per S3 scenario (target/vm/s3)",
        );
        let sw = s3::Seaweed::start(&vm_dir.join("s3"), &ws.root)
            .context("starting SeaweedFS for the S3 scenarios")?;
        say(&format!(
            "s3: SeaweedFS S3 on {} (log {})",
            sw.endpoint(),
            sw.log_path().display()
        ));
        for s in selected.iter().filter(|s| s.is_s3()) {
            sw.fill(s, &share.data_dir())?;
        }
        let net = s3::GuestNet::new(&vm_dir, sw.s3_port)?;
        Some((sw, net))
    } else {
        None
    };
    share.write_scenario_envs(&selected, s3.as_ref().map(|(sw, _)| sw))?;

    ws.header(
        steps,
        steps,
        &format!(
            "boot and run {} scenario(s) over NFSv{}",
            selected.len(),
            opts.nfs_version
        ),
    );
    let image = qemu::Image {
        kernel: cache.join("image/vmlinuz"),
        initrd: cache.join("image/initramfs.img"),
    };
    let results = qemu::run_all(&qemu::Run {
        image: &image,
        share: &share,
        vm_dir: &vm_dir,
        scenarios: &selected,
        nfs_version: &opts.nfs_version,
        timeout_scale: opts.timeout_scale,
        s3: s3.as_ref().map(|(sw, net)| (sw, net)),
    })?;

    Ok(summarize(&results, &opts.nfs_version, started.elapsed()))
}

/// Must match PJDFSTEST_VERSION in install-vm-deps.sh.
const PJDFSTEST_VERSION: &str = "0.2.2";

fn cache_dir() -> PathBuf {
    std::env::var_os("TIDEGATE_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tidegate-vm"))
}

/// `cargo build --release` of the given packages' binaries for the guest,
/// statically linked, in its own target directory: other RUSTFLAGS in the
/// normal target directory would make every host build start over.
fn static_build(ws: &Workspace, target_dir: &Path, packages: &[&str]) -> std::process::Command {
    let mut cmd = ws.cargo(&["build", "--release", "--target", GUEST_TARGET]);
    cmd.arg("--target-dir").arg(target_dir);
    for p in packages {
        cmd.args(["-p", p, "--bin", p]);
    }
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

/// Fails unless `path` is an x86-64 ELF executable without an interpreter
/// (the guest has no dynamic loader or libc).
fn require_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let u16_at = |o: usize| -> Option<u16> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| -> Option<u32> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| -> Option<u64> {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELF magic, 64-bit, little endian, x86-64.
    if bytes.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) || u16_at(0x12) != Some(62) {
        bail!("{} is not an x86-64 ELF executable", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", path.display());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => bail!(
                "{} is dynamically linked (it has a program interpreter); the guest has no libc: \
                 build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target {GUEST_TARGET}",
                path.display()
            ),
            Some(_) => {}
            None => bail!("{}: truncated program headers", path.display()),
        }
    }
    Ok(())
}

fn format_secs(secs: f64) -> String {
    if secs >= 60.0 {
        format!("{}m{:04.1}s", (secs / 60.0) as u64, secs % 60.0)
    } else {
        format!("{secs:.1}s")
    }
}

fn summarize(results: &[StepResult], nfs_version: &str, wall: Duration) -> ExitCode {
    println!();
    println!("VM summary (NFSv{nfs_version}):");
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in results {
        println!(
            "  {}  {:width$}  {:>8}{}",
            if r.passed { "PASS" } else { "FAIL" },
            r.name,
            format_secs(r.secs),
            if r.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.detail)
            },
        );
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let failed = results.len() - passed;
    println!(
        "vm wall time {} (build, dataset and boots included)",
        format_secs(wall.as_secs_f64())
    );
    println!("vm: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Lines printed while the VM runs.
fn say(line: &str) {
    println!("[vm] {line}");
}

impl Scenario {
    fn needs(&self, what: &str) -> bool {
        self.needs.iter().any(|n| n == what)
    }
}
