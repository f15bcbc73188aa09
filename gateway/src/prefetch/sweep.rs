//! Directory sweeps: a training epoch reads every file of a dataset
//! directory in a shuffled order, so no single file shows a pattern, but the
//! directory does. When one client has read `files_min` distinct files of a
//! directory within `window`, the rest of the directory is worth fetching in
//! the background; the sweep lasts while that client keeps reading there
//! and stops `idle` after its last read.
//!
//! This module only decides; the sweep itself runs in the VFS, which knows
//! the listing, through the block cache and within the prefetch budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    pub enabled: bool,
    /// Distinct files read within `window` that start a sweep.
    pub files_min: usize,
    pub window: Duration,
    /// A sweep stops this long after the client's last read in the
    /// directory.
    pub idle: Duration,
    /// (client, directory) pairs tracked at once.
    pub dirs_max: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            enabled: true,
            files_min: 16,
            window: Duration::from_secs(5),
            idle: Duration::from_secs(3),
            dirs_max: 4096,
        }
    }
}

#[derive(Debug)]
struct DirReads {
    window_start: Instant,
    /// Distinct files read in the current window (bounded by `files_min`).
    files: Vec<u64>,
    last_read: Instant,
    sweeping: bool,
}

/// What a read means for its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepSignal {
    Nothing,
    /// Start a sweep of the directory now.
    Start,
}

pub struct SweepTracker {
    config: SweepConfig,
    dirs: HashMap<(u64, u64), DirReads>,
}

impl SweepTracker {
    pub fn new(config: SweepConfig) -> SweepTracker {
        SweepTracker {
            config,
            dirs: HashMap::new(),
        }
    }

    /// `client` read `file` in directory `dir` at `at`.
    pub fn read(&mut self, client: u64, dir: u64, file: u64, at: Instant) -> SweepSignal {
        if !self.config.enabled {
            return SweepSignal::Nothing;
        }
        if self.dirs.len() >= self.config.dirs_max && !self.dirs.contains_key(&(client, dir)) {
            let idle = self.config.idle;
            self.dirs
                .retain(|_, d| d.sweeping || at.saturating_duration_since(d.last_read) < idle);
            if self.dirs.len() >= self.config.dirs_max {
                return SweepSignal::Nothing;
            }
        }
        let cfg = self.config;
        let d = self.dirs.entry((client, dir)).or_insert(DirReads {
            window_start: at,
            files: Vec::new(),
            last_read: at,
            sweeping: false,
        });
        d.last_read = at;
        if d.sweeping {
            return SweepSignal::Nothing;
        }
        if at.saturating_duration_since(d.window_start) > cfg.window {
            d.window_start = at;
            d.files.clear();
        }
        if !d.files.contains(&file) {
            d.files.push(file);
        }
        if d.files.len() >= cfg.files_min {
            d.sweeping = true;
            d.files.clear();
            return SweepSignal::Start;
        }
        SweepSignal::Nothing
    }

    /// Whether the sweep of `dir` for `client` should go on at `now`.
    pub fn keep_going(&mut self, client: u64, dir: u64, now: Instant) -> bool {
        match self.dirs.get_mut(&(client, dir)) {
            Some(d) if d.sweeping => {
                if now.saturating_duration_since(d.last_read) < self.config.idle {
                    true
                } else {
                    d.sweeping = false;
                    false
                }
            }
            _ => false,
        }
    }

    /// The sweep ended (done or stopped).
    pub fn finished(&mut self, client: u64, dir: u64, at: Instant) {
        if let Some(d) = self.dirs.get_mut(&(client, dir)) {
            d.sweeping = false;
            d.window_start = at;
            d.files.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_files_of_one_directory_start_one_sweep() {
        let mut t = SweepTracker::new(SweepConfig::default());
        let t0 = Instant::now();
        let mut starts = 0;
        for f in 0..100u64 {
            let at = t0 + Duration::from_millis(10 * f);
            if t.read(1, 7, (f * 7919) % 1000, at) == SweepSignal::Start {
                starts += 1;
                assert_eq!(f, 15, "the 16th distinct file starts it");
            }
        }
        assert_eq!(starts, 1, "one sweep while it runs");
        assert!(t.keep_going(1, 7, t0 + Duration::from_secs(1)));
        // Reads stop: the sweep stops.
        assert!(!t.keep_going(1, 7, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn rereading_few_files_or_slow_reads_do_not_sweep() {
        let mut t = SweepTracker::new(SweepConfig::default());
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(t.read(1, 7, i % 5, at), SweepSignal::Nothing);
        }
        // 16 distinct files, but one every second: never 16 in a window.
        for i in 0..40u64 {
            let at = t0 + Duration::from_secs(2 + i);
            assert_eq!(t.read(1, 8, i, at), SweepSignal::Nothing);
        }
        // Another client's reads do not add up with these.
        for i in 0..10u64 {
            t.read(1, 9, i, t0);
            assert_eq!(t.read(2, 9, 100 + i, t0), SweepSignal::Nothing);
        }
    }

    #[test]
    fn off_means_off() {
        let mut t = SweepTracker::new(SweepConfig {
            enabled: false,
            ..SweepConfig::default()
        });
        let t0 = Instant::now();
        for f in 0..100 {
            assert_eq!(t.read(1, 1, f, t0), SweepSignal::Nothing);
        }
    }
}
