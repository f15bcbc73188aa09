//! A store decorator that tells a short outage from a long one.
//!
//! While the store answers `Unavailable` (its own bounded retries already
//! exhausted), the NFS layer answers "try again later" (NFS3ERR_JUKEBOX), and
//! the client retries by itself. Once the store has failed continuously for
//! longer than `outage_bound`, calls fail with [`StoreError::Down`] instead,
//! which becomes an I/O error, so applications are not held forever. The
//! first successful answer ends the outage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{ListPage, ObjectMeta, ObjectStore, PartDone, PosixMeta, StoreError, StoreFuture};

pub struct OutageTracking<S> {
    inner: S,
    outage_bound: Duration,
    since: Mutex<Option<Instant>>,
}

impl<S: ObjectStore> OutageTracking<S> {
    pub fn new(inner: S, outage_bound: Duration) -> Self {
        Self {
            inner,
            outage_bound,
            since: Mutex::new(None),
        }
    }

    /// How long the store has been failing, if it is.
    pub fn outage(&self) -> Option<Duration> {
        self.since
            .lock()
            .expect("outage clock poisoned")
            .map(|t| t.elapsed())
    }

    fn observe<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut since = self.since.lock().expect("outage clock poisoned");
        match r {
            Err(StoreError::Unavailable { op, key, message }) => {
                let start = *since.get_or_insert_with(Instant::now);
                if since.is_some() && start.elapsed() == Duration::ZERO {
                    tracing::warn!(op, %message, "object store unavailable");
                }
                if start.elapsed() > self.outage_bound {
                    Err(StoreError::Down {
                        op,
                        key,
                        seconds: start.elapsed().as_secs(),
                    })
                } else {
                    Err(StoreError::Unavailable { op, key, message })
                }
            }
            other => {
                if let Some(start) = since.take() {
                    tracing::info!(
                        seconds = start.elapsed().as_secs(),
                        "object store answers again"
                    );
                }
                other
            }
        }
    }
}

impl<S: ObjectStore> ObjectStore for OutageTracking<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta> {
        Box::pin(async move { self.observe(self.inner.head(key).await) })
    }

    fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.observe(self.inner.prefix_exists(prefix).await) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> StoreFuture<'a, ListPage> {
        Box::pin(async move { self.observe(self.inner.list(prefix, token, max_keys).await) })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        buf: &'a mut [u8],
        if_match: Option<&'a str>,
    ) -> StoreFuture<'a, usize> {
        Box::pin(
            async move { self.observe(self.inner.get_range(key, offset, buf, if_match).await) },
        )
    }

    fn part_bytes_min(&self) -> u64 {
        self.inner.part_bytes_min()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Vec<u8>,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.observe(self.inner.put(key, data, posix).await) })
    }

    fn multipart_start<'a>(
        &'a self,
        key: &'a str,
        posix: &'a PosixMeta,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.observe(self.inner.multipart_start(key, posix).await) })
    }

    fn multipart_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Vec<u8>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            self.observe(
                self.inner
                    .multipart_part(key, upload_id, number, data)
                    .await,
            )
        })
    }

    fn multipart_complete<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [PartDone],
    ) -> StoreFuture<'a, String> {
        Box::pin(
            async move { self.observe(self.inner.multipart_complete(key, upload_id, parts).await) },
        )
    }

    fn multipart_abort<'a>(&'a self, key: &'a str, upload_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.observe(self.inner.multipart_abort(key, upload_id).await) })
    }

    fn copy<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        src_etag: Option<&'a str>,
        posix: Option<&'a PosixMeta>,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move { self.observe(self.inner.copy(src, dst, src_etag, posix).await) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.observe(self.inner.delete(key).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Fails every call while `down` is set.
    struct Flaky {
        inner: MemoryStore,
        down: AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::Relaxed) {
                Err(StoreError::Unavailable {
                    op: "test",
                    key: String::new(),
                    message: "down".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    impl ObjectStore for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn head<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectMeta> {
            Box::pin(async move {
                self.check()?;
                self.inner.head(key).await
            })
        }
        fn prefix_exists<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, bool> {
            Box::pin(async move {
                self.check()?;
                self.inner.prefix_exists(prefix).await
            })
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
            token: Option<&'a str>,
            max_keys: u32,
        ) -> StoreFuture<'a, ListPage> {
            Box::pin(async move {
                self.check()?;
                self.inner.list(prefix, token, max_keys).await
            })
        }
        fn get_range<'a>(
            &'a self,
            key: &'a str,
            offset: u64,
            buf: &'a mut [u8],
            if_match: Option<&'a str>,
        ) -> StoreFuture<'a, usize> {
            Box::pin(async move {
                self.check()?;
                self.inner.get_range(key, offset, buf, if_match).await
            })
        }
        fn put<'a>(
            &'a self,
            key: &'a str,
            data: Vec<u8>,
            posix: &'a PosixMeta,
        ) -> StoreFuture<'a, String> {
            Box::pin(async move {
                self.check()?;
                ObjectStore::put(&self.inner, key, data, posix).await
            })
        }
        fn multipart_start<'a>(
            &'a self,
            key: &'a str,
            posix: &'a PosixMeta,
        ) -> StoreFuture<'a, String> {
            Box::pin(async move {
                self.check()?;
                self.inner.multipart_start(key, posix).await
            })
        }
        fn multipart_part<'a>(
            &'a self,
            key: &'a str,
            upload_id: &'a str,
            number: u32,
            data: Vec<u8>,
        ) -> StoreFuture<'a, String> {
            Box::pin(async move {
                self.check()?;
                self.inner
                    .multipart_part(key, upload_id, number, data)
                    .await
            })
        }
        fn multipart_complete<'a>(
            &'a self,
            key: &'a str,
            upload_id: &'a str,
            parts: &'a [PartDone],
        ) -> StoreFuture<'a, String> {
            Box::pin(async move {
                self.check()?;
                self.inner.multipart_complete(key, upload_id, parts).await
            })
        }
        fn multipart_abort<'a>(&'a self, key: &'a str, upload_id: &'a str) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                self.check()?;
                self.inner.multipart_abort(key, upload_id).await
            })
        }
        fn copy<'a>(
            &'a self,
            src: &'a str,
            dst: &'a str,
            src_etag: Option<&'a str>,
            posix: Option<&'a PosixMeta>,
        ) -> StoreFuture<'a, String> {
            Box::pin(async move {
                self.check()?;
                self.inner.copy(src, dst, src_etag, posix).await
            })
        }
        fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                self.check()?;
                ObjectStore::delete(&self.inner, key).await
            })
        }
    }

    #[test]
    fn short_outages_are_unavailable_long_ones_down_and_recovery_resets() {
        let flaky = Flaky {
            inner: MemoryStore::new(),
            down: AtomicBool::new(true),
        };
        flaky.inner.put("k", b"v");
        let s = OutageTracking::new(flaky, Duration::from_millis(50));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                s.head("k").await,
                Err(StoreError::Unavailable { .. })
            ));
            assert!(s.outage().is_some());
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert!(matches!(s.head("k").await, Err(StoreError::Down { .. })));
            s.inner.down.store(false, Ordering::Relaxed);
            assert_eq!(s.head("k").await.unwrap().size, 1);
            assert!(s.outage().is_none());
            s.inner.down.store(true, Ordering::Relaxed);
            assert!(matches!(
                s.head("k").await,
                Err(StoreError::Unavailable { .. })
            ));
        });
    }

    #[test]
    fn writes_pass_through_and_count_toward_outages() {
        let flaky = Flaky {
            inner: MemoryStore::new(),
            down: AtomicBool::new(false),
        };
        let s = OutageTracking::new(flaky, Duration::from_secs(60));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            crate::store::conformance::writes(&s).await;
            s.inner.down.store(true, Ordering::Relaxed);
            let none = PosixMeta::default();
            assert!(matches!(
                s.put("k", b"v".to_vec(), &none).await,
                Err(StoreError::Unavailable { .. })
            ));
            assert!(s.outage().is_some());
            s.inner.down.store(false, Ordering::Relaxed);
            s.delete("k").await.unwrap();
            assert!(s.outage().is_none());
        });
    }
}
