//! Project orchestration: `cargo xtask <command>`.
//!
//! Every command is a fixed sequence of steps, each announced with a header,
//! each an external program whose exit status decides the outcome. Nothing
//! here is clever: the point is that a developer and CI run exactly the same
//! steps with the same environment.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod vm;

/// Where install-test-deps.sh puts the fio build that has the nfs engine.
const FIO_NFS_BIN: &str = "/usr/local/lib/tidegate-tools/bin/fio";

const USAGE: &str = "\
cargo xtask <COMMAND> [ARGS]

Commands:
  test [--no-vm] [-- NEXTEST_ARGS...]
                              Install test dependencies, check formatting, run
                              clippy, build the release server, run the test
                              suite with cargo-nextest, then the kernel-client
                              tests in a VM (`vm`). Arguments after `--` go to
                              `cargo nextest run`.
  vm [SCENARIO...] [--nfs-version 3|4.0|4.1|4.2]
                              Kernel-client tests: boot a qemu guest, run
                              tidegate in it, mount it with the Linux NFS
                              client and run the scenarios of tests/vm;
                              `cargo xtask vm --help` lists the options.
  bench [HARNESS_ARGS...]     Install benchmark peers, build the release
                              server and run the side-by-side suite: tidegate,
                              NFS-Ganesha, rclone serve nfs, s3fs and rclone
                              mount on the same data in the same run, plus the
                              machine's disk and loopback limits, over seven
                              workloads (large files, random 4 KiB, ImageNet-
                              like epochs, cyclic sweep, cold read through a
                              distant S3, metadata, checkpoint). Writes
                              benches/results/<date>-<host>.md, .json and PNG
                              plots. `--quick` runs small data sets (under 10
                              minutes); `--workloads ace` and `--systems
                              tidegate,s3fs` narrow it; `cargo xtask bench
                              --help` lists every flag. `--sections [...]`
                              runs the older per-topic sections instead
                              (`--warm-only`, `--latency-only`, `--write-only`,
                              ...), and `--listing [--keys N]` one directory
                              of N (1M) keys in S3.
  fmt                         cargo fmt --all
  lint                        cargo clippy --workspace --all-targets -- -D warnings
  help                        Print this text

Environment passed to the test suite:
  TIDEGATE_BIN=<workspace>/target/release/tidegate
  TIDEGATE_FIO=/usr/local/lib/tidegate-tools/bin/fio
";

const TEST_USAGE: &str = "\
cargo xtask test [--no-vm] [-- NEXTEST_ARGS...]

Steps, in order (a failing fmt, clippy, nextest or vm step is reported at the
end; a failing install or build stops the run):
  1. xtask/scripts/install-test-deps.sh
  2. cargo fmt --all --check
  3. cargo clippy --workspace --all-targets -- -D warnings
  4. cargo build --release -p tidegate --bin tidegate
  5. cargo nextest run --workspace --no-fail-fast [NEXTEST_ARGS...]
     with TIDEGATE_BIN and TIDEGATE_FIO set
  6. cargo xtask vm (the default scenarios over NFSv3; `--no-vm` leaves this
     step out and says so)

Example: cargo xtask test -- -E 'test(fio)'
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args: Vec<OsString> = env::args_os().skip(1).collect();
    if args.is_empty() {
        eprint!("{USAGE}");
        return Ok(ExitCode::from(2));
    }
    let command = args.remove(0);
    let command = command
        .to_str()
        .with_context(|| format!("command is not UTF-8: {command:?}"))?
        .to_owned();
    let ws = Workspace::locate()?;
    match command.as_str() {
        "test" => cmd_test(&ws, &args),
        "vm" => vm::cmd_vm(&ws, &args),
        "bench" => cmd_bench(&ws, &args),
        "fmt" => {
            reject_args("fmt", &args)?;
            ws.step("cargo fmt --all", ws.cargo(&["fmt", "--all"]))?;
            Ok(ExitCode::SUCCESS)
        }
        "lint" => {
            reject_args("lint", &args)?;
            ws.step("clippy", ws.clippy())?;
            Ok(ExitCode::SUCCESS)
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n");
            eprint!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

fn reject_args(command: &str, args: &[OsString]) -> Result<()> {
    if let Some(first) = args.first() {
        if first == "-h" || first == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        bail!("`cargo xtask {command}` takes no arguments (got {first:?})");
    }
    Ok(())
}

fn cmd_test(ws: &Workspace, args: &[OsString]) -> Result<ExitCode> {
    let mut args = args;
    let mut with_vm = true;
    if args.first().is_some_and(|a| a == "--no-vm") {
        with_vm = false;
        args = &args[1..];
    }
    let nextest_args: Vec<OsString> = match args.first() {
        None => Vec::new(),
        Some(a) if a == "-h" || a == "--help" => {
            print!("{TEST_USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(a) if a == "--" => args[1..].to_vec(),
        Some(a) => bail!("unexpected argument {a:?}; pass nextest arguments after `--`"),
    };
    const STEPS: usize = 6;

    let mut failed: Vec<&str> = Vec::new();

    ws.header(1, STEPS, "install test dependencies");
    ws.run(ws.script("install-test-deps.sh"))
        .context("installing test dependencies")?;

    ws.header(2, STEPS, "cargo fmt --all --check");
    if let Err(err) = ws.run(ws.cargo(&["fmt", "--all", "--check"])) {
        eprintln!("xtask: {err:#}");
        failed.push("fmt");
    }

    ws.header(
        3,
        STEPS,
        "cargo clippy --workspace --all-targets -- -D warnings",
    );
    if let Err(err) = ws.run(ws.clippy()) {
        eprintln!("xtask: {err:#}");
        failed.push("clippy");
    }

    ws.header(4, STEPS, "cargo build --release -p tidegate --bin tidegate");
    ws.run(ws.build_release_server())
        .context("building the release server")?;

    ws.header(5, STEPS, "cargo nextest run --workspace --no-fail-fast");
    let mut nextest = ws.cargo(&["nextest", "run", "--workspace", "--no-fail-fast"]);
    nextest.args(&nextest_args);
    ws.test_env(&mut nextest);
    if let Err(err) = ws.run(nextest) {
        eprintln!("xtask: {err:#}");
        failed.push("nextest");
    }

    if with_vm {
        ws.header(6, STEPS, "kernel-client tests in a VM (cargo xtask vm)");
        match vm::cmd_vm(ws, &[]) {
            Ok(code) if code == ExitCode::SUCCESS => {}
            Ok(_) => failed.push("vm"),
            Err(err) => {
                eprintln!("xtask: vm: {err:#}");
                failed.push("vm");
            }
        }
    } else {
        ws.header(6, STEPS, "kernel-client tests in a VM: skipped (--no-vm)");
    }

    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask test: FAILED steps: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn cmd_bench(ws: &Workspace, args: &[OsString]) -> Result<ExitCode> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        // The harness owns its flags; let it print them (this builds it).
        let mut harness = ws.harness();
        harness.args(args);
        ws.run(harness)?;
        return Ok(ExitCode::SUCCESS);
    }

    ws.header(1, 3, "install benchmark dependencies");
    ws.run(ws.script("install-bench-deps.sh"))
        .context("installing benchmark dependencies")?;

    ws.header(2, 3, "cargo build --release -p tidegate --bin tidegate");
    ws.run(ws.build_release_server())
        .context("building the release server")?;

    ws.header(
        3,
        3,
        "side-by-side benchmark (benches/src/bin/sidebyside.rs)",
    );
    let mut harness = ws.harness();
    harness.args(args);
    ws.run(harness).context("side-by-side benchmark")?;
    Ok(ExitCode::SUCCESS)
}

struct Workspace {
    root: PathBuf,
    cargo: OsString,
}

impl Workspace {
    fn locate() -> Result<Self> {
        // xtask/ sits directly under the workspace root.
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .with_context(|| format!("{} has no parent", manifest_dir.display()))?
            .to_path_buf();
        if !root.join("Cargo.toml").is_file() {
            bail!("workspace root {} has no Cargo.toml", root.display());
        }
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self { root, cargo })
    }

    fn server_bin(&self) -> PathBuf {
        self.root.join("target/release/tidegate")
    }

    fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.args(args).current_dir(&self.root);
        cmd
    }

    fn clippy(&self) -> Command {
        self.cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    }

    fn build_release_server(&self) -> Command {
        self.cargo(&["build", "--release", "-p", "tidegate", "--bin", "tidegate"])
    }

    fn harness(&self) -> Command {
        let mut cmd = self.cargo(&[
            "run",
            "--quiet",
            "--release",
            "-p",
            "tidegate-benches",
            "--bin",
            "sidebyside",
            "--",
        ]);
        self.test_env(&mut cmd);
        cmd
    }

    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(self.root.join("xtask/scripts").join(name))
            .current_dir(&self.root);
        cmd
    }

    fn test_env(&self, cmd: &mut Command) {
        cmd.env("TIDEGATE_BIN", self.server_bin())
            .env("TIDEGATE_FIO", FIO_NFS_BIN);
    }

    fn header(&self, n: usize, total: usize, title: &str) {
        println!();
        println!("==> [{n}/{total}] {title}");
    }

    /// Runs a single-step command (fmt, lint) under a header.
    fn step(&self, title: &str, cmd: Command) -> Result<()> {
        self.header(1, 1, title);
        self.run(cmd)
    }

    fn run(&self, mut cmd: Command) -> Result<()> {
        let shown = show(&cmd);
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
