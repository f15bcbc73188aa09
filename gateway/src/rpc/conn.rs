//! One TCP connection: a reader that reassembles records and starts a task
//! per call, and a writer that sends replies as they finish, gathering
//! several into one `sendmsg`.
//!
//! Limits: a record larger than `record_bytes_max` closes the connection;
//! at most `calls_in_flight_max` calls are processed or waiting to be sent
//! at once — past that the reader stops reading, so a client that floods or
//! stops reading replies is slowed by TCP flow control, not by our memory.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::record::RecordAssembler;
use super::{handle_call, Reply, ReplyBody, Services};
use crate::io::buf;
use crate::io::net::{Stream, SEND_IOVECS_MAX};
use crate::io::ring::Ring;

/// Bulk bytes in a batch from which a zero-copy send is used (below it the
/// page pinning and notification cost more than the copy saves).
const ZERO_COPY_BYTES_MIN: usize = 16 * 1024;

/// Bytes of replies gathered into one send.
const SEND_BATCH_BYTES_MAX: usize = 4 << 20;

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub record_bytes_max: usize,
    pub calls_in_flight_max: usize,
    pub recv_buffer_bytes: usize,
}

type Outgoing = (Reply, OwnedSemaphorePermit);

async fn writer(ring: Rc<Ring>, stream: Stream, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch: Vec<Reply> = Vec::new();
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    while let Some((reply, permit)) = rx.recv().await {
        let mut bytes = reply.len();
        batch.push(reply);
        permits.push(permit);
        while batch.len() < SEND_IOVECS_MAX / 4 && bytes < SEND_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok((reply, permit)) => {
                    bytes += reply.len();
                    batch.push(reply);
                    permits.push(permit);
                }
                Err(_) => break,
            }
        }
        let body_bytes: usize = batch
            .iter()
            .filter_map(|r| r.body.as_ref())
            .map(ReplyBody::len)
            .sum();
        let r = if body_bytes > 0 {
            // Cache data is sent from the cache buffers themselves: with a
            // zero-copy send when there is enough of it to pay for the
            // notification, else with a plain send from the same buffers.
            // The buffers return to their pools when the kernel is done.
            let zero_copy = body_bytes >= ZERO_COPY_BYTES_MIN;
            stream
                .send_slices(&ring, std::mem::take(&mut batch), zero_copy)
                .await
        } else {
            let heads = batch.drain(..).map(|r| r.head).collect();
            let (r, sent) = stream.send_all(&ring, heads).await;
            sent.into_iter().for_each(buf::give);
            r
        };
        permits.clear();
        if let Err(e) = r {
            tracing::debug!(error = %e, "send failed; closing connection");
            stream.shutdown();
            rx.close();
            while rx.recv().await.is_some() {}
            return;
        }
    }
}

/// Serve one connection until the peer closes, an error, or shutdown.
pub async fn serve(
    ring: Rc<Ring>,
    stream: Stream,
    peer: Option<SocketAddr>,
    services: Arc<Services>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let in_flight = Arc::new(Semaphore::new(limits.calls_in_flight_max));
    let writer = tokio::task::spawn_local(writer(ring.clone(), stream.clone(), rx));
    let mut assembler = RecordAssembler::new(limits.record_bytes_max);
    let mut buf = Vec::with_capacity(limits.recv_buffer_bytes);
    let mut records = Vec::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        buf.clear();
        let (r, b) = tokio::select! {
            r = stream.recv(&ring, buf) => r,
            _ = shutdown.changed() => break,
        };
        buf = b;
        match r {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(?peer, error = %e, "receive failed");
                stream.shutdown();
                break;
            }
        }
        if let Err(e) = assembler.feed(&buf, |rec| records.push(rec)) {
            tracing::warn!(?peer, error = %e, "closing connection");
            stream.shutdown();
            break;
        }
        for rec in records.drain(..) {
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => p.expect("semaphore never closes"),
                _ = shutdown.changed() => break,
            };
            let tx = tx.clone();
            let services = services.clone();
            tokio::task::spawn_local(async move {
                if let Some(reply) = handle_call(&services, peer, &rec).await {
                    // The writer may be gone after a send error; nothing to do.
                    let _ = tx.send((reply, permit));
                }
            });
        }
    }
    drop(tx);
    // Let calls already accepted finish and their replies go out.
    let _ = writer.await;
    stream.shutdown();
}
