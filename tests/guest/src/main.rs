//! `tidegate-guest`: helpers for the kernel-client scenarios, linked
//! statically so that they run in the busybox guest.
//!
//! - `gen DIR`: write the dataset (on the host, before boot).
//! - `dataset-id`: print the generator's id (the host caches by it).
//! - `loader`: a training data loader's access pattern: N parallel readers
//!   open, read and close every small file once per epoch in a shuffled
//!   order, checking each file's bytes.
//! - `list DIR`: the names of a directory in `readdir` order (no `stat`),
//!   with the time taken for every 10,000 entries on stderr.
//! - `mmap`: read files through a shared mapping (pages faulted in random
//!   order), a second mapping at an offset, and `read(2)` after evicting the
//!   page cache; every byte is compared with the expected content.
//!
//! Each prints a short report and exits non-zero on any mismatch or error.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tidegate_guest::{
    content, small_path, small_size, write_dataset, Rng, DATASET_ID, SMALL_BYTES_MAX, SMALL_COUNT,
};

const USAGE: &str = "\
tidegate-guest gen DIR
tidegate-guest dataset-id
tidegate-guest loader --root DIR [--workers N] [--epochs N] [--seed N] [--count N]
tidegate-guest mmap --root DIR REL_PATH...
tidegate-guest list DIR
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") if args.len() == 2 => cmd_gen(Path::new(&args[1])),
        Some("dataset-id") => {
            println!("{DATASET_ID}");
            Ok(())
        }
        Some("loader") => LoaderOpts::parse(&args[1..]).and_then(|o| cmd_loader(&o)),
        Some("mmap") => cmd_mmap(&args[1..]),
        Some("list") if args.len() == 2 => cmd_list(Path::new(&args[1])),
        _ => Err(format!("usage:\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tidegate-guest: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_gen(dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    write_dataset(dir).map_err(|e| e.to_string())?;
    println!(
        "dataset {DATASET_ID} written to {} in {:.1}s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct LoaderOpts {
    root: PathBuf,
    workers: usize,
    epochs: usize,
    seed: u64,
    count: usize,
}

impl LoaderOpts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut opts = LoaderOpts {
            root: PathBuf::new(),
            workers: 4,
            epochs: 2,
            seed: 1,
            count: SMALL_COUNT,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\nusage:\n{USAGE}"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--root" => opts.root = PathBuf::from(value),
                "--workers" => opts.workers = number()?.max(1) as usize,
                "--epochs" => opts.epochs = number()?.max(1) as usize,
                "--seed" => opts.seed = number()?,
                "--count" => opts.count = (number()? as usize).min(SMALL_COUNT),
                _ => return Err(format!("unknown flag {flag}\nusage:\n{USAGE}")),
            }
        }
        if opts.root.as_os_str().is_empty() {
            return Err(format!("--root is required\nusage:\n{USAGE}"));
        }
        Ok(opts)
    }
}

/// Counts a finished worker, also when it panics.
struct CountOnDrop<'a>(&'a AtomicUsize);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Errors kept for the report; the rest are only counted.
const ERRORS_SHOWN_MAX: usize = 20;

struct Failures {
    count: AtomicUsize,
    shown: Mutex<Vec<String>>,
}

impl Failures {
    fn new() -> Self {
        Failures {
            count: AtomicUsize::new(0),
            shown: Mutex::new(Vec::new()),
        }
    }

    fn add(&self, msg: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if shown.len() < ERRORS_SHOWN_MAX {
            shown.push(msg);
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Opens, reads to the end and closes one file; returns its bytes.
fn read_whole(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut f = File::open(path)?;
    f.read_to_end(buf)?;
    Ok(())
}

fn cmd_loader(o: &LoaderOpts) -> Result<(), String> {
    let failures = Failures::new();
    println!(
        "loader: {} files under {}, {} workers, {} epochs, seed {}",
        o.count,
        o.root.display(),
        o.workers,
        o.epochs,
        o.seed
    );
    for epoch in 0..o.epochs {
        let mut order: Vec<usize> = (0..o.count).collect();
        Rng::new(o.seed.wrapping_mul(1000).wrapping_add(epoch as u64)).shuffle(&mut order);
        let next = AtomicUsize::new(0);
        let bytes = AtomicUsize::new(0);
        let latencies: Mutex<Vec<Duration>> = Mutex::new(Vec::with_capacity(o.count));
        let started = Instant::now();
        let workers_done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            // Progress on stderr every few seconds, so a slow or stuck run
            // shows how far it got.
            s.spawn(|| {
                let mut last_report = Instant::now();
                while workers_done.load(Ordering::Relaxed) < o.workers {
                    std::thread::sleep(Duration::from_millis(200));
                    if last_report.elapsed() >= PROGRESS_EVERY {
                        last_report = Instant::now();
                        eprintln!(
                            "epoch {}: {} of {} files after {:.0}s",
                            epoch + 1,
                            next.load(Ordering::Relaxed).min(order.len()),
                            order.len(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            });
            for _ in 0..o.workers {
                s.spawn(|| {
                    let _done = CountOnDrop(&workers_done);
                    let mut buf = Vec::with_capacity(SMALL_BYTES_MAX + 1);
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= order.len() {
                            break;
                        }
                        let i = order[k];
                        let rel = small_path(i);
                        let path = o.root.join(&rel);
                        let t = Instant::now();
                        if let Err(e) = read_whole(&path, &mut buf) {
                            failures.add(format!("{}: {e}", path.display()));
                            continue;
                        }
                        mine.push(t.elapsed());
                        bytes.fetch_add(buf.len(), Ordering::Relaxed);
                        let want_len = small_size(i);
                        if buf.len() != want_len {
                            failures.add(format!(
                                "{}: read {} bytes, expected {want_len}",
                                path.display(),
                                buf.len()
                            ));
                        } else if buf != content(&rel, want_len) {
                            let at = buf
                                .iter()
                                .zip(content(&rel, want_len))
                                .position(|(a, b)| *a != b)
                                .unwrap_or(0);
                            failures.add(format!(
                                "{}: content differs from byte {at}",
                                path.display()
                            ));
                        }
                    }
                    latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(mine);
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let mut lat = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
        lat.sort();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let idx = ((lat.len() - 1) as f64 * p).round() as usize;
            lat[idx].as_secs_f64() * 1000.0
        };
        let total = bytes.load(Ordering::Relaxed) as f64;
        println!(
            "epoch {}: {} files, {:.1} MiB in {secs:.2}s = {:.0} files/s, {:.2} MiB/s; \
             open+read+close ms p50 {:.2} p99 {:.2} max {:.2}",
            epoch + 1,
            lat.len(),
            total / 1048576.0,
            lat.len() as f64 / secs,
            total / 1048576.0 / secs,
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    report(&failures)
}

fn report(failures: &Failures) -> Result<(), String> {
    let n = failures.count();
    if n == 0 {
        println!("no errors");
        return Ok(());
    }
    for msg in failures
        .shown
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        eprintln!("error: {msg}");
    }
    Err(format!("{n} errors"))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// A read-only mapping of part of a file, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(file: &File, offset: usize, len: usize, flags: libc::c_int) -> std::io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) over a
        // valid descriptor; nothing else refers to that range.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                flags,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    /// The mapped bytes up to the page-rounded length (bytes past the end
    /// of the file in its last page are readable and must be zero).
    fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.len.next_multiple_of(page_size()));
        // SAFETY: the mapping is at least `len` bytes long (rounded up to a
        // page), readable, and lives as long as `self`. The file is not
        // written while mapped (the export is read-only to this test).
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len describe a mapping created in `new`, unmapped once.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn check_one_mmap(root: &Path, rel: &str) -> Result<String, String> {
    let path = root.join(rel);
    let shown = path.display();
    let file = File::open(&path).map_err(|e| format!("open {shown}: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("fstat {shown}: {e}"))?
        .len() as usize;
    let expected = content(rel, size);
    let page = page_size();

    if size == 0 {
        let mut buf = Vec::new();
        (&file)
            .read_to_end(&mut buf)
            .map_err(|e| format!("read {shown}: {e}"))?;
        if !buf.is_empty() {
            return Err(format!("{shown}: size 0 but read gave {} bytes", buf.len()));
        }
        return Ok(format!(
            "{rel}: 0 B, read gives nothing (no mapping of length 0)"
        ));
    }

    // 1. Whole-file shared mapping, pages faulted in a shuffled order.
    {
        let map = Mapping::new(&file, 0, size, libc::MAP_SHARED)
            .map_err(|e| format!("mmap {shown}: {e}"))?;
        let rounded = size.next_multiple_of(page);
        let bytes = map.bytes(rounded);
        let mut pages: Vec<usize> = (0..rounded / page).collect();
        Rng::new(size as u64).shuffle(&mut pages);
        for p in pages {
            let start = p * page;
            let end = (start + page).min(size);
            if let Some(at) = first_difference(&bytes[start..end], &expected[start..end]) {
                return Err(format!(
                    "{shown}: mmap byte {} differs from the file's content",
                    start + at
                ));
            }
        }
        if let Some(at) = bytes[size..].iter().position(|b| *b != 0) {
            return Err(format!(
                "{shown}: byte {} past the end of the file in the last mapped page is not zero",
                size + at
            ));
        }
    }

    // 2. A private mapping from a page-aligned offset near the middle.
    let offset = (size / 2) / page * page;
    {
        let len = size - offset;
        let map = Mapping::new(&file, offset, len, libc::MAP_PRIVATE)
            .map_err(|e| format!("mmap {shown} at offset {offset}: {e}"))?;
        if let Some(at) = first_difference(map.bytes(len), &expected[offset..]) {
            return Err(format!(
                "{shown}: mmap at offset {offset}: byte {} differs",
                offset + at
            ));
        }
    }

    // 3. read(2) after dropping the cached pages, so that it goes back to
    //    the server rather than reusing what the mapping faulted in.
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!(
            "posix_fadvise(DONTNEED) {shown}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    let mut read_back = Vec::with_capacity(size);
    (&file)
        .read_to_end(&mut read_back)
        .map_err(|e| format!("read {shown}: {e}"))?;
    if read_back.len() != size {
        return Err(format!(
            "{shown}: read gave {} bytes, fstat says {size}",
            read_back.len()
        ));
    }
    if let Some(at) = first_difference(&read_back, &expected) {
        return Err(format!("{shown}: read byte {at} differs"));
    }
    Ok(format!(
        "{rel}: {size} B identical through mmap (shuffled faults, zero tail), mmap at offset {offset}, and read"
    ))
}

fn cmd_mmap(args: &[String]) -> Result<(), String> {
    let (root, rels) = match args {
        [flag, root, rels @ ..] if flag == "--root" && !rels.is_empty() => (Path::new(root), rels),
        _ => return Err(format!("usage:\n{USAGE}")),
    };
    let failures = Failures::new();
    for rel in rels {
        match check_one_mmap(root, rel) {
            Ok(line) => println!("ok {line}"),
            Err(msg) => failures.add(msg),
        }
    }
    report(&failures)
}

fn cmd_list(dir: &Path) -> Result<(), String> {
    use std::io::Write;
    const EVERY: usize = 10_000;
    let started = Instant::now();
    let mut last = started;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0usize;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("opendir {}: {e}", dir.display()))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("readdir {} after {n} entries: {e}", dir.display()))?;
        let name = entry.file_name();
        out.write_all(name.as_encoded_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| format!("stdout: {e}"))?;
        n += 1;
        if n.is_multiple_of(EVERY) {
            eprintln!(
                "{n} entries: +{:.2}s ({:.2}s in all)",
                last.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    }
    out.flush().map_err(|e| format!("stdout: {e}"))?;
    eprintln!("{n} entries in {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}
