//! The side-by-side benchmark's report, written from a [`Report`] in three
//! forms: Markdown for people, JSON for tools, and one PNG of bar charts per
//! workload (`plot.rs`).
//!
//! Every table and every chart panel holds one *group*: the measurements of
//! one metric in one case of a workload, one row per system. The first
//! tidegate row of a group is the reference of its ratios, which are
//! oriented so that a ratio above 1 always means tidegate did better.

mod plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::json::{object, Value};
use crate::suite::results::{Better, Measurement, Report, Role, WorkloadInfo};

/// The files [`write()`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub markdown: PathBuf,
    pub json: PathBuf,
    /// One per workload with measurements, in report order.
    pub plots: Vec<PathBuf>,
}

/// Writes `<dir>/<stem>.md`, `<dir>/<stem>.json` and
/// `<dir>/<stem>-<workload id>.png` (one per workload that has
/// measurements), creating `dir` if needed.
///
/// The JSON is written first and the Markdown even when the plots fail
/// (without its image links), so that a missing font never loses the
/// numbers; the error then names the files that were written.
pub fn write(report: &Report, dir: &Path, stem: &str) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, to_json(report).to_json_pretty())
        .with_context(|| format!("write {}", json.display()))?;

    let plotted = write_plots(report, dir, stem);
    let names: &[(String, String)] = match &plotted {
        Ok(plots) => plots,
        Err(_) => &[],
    };
    let markdown_path = dir.join(format!("{stem}.md"));
    std::fs::write(&markdown_path, markdown(report, names))
        .with_context(|| format!("write {}", markdown_path.display()))?;

    let plots = plotted.with_context(|| {
        format!(
            "plot the report ({} and {} were written without plots)",
            markdown_path.display(),
            json.display()
        )
    })?;
    Ok(Written {
        markdown: markdown_path,
        json,
        plots: plots.into_iter().map(|(_, name)| dir.join(name)).collect(),
    })
}

/// Renders and writes one PNG per workload that has measurements; returns
/// `(workload id, file name)` pairs.
fn write_plots(report: &Report, dir: &Path, stem: &str) -> anyhow::Result<Vec<(String, String)>> {
    let workloads: Vec<(WorkloadInfo, Vec<Group<'_>>)> = workloads(report)
        .into_iter()
        .map(|w| {
            let groups = groups(report, &w.id);
            (w, groups)
        })
        .filter(|(_, groups)| !groups.is_empty())
        .collect();
    if workloads.is_empty() {
        return Ok(Vec::new());
    }
    let font = plot::Font::load()?;
    let mut written = Vec::with_capacity(workloads.len());
    for (w, groups) in &workloads {
        let name = format!("{stem}-{}.png", file_name_part(&w.id));
        let path = dir.join(&name);
        let png = plot::render(&font, &workload_heading(w), groups)
            .with_context(|| format!("plot workload {}", w.id))?;
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        written.push((w.id.clone(), name));
    }
    Ok(written)
}

/// `id` with everything but ASCII letters, digits, `-` and `_` replaced, so
/// that it is safe in a file name and a Markdown link.
fn file_name_part(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The report's workloads in order, followed by any workload that has
/// measurements or failures but no description (so that nothing measured is
/// left out of the report).
fn workloads(report: &Report) -> Vec<WorkloadInfo> {
    let mut all = report.workloads.clone();
    let mentioned = report
        .measurements
        .iter()
        .map(|m| &m.workload)
        .chain(report.failures.iter().map(|f| &f.workload));
    for id in mentioned {
        if !all.iter().any(|w| &w.id == id) {
            all.push(WorkloadInfo {
                id: id.clone(),
                title: id.clone(),
                description: String::new(),
                clients: String::new(),
            });
        }
    }
    all
}

fn workload_heading(w: &WorkloadInfo) -> String {
    if w.title.is_empty() || w.title == w.id {
        format!("({})", w.id)
    } else {
        format!("({}) {}", w.id, w.title)
    }
}

/// The measurements of one metric in one case of a workload.
#[derive(Debug)]
struct Group<'a> {
    case: &'a str,
    metric: &'a str,
    unit: &'a str,
    better: Better,
    /// One per system, in first-appearance order.
    rows: Vec<&'a Measurement>,
}

impl Group<'_> {
    /// The value of the first tidegate row: the reference of the ratios.
    fn reference(&self) -> Option<f64> {
        self.rows
            .iter()
            .find(|m| m.role == Role::Tidegate)
            .map(|m| m.value)
    }

    /// The value of the first limit row.
    fn limit(&self) -> Option<f64> {
        self.rows
            .iter()
            .find(|m| m.role == Role::Limit)
            .map(|m| m.value)
    }

    /// `case — metric (unit), higher is better`.
    fn title(&self) -> String {
        format!("{}{}", self.case, self.title_suffix())
    }

    /// The title after the case: ` — metric (unit), higher is better`.
    fn title_suffix(&self) -> String {
        let unit = if unit_is_shown(self.unit) {
            format!(" ({})", self.unit)
        } else {
            String::new()
        };
        let better = better_name(self.better);
        format!(" — {}{unit}, {better} is better", self.metric)
    }
}

/// The groups of workload `id` in first-appearance order. The unit and
/// direction of a group are those of its first measurement; a system that
/// appears twice in a group keeps its first value.
fn groups<'a>(report: &'a Report, id: &str) -> Vec<Group<'a>> {
    let mut groups: Vec<Group<'a>> = Vec::new();
    for m in report.measurements.iter().filter(|m| m.workload == id) {
        match groups
            .iter_mut()
            .find(|g| g.case == m.case && g.metric == m.metric)
        {
            Some(g) => {
                if !g.rows.iter().any(|r| r.system == m.system) {
                    g.rows.push(m);
                }
            }
            None => groups.push(Group {
                case: &m.case,
                metric: &m.metric,
                unit: &m.unit,
                better: m.better,
                rows: vec![m],
            }),
        }
    }
    groups
}

/// How many times better tidegate's `reference` is than `value`: above 1
/// when tidegate is better, whichever direction is better. `None` when
/// either is missing (not finite) or not positive.
fn ratio(better: Better, reference: f64, value: f64) -> Option<f64> {
    let usable = |v: f64| v.is_finite() && v > 0.0;
    if !usable(reference) || !usable(value) {
        return None;
    }
    Some(match better {
        Better::Higher => reference / value,
        Better::Lower => value / reference,
    })
}

/// How close `value` comes to the physical `limit`, in percent (100 % is
/// the limit itself).
fn percent_of_limit(better: Better, value: f64, limit: f64) -> Option<f64> {
    let usable = |v: f64| v.is_finite() && v > 0.0;
    if !usable(value) || !usable(limit) {
        return None;
    }
    Some(match better {
        Better::Higher => value / limit * 100.0,
        Better::Lower => limit / value * 100.0,
    })
}

/// The dash shown where there is no number.
const DASH: &str = "—";

/// A number with about three significant digits: `1,234`, `123`, `12.3`,
/// `1.23`, `0.42`; whole numbers from 100 up, with thousands separators.
/// `—` when not finite.
fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return DASH.to_owned();
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    if v.abs() >= 99.5 {
        return group_thousands(v.round());
    }
    // Round to three significant digits first, so that 9.996 becomes
    // `10.0` rather than `10.00`.
    let rounded: f64 = format!("{v:.2e}").parse().unwrap_or(v);
    let a = rounded.abs();
    if a >= 99.5 {
        group_thousands(rounded)
    } else if a >= 10.0 {
        format!("{rounded:.1}")
    } else if a >= 1.0 {
        format!("{rounded:.2}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let text = format!("{rounded:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A whole number with `,` between groups of three digits.
fn group_thousands(whole: f64) -> String {
    let digits = format!("{:.0}", whole.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if whole < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether a unit is written after its numbers (a bare ratio is not).
fn unit_is_shown(unit: &str) -> bool {
    !unit.is_empty() && unit != "ratio"
}

/// A value with its unit: `1,234 MiB/s`, `12.3 s`, `95%`, `0.42`.
fn format_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        DASH.to_owned()
    } else if unit == "%" {
        format!("{}%", format_number(v))
    } else if unit_is_shown(unit) {
        format!("{} {unit}", format_number(v))
    } else {
        format_number(v)
    }
}

/// A ratio as `1.52×`, `12.3×`, `150×`; `—` when there is none.
fn format_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 99.5 => format!("{}×", group_thousands(r.round())),
        Some(r) if r >= 9.995 => format!("{r:.1}×"),
        Some(r) => format!("{r:.2}×"),
        None => DASH.to_owned(),
    }
}

fn format_percent(p: f64) -> String {
    if p >= 9.95 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return DASH.to_owned();
    }
    if secs < 60.0 {
        return format!("{} s", format_number(secs));
    }
    let whole = secs.round() as u64;
    if whole < 3600 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{} h {:02} min", whole / 3600, whole % 3600 / 60)
    }
}

/// Text made safe for one table cell: no `|`, no line breaks.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// Line breaks (and the whitespace around them) become `; `.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Inline code, with a longer fence when the text holds backticks.
fn code(text: &str) -> String {
    if text.contains('`') {
        format!("`` {} ``", one_line(text))
    } else {
        format!("`{}`", one_line(text))
    }
}

fn table_row(out: &mut String, cells: &[String]) {
    out.push('|');
    for c in cells {
        out.push(' ');
        out.push_str(c);
        out.push_str(" |");
    }
    out.push('\n');
}

/// The report as Markdown. `plot_names` maps a workload id to the file name
/// of its plot, linked relative to the Markdown file; a workload without an
/// entry gets no image.
pub fn markdown(report: &Report, plot_names: &[(String, String)]) -> String {
    let mut out = String::new();
    out.push_str("# tidegate side-by-side benchmark\n\n");
    let _ = writeln!(out, "- Started: {}", report.started_utc);
    let _ = writeln!(out, "- Host: {}", report.hostname);
    let _ = writeln!(out, "- Command: {}", code(&report.command));
    let _ = writeln!(
        out,
        "- Quick run: {}",
        if report.quick {
            "yes (shortened; numbers are indicative only)"
        } else {
            "no"
        }
    );
    let _ = writeln!(out, "- Duration: {}", format_duration(report.duration_secs));
    out.push('\n');

    out.push_str("## Machine and versions\n\n");
    let pairs_table = |out: &mut String, header: &str, pairs: &[(String, String)]| {
        table_row(out, &[header.to_owned(), String::new()]);
        out.push_str("|---|---|\n");
        for (k, v) in pairs {
            table_row(out, &[cell(k), cell(v)]);
        }
        out.push('\n');
    };
    if report.machine.is_empty() && report.versions.is_empty() {
        out.push_str("Not recorded.\n\n");
    }
    if !report.machine.is_empty() {
        pairs_table(&mut out, "Machine", &report.machine);
    }
    if !report.versions.is_empty() {
        pairs_table(&mut out, "Software", &report.versions);
    }

    out.push_str("## Goals\n\n");
    if report.goals.is_empty() {
        out.push_str("No goals were evaluated.\n");
    }
    for g in &report.goals {
        let mark = match g.met {
            Some(true) => "✅ met",
            Some(false) => "❌ missed",
            None => "— undecided",
        };
        let _ = write!(out, "- {mark}: {}", one_line(&g.text));
        if !g.detail.trim().is_empty() {
            let _ = write!(out, " — {}", one_line(&g.detail));
        }
        out.push('\n');
    }
    out.push('\n');

    for w in workloads(report) {
        workload_section(&mut out, report, &w, plot_names);
    }

    out.push_str("## Notes\n\n");
    if report.notes.is_empty() {
        out.push_str("None.\n");
    }
    for note in &report.notes {
        let _ = writeln!(out, "- {}", one_line(note));
    }
    out.push('\n');

    out.push_str(
        "## How to read\n\n\
         Each table compares the systems on one metric of one case. \
         \"tidegate vs this\" is how many times better tidegate did than that \
         row: a ratio above 1 favours tidegate, below 1 the other system, \
         whether higher or lower values are better for the metric. \
         All systems ran in the same run, on the same machine, against the \
         same data, reached by the clients each workload names. Limits are physical ceilings of \
         the machine (local disk, loopback TCP), not competitors; \"of limit\" \
         says how close a system came to one. CPU s/GiB is the CPU time the \
         server used per GiB it served in the workload's measured phases; \
         peak RSS is the server's largest resident memory over its life.\n",
    );
    out
}

fn workload_section(
    out: &mut String,
    report: &Report,
    w: &WorkloadInfo,
    plot_names: &[(String, String)],
) {
    let heading = workload_heading(w);
    let _ = writeln!(out, "## {heading}\n");
    if !w.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", w.description.trim());
    }
    if !w.clients.trim().is_empty() {
        let _ = writeln!(out, "Clients: {}\n", w.clients.trim());
    }
    if let Some((_, name)) = plot_names.iter().find(|(id, _)| *id == w.id) {
        let target = if name.contains([' ', '(', ')']) {
            format!("<{name}>")
        } else {
            name.clone()
        };
        let _ = writeln!(out, "![{heading}: bar charts]({target})\n");
    }

    let groups = groups(report, &w.id);
    if groups.is_empty() {
        out.push_str("No measurements.\n\n");
    }
    for g in &groups {
        group_table(out, report, &w.id, g);
    }

    let failures: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.workload == w.id)
        .collect();
    if !failures.is_empty() {
        out.push_str("Failures:\n\n");
        for f in failures {
            let _ = writeln!(out, "- {}: {}", f.system, one_line(&f.error));
        }
        out.push('\n');
    }
}

fn group_table(out: &mut String, report: &Report, workload: &str, g: &Group<'_>) {
    let _ = writeln!(out, "**{}**\n", g.title());
    table_row(
        out,
        &[
            "system".to_owned(),
            cell(g.metric),
            "tidegate vs this".to_owned(),
            "of limit".to_owned(),
            "CPU s/GiB".to_owned(),
            "peak RSS (MiB)".to_owned(),
        ],
    );
    out.push_str("|---|---:|---:|---:|---:|---:|\n");

    let reference = g.reference();
    let limit = g.limit();
    let mut reference_seen = false;
    for m in &g.rows {
        let name = match m.role {
            Role::Tidegate => format!("**{}**", cell(&m.system)),
            Role::Limit if !m.system.contains("limit") => format!("{} (limit)", cell(&m.system)),
            _ => cell(&m.system),
        };
        let is_reference = m.role == Role::Tidegate && !reference_seen;
        reference_seen |= is_reference;
        let vs = if is_reference {
            DASH.to_owned()
        } else {
            format_ratio(reference.and_then(|r| ratio(g.better, r, m.value)))
        };
        let of_limit = match (m.role, limit) {
            (Role::Limit, _) | (_, None) => String::new(),
            (_, Some(l)) => percent_of_limit(g.better, m.value, l)
                .map(format_percent)
                .unwrap_or_else(|| DASH.to_owned()),
        };
        let cost = report
            .costs
            .iter()
            .find(|c| c.workload == workload && c.system == m.system);
        let cpu = cost
            .and_then(|c| c.cpu_secs_per_gib)
            .map(format_number)
            .unwrap_or_default();
        let rss = cost
            .and_then(|c| c.peak_rss_bytes)
            .map(|b| format_number(b as f64 / (1u64 << 20) as f64))
            .unwrap_or_default();
        table_row(
            out,
            &[
                name,
                cell(&format_value(m.value, g.unit)),
                vs,
                of_limit,
                cpu,
                rss,
            ],
        );
    }
    out.push('\n');
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Tidegate => "tidegate",
        Role::Peer => "peer",
        Role::Limit => "limit",
    }
}

fn better_name(better: Better) -> &'static str {
    match better {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

fn option_number(v: Option<f64>) -> Value {
    v.map_or(Value::Null, Value::Number)
}

fn pairs_object(pairs: &[(String, String)]) -> Value {
    object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str()))),
    )
}

/// The report as JSON: every field of [`Report`], one object per
/// measurement; `null` where a value is absent (or not finite).
pub fn to_json(report: &Report) -> Value {
    let workloads = report
        .workloads
        .iter()
        .map(|w| {
            object([
                ("id", Value::from(w.id.as_str())),
                ("title", Value::from(w.title.as_str())),
                ("description", Value::from(w.description.as_str())),
                ("clients", Value::from(w.clients.as_str())),
            ])
        })
        .collect();
    let results = report
        .measurements
        .iter()
        .map(|m| {
            object([
                ("workload", Value::from(m.workload.as_str())),
                ("case", Value::from(m.case.as_str())),
                ("system", Value::from(m.system.as_str())),
                ("role", Value::from(role_name(m.role))),
                ("metric", Value::from(m.metric.as_str())),
                (
                    "value",
                    option_number(Some(m.value).filter(|v| v.is_finite())),
                ),
                ("unit", Value::from(m.unit.as_str())),
                ("better", Value::from(better_name(m.better))),
            ])
        })
        .collect();
    let costs = report
        .costs
        .iter()
        .map(|c| {
            object([
                ("workload", Value::from(c.workload.as_str())),
                ("system", Value::from(c.system.as_str())),
                ("cpu_secs_per_gib", option_number(c.cpu_secs_per_gib)),
                (
                    "peak_rss_bytes",
                    c.peak_rss_bytes.map_or(Value::Null, Value::from),
                ),
            ])
        })
        .collect();
    let goals = report
        .goals
        .iter()
        .map(|g| {
            object([
                ("text", Value::from(g.text.as_str())),
                ("met", g.met.map_or(Value::Null, Value::Bool)),
                ("detail", Value::from(g.detail.as_str())),
            ])
        })
        .collect();
    let failures = report
        .failures
        .iter()
        .map(|f| {
            object([
                ("workload", Value::from(f.workload.as_str())),
                ("system", Value::from(f.system.as_str())),
                ("error", Value::from(f.error.as_str())),
            ])
        })
        .collect();
    let notes = report
        .notes
        .iter()
        .map(|n| Value::from(n.as_str()))
        .collect();
    object([
        ("started_utc", Value::from(report.started_utc.as_str())),
        ("hostname", Value::from(report.hostname.as_str())),
        ("command", Value::from(report.command.as_str())),
        ("quick", Value::Bool(report.quick)),
        (
            "duration_secs",
            option_number(Some(report.duration_secs).filter(|v| v.is_finite())),
        ),
        ("machine", pairs_object(&report.machine)),
        ("versions", pairs_object(&report.versions)),
        ("workloads", Value::Array(workloads)),
        ("results", Value::Array(results)),
        ("costs", Value::Array(costs)),
        ("goals", Value::Array(goals)),
        ("failures", Value::Array(failures)),
        ("notes", Value::Array(notes)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;
    use crate::suite::results::{Failure, Goal, ServerCost};

    /// What the rows of one group share: workload, case, metric, unit and
    /// direction.
    type GroupKey<'a> = (&'a str, &'a str, &'a str, &'a str, Better);

    fn measurement(group: GroupKey<'_>, system: &str, role: Role, value: f64) -> Measurement {
        let (workload, case, metric, unit, better) = group;
        Measurement {
            workload: workload.to_owned(),
            case: case.to_owned(),
            system: system.to_owned(),
            role,
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            better,
        }
    }

    fn sample() -> Report {
        let seq = "sequential 1 MiB, warm";
        let epoch = "one epoch, 1000 files";
        let higher = |system, role, value| {
            let group = ("a", seq, "throughput", "MiB/s", Better::Higher);
            measurement(group, system, role, value)
        };
        let lower = |system, role, value| {
            let group = ("b", epoch, "epoch time", "s", Better::Lower);
            measurement(group, system, role, value)
        };
        Report {
            started_utc: "2026-11-27T21:00:00Z".to_owned(),
            hostname: "bench-1".to_owned(),
            command: "sidebyside --quick".to_owned(),
            quick: true,
            duration_secs: 754.2,
            machine: vec![("cores".to_owned(), "2".to_owned())],
            versions: vec![("rclone".to_owned(), "v1.75.2".to_owned())],
            workloads: vec![
                WorkloadInfo {
                    id: "a".to_owned(),
                    title: "Sequential read".to_owned(),
                    description: "One 4 GiB file read from start to end.".to_owned(),
                    clients: "fio's nfs engine for every system.".to_owned(),
                },
                WorkloadInfo {
                    id: "b".to_owned(),
                    title: "Training epoch".to_owned(),
                    description: "Every file read once, in random order.".to_owned(),
                    clients: "The kernel NFS client; s3fs through FUSE.".to_owned(),
                },
            ],
            measurements: vec![
                higher("tidegate", Role::Tidegate, 200.0),
                higher("ganesha", Role::Peer, 100.0),
                higher("rclone serve nfs", Role::Peer, f64::NAN),
                higher("local disk", Role::Limit, 400.0),
                lower("tidegate", Role::Tidegate, 2.0),
                lower("s3fs", Role::Peer, 6.0),
                lower("rclone serve nfs", Role::Peer, 0.0),
            ],
            costs: vec![
                ServerCost {
                    workload: "a".to_owned(),
                    system: "tidegate".to_owned(),
                    cpu_secs_per_gib: Some(1.5),
                    peak_rss_bytes: Some(64 << 20),
                },
                ServerCost {
                    workload: "a".to_owned(),
                    system: "ganesha".to_owned(),
                    cpu_secs_per_gib: None,
                    peak_rss_bytes: Some(1234 << 20),
                },
            ],
            goals: vec![
                Goal {
                    text: "Warm reads at least as fast as Ganesha".to_owned(),
                    met: Some(true),
                    detail: "2.00× in (a)".to_owned(),
                },
                Goal {
                    text: "Within 10% of the disk".to_owned(),
                    met: Some(false),
                    detail: "50% of the limit".to_owned(),
                },
                Goal {
                    text: "Memory below 100 MiB per million entries".to_owned(),
                    met: None,
                    detail: String::new(),
                },
            ],
            failures: vec![Failure {
                workload: "b".to_owned(),
                system: "goofys".to_owned(),
                error: "mount failed\ncaused by: no FUSE".to_owned(),
            }],
            notes: vec!["Quick run: sizes are reduced.".to_owned()],
        }
    }

    #[test]
    fn numbers_are_formatted_with_about_three_digits() {
        assert_eq!(format_number(1234.4), "1,234");
        assert_eq!(format_number(1_234_567.0), "1,234,567");
        assert_eq!(format_number(123.4), "123");
        assert_eq!(format_number(12.34), "12.3");
        assert_eq!(format_number(9.996), "10.0");
        assert_eq!(format_number(1.5), "1.50");
        assert_eq!(format_number(0.42), "0.42");
        assert_eq!(format_number(0.012345), "0.0123");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(-1500.0), "-1,500");
        assert_eq!(format_number(f64::NAN), "—");
        assert_eq!(format_value(1234.0, "MiB/s"), "1,234 MiB/s");
        assert_eq!(format_value(12.34, "s"), "12.3 s");
        assert_eq!(format_value(0.42, "ratio"), "0.42");
        assert_eq!(format_value(95.0, "%"), "95.0%");
        assert_eq!(format_ratio(Some(1.523)), "1.52×");
        assert_eq!(format_ratio(Some(12.34)), "12.3×");
        assert_eq!(format_ratio(Some(1500.0)), "1,500×");
        assert_eq!(format_duration(754.2), "12 min 34 s");
        assert_eq!(format_duration(3725.0), "1 h 02 min");
    }

    #[test]
    fn markdown_tables_ratios_limits_and_goals() {
        let md = markdown(&sample(), &[("a".to_owned(), "run-a.png".to_owned())]);
        let has = |line: &str| assert!(md.lines().any(|l| l == line), "no line {line:?} in:\n{md}");
        has("# tidegate side-by-side benchmark");
        has("- Command: `sidebyside --quick`");
        has("- Duration: 12 min 34 s");
        has("| cores | 2 |");
        has("| rclone | v1.75.2 |");
        has("- ✅ met: Warm reads at least as fast as Ganesha — 2.00× in (a)");
        has("- ❌ missed: Within 10% of the disk — 50% of the limit");
        has("- — undecided: Memory below 100 MiB per million entries");

        has("## (a) Sequential read");
        has("Clients: fio's nfs engine for every system.");
        has("![(a) Sequential read: bar charts](run-a.png)");
        has("**sequential 1 MiB, warm — throughput (MiB/s), higher is better**");
        has("| system | throughput | tidegate vs this | of limit | CPU s/GiB | peak RSS (MiB) |");
        // The reference row: no ratio, half the limit, its own costs.
        has("| **tidegate** | 200 MiB/s | — | 50% | 1.50 | 64.0 |");
        // 200 vs 100, higher is better: tidegate is twice as good.
        has("| ganesha | 100 MiB/s | 2.00× | 25% |  | 1,234 |");
        // A missing value has neither a ratio nor a share of the limit.
        has("| rclone serve nfs | — | — | — |  |  |");
        // The limit row has no share of itself.
        has("| local disk (limit) | 400 MiB/s | 0.50× |  |  |  |");

        has("## (b) Training epoch");
        // Workload b has no plot name, so no image.
        assert_eq!(md.matches("![").count(), 1);
        has("**one epoch, 1000 files — epoch time (s), lower is better**");
        has("| **tidegate** | 2.00 s | — |  |  |  |");
        // 2 s vs 6 s, lower is better: tidegate is three times as good.
        has("| s3fs | 6.00 s | 3.00× |  |  |  |");
        // A zero value has no ratio.
        has("| rclone serve nfs | 0 s | — |  |  |  |");
        has("- goofys: mount failed; caused by: no FUSE");

        has("## Notes");
        has("- Quick run: sizes are reduced.");
        has("## How to read");
        // Workloads in report order, notes after them.
        let pos = |s: &str| md.find(s).unwrap();
        assert!(pos("## Goals") < pos("## (a)"));
        assert!(pos("## (a)") < pos("## (b)"));
        assert!(pos("## (b)") < pos("## Notes"));
        assert!(pos("- goofys") > pos("## (b)"));
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let mut report = sample();
        let extra = |case: &str, system: &str, value| {
            let group = ("a", case, "throughput", "MiB/s", Better::Higher);
            measurement(group, system, Role::Peer, value)
        };
        report
            .measurements
            .insert(1, extra("random 4 KiB", "ganesha", 10.0));
        report
            .measurements
            .push(extra("random 4 KiB", "tidegate", 20.0));
        let groups = groups(&report, "a");
        let cases: Vec<_> = groups.iter().map(|g| g.case).collect();
        assert_eq!(cases, ["sequential 1 MiB, warm", "random 4 KiB"]);
        let systems: Vec<_> = groups[1].rows.iter().map(|m| m.system.as_str()).collect();
        assert_eq!(systems, ["ganesha", "tidegate"]);
        // No tidegate-role row in that group: no reference, no ratios.
        assert_eq!(groups[1].reference(), None);
    }

    /// `v` with every non-finite number replaced by null, as JSON has it.
    fn finite_only(v: &Value) -> Value {
        match v {
            Value::Number(n) if !n.is_finite() => Value::Null,
            Value::Array(items) => Value::Array(items.iter().map(finite_only).collect()),
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), finite_only(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    #[test]
    fn json_round_trips() {
        let report = sample();
        let value = to_json(&report);
        let back = json::parse(&value.to_json_pretty()).unwrap();
        assert_eq!(back, finite_only(&value));

        assert_eq!(back.get("hostname").unwrap().as_str(), Some("bench-1"));
        assert_eq!(back.get("quick"), Some(&Value::Bool(true)));
        assert_eq!(back.get("duration_secs").unwrap().as_f64(), Some(754.2));
        assert_eq!(
            back.path(&["machine", "cores"]).unwrap().as_str(),
            Some("2")
        );
        assert_eq!(
            back.path(&["versions", "rclone"]).unwrap().as_str(),
            Some("v1.75.2")
        );
        let workloads = back.get("workloads").unwrap().as_array().unwrap();
        assert_eq!(workloads.len(), 2);
        assert_eq!(
            workloads[1].get("title").unwrap().as_str(),
            Some("Training epoch")
        );

        let results = back.get("results").unwrap().as_array().unwrap();
        assert_eq!(results.len(), report.measurements.len());
        for (r, m) in results.iter().zip(&report.measurements) {
            assert_eq!(
                r.get("workload").unwrap().as_str(),
                Some(m.workload.as_str())
            );
            assert_eq!(r.get("case").unwrap().as_str(), Some(m.case.as_str()));
            assert_eq!(r.get("system").unwrap().as_str(), Some(m.system.as_str()));
            assert_eq!(r.get("metric").unwrap().as_str(), Some(m.metric.as_str()));
            assert_eq!(r.get("unit").unwrap().as_str(), Some(m.unit.as_str()));
            assert_eq!(r.get("role").unwrap().as_str(), Some(role_name(m.role)));
            assert_eq!(
                r.get("better").unwrap().as_str(),
                Some(better_name(m.better))
            );
            if m.value.is_finite() {
                assert_eq!(r.get("value").unwrap().as_f64(), Some(m.value));
            } else {
                assert_eq!(r.get("value"), Some(&Value::Null));
            }
        }
        assert_eq!(results[3].get("role").unwrap().as_str(), Some("limit"));
        assert_eq!(results[4].get("better").unwrap().as_str(), Some("lower"));

        let costs = back.get("costs").unwrap().as_array().unwrap();
        assert_eq!(
            costs[0].get("cpu_secs_per_gib").unwrap().as_f64(),
            Some(1.5)
        );
        assert_eq!(
            costs[0].get("peak_rss_bytes").unwrap().as_f64(),
            Some((64u64 << 20) as f64)
        );
        assert_eq!(costs[1].get("cpu_secs_per_gib"), Some(&Value::Null));

        let goals = back.get("goals").unwrap().as_array().unwrap();
        let met: Vec<_> = goals
            .iter()
            .map(|g| g.get("met").unwrap().clone())
            .collect();
        assert_eq!(met, [Value::Bool(true), Value::Bool(false), Value::Null]);
        let failures = back.get("failures").unwrap().as_array().unwrap();
        assert_eq!(
            failures[0].get("error").unwrap().as_str(),
            Some("mount failed\ncaused by: no FUSE")
        );
        assert_eq!(
            back.get("notes").unwrap().as_array().unwrap()[0].as_str(),
            Some("Quick run: sizes are reduced.")
        );
    }

    /// Writes the whole report. Needs DejaVu Sans: without it this fails
    /// with the error that names the package to install.
    #[test]
    fn writes_markdown_json_and_plots() {
        let dir = std::env::temp_dir().join(format!("tidegate-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let report = sample();
        let written = write(&report, &dir, "run").unwrap_or_else(|e| panic!("{e:#}"));

        assert_eq!(written.markdown, dir.join("run.md"));
        assert_eq!(written.json, dir.join("run.json"));
        assert_eq!(
            written.plots,
            [dir.join("run-a.png"), dir.join("run-b.png")]
        );
        let md = std::fs::read_to_string(&written.markdown).unwrap();
        assert!(md.contains("](run-a.png)") && md.contains("](run-b.png)"));
        let back = json::parse(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
        assert_eq!(back, finite_only(&to_json(&report)));
        for plot in &written.plots {
            let png = std::fs::read(plot).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", plot.display());
            // A 1200-pixel-wide chart with text: several KiB, well below
            // the size of the raw pixels.
            assert!(
                (4 << 10..1 << 20).contains(&png.len()),
                "{}: {} bytes",
                plot.display(),
                png.len()
            );
            // The IHDR chunk: width 1200, a height that grows with the rows.
            assert_eq!(&png[16..20], &1200u32.to_be_bytes());
            let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
            assert!((200..2000).contains(&height), "height {height}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
