//! Booting the guest and following its console.
//!
//! The guest prints `@@tidegate-vm ...` marker lines (see
//! `tests/vm/runner.sh` and `xtask/scripts/vm-init.sh`); everything else on
//! the console is kept in `target/vm/console.log` only. Every wait has a
//! deadline: the boot, each scenario (its header timeout, scaled, plus a
//! margin for the gateway start, mount, unmount and stop around it), the gap
//! between scenarios and the power-off at the end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::s3::{GuestNet, Seaweed};
use super::scenario::{Scenario, DEFAULT_MEMORY_MIB};
use super::share::Share;
use super::{format_secs, say, StepResult};

/// Port of the gateway inside the guest (the guest is alone on its loopback).
const GUEST_PORT: u16 = 2049;
/// From qemu's start to the runner's first marker. A TCG boot takes a few
/// seconds; a loaded 2-core host can make it several times slower.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Added to each scenario's own timeout: gateway start, mount, unmount, stop.
const SCENARIO_MARGIN: Duration = Duration::from_secs(90);
/// Unpacking the dataset into the guest's memory.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Between one scenario's end and the next one's begin.
const GAP_TIMEOUT: Duration = Duration::from_secs(60);
/// From the runner's last marker to qemu's exit.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
const MARKER: &str = "@@tidegate-vm ";
const CONSOLE_TAIL_LINES: usize = 40;

pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub struct Run<'a> {
    pub image: &'a Image,
    pub share: &'a Share,
    pub vm_dir: &'a Path,
    pub scenarios: &'a [Scenario],
    pub nfs_version: &'a str,
    pub timeout_scale: f64,
    /// SeaweedFS and the guest's NIC, when a scenario uses S3.
    pub s3: Option<(&'a Seaweed, &'a GuestNet)>,
}

/// qemu, killed (and reaped) when dropped.
struct Qemu {
    child: Child,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one boot ended.
enum BootEnd {
    /// The runner went through its list and the guest powered off.
    Finished,
    /// The guest was killed or died during a scenario; the rest need a new
    /// boot.
    Aborted,
    /// No usable guest: nothing more can run.
    Failed(String),
}

/// Runs every scenario, in as many boots as it takes (one, unless a
/// scenario hangs or crashes the guest). Returns one result per boot and per
/// scenario.
pub fn run_all(r: &Run) -> Result<Vec<StepResult>> {
    for f in [&r.image.kernel, &r.image.initrd] {
        if !f.is_file() {
            bail!(
                "{} is missing: xtask/scripts/install-vm-deps.sh builds it",
                f.display()
            );
        }
    }
    let console_path = r.vm_dir.join("console.log");
    let console = File::create(&console_path)
        .with_context(|| format!("create {}", console_path.display()))?;
    let mut pending: Vec<&Scenario> = r.scenarios.iter().collect();
    let mut results = Vec::new();
    let mut boot_no = 0;
    while !pending.is_empty() {
        boot_no += 1;
        // The guest gets a network device only when one of its scenarios
        // uses S3, and memory for the most demanding one.
        let with_net = r.s3.is_some() && pending.iter().any(|s| s.is_s3());
        let memory_mib = pending
            .iter()
            .filter_map(|s| s.memory_mib)
            .fold(DEFAULT_MEMORY_MIB, u32::max);
        r.share
            .write_run_conf(r.nfs_version, &pending, GUEST_PORT, with_net)?;
        let label = if boot_no == 1 {
            "boot".to_owned()
        } else {
            format!("boot {boot_no}")
        };
        let end = boot(
            r,
            &label,
            &console,
            with_net,
            memory_mib,
            &mut pending,
            &mut results,
        )?;
        match end {
            BootEnd::Finished => {
                // The runner reported every scenario it was given; anything
                // left was never started.
                for s in pending.drain(..) {
                    fail_unrun(&mut results, s, "the runner ended without running it");
                }
            }
            BootEnd::Aborted => {}
            BootEnd::Failed(why) => {
                for s in pending.drain(..) {
                    fail_unrun(&mut results, s, &format!("not run: {why}"));
                }
            }
        }
    }
    say(&format!("console transcript: {}", console_path.display()));
    Ok(results)
}

fn fail_unrun(results: &mut Vec<StepResult>, s: &Scenario, why: &str) {
    say(&format!("FAIL {} ({why})", s.name));
    results.push(StepResult {
        name: s.name.clone(),
        passed: false,
        secs: 0.0,
        detail: why.to_owned(),
    });
}

fn qemu_command(r: &Run, with_net: bool, memory_mib: u32) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // KVM does not work on these hosts: plain TCG, multi-threaded.
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .arg("-m")
        .arg(memory_mib.to_string())
        .args(["-smp", "2", "-nodefaults", "-no-user-config"])
        .arg("-kernel")
        .arg(&r.image.kernel)
        .arg("-initrd")
        .arg(&r.image.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args([
            "-nographic",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=host0,security_model=none",
            r.share.dir.display()
        ));
    // Without a -netdev the guest has no network at all (-nodefaults).
    if let (true, Some((_, net))) = (with_net, r.s3) {
        cmd.args(net.qemu_args());
    }
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            // qemu dies with xtask, however xtask ends.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Where the guest is, as far as the markers tell.
enum State {
    Booting,
    /// Unpacking the dataset, before the first scenario.
    Setup {
        started: Instant,
    },
    Between,
    In {
        scenario: Box<Scenario>,
        started: Instant,
    },
    Done,
}

fn boot(
    r: &Run,
    label: &str,
    console: &File,
    with_net: bool,
    memory_mib: u32,
    pending: &mut Vec<&Scenario>,
    results: &mut Vec<StepResult>,
) -> Result<BootEnd> {
    let stderr_path = r.vm_dir.join("qemu.stderr");
    let stderr =
        File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
    let mut cmd = qemu_command(r, with_net, memory_mib);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    let started = Instant::now();
    let child = cmd
        .spawn()
        .context("start qemu-system-x86_64 (xtask/scripts/install-vm-deps.sh installs it)")?;
    let mut qemu = Qemu { child };
    say(&format!(
        "{label}: qemu pid {}, {memory_mib} MiB{}",
        qemu.child.id(),
        if with_net {
            format!(
                ", network: only {}:{} (SeaweedFS S3 on 127.0.0.1:{})",
                super::s3::GUEST_S3_ADDR,
                super::s3::GUEST_S3_PORT,
                r.s3.map_or(0, |(sw, _)| sw.s3_port)
            )
        } else {
            String::new()
        }
    ));

    let stdout = qemu.child.stdout.take().context("qemu stdout")?;
    let mut transcript = console.try_clone().context("dup console log")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = transcript.write_all(&buf);
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut tail: VecDeque<String> = VecDeque::with_capacity(CONSOLE_TAIL_LINES);
    let mut state = State::Booting;
    let mut deadline = started + BOOT_TIMEOUT;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(wait) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                return on_timeout(r, label, state, started, &tail, pending, results);
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = qemu.child.wait().context("wait for qemu")?;
                return on_exit(
                    r,
                    label,
                    state,
                    started,
                    &tail,
                    &stderr_path,
                    status,
                    pending,
                    results,
                );
            }
        };
        if tail.len() == CONSOLE_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        let Some(marker) = line.find(MARKER).map(|at| &line[at + MARKER.len()..]) else {
            continue;
        };
        let (word, rest) = marker.split_once(' ').unwrap_or((marker, ""));
        match (word, &state) {
            ("booted", State::Booting) => {
                let secs = started.elapsed().as_secs_f64();
                say(&format!(
                    "PASS {label} {} (Linux {rest})",
                    format_secs(secs)
                ));
                results.push(StepResult {
                    name: label.to_owned(),
                    passed: true,
                    secs,
                    detail: String::new(),
                });
                state = State::Between;
                deadline = Instant::now() + GAP_TIMEOUT;
            }
            ("boot-failed", _) => {
                let why = format!("the guest's init failed: {rest}");
                return Ok(boot_failed(label, started, &why, &tail, results));
            }
            ("setup-begin", State::Between) => {
                state = State::Setup {
                    started: Instant::now(),
                };
                deadline = Instant::now() + SETUP_TIMEOUT;
            }
            ("setup-end", State::Setup { started }) => {
                let secs = started.elapsed().as_secs_f64();
                let (verdict, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let passed = verdict == "ok";
                say(&format!(
                    "{} {label} setup {} ({text})",
                    if passed { "PASS" } else { "FAIL" },
                    format_secs(secs)
                ));
                results.push(StepResult {
                    name: format!("{label} setup"),
                    passed,
                    secs,
                    detail: if passed {
                        String::new()
                    } else {
                        text.to_owned()
                    },
                });
                if !passed {
                    return Ok(BootEnd::Failed(format!("{label} setup failed")));
                }
                state = State::Between;
                deadline = Instant::now() + GAP_TIMEOUT;
            }
            ("begin", State::Between) => {
                let Some(idx) = pending.iter().position(|s| s.name == rest) else {
                    bail!("the guest began scenario `{rest}`, which is not pending");
                };
                let scenario = Box::new(pending[idx].clone());
                say(&format!("-- {}: {}", scenario.name, scenario.description));
                deadline =
                    Instant::now() + scenario.timeout.mul_f64(r.timeout_scale) + SCENARIO_MARGIN;
                state = State::In {
                    scenario,
                    started: Instant::now(),
                };
            }
            ("note", State::In { .. }) => say(&format!("     {rest}")),
            ("end", State::In { scenario, started }) => {
                let (name, verdict) = rest.split_once(' ').unwrap_or((rest, ""));
                if name != scenario.name {
                    bail!(
                        "the guest ended scenario `{name}` while `{}` was running",
                        scenario.name
                    );
                }
                let mut passed = verdict == "pass";
                let mut detail = String::new();
                if let (Some(script), Some((sw, _))) = (&scenario.host_check, r.s3) {
                    if passed {
                        say("     host check: running");
                        let t0 = Instant::now();
                        match sw.check(
                            scenario,
                            script,
                            &r.share.out_dir(&scenario.name),
                            &r.share.expected_dir(),
                        ) {
                            Ok(()) => say(&format!(
                                "     host check ok {}",
                                format_secs(t0.elapsed().as_secs_f64())
                            )),
                            Err(e) => {
                                passed = false;
                                detail = format!("{e:#}");
                            }
                        }
                    } else {
                        say("     host check: skipped (the guest part failed)");
                    }
                }
                finish(r, scenario, started.elapsed(), passed, &detail, results);
                pending.retain(|s| s.name != name);
                state = State::Between;
                deadline = Instant::now() + GAP_TIMEOUT;
            }
            ("runner-done", State::Between) => {
                state = State::Done;
                deadline = Instant::now() + POWEROFF_TIMEOUT;
            }
            _ => {}
        }
    }
}

fn finish(
    r: &Run,
    s: &Scenario,
    took: Duration,
    passed: bool,
    detail: &str,
    results: &mut Vec<StepResult>,
) {
    let secs = took.as_secs_f64();
    say(&format!(
        "{} {} {}{}",
        if passed { "PASS" } else { "FAIL" },
        s.name,
        format_secs(secs),
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        }
    ));
    if !passed {
        let out = r.share.out_dir(&s.name);
        print_tail(&out.join("log"), 30);
        print_tail(&out.join("gateway.log"), 15);
        print_tail(&out.join("dmesg"), 15);
        print_tail(&out.join("host-check.log"), 15);
    }
    results.push(StepResult {
        name: s.name.clone(),
        passed,
        secs,
        detail: detail.to_owned(),
    });
}

fn print_tail(path: &Path, lines: usize) {
    let Ok(text) = std::fs::read(path) else {
        return;
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return;
    }
    let from = all.len().saturating_sub(lines);
    say(&format!(
        "   --- {} (last {} of {} lines)",
        path.display(),
        all.len() - from,
        all.len()
    ));
    for l in &all[from..] {
        println!("   | {l}");
    }
}

fn boot_failed(
    label: &str,
    started: Instant,
    why: &str,
    tail: &VecDeque<String>,
    results: &mut Vec<StepResult>,
) -> BootEnd {
    let secs = started.elapsed().as_secs_f64();
    say(&format!("FAIL {label} {} ({why})", format_secs(secs)));
    say("   --- last console lines:");
    for l in tail {
        println!("   | {l}");
    }
    results.push(StepResult {
        name: label.to_owned(),
        passed: false,
        secs,
        detail: why.to_owned(),
    });
    BootEnd::Failed(format!("{label} failed"))
}

fn on_timeout(
    r: &Run,
    label: &str,
    state: State,
    started: Instant,
    tail: &VecDeque<String>,
    pending: &mut Vec<&Scenario>,
    results: &mut Vec<StepResult>,
) -> Result<BootEnd> {
    // Returning drops the Qemu guard, which kills qemu.
    Ok(match state {
        State::Booting => boot_failed(
            label,
            started,
            &format!("no boot marker within {}s", BOOT_TIMEOUT.as_secs()),
            tail,
            results,
        ),
        State::In { scenario, started } => {
            let limit = scenario.timeout.mul_f64(r.timeout_scale) + SCENARIO_MARGIN;
            finish(
                r,
                &scenario,
                started.elapsed(),
                false,
                &format!("timed out after {}s; guest killed", limit.as_secs()),
                results,
            );
            pending.retain(|s| s.name != scenario.name);
            BootEnd::Aborted
        }
        State::Setup { started } => {
            let secs = started.elapsed().as_secs_f64();
            let why = format!("setup timed out after {}s", SETUP_TIMEOUT.as_secs());
            say(&format!("FAIL {label} setup {} ({why})", format_secs(secs)));
            results.push(StepResult {
                name: format!("{label} setup"),
                passed: false,
                secs,
                detail: why,
            });
            BootEnd::Failed(format!("{label} setup failed"))
        }
        State::Between => BootEnd::Failed(format!(
            "the guest stopped reporting between scenarios (nothing for {}s)",
            GAP_TIMEOUT.as_secs()
        )),
        State::Done => {
            say("the guest did not power off after its last scenario; killed it");
            BootEnd::Finished
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn on_exit(
    r: &Run,
    label: &str,
    state: State,
    started: Instant,
    tail: &VecDeque<String>,
    stderr_path: &Path,
    status: std::process::ExitStatus,
    pending: &mut Vec<&Scenario>,
    results: &mut Vec<StepResult>,
) -> Result<BootEnd> {
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    let stderr = stderr.trim();
    let why = if stderr.is_empty() {
        format!("qemu exited ({status})")
    } else {
        format!("qemu exited ({status}): {stderr}")
    };
    Ok(match state {
        State::Booting => boot_failed(label, started, &why, tail, results),
        State::In { scenario, started } => {
            say("   --- last console lines:");
            for l in tail {
                println!("   | {l}");
            }
            finish(
                r,
                &scenario,
                started.elapsed(),
                false,
                &format!("the guest died during the scenario; {why}"),
                results,
            );
            pending.retain(|s| s.name != scenario.name);
            BootEnd::Aborted
        }
        State::Setup { .. } => {
            say("   --- last console lines:");
            for l in tail {
                println!("   | {l}");
            }
            BootEnd::Failed(format!("the guest stopped during setup; {why}"))
        }
        State::Between => BootEnd::Failed(format!("the guest stopped between scenarios; {why}")),
        State::Done => BootEnd::Finished,
    })
}
