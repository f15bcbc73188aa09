//! Scenario files: `tests/vm/scenarios/NN-name.sh`.
//!
//! The header is the leading block of `#` comments. Its first line is a
//! one-line description (shown by `--list` and when the scenario starts);
//! these keys are read from the rest:
//!
//! - `# timeout: SECONDS` — how long the body may take (default 300);
//! - `# default: no` — left out unless named or `--all` is given;
//! - `# needs: WORD ...` — extra artefacts (`pjdfstest`);
//! - `# source: dir` (the default) or `# source: s3 [PART...|empty]` — what
//!   the guest's gateway exports: the dataset copy in the guest's tmpfs, or a
//!   bucket of its own (`vm-NAME`) on a SeaweedFS that the host runs on its
//!   loopback, filled with the named top-level parts of the dataset (`tree`,
//!   `small`, `wide`; all of them when none is named, nothing for `empty`);
//! - `# s3-prefix: PREFIX/` — with `source: s3`, the dataset goes under this
//!   key prefix and the gateway exports `s3://vm-NAME/PREFIX/`;
//! - `# gateway: ARGS` — extra `tidegate serve` arguments for this
//!   scenario's gateway (`$GW_ARGS` in the guest, kept by `gw_restart`);
//! - `# memory: MIB` — guest memory the scenario needs (the boot gets the
//!   largest of its scenarios' values, at least the default).
//!
//! A scenario with `source: s3` may have a host-side check beside it,
//! `NN-name.check.py`: after the guest reports the scenario passed (and has
//! stopped its gateway), the host runs it with python3 and boto3 against the
//! bucket (see `tests/vm/s3vm.py`); its failure fails the scenario.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Guest memory of a boot whose scenarios ask for no more.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;
/// Bounds of `# memory:` (the host runs other work too).
const MEMORY_MIB_MAX: u32 = 8192;
/// Top-level parts of the generated dataset (`tidegate-guest gen`).
pub const DATASET_PARTS: &[&str] = &["small", "tree", "wide"];

/// What a scenario's gateway exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The dataset unpacked into the guest's tmpfs (`/srv/data`).
    Dir,
    /// A bucket of the scenario's own on the host's SeaweedFS.
    S3 {
        /// Dataset parts uploaded into it (empty: an empty bucket).
        parts: Vec<String>,
        /// Key prefix of the export (empty, or ending in `/`).
        prefix: String,
    },
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub timeout: Duration,
    pub default: bool,
    pub needs: Vec<String>,
    pub source: Source,
    /// `tidegate serve` arguments (`# gateway:`), as written.
    pub gateway_args: String,
    pub memory_mib: Option<u32>,
    /// `NN-name.check.py` beside the scenario, when there is one.
    pub host_check: Option<PathBuf>,
}

impl Scenario {
    pub fn is_s3(&self) -> bool {
        matches!(self.source, Source::S3 { .. })
    }

    /// The scenario's bucket (with `source: s3`).
    pub fn bucket(&self) -> String {
        format!("vm-{}", self.name)
    }
}

/// Every scenario in `dir`, ordered by file name.
pub fn discover(dir: &Path) -> Result<Vec<Scenario>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read_dir {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("read_dir {}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "sh"));
    files.sort();
    let mut out: Vec<Scenario> = Vec::new();
    for file in files {
        let s = parse(&file)?;
        if let Some(other) = out.iter().find(|o| o.name == s.name) {
            bail!(
                "{} and {} both define scenario `{}`",
                other.file.display(),
                file.display(),
                s.name
            );
        }
        out.push(s);
    }
    if out.is_empty() {
        bail!("no scenarios in {}", dir.display());
    }
    Ok(out)
}

fn parse(file: &Path) -> Result<Scenario> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{}: file name is not UTF-8", file.display()))?;
    let name = stem.trim_start_matches(|c: char| c.is_ascii_digit());
    let name = name.strip_prefix('-').unwrap_or(name).to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!(
            "{}: scenario files are named NN-name.sh with name in [a-z0-9-]",
            file.display()
        );
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let mut s = Scenario {
        name,
        file: file.to_path_buf(),
        description: String::new(),
        timeout: DEFAULT_TIMEOUT,
        default: true,
        needs: Vec::new(),
        source: Source::Dir,
        gateway_args: String::new(),
        memory_mib: None,
        host_check: None,
    };
    let mut prefix: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("#!") {
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        if let Some(v) = comment.strip_prefix("timeout:") {
            let secs: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("{}: bad timeout {v:?}", file.display()))?;
            s.timeout = Duration::from_secs(secs);
        } else if let Some(v) = comment.strip_prefix("default:") {
            s.default = match v.trim() {
                "yes" => true,
                "no" => false,
                other => bail!("{}: `default:` is yes or no, not {other:?}", file.display()),
            };
        } else if let Some(v) = comment.strip_prefix("needs:") {
            s.needs = v.split_whitespace().map(str::to_owned).collect();
        } else if let Some(v) = comment.strip_prefix("source:") {
            s.source = parse_source(file, v)?;
        } else if let Some(v) = comment.strip_prefix("s3-prefix:") {
            let p = v.trim();
            if p.is_empty()
                || !p.ends_with('/')
                || p.starts_with('/')
                || p.contains("//")
                || !p.chars().all(|c| c.is_ascii_graphic())
            {
                bail!(
                    "{}: `s3-prefix:` is a key prefix like `data/` (printable ASCII, ending in /), not {p:?}",
                    file.display()
                );
            }
            prefix = Some(p.to_owned());
        } else if let Some(v) = comment.strip_prefix("gateway:") {
            let v = v.trim();
            if v.contains(['\'', '\n']) {
                bail!(
                    "{}: `gateway:` arguments may not contain quotes",
                    file.display()
                );
            }
            s.gateway_args = v.to_owned();
        } else if let Some(v) = comment.strip_prefix("memory:") {
            let mib: u32 = v
                .trim()
                .parse()
                .with_context(|| format!("{}: bad memory {v:?} (MiB)", file.display()))?;
            if !(DEFAULT_MEMORY_MIB..=MEMORY_MIB_MAX).contains(&mib) {
                bail!(
                    "{}: memory {mib} MiB is out of range ({DEFAULT_MEMORY_MIB} to {MEMORY_MIB_MAX})",
                    file.display()
                );
            }
            s.memory_mib = Some(mib);
        } else if s.description.is_empty() {
            s.description = comment.to_owned();
        }
    }
    if let Some(p) = prefix {
        match &mut s.source {
            Source::S3 { prefix, .. } => *prefix = p,
            Source::Dir => bail!("{}: `s3-prefix:` needs `source: s3`", file.display()),
        }
    }
    let check = file.with_file_name(format!("{stem}.check.py"));
    if check.is_file() {
        if !s.is_s3() {
            bail!(
                "{}: a host check needs `# source: s3` in {}",
                check.display(),
                file.display()
            );
        }
        s.host_check = Some(check);
    }
    // S3 bucket names: 3 to 63 characters of [a-z0-9-], not ending in `-`.
    if s.is_s3() && (s.bucket().len() > 63 || s.name.ends_with('-')) {
        bail!(
            "{}: scenario name `{}` does not make a valid bucket name (vm-NAME, at most 63 characters)",
            file.display(),
            s.name
        );
    }
    Ok(s)
}

fn parse_source(file: &Path, v: &str) -> Result<Source> {
    let mut words = v.split_whitespace();
    match words.next() {
        Some("dir") if words.next().is_none() => Ok(Source::Dir),
        Some("s3") => {
            let rest: Vec<&str> = words.collect();
            let parts = match rest.as_slice() {
                [] => DATASET_PARTS.iter().map(|p| p.to_string()).collect(),
                ["empty"] => Vec::new(),
                named => {
                    for p in named {
                        if !DATASET_PARTS.contains(p) {
                            bail!(
                                "{}: `source: s3` names dataset parts ({}) or `empty`, not {p:?}",
                                file.display(),
                                DATASET_PARTS.join(", ")
                            );
                        }
                    }
                    named.iter().map(|p| p.to_string()).collect()
                }
            };
            Ok(Source::S3 {
                parts,
                prefix: String::new(),
            })
        }
        _ => bail!(
            "{}: `source:` is `dir` or `s3 [PART...|empty]`, not {:?}",
            file.display(),
            v.trim()
        ),
    }
}

/// The named scenarios (in the order given), or the default set.
pub fn select(all: &[Scenario], names: &[String], everything: bool) -> Result<Vec<Scenario>> {
    if names.is_empty() {
        return Ok(all
            .iter()
            .filter(|s| everything || s.default)
            .cloned()
            .collect());
    }
    let mut out = Vec::new();
    for n in names {
        let s = all.iter().find(|s| &s.name == n).with_context(|| {
            let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
            format!("unknown scenario `{n}`; known: {}", known.join(", "))
        })?;
        out.push(s.clone());
    }
    Ok(out)
}

pub fn print_list(all: &[Scenario]) {
    let width = all.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in all {
        println!(
            "{:width$}  {:>5}s  {:10}  {:3}  {}",
            s.name,
            s.timeout.as_secs(),
            if s.default { "default" } else { "by name" },
            if s.is_s3() { "s3" } else { "dir" },
            s.description
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of scenario files, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "tidegate-xtask-scenario-{tag}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn s3_headers() {
        let d = Dir::new("s3");
        let f = d.file(
            "80-ckpt.sh",
            "# Checkpoints.\n#\n# More text.\n# source: s3 tree small\n# s3-prefix: data/\n\
             # gateway: --admin 127.0.0.1:9180 --upload-delay 1s\n# memory: 2048\n# timeout: 60\n\
             echo body\n# not: header\n",
        );
        d.file("80-ckpt.check.py", "pass\n");
        let s = parse(&f).unwrap();
        assert_eq!(s.name, "ckpt");
        assert_eq!(s.description, "Checkpoints.");
        assert_eq!(
            s.source,
            Source::S3 {
                parts: vec!["tree".to_owned(), "small".to_owned()],
                prefix: "data/".to_owned()
            }
        );
        assert_eq!(s.gateway_args, "--admin 127.0.0.1:9180 --upload-delay 1s");
        assert_eq!(s.memory_mib, Some(2048));
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(s.bucket(), "vm-ckpt");
        assert_eq!(s.host_check, Some(d.0.join("80-ckpt.check.py")));
    }

    #[test]
    fn source_forms() {
        let d = Dir::new("forms");
        let empty = parse(&d.file("1-a.sh", "# a\n# source: s3 empty\n")).unwrap();
        assert_eq!(
            empty.source,
            Source::S3 {
                parts: vec![],
                prefix: String::new()
            }
        );
        let all = parse(&d.file("2-b.sh", "# b\n# source: s3\n")).unwrap();
        assert!(
            matches!(&all.source, Source::S3 { parts, .. } if parts.len() == DATASET_PARTS.len())
        );
        let dir = parse(&d.file("3-c.sh", "# c\n")).unwrap();
        assert_eq!(dir.source, Source::Dir);
        assert!(dir.host_check.is_none());
    }

    #[test]
    fn bad_headers() {
        let d = Dir::new("bad");
        for (i, text) in [
            "# x\n# source: s3 nosuchpart\n",
            "# x\n# source: ftp\n",
            "# x\n# s3-prefix: data/\n",
            "# x\n# source: s3\n# s3-prefix: data\n",
            "# x\n# memory: 64\n",
            "# x\n# gateway: --log 'a b'\n",
        ]
        .iter()
        .enumerate()
        {
            let f = d.file(&format!("{i}-x.sh"), text);
            assert!(parse(&f).is_err(), "{text:?} parsed");
        }
        // A host check needs S3.
        let f = d.file("9-y.sh", "# y\n");
        d.file("9-y.check.py", "pass\n");
        assert!(parse(&f).is_err());
    }
}
