//! fio's nfs engine (libnfs, many reads in flight on one connection)
//! against a real `tidegate serve`, over a local source directory and over
//! a SeaweedFS bucket.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::backend::{Backend, Fixture};
use tidegate_tests::data::{fresh_seed, write_random_file};
use tidegate_tests::for_each_backend;
use tidegate_tests::json::{parse_first_object, Json};
use tidegate_tests::server::Server;
use tidegate_tests::tools::{fio, nfs_root_url, run, Output};

const MIB: u64 = 1 << 20;
const FIO_TIMEOUT: Duration = Duration::from_secs(120);

for_each_backend!(
    fio_sequential_read_1m_iodepth_16,
    fio_random_read_4k_iodepth_32,
    fio_verifies_every_block_read_through_nfs,
);

/// Run one fio job with JSON output; returns the exit status's success,
/// the job object and the raw output for messages.
fn fio_job(cwd: &Path, args: &[String]) -> (bool, Json, Output) {
    let mut cmd = Command::new(fio());
    // fio may leave state files (e.g. verify state) in its working directory.
    cmd.current_dir(cwd).args(args).arg("--output-format=json");
    let out = run(&mut cmd, FIO_TIMEOUT).unwrap_or_else(|e| panic!("fio {args:?}: {e:#}"));
    let doc = parse_first_object(&out.stdout_text()).unwrap_or_else(|e| {
        panic!(
            "fio {args:?} printed no JSON ({e:#}):\n{}\n{}",
            out.stdout_text(),
            out.stderr
        )
    });
    let job = doc
        .get("jobs")
        .and_then(|j| j.index(0))
        .cloned()
        .unwrap_or_else(|| panic!("fio JSON has no jobs[0]:\n{}", out.stdout_text()));
    (out.status.success(), job, out)
}

fn nfs_job_args(server: &Server, name: &str, file: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        format!("--name={name}"),
        "--ioengine=nfs".to_string(),
        format!("--nfs_url={}", nfs_root_url(server.port)),
        format!("--filename={file}"),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn assert_clean_read(server: &Server, ok: bool, job: &Json, out: &Output, want_bytes: u64) {
    let error = job.get("error").and_then(Json::as_u64);
    let io_bytes = job.path(&["read", "io_bytes"]).and_then(Json::as_u64);
    assert!(
        ok && error == Some(0) && io_bytes == Some(want_bytes),
        "fio: exit ok={ok}, error={error:?}, read.io_bytes={io_bytes:?} (want {want_bytes}){}\nstderr:\n{}\nserver stderr:\n{}",
        fio_hint(&out.stderr),
        out.stderr,
        server.stderr_text()
    );
    let written = job.path(&["write", "io_bytes"]).and_then(Json::as_u64);
    assert_eq!(written, Some(0), "a read job wrote bytes");
}

/// Known defects of fio's nfs engine (3.33, and upstream at the time of
/// writing) that the install script's fio build must patch; named here so a
/// failure caused by an unpatched fio says so.
fn fio_hint(stderr: &str) -> &'static str {
    if stderr.contains("ACCESS denied") {
        "\nhint: this fio's nfs engine opens files O_RDWR even for read jobs, and a read-only export \
         rightly refuses MODIFY in ACCESS; the fio build must open O_RDONLY when the job does not write"
    } else if stderr.contains("Failed NFS operation") {
        "\nhint: this fio's nfs engine ignores getevents' `min` and abandons reads still in flight when \
         the job ends (they fail when it closes the connection); the fio build must make getevents wait \
         for `min` completions"
    } else {
        ""
    }
}

/// Sequential 1 MiB reads, 16 in flight, over a 64 MiB file.
fn fio_sequential_read_1m_iodepth_16(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let size = 64 * MIB;
    write_random_file(&fx.source_dir().join("seq.bin"), size, fresh_seed()).unwrap();
    let server = fx.start();
    let args = nfs_job_args(
        &server,
        "seqread",
        "seq.bin",
        &[
            "--rw=read",
            "--bs=1M",
            "--iodepth=16",
            &format!("--size={size}"),
        ],
    );
    let (ok, job, out) = fio_job(&fx.scratch(), &args);
    assert_clean_read(&server, ok, &job, &out, size);
    let ios = job.path(&["read", "total_ios"]).and_then(Json::as_u64);
    assert_eq!(ios, Some(size / MIB), "number of 1 MiB reads");
}

/// Random 4 KiB reads, 32 in flight, covering a 16 MiB file once.
fn fio_random_read_4k_iodepth_32(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let size = 16 * MIB;
    write_random_file(&fx.source_dir().join("rand.bin"), size, fresh_seed()).unwrap();
    let server = fx.start();
    let args = nfs_job_args(
        &server,
        "randread",
        "rand.bin",
        &[
            "--rw=randread",
            "--bs=4k",
            "--iodepth=32",
            &format!("--size={size}"),
        ],
    );
    let (ok, job, out) = fio_job(&fx.scratch(), &args);
    assert_clean_read(&server, ok, &job, &out, size);
    let ios = job.path(&["read", "total_ios"]).and_then(Json::as_u64);
    assert_eq!(ios, Some(size / 4096), "number of 4 KiB reads");
}

/// fio checks every block it reads through NFS: the file is first written
/// locally by fio with crc32c verify headers; the nfs job reads it with
/// `--verify=crc32c` (8 in flight). A copy with one flipped byte must fail
/// the same check, which shows the verification is real.
fn fio_verifies_every_block_read_through_nfs(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let size = 8 * MIB;
    let good = fx.source_dir().join("verify.bin");
    let verify_opts = [
        "--bs=4k".to_string(),
        format!("--size={size}"),
        "--verify=crc32c".to_string(),
    ];

    let mut prep: Vec<String> = vec![
        "--name=verify".into(),
        "--ioengine=psync".into(),
        "--rw=write".into(),
        "--do_verify=0".into(),
        "--verify_state_save=0".into(),
        format!("--filename={}", good.display()),
    ];
    prep.extend(verify_opts.iter().cloned());
    let (ok, job, out) = fio_job(&fx.scratch(), &prep);
    assert!(
        ok && job.get("error").and_then(Json::as_u64) == Some(0),
        "local fio write failed:\n{}",
        out.stderr
    );
    assert_eq!(std::fs::metadata(&good).unwrap().len(), size);

    let mut bytes = std::fs::read(&good).unwrap();
    bytes[(5 * MIB + 12_345) as usize] ^= 0x5a;
    std::fs::write(fx.source_dir().join("corrupt.bin"), &bytes).unwrap();
    drop(bytes);

    let server = fx.start();
    let read_args = |file: &str| {
        let mut a = nfs_job_args(&server, "verify", file, &["--rw=read", "--iodepth=8"]);
        a.extend(verify_opts.iter().cloned());
        a
    };

    let (ok, job, out) = fio_job(&fx.scratch(), &read_args("verify.bin"));
    assert_clean_read(&server, ok, &job, &out, size);

    let (ok, job, out) = fio_job(&fx.scratch(), &read_args("corrupt.bin"));
    let error = job.get("error").and_then(Json::as_u64).unwrap_or(0);
    assert!(
        !ok && error != 0 && out.stderr.contains("verify"),
        "fio did not notice the flipped byte in corrupt.bin (exit ok={ok}, error={error}):\n{}",
        out.stderr
    );
}
