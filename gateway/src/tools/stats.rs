//! `tidegate cache stats`: read `/stats` from a running gateway's admin
//! endpoint and print it as a table (or the raw JSON with `--json`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use super::client::{parse_flat_json, AdminClient, JsonValue};
use super::{human_bytes, human_us, parse_admin_addr, thousands};

/// Time allowed for the whole `/stats` exchange.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone)]
pub struct StatsArgs {
    /// Admin endpoint of the running gateway (the address given to its --admin)
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_admin_addr)]
    pub admin: SocketAddr,

    /// Print the raw JSON object from /stats instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `GET /stats` from the admin endpoint at `admin`: the raw text and its
/// fields.
pub(crate) fn fetch(admin: SocketAddr) -> anyhow::Result<(String, Vec<(String, JsonValue)>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let reply = rt.block_on(async {
        AdminClient::new(admin)
            .request("GET", "/stats", STATS_TIMEOUT)
            .await
    })?;
    if reply.status != 200 {
        bail!(
            "admin endpoint at {admin}: GET /stats: {}",
            reply.error_message()
        );
    }
    let text = String::from_utf8(reply.body)
        .with_context(|| format!("admin endpoint at {admin}: /stats is not UTF-8"))?;
    let fields = parse_flat_json(&text)
        .map_err(|e| anyhow::anyhow!("admin endpoint at {admin}: /stats: {e}"))?;
    Ok((text, fields))
}

/// Fetch and print the gateway's cache statistics.
pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let (text, fields) = fetch(args.admin)?;
    if args.json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    print!("{}", format_table(&args.admin.to_string(), &fields));
    Ok(())
}

/// The table `cache stats` prints, from the `/stats` fields.
fn format_table(admin: &str, fields: &[(String, JsonValue)]) -> String {
    let map: HashMap<&str, &JsonValue> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let n = |k: &str| map.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let count = |k: &str| thousands(n(k));

    let hits = n("cache_hits_total");
    let misses = n("cache_misses_total");
    let ratio = map
        .get("cache_hit_ratio")
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| {
            if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            }
        });
    let cached = n("cache_bytes_cached");
    let capacity = n("cache_bytes_capacity");
    let fill = if capacity == 0 {
        String::new()
    } else {
        format!(" ({:.1} %)", cached as f64 * 100.0 / capacity as f64)
    };
    let enabled = if map.contains_key("cache_enabled") && n("cache_enabled") == 0 {
        "off"
    } else {
        "on"
    };
    let latency = |name: &str| {
        let c = n(&format!("{name}_count"));
        if c == 0 {
            "no samples".to_string()
        } else {
            format!(
                "p50 {:<9}  p99 {:<9}  ({} samples)",
                human_us(n(&format!("{name}_p50"))),
                human_us(n(&format!("{name}_p99"))),
                thousands(c)
            )
        }
    };

    let rows: Vec<(&str, String)> = vec![
        ("hits", count("cache_hits_total")),
        ("misses", count("cache_misses_total")),
        ("hit ratio", format!("{:.1} %", ratio * 100.0)),
        (
            "cached",
            format!("{} of {}{fill}", human_bytes(cached), human_bytes(capacity)),
        ),
        ("entries", count("cache_entries")),
        (
            "inserts",
            format!(
                "{}  ({})",
                count("cache_inserts_total"),
                human_bytes(n("cache_inserted_bytes_total"))
            ),
        ),
        (
            "evictions",
            format!(
                "{}  ({})",
                count("cache_evictions_total"),
                human_bytes(n("cache_evicted_bytes_total"))
            ),
        ),
        ("admission rejects", count("cache_admission_rejects_total")),
        ("checksum failures", count("cache_checksum_failures_total")),
        ("read errors", count("cache_read_errors_total")),
        ("write errors", count("cache_write_errors_total")),
        ("no-space events", count("cache_no_space_total")),
        ("device lost", count("cache_device_lost_total")),
        (
            "zero-copy sends",
            format!(
                "{}  ({} copied by the kernel)",
                count("send_zc_total"),
                count("send_zc_copied_total")
            ),
        ),
        ("cache read latency", latency("cache_read_latency_us")),
        ("NFS read latency", latency("nfs_read_latency_us")),
    ];
    let mut out = format!("tidegate block cache at {admin} ({enabled})\n");
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<20} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry;

    #[test]
    fn table() {
        let json = "{\"cache_hits_total\":1234567,\"cache_misses_total\":1000,\
            \"cache_bytes_cached\":1073741824,\"cache_bytes_capacity\":4294967296,\
            \"cache_enabled\":1,\"cache_entries\":512,\"send_zc_total\":10,\"send_zc_copied_total\":10,\
            \"cache_read_latency_us_p50\":120,\"cache_read_latency_us_p99\":2500,\
            \"cache_read_latency_us_count\":99,\"nfs_read_latency_us_count\":0,\
            \"cache_hit_ratio\":0.999191}";
        let t = format_table("127.0.0.1:9100", &parse_flat_json(json).unwrap());
        assert!(
            t.starts_with("tidegate block cache at 127.0.0.1:9100 (on)\n"),
            "{t}"
        );
        assert!(t.contains("  hits                 1,234,567\n"), "{t}");
        assert!(t.contains("  hit ratio            99.9 %\n"), "{t}");
        assert!(
            t.contains("  cached               1.00 GiB of 4.00 GiB (25.0 %)\n"),
            "{t}"
        );
        assert!(
            t.contains("  zero-copy sends      10  (10 copied by the kernel)\n"),
            "{t}"
        );
        assert!(t.contains("p50 120 µs"), "{t}");
        assert!(t.contains("p99 2.50 ms"), "{t}");
        assert!(t.contains("  NFS read latency     no samples\n"), "{t}");
        assert!(t.contains("  device lost          0\n"), "{t}");
    }

    #[test]
    fn fetches_from_a_running_endpoint() {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                telemetry::http::serve_admin(l, None, rx).await;
            });
        });
        let admin = addr_rx.recv().unwrap();
        run(StatsArgs { admin, json: false }).unwrap();
        run(StatsArgs { admin, json: true }).unwrap();
        stop.send(true).unwrap();
        server.join().unwrap();
        let e = run(StatsArgs { admin, json: false }).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("no gateway admin endpoint at {admin}")),
            "{e}"
        );
    }

    #[test]
    fn table_of_a_live_snapshot() {
        let json = telemetry::render_json(&telemetry::snapshot());
        let t = format_table("x", &parse_flat_json(&json).unwrap());
        assert_eq!(t.lines().count(), 17);
    }
}
