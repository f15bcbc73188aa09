//! Cold reads through a distant S3: the case prefetch exists for.
//!
//! SeaweedFS runs in the benchmark's namespace with the test file
//! (`random.bin`, `--size-mib`, 1 GiB by default) and, in front of it, the
//! test suite's counting proxy (`tidegate_tests::s3proxy`), which holds
//! back the first byte of every S3 answer (20 ms by default), as a distant
//! region would. The proxy runs as threads of the harness that were started
//! from inside the namespace, so its listening socket, its connections to
//! SeaweedFS and the servers' connections to it all stay on the namespace's
//! `lo`.
//!
//! Three servers read the bucket through the proxy: tidegate with its
//! default flags (prefetch on), tidegate with `--prefetch off`, and
//! `rclone serve nfs` with the S3 section's flags. For each of them and
//! each iodepth (1: a single stream with one READ in flight; then 16), the
//! server starts fresh (empty state, block cache or VFS cache directory)
//! and fio's nfs engine reads the file once, front to back, in 1 MiB
//! requests over one connection. Each run records fio's MiB/s, the wall
//! time of the fio process (mount included), and at the proxy the object
//! GETs and the bytes they asked for (each answer's range, clamped to the
//! object; a client that drops a connection mid-answer received less); for
//! tidegate also its `/stats` prefetch counters.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidegate_tests::s3proxy::{Recorded, S3Proxy, RECORDS_MAX};

use crate::fio::{Measured, SeqRead};
use crate::json::{self, object, Value};
use crate::s3bench::{self, S3BenchOptions, S3Server};
use crate::sandbox::{self, Sandbox};
use crate::seaweed::Seaweed;

/// The servers, in the order they run and are reported.
pub const SERVERS: [S3Server; 3] = [
    S3Server::Tidegate,
    S3Server::TidegateNoPrefetch,
    S3Server::Rclone,
];
/// READs in flight per run: one stream with one READ, then 16.
pub const IODEPTHS: [u32; 2] = [1, 16];
/// The default first-byte delay of each S3 answer.
pub const DEFAULT_FIRST_BYTE_DELAY_MS: u64 = 20;
/// tidegate's admin port (`GET /stats`) in this section.
const ADMIN_PORT: u16 = 20496;
/// Upper bound of one read pass.
const READ_TIMEOUT: Duration = Duration::from_secs(900);

pub struct LatencyOptions<'a> {
    /// Binaries, workers, the test file and the run folder; its `servers`,
    /// `tree` and `rounds` are the S3 section's and not used here.
    pub s3: &'a S3BenchOptions<'a>,
    /// Delay before the first byte of every S3 answer.
    pub first_byte_delay_ms: u64,
}

/// One cold read pass.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    pub m: Measured,
    /// Wall time of the fio process (startup and mount included).
    pub wall_secs: f64,
    /// Object GETs the proxy saw during the pass.
    pub s3_gets: u64,
    /// Bytes those GETs asked for (see the module text).
    pub s3_get_bytes: u64,
    /// tidegate's `prefetch_bytes_total` and `prefetch_used_bytes_total`
    /// after the pass (a fresh process: the pass's own); `None` for rclone.
    pub prefetch_bytes: Option<(u64, u64)>,
}

pub struct LatencyCell {
    pub server: S3Server,
    pub iodepth: u32,
    pub outcome: Result<LatencyRun, String>,
}

pub struct LatencySetup {
    pub upload_file_secs: f64,
    pub rclone_version: String,
}

/// Runs the section in `sb`; SeaweedFS, the proxy and the servers are gone
/// when it returns.
pub fn run(sb: &mut Sandbox, o: &LatencyOptions<'_>) -> Result<(LatencySetup, Vec<LatencyCell>)> {
    let store_dir = o.s3.run_dir.join("seaweedfs-latency");
    let (sw, upload_file_secs) = s3bench::start_store(sb, o.s3, &store_dir)?;
    let upstream = sw.target.addr;
    // Started on a thread inside the namespace: the listener, and the
    // threads it spawns for each connection, live there.
    let proxy = sb
        .in_netns(|| S3Proxy::try_start(upstream))
        .context("start the S3 proxy in the namespace")?;
    proxy.set_first_byte_delay(Duration::from_millis(o.first_byte_delay_ms));
    println!(
        "S3 proxy on {} in the namespace: {} ms before the first byte of every answer",
        proxy.addr(),
        o.first_byte_delay_ms
    );
    let cells = run_cells(sb, o, &sw.via(proxy.addr()), &proxy);
    // Dropped inside the namespace as well: the drop connects to the
    // proxy's own listener to wake its acceptor.
    let _ = sb.in_netns(move || {
        drop(proxy);
        Ok(())
    });
    s3bench::stop_store(sb, o.s3, &store_dir);
    Ok((
        LatencySetup {
            upload_file_secs,
            rclone_version: s3bench::rclone_version(o.s3),
        },
        cells?,
    ))
}

fn run_cells(
    sb: &mut Sandbox,
    o: &LatencyOptions<'_>,
    sw: &Seaweed,
    proxy: &S3Proxy,
) -> Result<Vec<LatencyCell>> {
    let mut cells = Vec::new();
    for iodepth in IODEPTHS {
        for server in SERVERS {
            sandbox::check_interrupted()?;
            print!(
                "{}: cold read of {} at iodepth {iodepth} through the proxy ... ",
                server.name(),
                o.s3.file_name
            );
            s3bench::flush();
            let outcome = cold_read(sb, o, sw, proxy, server, iodepth);
            let _ = sb.stop_service(server.service());
            match &outcome {
                Ok(r) => println!(
                    "{:.1} MiB/s ({:.1}s, {} S3 GETs, {} MiB asked)",
                    r.m.stats.mib_per_s(),
                    r.wall_secs,
                    r.s3_gets,
                    r.s3_get_bytes >> 20
                ),
                Err(e) => {
                    sandbox::check_interrupted()?;
                    println!("FAILED: {e:#}");
                }
            }
            cells.push(LatencyCell {
                server,
                iodepth,
                outcome: s3bench::stringify(outcome),
            });
        }
    }
    Ok(cells)
}

/// Starts `server` fresh and reads the file once at `iodepth`.
fn cold_read(
    sb: &mut Sandbox,
    o: &LatencyOptions<'_>,
    sw: &Seaweed,
    proxy: &S3Proxy,
    server: S3Server,
    iodepth: u32,
) -> Result<LatencyRun> {
    let s3 = o.s3;
    let label = format!("latency-qd{iodepth}");
    let admin = ["--admin".to_owned(), format!("127.0.0.1:{ADMIN_PORT}")];
    s3bench::start_fresh(sb, s3, sw, server, &label, s3.file_name, &admin)?;
    let errors_before = proxy.errors().len();
    // Only the read's requests count, not the readiness probe's.
    proxy.reset();
    let read = SeqRead {
        fio: s3.fio,
        url: &server.url(),
        file_name: s3.file_name,
        size_bytes: s3.size_bytes,
        iodepth,
    };
    let out = s3
        .run_dir
        .join(format!("fio-{label}-{}.json", server.name()));
    let t = Instant::now();
    let (m, _) = read.run(sb, &out, READ_TIMEOUT)?;
    let wall_secs = t.elapsed().as_secs_f64();
    let s3_gets = proxy.get_count();
    let s3_get_bytes = requested_bytes(&proxy.requests(), s3.size_bytes)?;
    let errors = proxy.errors();
    if errors.len() > errors_before {
        bail!(
            "the S3 proxy saw errors: {}",
            errors[errors_before..].join("; ")
        );
    }
    if proxy.records_dropped() > 0 {
        bail!(
            "the S3 proxy logged only the first {RECORDS_MAX} of {} requests: \
             the bytes of the others are unknown",
            proxy.request_count()
        );
    }
    sb.service_mut(server.service())
        .context("server not started")?
        .check_alive()?;
    let prefetch_bytes = match server {
        S3Server::Rclone => None,
        _ => Some(prefetch_counters(sb)?),
    };
    Ok(LatencyRun {
        m,
        wall_secs,
        s3_gets,
        s3_get_bytes,
        prefetch_bytes,
    })
}

/// Bytes the successful object GETs in `records` asked for: a `200` the
/// whole object, a `206` its range clamped to the object's `object_bytes`.
pub fn requested_bytes(records: &[Recorded], object_bytes: u64) -> Result<u64> {
    let mut total_bytes = 0;
    for r in records.iter().filter(|r| r.is_object_get()) {
        total_bytes += match r.status {
            Some(200) => object_bytes,
            Some(206) => {
                let (first, last) = r.range_bytes().with_context(|| {
                    format!("GET {} answered 206 to range {:?}", r.target, r.range)
                })?;
                let end = last.map_or(object_bytes, |l| l.saturating_add(1).min(object_bytes));
                end.saturating_sub(first)
            }
            _ => 0,
        };
    }
    Ok(total_bytes)
}

/// tidegate's `prefetch_bytes_total` and `prefetch_used_bytes_total`.
fn prefetch_counters(sb: &Sandbox) -> Result<(u64, u64)> {
    let text = sb
        .in_netns(|| crate::http_get(ADMIN_PORT, "/stats"))
        .context("tidegate's /stats")?;
    let doc = json::parse(text.trim()).context("parse tidegate's /stats")?;
    let get = |key: &str| {
        doc.get(key)
            .and_then(Value::as_f64)
            .map(|v| v as u64)
            .with_context(|| format!("tidegate's /stats has no number {key:?}"))
    };
    Ok((
        get("prefetch_bytes_total")?,
        get("prefetch_used_bytes_total")?,
    ))
}

fn find(cells: &[LatencyCell], server: S3Server, iodepth: u32) -> Option<&LatencyRun> {
    cells
        .iter()
        .find(|c| c.server == server && c.iodepth == iodepth)
        .and_then(|c| c.outcome.as_ref().ok())
}

/// MiB/s of tidegate (prefetch on) over that of `peer` at `iodepth`.
fn ratio(cells: &[LatencyCell], iodepth: u32, peer: S3Server) -> Option<f64> {
    let mib_per_s = |s| find(cells, s, iodepth).map(|r| r.m.stats.mib_per_s());
    match (mib_per_s(S3Server::Tidegate), mib_per_s(peer)) {
        (Some(t), Some(p)) if p > 0.0 => Some(t / p),
        _ => None,
    }
}

type Metric = (&'static str, fn(&LatencyRun) -> Option<f64>, usize);

/// (label, value, decimals)
const METRICS: [Metric; 5] = [
    ("MiB/s", |r| Some(r.m.stats.mib_per_s()), 1),
    ("wall (s)", |r| Some(r.wall_secs), 1),
    ("S3 GETs", |r| Some(r.s3_gets as f64), 0),
    ("S3 MiB asked", |r| Some(r.s3_get_bytes as f64 / MIB), 0),
    (
        "prefetched MiB",
        |r| r.prefetch_bytes.map(|(b, _)| b as f64 / MIB),
        0,
    ),
];
const MIB: f64 = (1u64 << 20) as f64;

pub fn print_table(o: &LatencyOptions<'_>, setup: &LatencySetup, cells: &[LatencyCell]) {
    println!(
        "Cold sequential read through S3 with {} ms before the first byte of every answer \
         (proxy in front of SeaweedFS): {} MiB object, fio nfs engine, 1 MiB reads, one \
         connection, each server fresh per run; rclone: {}",
        o.first_byte_delay_ms,
        o.s3.size_bytes >> 20,
        if setup.rclone_version.is_empty() {
            "?"
        } else {
            &setup.rclone_version
        }
    );
    println!();
    let mut header = format!("{:<8} {:<15}", "iodepth", "metric");
    for s in SERVERS {
        header.push_str(&format!(" {:>20}", s.name()));
    }
    header.push_str(&format!(
        " {:>20} {:>15}",
        "prefetch/no-prefetch", "prefetch/rclone"
    ));
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for iodepth in IODEPTHS {
        for (i, (label, get, decimals)) in METRICS.iter().enumerate() {
            let depth = if i == 0 {
                iodepth.to_string()
            } else {
                String::new()
            };
            let mut line = format!("{depth:<8} {label:<15}");
            for s in SERVERS {
                let cell = match find(cells, s, iodepth) {
                    Some(r) => get(r).map_or("-".to_owned(), |v| format!("{v:.decimals$}")),
                    None => "failed".to_owned(),
                };
                line.push_str(&format!(" {cell:>20}"));
            }
            if i == 0 {
                let text = |peer| {
                    ratio(cells, iodepth, peer).map_or("-".to_owned(), |r| format!("{r:.2}x"))
                };
                line.push_str(&format!(
                    " {:>20} {:>15}",
                    text(S3Server::TidegateNoPrefetch),
                    text(S3Server::Rclone)
                ));
            }
            println!("{line}");
        }
    }
    println!();
    println!(
        "ratios are of MiB/s, tidegate (prefetch on) over the other; S3 MiB asked: the GETs' \
         ranges at the proxy"
    );
    for c in cells {
        if let Err(e) = &c.outcome {
            println!("{} / iodepth {}: {e}", c.server.name(), c.iodepth);
        }
    }
}

pub fn to_json(o: &LatencyOptions<'_>, setup: &LatencySetup, cells: &[LatencyCell]) -> Value {
    let results = cells
        .iter()
        .map(|c| {
            let mut members = vec![
                ("server", Value::from(c.server.name())),
                ("iodepth", Value::from(u64::from(c.iodepth))),
            ];
            match &c.outcome {
                Ok(r) => {
                    let (prefetch_bytes, prefetch_used_bytes) = match r.prefetch_bytes {
                        Some((b, u)) => (Value::from(b), Value::from(u)),
                        None => (Value::Null, Value::Null),
                    };
                    members.push(("ok", Value::Bool(true)));
                    members.extend(r.m.json_members());
                    members.extend([
                        ("wall_secs", Value::from(r.wall_secs)),
                        ("s3_gets", Value::from(r.s3_gets)),
                        ("s3_get_bytes", Value::from(r.s3_get_bytes)),
                        ("prefetch_bytes", prefetch_bytes),
                        ("prefetch_used_bytes", prefetch_used_bytes),
                    ]);
                }
                Err(e) => members.extend([
                    ("ok", Value::Bool(false)),
                    ("error", Value::from(e.as_str())),
                ]),
            }
            object(members)
        })
        .collect();
    let ratios = IODEPTHS
        .iter()
        .map(|&iodepth| {
            let r = |peer| ratio(cells, iodepth, peer).map_or(Value::Null, Value::from);
            object([
                ("iodepth", Value::from(u64::from(iodepth))),
                (
                    "mib_per_s_prefetch_over_no_prefetch",
                    r(S3Server::TidegateNoPrefetch),
                ),
                ("mib_per_s_prefetch_over_rclone", r(S3Server::Rclone)),
            ])
        })
        .collect();
    object([
        (
            "store",
            Value::from("SeaweedFS (weed mini) behind the counting S3 proxy, in the namespace"),
        ),
        ("first_byte_delay_ms", Value::from(o.first_byte_delay_ms)),
        ("file_mib", Value::from(o.s3.size_bytes >> 20)),
        ("rclone_version", Value::from(setup.rclone_version.as_str())),
        ("upload_file_secs", Value::from(setup.upload_file_secs)),
        ("results", Value::Array(results)),
        ("ratios_tidegate_prefetch_over", Value::Array(ratios)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(status: u16, range: Option<&str>) -> Recorded {
        Recorded {
            seq: 0,
            conn: 0,
            at: Duration::ZERO,
            method: "GET".to_owned(),
            target: "/bench/random.bin".to_owned(),
            bucket: "bench".to_owned(),
            key: "random.bin".to_owned(),
            query: String::new(),
            range: range.map(str::to_owned),
            status: Some(status),
        }
    }

    #[test]
    fn requested_bytes_clamps_ranges_to_the_object() {
        let records = [
            get(206, Some("bytes=0-1048575")),
            // Past the end: clamped.
            get(206, Some("bytes=1048576-4194303")),
            // Open-ended.
            get(206, Some("bytes=2097152-")),
            get(200, None),
            // Failed answers fetched nothing.
            get(503, Some("bytes=0-1048575")),
        ];
        let object_bytes = 3 << 20;
        assert_eq!(
            requested_bytes(&records, object_bytes).unwrap(),
            (1 << 20) + (2 << 20) + (1 << 20) + object_bytes
        );
        assert!(requested_bytes(&[get(206, Some("bytes=-10"))], object_bytes).is_err());
    }
}
