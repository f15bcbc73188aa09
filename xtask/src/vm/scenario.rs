//! Scenario files: `tests/vm/scenarios/NN-name.sh`.
//!
//! The header is the leading block of `#` comments. Its first line is a
//! one-line description (shown by `--list` and when the scenario starts);
//! these keys are read from the rest:
//!
//! - `# timeout: SECONDS` — how long the body may take (default 300);
//! - `# default: no` — left out unless named or `--all` is given;
//! - `# needs: WORD ...` — extra artefacts (`pjdfstest`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub timeout: Duration,
    pub default: bool,
    pub needs: Vec<String>,
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
    };
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
        } else if s.description.is_empty() {
            s.description = comment.to_owned();
        }
    }
    Ok(s)
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
            "{:width$}  {:>5}s  {:10}  {}",
            s.name,
            s.timeout.as_secs(),
            if s.default { "default" } else { "by name" },
            s.description
        );
    }
}
