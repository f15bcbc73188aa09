//! `tidegate status`: what a running gateway still owes the store (files
//! written but not yet uploaded, their bytes, the oldest one's age), from
//! its admin endpoint's `/stats`; optionally wait until it owes nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::client::JsonValue;
use super::{human_bytes, human_duration, parse_admin_addr, thousands};
use crate::config::parse_duration;

/// Pause between polls while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Admin endpoint of the running gateway (the address given to its --admin)
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_admin_addr)]
    pub admin: SocketAddr,

    /// Print the raw JSON object from /stats instead of a table
    #[arg(long)]
    pub json: bool,

    /// Wait until every change has reached the store (exit 0), or fail after this long
    /// (exit 1), e.g. 2m. Shows progress while it waits
    #[arg(long, value_name = "DURATION")]
    pub wait_drained: Option<String>,
}

fn pending_keys(fields: &[(String, JsonValue)]) -> u64 {
    fields
        .iter()
        .find(|(k, _)| k == "upload_pending_keys")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(0)
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (text, fields) = super::stats::fetch(args.admin)?;
    let Some(wait) = &args.wait_drained else {
        if args.json {
            println!("{}", text.trim_end());
        } else {
            print!("{}", format_table(&args.admin.to_string(), &fields));
        }
        return Ok(());
    };
    let limit = parse_duration(wait)?;
    let start = Instant::now();
    let mut fields = fields;
    loop {
        let keys = pending_keys(&fields);
        if keys == 0 {
            eprintln!(
                "drained: nothing pending ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() >= limit {
            print!("{}", format_table(&args.admin.to_string(), &fields));
            bail!(
                "still {keys} changes pending after {}",
                human_duration(limit)
            );
        }
        let map: HashMap<&str, u64> = fields
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_u64()?)))
            .collect();
        eprint!(
            "\rwaiting: {} changes, {} to upload, oldest {} s   ",
            thousands(keys),
            human_bytes(map.get("upload_pending_bytes").copied().unwrap_or(0)),
            map.get("upload_oldest_pending_seconds")
                .copied()
                .unwrap_or(0)
        );
        std::thread::sleep(POLL_INTERVAL);
        fields = super::stats::fetch(args.admin)?.1;
    }
}

/// The table `status` prints, from the `/stats` fields.
fn format_table(admin: &str, fields: &[(String, JsonValue)]) -> String {
    let map: HashMap<&str, &JsonValue> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let n = |k: &str| map.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let keys = n("upload_pending_keys");
    let state = if keys == 0 {
        "in sync with the store".to_string()
    } else {
        format!("{} changes not yet in the store", thousands(keys))
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "pending files",
            format!(
                "{}  ({})",
                thousands(n("upload_pending_files")),
                human_bytes(n("upload_pending_bytes"))
            ),
        ),
        ("pending changes", thousands(keys)),
        (
            "oldest pending",
            if keys == 0 {
                "-".to_string()
            } else {
                human_duration(Duration::from_secs(n("upload_oldest_pending_seconds")))
            },
        ),
        ("staged", human_bytes(n("staged_bytes"))),
        ("written", human_bytes(n("write_bytes_total"))),
        (
            "store updates",
            format!(
                "{}  ({} uploaded)",
                thousands(n("upload_objects_total")),
                human_bytes(n("upload_bytes_total"))
            ),
        ),
        ("failed updates", thousands(n("upload_failures_total"))),
        ("writes delayed", thousands(n("write_delays_total"))),
    ];
    let mut out = format!("tidegate at {admin}: {state}\n");
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<18} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::client::parse_flat_json;

    #[test]
    fn table() {
        let json = "{\"upload_pending_keys\":3,\"upload_pending_files\":2,\
            \"upload_pending_bytes\":1073741824,\"upload_oldest_pending_seconds\":75,\
            \"staged_bytes\":1073741824,\"upload_failures_total\":12,\"upload_objects_total\":5}";
        let t = format_table("127.0.0.1:9180", &parse_flat_json(json).unwrap());
        assert!(
            t.starts_with("tidegate at 127.0.0.1:9180: 3 changes not yet in the store\n"),
            "{t}"
        );
        assert!(t.contains("  pending files      2  (1.00 GiB)\n"), "{t}");
        assert!(t.contains("  failed updates     12\n"), "{t}");
        let t = format_table("x", &parse_flat_json("{}").unwrap());
        assert!(t.contains("in sync with the store"), "{t}");
    }
}
