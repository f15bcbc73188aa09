//! Operator tools that talk to a running gateway: `tidegate cache stats`
//! ([`stats`]) and `tidegate warm` ([`warm`]).
//!
//! Both speak to the gateway's admin endpoint
//! ([`crate::telemetry::http`]) over plain HTTP/1.1 with a small client of
//! their own ([`client`]), on a current-thread tokio runtime each tool
//! builds for itself: the tools are short-lived processes, not part of the
//! server, so they need no worker runtime and no io_uring. `warm` also
//! lists the source itself, through the same [`ObjectStore`] the gateway
//! serves, because the admin endpoint warms one object per request and the
//! listing is what turns a prefix into those requests. [`open_store`]
//! builds that store from a [`Source`] exactly as `serve` parses it.
//!
//! Entry points return `anyhow::Result` (these are edges); the pieces
//! underneath return typed errors.

mod client;
mod progress;
pub mod stats;
pub mod status;
pub mod warm;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Source;
use crate::store::dir::DirStore;
use crate::store::s3::S3Store;
use crate::store::ObjectStore;

/// Parse the `--admin ADDR:PORT` value: an IP address and port
/// (`127.0.0.1:9100`, `[::1]:9100`) or a host name and port
/// (`localhost:9100`, resolved now; the first address is used).
pub fn parse_admin_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let usage =
        || format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:9100, [::1]:9100 or localhost:9100)");
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(usage());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(usage());
    }
    match (host, port.parse::<u16>().unwrap_or(0)).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{host} has no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

/// Open the object store a [`Source`] names, as `serve` does: a directory
/// through [`DirStore`], a bucket through [`S3Store`] (region and
/// credentials resolved now; no request is sent to S3 until first use).
///
/// Builds a short-lived current-thread runtime for the S3 set-up, so call
/// it outside any async context. The returned store can then be used on
/// any runtime: the S3 store builds one client per runtime on first use.
pub fn open_store(source: &Source) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match source {
        Source::Dir(p) => {
            let store = DirStore::open(p)
                .with_context(|| format!("opening source directory {}", p.display()))?;
            Ok(Arc::new(store))
        }
        Source::S3(c) => {
            let desc = source.describe();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime for the S3 set-up")?;
            let store = rt
                .block_on(S3Store::new((**c).clone()))
                .with_context(|| format!("S3 source {desc}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `20.0 MiB`, `1.25 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.2} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Microseconds in the unit that reads best: `850 µs`, `1.25 ms`, `2.50 s`.
pub(crate) fn human_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// A duration for an ETA: `45s`, `3m05s`, `2h07m`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses() {
        assert_eq!(
            parse_admin_addr("127.0.0.1:9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            parse_admin_addr("[::1]:9100").unwrap(),
            "[::1]:9100".parse().unwrap()
        );
        assert_eq!(parse_admin_addr("localhost:9100").unwrap().port(), 9100);
        for bad in [
            "",
            "9100",
            "127.0.0.1",
            "127.0.0.1:",
            ":9100",
            "host:99999",
            "a:b",
        ] {
            let e = parse_admin_addr(bad).unwrap_err();
            assert!(e.contains("ADDR:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn units() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(20 << 20), "20.0 MiB");
        assert_eq!(human_bytes(5 << 30), "5.00 GiB");
        assert_eq!(human_us(850), "850 µs");
        assert_eq!(human_us(1250), "1.25 ms");
        assert_eq!(human_us(2_500_000), "2.50 s");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(7620)), "2h07m");
    }

    #[test]
    fn opens_a_directory_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&Source::Dir(dir.path().to_path_buf())).unwrap();
        assert!(store.describe().starts_with("dir:"));
        let missing = Source::Dir(dir.path().join("nope"));
        let e = open_store(&missing).err().unwrap();
        assert!(
            format!("{e:#}").contains("opening source directory"),
            "{e:#}"
        );
    }
}
