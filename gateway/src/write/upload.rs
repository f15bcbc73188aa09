//! The uploader: brings the store in line with the overlay, one key at a
//! time, in the background (see the module essay in `write`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Data, Kind, Record, WriteBack};
use crate::store::{PartDone, PosixMeta, StoreError};
use crate::telemetry::{self, Counter};

/// How often the uploader looks for due work when nothing wakes it.
const TICK: Duration = Duration::from_millis(200);
/// Pause before the first upload when the journal owes the store
/// something at start-up.
const RESTART_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits to abandon each interrupted multipart upload.
const SHUTDOWN_ABORT_WAIT: Duration = Duration::from_secs(2);
/// Shortest time between two scans for due work.
const SCAN_INTERVAL_MIN: Duration = Duration::from_millis(20);
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT_MAX: usize = 4;
/// Longest wait between retries of a failing key.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);

/// The file-type bits s3fs keeps in `mode`.
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// One store request to make for one key.
#[derive(Debug, Clone)]
enum Work {
    Upload { file_no: u64, size: u64, gen: u64 },
    Copy { src: String, etag: String, gen: u64 },
    Marker { gen: u64 },
    Link { target: String, gen: u64 },
    Delete { gen: u64 },
}

fn posix_of(rec: &Record) -> PosixMeta {
    let kind = match rec.kind {
        Kind::Dir => S_IFDIR,
        Kind::Symlink => S_IFLNK,
        _ => S_IFREG,
    };
    PosixMeta {
        mode: Some(kind | (rec.attrs.mode & 0o7777)),
        uid: Some(rec.attrs.uid),
        gid: Some(rec.attrs.gid),
        mtime_ns: Some(rec.attrs.mtime_ns),
    }
}

#[derive(Debug)]
enum Outcome {
    Done {
        etag: String,
    },
    /// The file changed while it was read; try again later.
    Changed,
    Failed(StoreError),
}

impl WriteBack {
    /// Run the uploader until `shutdown` turns true. Must run inside a
    /// `LocalSet`.
    pub async fn run_uploader(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        if self.pending().keys > 0 {
            // Requests of a previous run that died may still be landing in
            // the store; an upload racing one of them could be overtaken
            // by the older data.
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RESTART_GRACE) => {}
            }
        }
        loop {
            // A scan walks every record: at most one per SCAN_INTERVAL_MIN
            // however often changes wake the uploader.
            let scanned = Instant::now();
            while tasks.len() < self.cfg.uploads_max {
                let Some((key, work, rec)) = self.next_work() else {
                    break;
                };
                let me = self.clone();
                tasks.spawn_local(async move {
                    let outcome = me.perform(&key, &work, &rec).await;
                    me.finish(&key, &work, outcome);
                });
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                _ = self.wake.notified() => {
                    let since = scanned.elapsed();
                    if since < SCAN_INTERVAL_MIN {
                        tokio::time::sleep(SCAN_INTERVAL_MIN - since).await;
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.abort_all();
        // Uploads cut short leave parts in the store: abandon them.
        let open: Vec<(String, String)> = self.lock().multiparts.drain().collect();
        for (key, id) in open {
            match tokio::time::timeout(SHUTDOWN_ABORT_WAIT, self.store.multipart_abort(&key, &id))
                .await
            {
                Ok(Ok(())) => tracing::info!(
                    key,
                    "interrupted upload abandoned; it restarts on the next start"
                ),
                _ => {
                    tracing::warn!(key, upload_id = %id, "could not abandon an interrupted multipart upload; its parts stay in the store until a lifecycle rule removes them")
                }
            }
        }
    }

    /// The next key that is due, marked busy.
    fn next_work(&self) -> Option<(String, Work, Record)> {
        let mut inner = self.lock();
        let now = Instant::now();
        // Keys still needed as copy sources: nothing may replace them yet.
        let sources: std::collections::HashSet<String> = inner
            .map
            .iter()
            .filter(|(k, e)| {
                e.rec.dirty && matches!(&e.rec.data, Data::Remote { src, .. } if src != *k)
            })
            .filter_map(|(_, e)| match &e.rec.data {
                Data::Remote { src, .. } => Some(src.clone()),
                _ => None,
            })
            .collect();
        let mut pick = None;
        for (k, e) in inner.map.iter() {
            if !e.rec.dirty
                || e.writes_in_flight > 0
                || inner.busy.contains(k)
                || e.not_before > now
            {
                continue;
            }
            let quiet = e.changed.elapsed();
            if quiet < self.cfg.upload_delay || (e.unstable && quiet < super::UNCOMMITTED_IDLE) {
                continue;
            }
            let is_copy_from_elsewhere =
                matches!(&e.rec.data, Data::Remote { src, .. } if src != k);
            if !is_copy_from_elsewhere && sources.contains(k) {
                continue;
            }
            let work = match (&e.rec.kind, &e.rec.data) {
                (Kind::File, Data::Staged(n)) => Work::Upload {
                    file_no: *n,
                    size: e.rec.size,
                    gen: e.gen,
                },
                (Kind::File, Data::Remote { src, etag }) => Work::Copy {
                    src: src.clone(),
                    etag: etag.clone(),
                    gen: e.gen,
                },
                (Kind::Dir, _) => Work::Marker { gen: e.gen },
                (Kind::Symlink, Data::Link(t)) => Work::Link {
                    target: t.clone(),
                    gen: e.gen,
                },
                (Kind::Gone, _) if e.rec.in_store => Work::Delete { gen: e.gen },
                _ => continue,
            };
            pick = Some((k.clone(), work, e.rec.clone(), e.unstable));
            break;
        }
        let (key, work, rec, unstable) = pick?;
        if unstable {
            // Never committed, idle for long: make it stable first.
            drop(inner);
            if let Err(e) = self.commit(&key) {
                tracing::warn!(key, error = %e, "making idle writes stable failed");
                return None;
            }
            inner = self.lock();
        }
        inner.busy.insert(key.clone());
        Some((key, work, rec))
    }

    async fn perform(&self, key: &str, work: &Work, rec: &Record) -> Outcome {
        let store = self.store.clone();
        let posix = posix_of(rec);
        let r = match work {
            Work::Upload { file_no, size, gen } => {
                return self.upload_file(key, *file_no, *size, *gen, &posix).await;
            }
            Work::Copy { src, etag, .. } => {
                telemetry::add(Counter::StoreCopies, 1);
                store.copy(src, key, Some(etag), Some(&posix)).await
            }
            Work::Marker { .. } => store.put(key, Vec::new(), &posix).await,
            Work::Link { target, .. } => store.put(key, target.as_bytes().to_vec(), &posix).await,
            Work::Delete { .. } => {
                telemetry::add(Counter::StoreDeletes, 1);
                store.delete(key).await.map(|()| String::new())
            }
        };
        match r {
            Ok(etag) => Outcome::Done { etag },
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Whether the staged file is still at generation `gen`.
    fn same_gen(&self, key: &str, file_no: u64, gen: u64) -> bool {
        let inner = self.lock();
        inner
            .map
            .get(key)
            .is_some_and(|e| e.gen == gen && e.rec.data == Data::Staged(file_no))
    }

    fn read_part(&self, key: &str, file_no: u64, gen: u64, off: u64, len: u64) -> Option<Vec<u8>> {
        let (file, _) = self.staged(key)?;
        let mut buf = vec![0u8; len as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match std::os::unix::fs::FileExt::read_at(&*file, &mut buf[got..], off + got as u64) {
                Ok(0) => break, // sparse tail reads as zeros
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(key, error = %e, "reading a staged file failed");
                    return None;
                }
            }
        }
        // Checked after the read: a write that started before this point
        // bumped the generation first.
        self.same_gen(key, file_no, gen).then_some(buf)
    }

    async fn upload_file(
        &self,
        key: &str,
        file_no: u64,
        size: u64,
        gen: u64,
        posix: &PosixMeta,
    ) -> Outcome {
        let store = self.store.clone();
        let part = self.cfg.part_bytes.max(store.part_bytes_min());
        if size <= part {
            let Some(data) = self.read_part(key, file_no, gen, 0, size) else {
                return Outcome::Changed;
            };
            return match store.put(key, data, posix).await {
                Ok(etag) => {
                    telemetry::add(Counter::UploadBytes, size);
                    Outcome::Done { etag }
                }
                Err(e) => Outcome::Failed(e),
            };
        }
        let upload_id = match store.multipart_start(key, posix).await {
            Ok(id) => id,
            Err(e) => return Outcome::Failed(e),
        };
        self.lock()
            .multiparts
            .insert(key.to_string(), upload_id.clone());
        let r = self
            .upload_parts(key, file_no, size, gen, part, &upload_id)
            .await;
        self.lock().multiparts.remove(key);
        r
    }

    async fn upload_parts(
        &self,
        key: &str,
        file_no: u64,
        size: u64,
        gen: u64,
        part: u64,
        upload_id: &str,
    ) -> Outcome {
        let store = self.store.clone();
        let upload_id = upload_id.to_string();
        let parts_n = size.div_ceil(part);
        let mut done: Vec<PartDone> = Vec::with_capacity(parts_n as usize);
        let mut in_flight: JoinSet<Result<PartDone, StoreError>> = JoinSet::new();
        let mut next = 0u64;
        let mut failure: Option<Outcome> = None;
        while failure.is_none() && (next < parts_n || !in_flight.is_empty()) {
            while next < parts_n && in_flight.len() < PARTS_IN_FLIGHT_MAX {
                let off = next * part;
                let len = part.min(size - off);
                let Some(data) = self.read_part(key, file_no, gen, off, len) else {
                    failure = Some(Outcome::Changed);
                    break;
                };
                let (s, k, id) = (store.clone(), key.to_string(), upload_id.clone());
                let number = (next + 1) as u32;
                in_flight.spawn_local(async move {
                    let etag = s.multipart_part(&k, &id, number, data).await?;
                    Ok(PartDone { number, etag })
                });
                next += 1;
            }
            if failure.is_some() {
                break;
            }
            match in_flight.join_next().await {
                Some(Ok(Ok(p))) => done.push(p),
                Some(Ok(Err(e))) => failure = Some(Outcome::Failed(e)),
                Some(Err(e)) => {
                    failure = Some(Outcome::Failed(StoreError::Unavailable {
                        op: "upload_part",
                        key: key.to_string(),
                        message: e.to_string(),
                    }))
                }
                None => {}
            }
        }
        if failure.is_none() && !self.same_gen(key, file_no, gen) {
            failure = Some(Outcome::Changed);
        }
        if let Some(f) = failure {
            in_flight.abort_all();
            if let Err(e) = store.multipart_abort(key, &upload_id).await {
                tracing::debug!(key, error = %e, "aborting a multipart upload failed");
            }
            return f;
        }
        done.sort_by_key(|p| p.number);
        match store.multipart_complete(key, &upload_id, &done).await {
            Ok(etag) => {
                telemetry::add(Counter::UploadBytes, size);
                Outcome::Done { etag }
            }
            Err(e) => {
                let _ = store.multipart_abort(key, &upload_id).await;
                Outcome::Failed(e)
            }
        }
    }

    /// Record the outcome of `work` on `key`.
    fn finish(&self, key: &str, work: &Work, outcome: Outcome) {
        let mut inner = self.lock();
        inner.busy.remove(key);
        let next_no = inner.next_file_no;
        let Some(e) = inner.map.get_mut(key) else {
            drop(inner);
            self.wake.notify_one();
            return;
        };
        let outcome = match outcome {
            Outcome::Done { .. } if e.writes_in_flight > 0 => Outcome::Changed,
            o => o,
        };
        let gen = match work {
            Work::Upload { gen, .. }
            | Work::Copy { gen, .. }
            | Work::Marker { gen }
            | Work::Link { gen, .. }
            | Work::Delete { gen } => *gen,
        };
        match outcome {
            Outcome::Changed => {
                e.rec.in_store = true;
            }
            Outcome::Failed(err) => {
                e.failures = e.failures.saturating_add(1);
                let backoff = BACKOFF_FIRST
                    .saturating_mul(1u32 << e.failures.min(8))
                    .min(BACKOFF_MAX);
                e.not_before = Instant::now() + backoff;
                telemetry::add(Counter::UploadFailures, 1);
                if matches!(
                    err,
                    StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }
                ) && matches!(work, Work::Copy { .. })
                {
                    tracing::error!(key, error = %err, "the source of a pending copy changed or vanished in the store; its data cannot be copied");
                } else if e.failures == 1 || e.failures % 20 == 0 {
                    tracing::warn!(key, failures = e.failures, retry_in_ms = backoff.as_millis() as u64, error = %err, "store update failed; kept locally, will retry");
                }
            }
            Outcome::Done { etag } => {
                telemetry::add(Counter::UploadObjects, 1);
                e.failures = 0;
                e.rec.in_store = true;
                if e.gen != gen {
                    // Changed meanwhile: another round will follow.
                } else if e.rec.kind == Kind::Gone {
                    let _ = e;
                    if let Err(err) = self.journal.apply(&[(key, None)], next_no) {
                        tracing::warn!(key, error = %err, "journal update failed");
                        e.failures = e.failures.saturating_add(1);
                        e.not_before = Instant::now() + BACKOFF_MAX.min(BACKOFF_FIRST * e.failures);
                    } else {
                        inner.map.remove(key);
                    }
                } else {
                    let mut rec = e.rec.clone();
                    rec.dirty = false;
                    let freed = match (&rec.kind, &rec.data) {
                        (Kind::File, Data::Staged(n)) => Some((*n, rec.size)),
                        _ => None,
                    };
                    if rec.kind == Kind::File {
                        rec.data = Data::Remote {
                            src: key.to_string(),
                            etag,
                        };
                    }
                    match self.journal.apply(&[(key, Some(&rec))], next_no) {
                        Err(err) => {
                            tracing::warn!(key, error = %err, "journal update failed");
                            telemetry::add(Counter::UploadFailures, 1);
                            e.failures = e.failures.saturating_add(1);
                            e.not_before =
                                Instant::now() + BACKOFF_MAX.min(BACKOFF_FIRST * e.failures);
                        }
                        Ok(()) => {
                            e.rec = rec;
                            e.file = None;
                            let g = e.gen;
                            inner.clean.push_back((key.to_string(), g));
                            if let Some((n, size)) = freed {
                                inner.staged_bytes = inner.staged_bytes.saturating_sub(size);
                                let _ = std::fs::remove_file(self.staging_path(n));
                            }
                            self.trim_clean(&mut inner);
                        }
                    }
                }
            }
        }
        drop(inner);
        self.wake.notify_one();
    }
}
