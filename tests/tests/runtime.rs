//! The per-core runtime is real: one io_uring per worker thread, each worker
//! pinned to its own CPU, and request traffic completes on the rings.

use std::collections::BTreeMap;
use std::time::Duration;

use tidegate_tests::rpc::NfsClient;
use tidegate_tests::server::{Dirs, Server};

/// io_uring descriptors of `pid`, with their fdinfo text.
fn rings(pid: u32) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd") {
        let e = e.expect("fd entry");
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() == "anon_inode:[io_uring]" {
            let fd = e.file_name().to_string_lossy().into_owned();
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("read fdinfo");
            out.insert(fd, info);
        }
    }
    out
}

/// A counter line such as `CqTail:\t123` from io_uring fdinfo.
fn field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in fdinfo:\n{info}"))
}

#[test]
fn one_ring_per_worker_and_traffic_completes_on_each() {
    let dirs = Dirs::new();
    std::fs::write(dirs.source.join("f"), b"payload").unwrap();
    let server = Server::start(&dirs.source, &dirs.state);
    let pid = server.pid();

    let before = rings(pid);
    assert_eq!(
        before.len(),
        2,
        "expected one io_uring per worker (2 workers), found {before:?}"
    );

    // Many connections, so SO_REUSEPORT hands some to each worker.
    let mut clients = Vec::new();
    for _ in 0..32 {
        let mut c = NfsClient::connect(server.addr()).expect("connect");
        let root = c.mount_root().expect("mount");
        for _ in 0..20 {
            let attr = c.getattr(&root).expect("getattr");
            assert!(attr.is_ok(), "GETATTR of the root failed: {attr:?}");
        }
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = rings(pid);
    for (fd, info) in &after {
        let was = field(&before[fd], "CqTail");
        let now = field(info, "CqTail");
        assert!(
            now > was + 10,
            "ring fd {fd} completed {} operations under traffic; each worker should see some",
            now - was
        );
    }

    // Each worker thread is pinned to a single, distinct CPU.
    let mut cpus = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if !comm.starts_with("tidegate-w") {
            continue;
        }
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert!(
            list.parse::<usize>().is_ok(),
            "worker {} is not pinned to one CPU: {list}",
            comm.trim()
        );
        cpus.push(list);
    }
    assert_eq!(cpus.len(), 2, "two worker threads");
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    if online >= 2 {
        assert_ne!(cpus[0], cpus[1], "workers share a CPU");
    }
}
