//! Crash safety of writes: a checkpoint-like workload (create, write,
//! COMMIT, rename over the previous one) against the gateway on SeaweedFS,
//! `kill -9` of the gateway at a random moment of each trial, restart.
//!
//! Checked:
//! - the gateway starts cleanly after every kill;
//! - after every restart, every file whose COMMIT or rename was answered
//!   is there through NFS with its content (a rename in flight at the kill
//!   may or may not have happened, never half);
//! - once the journal has drained, the store holds exactly that content
//!   under the final keys, and no acknowledged-renamed temporary remains;
//! - during all trials a poller lists and reads the bucket over and over:
//!   every object it ever sees is whole (each one carries a header with its
//!   length and digest).
//!
//! `TIDEGATE_CRASH_TRIALS` and `TIDEGATE_CRASH_SEED` override the trial
//! count (default 50) and the random seed (printed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tidegate::store::s3::S3Store;
use tidegate::store::{ObjectStore, StoreError};
use tidegate_tests::cache_rig::{Rig, BUCKET};
use tidegate_tests::data::{fresh_seed, hex, SplitMix64 as Rng};
use tidegate_tests::rpc::NfsClient;

const TRIALS_DEFAULT: u64 = 50;
/// Final names the trials rename onto (so renames replace files).
const FINALS: usize = 3;
/// Files one trial writes (at most; the kill usually comes first).
const FILES_PER_TRIAL: usize = 4;
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Content that proves itself whole: a header line with the body's length
/// and SHA-256, then the body.
fn make_content(rng: &mut Rng, tag: &str) -> Vec<u8> {
    // Mostly small, sometimes past the 5 MiB part size (multipart).
    let len = match rng.next_u64() % 4 {
        0 => 5 * (1 << 20) + (rng.next_u64() % (4 << 20)) as usize,
        _ => 1 + (rng.next_u64() % (700 << 10)) as usize,
    };
    let body = rng.bytes(len);
    let mut out = format!(
        "tidegate-crash {tag} len={len} sha256={}\n",
        hex(&Sha256::digest(&body))
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Whether `data` is one whole piece of content.
fn is_whole(data: &[u8]) -> bool {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..nl]).into_owned();
    let body = &data[nl + 1..];
    let mut len = None;
    let mut sha = None;
    for f in head.split(' ') {
        if let Some(v) = f.strip_prefix("len=") {
            len = v.parse::<usize>().ok();
        }
        if let Some(v) = f.strip_prefix("sha256=") {
            sha = Some(v.to_string());
        }
    }
    head.starts_with("tidegate-crash ")
        && len == Some(body.len())
        && sha.as_deref() == Some(hex(&Sha256::digest(body)).as_str())
}

fn digest(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// What the client was told, per name: the digests the name may hold.
#[derive(Default, Debug, Clone)]
struct Expect {
    /// name → acceptable digests (the acknowledged one first; a second one
    /// when an operation on the name was in flight at the kill).
    names: BTreeMap<String, Vec<String>>,
    /// Temporaries whose rename was acknowledged: must be gone.
    renamed_away: Vec<String>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every object key in the bucket.
async fn all_keys(s: &S3Store) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![String::new()];
    while let Some(prefix) = todo.pop() {
        let mut token = None;
        loop {
            let page = match s.list(&prefix, token.as_deref(), 1000).await {
                Ok(p) => p,
                Err(_) => return out,
            };
            out.extend(page.objects.into_iter().map(|o| o.key));
            todo.extend(page.prefixes);
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
    }
    out
}

async fn get_whole(s: &S3Store, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let m = match s.head(key).await {
        Ok(m) => m,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; m.size as usize];
    match s.get_range(key, 0, &mut buf, Some(&m.etag)).await {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        // Replaced or deleted between HEAD and GET: not a finding.
        Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The workload of one trial; records what was acknowledged. Returns when
/// done or when the gateway goes away.
fn workload(
    client: &mut NfsClient,
    root: &[u8],
    trial: u64,
    rng: &mut Rng,
    expect: &Mutex<Expect>,
) -> anyhow::Result<()> {
    for i in 0..FILES_PER_TRIAL {
        let tmp = format!("t{trial}-{i}.tmp");
        let fin = format!("ckpt{}", rng.next_u64() as usize % FINALS);
        let content = make_content(rng, &format!("{tmp}->{fin}"));
        let fh = match client.create(root, tmp.as_bytes(), false)? {
            Ok(fh) => fh,
            Err(s) => anyhow::bail!("CREATE {tmp}: nfsstat3 {s}"),
        };
        for (k, chunk) in content.chunks(WRITE_CHUNK_BYTES).enumerate() {
            let off = (k * WRITE_CHUNK_BYTES) as u64;
            if let Err(s) = client.write(&fh, off, chunk, 0)? {
                anyhow::bail!("WRITE {tmp}: nfsstat3 {s}");
            }
        }
        let d = digest(&content);
        // In flight from here: a COMMIT that was not answered may still
        // have happened.
        expect
            .lock()
            .unwrap()
            .names
            .insert(tmp.clone(), vec![d.clone(), "maybe".into()]);
        if let Err(s) = client.commit(&fh)? {
            anyhow::bail!("COMMIT {tmp}: nfsstat3 {s}");
        }
        expect
            .lock()
            .unwrap()
            .names
            .insert(tmp.clone(), vec![d.clone()]);
        {
            // The rename is in flight: either name may hold it.
            let mut e = expect.lock().unwrap();
            let prev = e.names.get(&fin).cloned().unwrap_or_default();
            let mut both = prev;
            both.push(d.clone());
            e.names.insert(fin.clone(), both);
            e.names.insert(tmp.clone(), vec![d.clone(), "gone".into()]);
        }
        if let Err(s) = client.rename(root, tmp.as_bytes(), root, fin.as_bytes())? {
            anyhow::bail!("RENAME {tmp} -> {fin}: nfsstat3 {s}");
        }
        let mut e = expect.lock().unwrap();
        e.names.insert(fin.clone(), vec![d.clone()]);
        e.names.remove(&tmp);
        e.renamed_away.push(tmp);
    }
    Ok(())
}

/// After a restart: every name holds one of its acceptable contents (and
/// the expectations collapse to what the gateway now says).
fn check_through_nfs(client: &mut NfsClient, root: &[u8], expect: &Mutex<Expect>) -> Vec<String> {
    let mut findings = Vec::new();
    let mut e = expect.lock().unwrap();
    let names: Vec<(String, Vec<String>)> = e
        .names
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, ok) in names {
        let found = match client.lookup(root, name.as_bytes()) {
            Ok(Ok(l)) => match client.read_all(&l.fh, 1 << 20, 64 << 20) {
                Ok(d) => Some(d),
                Err(err) => {
                    findings.push(format!("{name}: read failed: {err:#}"));
                    continue;
                }
            },
            Ok(Err(2)) => None,
            Ok(Err(s)) => {
                findings.push(format!("{name}: LOOKUP nfsstat3 {s}"));
                continue;
            }
            Err(err) => {
                findings.push(format!("{name}: LOOKUP failed: {err:#}"));
                continue;
            }
        };
        match found {
            None => {
                if ok.iter().any(|x| x == "gone" || x == "maybe") || ok.is_empty() {
                    e.names.remove(&name);
                } else {
                    findings.push(format!("{name}: acknowledged but missing"));
                }
            }
            Some(d) => {
                let dg = digest(&d);
                if ok.contains(&dg) {
                    e.names.insert(name, vec![dg]);
                } else if ok.iter().any(|x| x == "maybe") && !is_whole(&d) {
                    // Written but never committed: not acknowledged.
                    e.names.remove(&name);
                } else {
                    findings.push(format!(
                        "{name}: holds {} bytes matching no acknowledged content (whole: {})",
                        d.len(),
                        is_whole(&d)
                    ));
                }
            }
        }
    }
    for t in e.renamed_away.clone() {
        if let Ok(Ok(_)) = client.lookup(root, t.as_bytes()) {
            findings.push(format!("{t}: renamed away (acknowledged) but still there"));
        }
    }
    findings
}

#[test]
fn kill_9_during_writes_loses_nothing_acknowledged_and_never_shows_a_partial_object() {
    let trials: u64 = std::env::var("TIDEGATE_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TRIALS_DEFAULT);
    let seed = std::env::var("TIDEGATE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(fresh_seed);
    println!("crash trials: {trials}, seed {seed} (TIDEGATE_CRASH_SEED to repeat)");
    let mut rng = Rng::new(seed);
    let mut rig = Rig::s3();
    rig.extra_args = ["--upload-delay", "100ms", "--upload-part-size", "5MiB"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    rig.start();

    // The poller: everything visible in the bucket must be whole.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let partial: Arc<Mutex<Vec<String>>> = Arc::default();
    let poller = {
        let (stop, seen, partial) = (stop.clone(), seen.clone(), partial.clone());
        let cfg = rig.seaweed().store_config(BUCKET, "");
        std::thread::spawn(move || {
            block_on(async move {
                let s = S3Store::new(cfg).await.expect("S3 client");
                while !stop.load(Ordering::Relaxed) {
                    for k in all_keys(&s).await {
                        if let Ok(Some(d)) = get_whole(&s, &k).await {
                            seen.fetch_add(1, Ordering::Relaxed);
                            // Empty is what CREATE acknowledged: a file
                            // whose writer died before any COMMIT.
                            if !d.is_empty() && !is_whole(&d) {
                                partial
                                    .lock()
                                    .unwrap()
                                    .push(format!("{k}: {} bytes, not whole", d.len()));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
    };

    let expect = Arc::new(Mutex::new(Expect::default()));
    let mut findings: Vec<String> = Vec::new();
    let mut restarts = 0u64;
    let mut acked_renames = 0usize;
    let started = Instant::now();
    for trial in 0..trials {
        let (mut client, root) = rig.connect();
        let kill_after = Duration::from_millis(20 + rng.next_u64() % 2000);
        let mut wrng = Rng::new(rng.next_u64());
        let ex = expect.clone();
        let worker = std::thread::spawn(move || {
            let r = workload(&mut client, &root, trial, &mut wrng, &ex);
            (r, client)
        });
        std::thread::sleep(kill_after);
        rig.kill_hard();
        let (r, _client) = worker.join().expect("workload thread");
        if let Err(e) = &r {
            // Expected: the gateway vanished under it.
            let _ = e;
        }
        if rig.try_start().is_err() {
            findings.push(format!(
                "trial {trial}: the gateway did not start after kill -9"
            ));
            rig.start();
        }
        restarts += 1;
        let (mut client, root) = rig.connect();
        for f in check_through_nfs(&mut client, &root, &expect) {
            findings.push(format!("trial {trial}: {f}"));
        }
        acked_renames = expect.lock().unwrap().renamed_away.len();
    }

    // Let the journal drain, then compare the store with the namespace.
    let drained = (0..600).any(|_| {
        let st = rig.stats();
        if st.get("upload_pending_keys") == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    if !drained {
        findings.push(format!(
            "the journal did not drain within 60 s: {}",
            rig.stats().brief()
        ));
    }
    let cfg = rig.seaweed().store_config(BUCKET, "");
    let e = expect.lock().unwrap().clone();
    let store_findings = block_on(async move {
        let s = S3Store::new(cfg).await.expect("S3 client");
        let mut f = Vec::new();
        for (name, ok) in &e.names {
            match get_whole(&s, name).await {
                Ok(Some(d)) if ok.contains(&digest(&d)) => {}
                Ok(Some(d)) => f.push(format!(
                    "store: {name} holds {} bytes, not the acknowledged content",
                    d.len()
                )),
                Ok(None) => f.push(format!("store: {name} missing")),
                Err(err) => f.push(format!("store: {name}: {err}")),
            }
        }
        let keys = all_keys(&s).await;
        for t in &e.renamed_away {
            if keys.contains(t) {
                f.push(format!("store: temporary {t} was renamed away but remains"));
            }
        }
        f
    });
    findings.extend(store_findings);
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("poller");
    findings.extend(
        partial
            .lock()
            .unwrap()
            .iter()
            .map(|p| format!("poller: {p}")),
    );

    let names = expect.lock().unwrap().names.len();
    println!(
        "crash trials: {trials} run, {restarts} kill -9 + restart, {acked_renames} acknowledged renames, \
         {names} names checked in the store, {} object reads by the poller, {:.1} s",
        seen.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    println!("findings: {}", findings.len());
    for f in &findings {
        println!("  {f}");
    }
    assert!(trials >= 1);
    assert!(
        seen.load(Ordering::Relaxed) > 0,
        "the poller never read an object"
    );
    assert!(
        acked_renames > 0,
        "no rename was ever acknowledged: the workload did nothing"
    );
    assert!(findings.is_empty(), "{} findings (above)", findings.len());
}
