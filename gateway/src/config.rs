//! Gateway configuration: one struct, filled from a TOML file and then
//! overridden by command-line flags (same key names, kebab-case).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::store::s3::S3Config;

/// Default NFS port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2049";
/// Default time attributes and listings are trusted before revalidation.
pub const DEFAULT_META_TTL: Duration = Duration::from_secs(3);
/// Default time a failed lookup is remembered.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Default time the store may fail continuously before requests get I/O
/// errors instead of "try again later".
pub const DEFAULT_STORE_OUTAGE_BOUND: Duration = Duration::from_secs(60);
/// Default bound on concurrent connections per worker.
pub const DEFAULT_CONNECTIONS_PER_WORKER_MAX: usize = 4096;
/// Default bound on calls in flight per connection (Linux keeps up to 128).
pub const DEFAULT_CALLS_IN_FLIGHT_MAX: usize = 128;
/// Largest RPC record accepted: a 1 MiB WRITE plus headers.
pub const DEFAULT_RECORD_BYTES_MAX: usize = (1 << 20) + 64 * 1024;
/// Receive buffer per connection.
pub const RECV_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Where objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local directory standing in for a bucket.
    Dir(PathBuf),
    /// A bucket, or a prefix of one, in S3 or an S3-compatible store.
    S3(Box<S3Config>),
}

/// How to reach an S3-compatible store (flags `--endpoint-url`,
/// `--path-style`, `--region`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub endpoint_url: Option<String>,
    pub path_style: bool,
    pub region: Option<String>,
}

impl Source {
    pub fn parse(s: &str, s3: &S3Options) -> Result<Source, ConfigError> {
        if s.starts_with("s3://") {
            let mut c = S3Config::from_url(s).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if let Some(url) = &s3.endpoint_url {
                c = c.with_endpoint(url.clone(), s3.path_style);
            } else {
                c.path_style = s3.path_style;
            }
            c.region = s3.region.clone();
            c.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            return Ok(Source::S3(Box::new(c)));
        }
        if s.contains("://") {
            return Err(ConfigError::Invalid(format!(
                "{s}: unknown source scheme (expected a local directory or s3://bucket[/prefix])"
            )));
        }
        Ok(Source::Dir(PathBuf::from(s)))
    }

    /// A stable description, used to tie a state directory to its source.
    /// Never contains credentials.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) => {
                let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                format!("dir:{}", abs.display())
            }
            Source::S3(c) => {
                let mut d = format!("s3://{}/{}", c.bucket, c.prefix);
                if let Some(e) = &c.endpoint_url {
                    d.push_str(" at ");
                    d.push_str(e);
                }
                d
            }
        }
    }
}

/// Keys accepted in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub source: Option<String>,
    pub endpoint_url: Option<String>,
    pub path_style: Option<bool>,
    pub region: Option<String>,
    pub listen: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub meta_ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub immutable: Option<bool>,
    pub store_outage_bound: Option<String>,
    pub connections_per_worker_max: Option<usize>,
    pub calls_in_flight_max: Option<usize>,
    pub record_bytes_max: Option<usize>,
    pub cache: Option<PathBuf>,
    pub cache_size: Option<String>,
    pub cache_block_size: Option<String>,
    pub cache_memory: Option<String>,
    pub prefetch: Option<String>,
    pub prefetch_dir_sweep: Option<String>,
    pub prefetch_window_max: Option<String>,
    pub prefetch_budget: Option<String>,
    pub prefetch_client_budget: Option<String>,
    pub small_object_size: Option<String>,
    pub admin: Option<SocketAddr>,
    pub read_only: Option<bool>,
    pub staging_dir: Option<PathBuf>,
    pub staging_size: Option<String>,
    pub upload_delay: Option<String>,
    pub upload_part_size: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub listen: SocketAddr,
    pub workers: usize,
    pub state_dir: PathBuf,
    pub meta_ttl: Duration,
    pub negative_ttl: Duration,
    pub immutable: bool,
    pub store_outage_bound: Duration,
    pub connections_per_worker_max: usize,
    pub calls_in_flight_max: usize,
    pub record_bytes_max: usize,
    /// The block cache; `None` serves every read from the store.
    pub cache: Option<crate::cache::block::CacheConfig>,
    /// Where the admin HTTP endpoint (metrics, stats, warm) listens.
    pub admin: Option<SocketAddr>,
    /// Write-back; `None` exports read-only.
    pub write: Option<crate::write::WriteConfig>,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > 1024 {
            return Err(ConfigError::Invalid(format!(
                "workers must be between 1 and 1024, not {}",
                self.workers
            )));
        }
        if self.calls_in_flight_max == 0 || self.calls_in_flight_max > 65536 {
            return Err(ConfigError::Invalid(
                "calls-in-flight-max must be between 1 and 65536".into(),
            ));
        }
        if self.record_bytes_max < 64 * 1024 || self.record_bytes_max > 64 << 20 {
            return Err(ConfigError::Invalid(
                "record-bytes-max must be between 64 KiB and 64 MiB".into(),
            ));
        }
        if let Some(w) = &self.write {
            if w.part_bytes < (5 << 20) || w.part_bytes > (5 << 30) {
                return Err(ConfigError::Invalid(
                    "upload-part-size must be between 5MiB and 5GiB".into(),
                ));
            }
            if w.staged_bytes_max < (64 << 20) {
                return Err(ConfigError::Invalid(
                    "staging-size must be at least 64MiB".into(),
                ));
            }
            if w.upload_delay > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::Invalid(
                    "upload-delay must be at most 24h".into(),
                ));
            }
        }
        if self.connections_per_worker_max == 0 {
            return Err(ConfigError::Invalid(
                "connections-per-worker-max must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Parse a duration such as `3s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let bad = || ConfigError::Invalid(format!("{s:?} is not a duration (try 3s, 500ms, 2m)"));
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a byte count such as `64MiB`, `10GiB`, `1.5T`, `4096` (binary
/// units; `K`, `M`, `G`, `T` with or without `iB`/`B` mean the same).
pub fn parse_bytes(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let bad = || {
        ConfigError::Invalid(format!(
            "{t:?} is not a size (try 64MiB, 10GiB, 1T or plain bytes)"
        ))
    };
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let shift = match unit
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Largest default memory tier (bytes).
pub const CACHE_MEMORY_DEFAULT_BYTES_MAX: u64 = 8 << 30;

/// The default memory tier: an eighth of physical memory, at most
/// [`CACHE_MEMORY_DEFAULT_BYTES_MAX`].
pub fn default_cache_memory_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    (total / 8).min(CACHE_MEMORY_DEFAULT_BYTES_MAX)
}

/// `$XDG_DATA_HOME/tidegate`, `~/.local/share/tidegate`, or
/// `/var/lib/tidegate` when neither is known.
pub fn data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tidegate");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/tidegate");
    }
    PathBuf::from("/var/lib/tidegate")
}

/// The default state directory of a source: one per source, so two
/// gateways over different sources never share a handle table.
pub fn default_state_dir(source: &Source) -> PathBuf {
    let d = source.describe();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in d.as_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    data_dir().join("state").join(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("10G").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("2 TB").unwrap(), 2 << 40);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("-1M").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn toml_keys_match_flags() {
        let c: FileConfig = toml::from_str(
            "source = \"/data\"\nlisten = \"127.0.0.1:2050\"\nworkers = 2\nmeta-ttl = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.workers, Some(2));
        assert_eq!(c.meta_ttl.as_deref(), Some("5s"));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }

    #[test]
    fn sources() {
        let none = S3Options::default();
        assert_eq!(
            Source::parse("/data", &none).unwrap(),
            Source::Dir(PathBuf::from("/data"))
        );
        let opts = S3Options {
            endpoint_url: Some("http://127.0.0.1:8333".into()),
            path_style: true,
            region: None,
        };
        match Source::parse("s3://bucket/train", &opts).unwrap() {
            Source::S3(c) => {
                assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", "train/"));
                assert!(c.path_style);
            }
            other => panic!("{other:?}"),
        }
        assert!(Source::parse("s3://", &none).is_err());
        assert!(Source::parse("gs://bucket", &none).is_err());
    }
}
