//! The 9p share the guest mounts on `/host`:
//!
//! ```text
//! bin/        tidegate, tidegate-guest (and pjdfstest), statically linked
//! vm/         runner.sh, lib.sh, pjdfstest-exclusions.txt, scenarios/NAME.sh (the selected ones) and
//!             scenarios/NAME.env (how that scenario's gateway runs: source,
//!             S3 endpoint and keys, extra arguments; sourced by the runner)
//! run.conf    what the runner runs this boot (rewritten per boot)
//! data/       the dataset (cached, see below)
//! data.cpio   the same, packed: the guest unpacks it into its tmpfs and
//!             exports that copy (9p is slow per file; one archive is not)
//! expected/   what the host computed from data/ (checksums, listings)
//! out/NAME/   each scenario's log, gateway log, kernel log
//! ```
//!
//! `data/` is written by `tidegate-guest gen` and kept while the generator's
//! `dataset-id` is unchanged (`data.id`). `expected/` is computed here from
//! the files on disk, by code independent of the generator: coreutils
//! `md5sum` for checksums, a directory walk for sizes and names.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::s3;
use super::say;
use super::scenario::{Scenario, Source};

pub struct Inputs<'a> {
    pub root: &'a Path,
    pub vm_dir: &'a Path,
    pub bins: &'a [(&'a str, PathBuf)],
    pub generator: &'a Path,
    pub scenarios: &'a [Scenario],
}

pub struct Share {
    pub dir: PathBuf,
}

impl Share {
    pub fn out_dir(&self, scenario: &str) -> PathBuf {
        self.dir.join("out").join(scenario)
    }

    /// Tells the next boot what to run: `GUEST_NET` and `GUEST_S3` (an
    /// address for the guest's NIC and the S3 endpoint behind it, when it
    /// has one), `NEED_DATA` (whether any scenario exports the dataset copy
    /// in the guest's tmpfs) and `HOST_TIME` (the host's clock).
    pub fn write_run_conf(
        &self,
        nfs_version: &str,
        scenarios: &[&Scenario],
        port: u16,
        with_net: bool,
    ) -> Result<()> {
        let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
        let need_data = scenarios.iter().any(|s| !s.is_s3());
        let (net, s3_url) = if with_net {
            (
                s3::GUEST_NET_ADDR.to_owned(),
                format!("http://{}:{}", s3::GUEST_S3_ADDR, s3::GUEST_S3_PORT),
            )
        } else {
            (String::new(), String::new())
        };
        // S3 signatures need the guest's clock within minutes of the host's.
        let host_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = format!(
            "# Written by cargo xtask vm for one boot.\nNFS_VERSION={nfs_version}\nPORT={port}\n\
             SCENARIOS=\"{}\"\nGUEST_NET={net}\nGUEST_S3={s3_url}\nNEED_DATA={}\nHOST_TIME={host_time}\n",
            names.join(" "),
            u8::from(need_data),
        );
        write(&self.dir.join("run.conf"), text.as_bytes())
    }

    /// `vm/scenarios/NAME.env` for every scenario: sourced by the runner in
    /// the scenario's subshell before its gateway starts.
    pub fn write_scenario_envs(
        &self,
        scenarios: &[Scenario],
        s3: Option<&s3::Seaweed>,
    ) -> Result<()> {
        for s in scenarios {
            let mut text = format!(
                "# Written by cargo xtask vm: how scenario {} runs its gateway.\nGW_ARGS={}\n",
                s.name,
                sh_quote(&s.gateway_args)
            );
            match &s.source {
                Source::Dir => text.push_str("SOURCE_KIND=dir\n"),
                Source::S3 { prefix, .. } => {
                    let sw = s3.context("an S3 scenario without SeaweedFS")?;
                    let endpoint = format!("http://{}:{}", s3::GUEST_S3_ADDR, s3::GUEST_S3_PORT);
                    text.push_str(&format!(
                        "SOURCE_KIND=s3\n\
                         SOURCE={}\n\
                         SOURCE_ARGS={}\n\
                         S3_BUCKET={}\n\
                         S3_PREFIX={}\n\
                         S3_ENDPOINT={}\n\
                         AWS_ACCESS_KEY_ID={}\n\
                         AWS_SECRET_ACCESS_KEY={}\n\
                         AWS_REGION={}\n\
                         AWS_EC2_METADATA_DISABLED=true\n\
                         export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_EC2_METADATA_DISABLED\n",
                        sh_quote(&format!("s3://{}/{prefix}", s.bucket())),
                        sh_quote(&format!(
                            "--endpoint-url {endpoint} --path-style --region {}",
                            s3::REGION
                        )),
                        sh_quote(&s.bucket()),
                        sh_quote(prefix),
                        sh_quote(&endpoint),
                        sh_quote(&sw.access_key_id),
                        sh_quote(&sw.secret_access_key),
                        sh_quote(s3::REGION),
                    ));
                }
            }
            write(
                &self
                    .dir
                    .join("vm/scenarios")
                    .join(format!("{}.env", s.name)),
                text.as_bytes(),
            )?;
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn expected_dir(&self) -> PathBuf {
        self.dir.join("expected")
    }
}

/// `s` as one single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn reset_dir(path: &Path) -> Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("rm -r {}", path.display()))?;
    }
    fs::create_dir_all(path).with_context(|| format!("mkdir -p {}", path.display()))
}

pub fn prepare(i: &Inputs) -> Result<Share> {
    let dir = i.vm_dir.join("share");
    fs::create_dir_all(&dir).with_context(|| format!("mkdir -p {}", dir.display()))?;

    let bin = dir.join("bin");
    reset_dir(&bin)?;
    for (name, path) in i.bins {
        copy(path, &bin.join(name))?;
    }

    let vm = dir.join("vm");
    reset_dir(&vm.join("scenarios"))?;
    let src = i.root.join("tests/vm");
    for f in ["runner.sh", "lib.sh", "pjdfstest-exclusions.txt"] {
        copy(&src.join(f), &vm.join(f))?;
    }
    for s in i.scenarios {
        copy(
            &s.file,
            &vm.join("scenarios").join(format!("{}.sh", s.name)),
        )?;
    }
    reset_dir(&dir.join("out"))?;

    ensure_dataset(&dir, i.generator)?;
    Ok(Share { dir })
}

fn ensure_dataset(share: &Path, generator: &Path) -> Result<()> {
    let out = Command::new(generator)
        .arg("dataset-id")
        .output()
        .with_context(|| format!("run {} dataset-id", generator.display()))?;
    if !out.status.success() {
        bail!("{} dataset-id failed ({})", generator.display(), out.status);
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stamp = share.join("data.id");
    let data = share.join("data");
    let archive = share.join("data.cpio");
    let expected = share.join("expected");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(id.as_str())
        && data.is_dir()
        && archive.is_file()
        && expected.is_dir()
    {
        say(&format!("dataset {id}: cached in {}", data.display()));
        return Ok(());
    }

    let started = Instant::now();
    let _ = fs::remove_file(&stamp);
    let _ = fs::remove_file(&archive);
    for d in [&data, &expected] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("rm -r {}", d.display()))?;
        }
    }
    let status = Command::new(generator)
        .arg("gen")
        .arg(&data)
        .status()
        .with_context(|| format!("run {} gen", generator.display()))?;
    if !status.success() {
        bail!(
            "{} gen {} failed ({status})",
            generator.display(),
            data.display()
        );
    }
    fs::create_dir_all(&expected).with_context(|| format!("mkdir {}", expected.display()))?;
    compute_expected(&data, &expected)?;
    pack(&data, &archive)?;
    write(&stamp, id.as_bytes())?;
    say(&format!(
        "dataset {id}: generated with expectations in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `data` as a cpio archive (newc, which has no name length limits).
fn pack(data: &Path, archive: &Path) -> Result<()> {
    let out = File::create(archive).with_context(|| format!("create {}", archive.display()))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --quiet")
        .current_dir(data)
        .stdout(out)
        .status()
        .context("run find | cpio (install-vm-deps.sh installs cpio)")?;
    if !status.success() {
        let _ = fs::remove_file(archive);
        bail!(
            "packing {} into {} failed ({status})",
            data.display(),
            archive.display()
        );
    }
    Ok(())
}

/// What [`walk`] finds: regular files with their sizes, and directories.
struct Tree {
    files: Vec<(String, u64)>,
    dirs: Vec<String>,
}

/// Regular files (path, size) and directories under `root`, as `./rel`
/// paths, each sorted bytewise (as the guest's `sort` does).
fn walk(root: &Path) -> Result<Tree> {
    let mut files = Vec::new();
    let mut dirs = vec![".".to_owned()];
    let mut stack = vec![(root.to_path_buf(), ".".to_owned())];
    while let Some((path, rel)) = stack.pop() {
        for entry in fs::read_dir(&path).with_context(|| format!("read_dir {}", path.display()))? {
            let entry = entry.with_context(|| format!("read_dir {}", path.display()))?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("non-UTF-8 name {name:?} in {}", path.display()))?;
            let child_rel = format!("{rel}/{name}");
            let meta = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            if meta.is_dir() {
                dirs.push(child_rel.clone());
                stack.push((entry.path(), child_rel));
            } else if meta.is_file() {
                files.push((child_rel, meta.len()));
            }
        }
    }
    files.sort();
    dirs.sort();
    Ok(Tree { files, dirs })
}

fn compute_expected(data: &Path, expected: &Path) -> Result<()> {
    let tree = data.join("tree");
    let Tree { files, dirs } = walk(&tree)?;
    let mut sizes = String::new();
    for (rel, size) in &files {
        sizes.push_str(&format!("{size} {rel}\n"));
    }
    write(&expected.join("tree.files"), sizes.as_bytes())?;
    write(
        &expected.join("tree.dirs"),
        (dirs.join("\n") + "\n").as_bytes(),
    )?;

    let out = Command::new("md5sum")
        .arg("--")
        .args(files.iter().map(|(rel, _)| rel))
        .current_dir(&tree)
        .output()
        .context("run md5sum (coreutils) on the host")?;
    if !out.status.success() {
        bail!(
            "md5sum failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write(&expected.join("tree.md5"), &out.stdout)?;

    let wide = data.join("wide");
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(&wide).with_context(|| format!("read_dir {}", wide.display()))? {
        let entry = entry.with_context(|| format!("read_dir {}", wide.display()))?;
        let name = entry.file_name();
        names.push(
            name.to_str()
                .with_context(|| format!("non-UTF-8 name {name:?} in {}", wide.display()))?
                .to_owned(),
        );
    }
    names.sort();
    write(
        &expected.join("wide.names"),
        (names.join("\n") + "\n").as_bytes(),
    )?;
    Ok(())
}
