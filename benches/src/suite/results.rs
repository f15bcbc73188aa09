//! What the suite measured, in one flat shape that the report, the JSON and
//! the plots are all made from.

/// Which direction of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// What a system is in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// tidegate itself: the reference of every ratio in its case (the
    /// first tidegate row of a case when there are several).
    Tidegate,
    /// Another way of serving the same data.
    Peer,
    /// A physical limit of the machine (local disk, loopback TCP).
    Limit,
}

/// One number: `value` of `metric` for `system` in one case of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Workload letter and name, e.g. `a` (see [`WorkloadInfo`]).
    pub workload: String,
    /// The case within the workload, e.g. `sequential 1 MiB, 4 streams, warm`.
    pub case: String,
    /// The system's display name, e.g. `tidegate (warm)`, `rclone serve nfs`.
    pub system: String,
    pub role: Role,
    /// e.g. `throughput`, `epoch 2 time`, `hit ratio`.
    pub metric: String,
    pub value: f64,
    /// e.g. `MiB/s`, `s`, `files/s`, `IOPS`, `ratio`.
    pub unit: String,
    pub better: Better,
}

/// What serving a workload cost a server process (and its helpers).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCost {
    pub workload: String,
    pub system: String,
    /// CPU seconds (user + system) per GiB the server served, over the
    /// measured phases of the workload.
    pub cpu_secs_per_gib: Option<f64>,
    /// Peak resident memory (VmHWM) of the server process over its life.
    pub peak_rss_bytes: Option<u64>,
}

/// A workload as the report describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadInfo {
    /// `a` … `g`.
    pub id: String,
    pub title: String,
    /// What runs, sizes included.
    pub description: String,
    /// How each system is reached, where the client paths differ.
    pub clients: String,
}

/// One of the project's goals and whether this run met it.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub text: String,
    /// `None` when the run lacks the numbers to decide.
    pub met: Option<bool>,
    /// The numbers behind the verdict.
    pub detail: String,
}

/// A system that failed in a workload: the row is missing and says why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub workload: String,
    pub system: String,
    pub error: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// UTC start time, `2026-11-27T21:00:00Z`.
    pub started_utc: String,
    pub hostname: String,
    /// The command line that produced it.
    pub command: String,
    pub quick: bool,
    pub duration_secs: f64,
    /// Machine facts: cores, memory, kernel, file system of the cache.
    pub machine: Vec<(String, String)>,
    /// Versions of every system and tool (`tidegate`, `rclone`, `fio`, …).
    pub versions: Vec<(String, String)>,
    pub workloads: Vec<WorkloadInfo>,
    pub measurements: Vec<Measurement>,
    pub costs: Vec<ServerCost>,
    pub goals: Vec<Goal>,
    pub failures: Vec<Failure>,
    /// Free-form remarks that belong in the report.
    pub notes: Vec<String>,
}
