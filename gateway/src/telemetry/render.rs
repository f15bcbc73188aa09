//! Renderings of a [`Snapshot`]: Prometheus text exposition format 0.0.4,
//! and a flat JSON object for `tidegate cache stats` and scripts.
//!
//! Both are written by hand: metric names are ASCII identifiers chosen in
//! this crate and values are integers (plus one float), so neither needs
//! an escaping library. Help texts are escaped per the exposition format
//! anyway, in case one ever gains a backslash.

use std::fmt::Write;

use super::{Snapshot, METRIC_PREFIX};

/// Quantiles exported for every latency summary, with their label text.
const QUANTILE_LABELS: [&str; 4] = ["0.5", "0.9", "0.99", "0.999"];

/// Escape a `# HELP` text: backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The Prometheus text exposition format (version 0.0.4) of `s`: counters
/// as `counter`, gauges as `gauge`, latencies as `summary` with quantiles
/// 0.5/0.9/0.99/0.999 and `_sum`/`_count`. Every name carries the
/// `tidegate_` prefix.
pub fn render_prometheus(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for (kind, values) in [("counter", &s.counters), ("gauge", &s.gauges)] {
        for v in values {
            let _ = writeln!(
                out,
                "# HELP {METRIC_PREFIX}{} {}",
                v.name,
                escape_help(v.help)
            );
            let _ = writeln!(out, "# TYPE {METRIC_PREFIX}{} {kind}", v.name);
            let _ = writeln!(out, "{METRIC_PREFIX}{} {}", v.name, v.value);
        }
    }
    for l in &s.latencies {
        let name = l.name;
        let _ = writeln!(out, "# HELP {METRIC_PREFIX}{name} {}", escape_help(l.help));
        let _ = writeln!(out, "# TYPE {METRIC_PREFIX}{name} summary");
        let quantiles = [l.p50_us, l.p90_us, l.p99_us, l.p999_us];
        for (q, v) in QUANTILE_LABELS.iter().zip(quantiles) {
            let _ = writeln!(out, "{METRIC_PREFIX}{name}{{quantile=\"{q}\"}} {v}");
        }
        let _ = writeln!(out, "{METRIC_PREFIX}{name}_sum {}", l.sum_us);
        let _ = writeln!(out, "{METRIC_PREFIX}{name}_count {}", l.count);
    }
    out
}

/// A flat JSON object: every counter and gauge by its name (no prefix),
/// `<latency>_p50`, `<latency>_p99` and `<latency>_count` for each
/// latency, and `cache_hit_ratio` = hits / (hits + misses) as a float (0
/// when both are zero).
pub fn render_json(s: &Snapshot) -> String {
    let mut out = String::with_capacity(2 * 1024);
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, key: &str, value: &dyn std::fmt::Display| {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "\"{key}\":{value}");
    };
    for v in s.counters.iter().chain(s.gauges.iter()) {
        field(&mut out, v.name, &v.value);
    }
    for l in &s.latencies {
        field(&mut out, &format!("{}_p50", l.name), &l.p50_us);
        field(&mut out, &format!("{}_p99", l.name), &l.p99_us);
        field(&mut out, &format!("{}_count", l.name), &l.count);
    }
    field(
        &mut out,
        "cache_hit_ratio",
        &format_args!("{:.6}", s.cache_hit_ratio()),
    );
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::super::{
        snapshot, Counter, Gauge, Latency, LatencySummary, Value, COUNTER_COUNT, GAUGE_COUNT,
        LATENCY_COUNT,
    };
    use super::*;
    use std::collections::HashMap;

    fn sample() -> Snapshot {
        let mut s = Snapshot {
            counters: Counter::ALL
                .iter()
                .map(|c| Value {
                    name: c.name(),
                    help: c.help(),
                    value: 0,
                })
                .collect(),
            gauges: Gauge::ALL
                .iter()
                .map(|g| Value {
                    name: g.name(),
                    help: g.help(),
                    value: 0,
                })
                .collect(),
            latencies: Latency::ALL
                .iter()
                .map(|l| LatencySummary {
                    name: l.name(),
                    help: l.help(),
                    count: 0,
                    sum_us: 0,
                    p50_us: 0,
                    p90_us: 0,
                    p99_us: 0,
                    p999_us: 0,
                    max_us: 0,
                })
                .collect(),
        };
        s.counters[Counter::CacheHits as usize].value = 9;
        s.counters[Counter::CacheMisses as usize].value = 1;
        s.gauges[Gauge::CacheEntries as usize].value = 42;
        let r = &mut s.latencies[Latency::NfsRead as usize];
        (r.count, r.sum_us, r.p50_us, r.p90_us, r.p99_us, r.p999_us) =
            (10, 1234, 100, 200, 300, 400);
        s
    }

    /// Parses the exposition text line by line into the shape the format
    /// requires: HELP then TYPE then samples of that family, names
    /// prefixed, values numeric.
    #[test]
    fn prometheus_text_has_the_expected_shape() {
        let text = render_prometheus(&sample());
        assert!(text.ends_with('\n'));
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples: HashMap<String, f64> = HashMap::new();
        let mut family: Option<(String, String)> = None; // (name, type)
        let mut pending_help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.is_empty());
                assert!(name.starts_with(METRIC_PREFIX), "{line}");
                pending_help = Some(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(
                    pending_help.take().as_deref(),
                    Some(name),
                    "TYPE follows HELP"
                );
                assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
                assert!(
                    types.insert(name.into(), kind.into()).is_none(),
                    "{name} twice"
                );
                family = Some((name.into(), kind.into()));
            } else {
                assert!(!line.starts_with('#'), "{line}");
                let (series, value) = line.rsplit_once(' ').unwrap();
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                let (fname, kind) = family.as_ref().expect("sample before TYPE");
                let base = series.split('{').next().unwrap();
                match kind.as_str() {
                    "summary" => {
                        assert!(
                            base == fname
                                || base == format!("{fname}_sum")
                                || base == format!("{fname}_count"),
                            "{line}"
                        );
                        if base == fname {
                            let label = &series[base.len()..];
                            assert!(label.starts_with("{quantile=\"") && label.ends_with("\"}"));
                        }
                    }
                    _ => assert_eq!(series, fname, "{line}"),
                }
                assert!(samples.insert(series.to_string(), value).is_none());
            }
        }
        assert_eq!(types.len(), COUNTER_COUNT + GAUGE_COUNT + LATENCY_COUNT);
        assert_eq!(types["tidegate_cache_hits_total"], "counter");
        assert_eq!(types["tidegate_cache_entries"], "gauge");
        assert_eq!(types["tidegate_nfs_read_latency_us"], "summary");
        assert_eq!(samples["tidegate_cache_hits_total"], 9.0);
        assert_eq!(samples["tidegate_cache_entries"], 42.0);
        assert_eq!(
            samples["tidegate_nfs_read_latency_us{quantile=\"0.5\"}"],
            100.0
        );
        assert_eq!(
            samples["tidegate_nfs_read_latency_us{quantile=\"0.999\"}"],
            400.0
        );
        assert_eq!(samples["tidegate_nfs_read_latency_us_sum"], 1234.0);
        assert_eq!(samples["tidegate_nfs_read_latency_us_count"], 10.0);
        // 1 sample per counter and gauge, 6 per summary.
        assert_eq!(
            samples.len(),
            COUNTER_COUNT + GAUGE_COUNT + 6 * LATENCY_COUNT
        );
    }

    #[test]
    fn json_has_every_key() {
        let json = render_json(&sample());
        assert!(json.starts_with('{') && json.ends_with('}'));
        let body = &json[1..json.len() - 1];
        let mut map = HashMap::new();
        for pair in body.split(',') {
            let (k, v) = pair.split_once(':').unwrap();
            let k = k
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .unwrap();
            assert!(
                map.insert(k.to_string(), v.to_string()).is_none(),
                "{k} twice"
            );
        }
        for c in Counter::ALL {
            assert!(map.contains_key(c.name()), "{}", c.name());
        }
        for g in Gauge::ALL {
            assert!(map.contains_key(g.name()), "{}", g.name());
        }
        for l in Latency::ALL {
            for suffix in ["_p50", "_p99", "_count"] {
                assert!(map.contains_key(&format!("{}{suffix}", l.name())));
            }
        }
        assert_eq!(map["cache_hits_total"], "9");
        assert_eq!(map["nfs_read_latency_us_p99"], "300");
        assert_eq!(map["cache_hit_ratio"], "0.900000");
        assert_eq!(
            map.len(),
            COUNTER_COUNT + GAUGE_COUNT + 3 * LATENCY_COUNT + 1
        );
    }

    #[test]
    fn live_snapshot_renders() {
        super::super::record(Latency::NfsGetattr, std::time::Duration::from_micros(80));
        let s = snapshot();
        let text = render_prometheus(&s);
        assert!(text.contains("# TYPE tidegate_nfs_getattr_latency_us summary\n"));
        let json = render_json(&s);
        assert!(json.contains("\"nfs_getattr_latency_us_count\":"));
        assert!(json.contains("\"cache_hit_ratio\":"));
    }
}
