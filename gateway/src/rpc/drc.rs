//! The duplicate request cache: replies to non-idempotent calls, kept a
//! while so that a retransmission (after a lost reply or a reconnect) gets
//! the same answer instead of running the call twice — a REMOVE retried
//! after it succeeded must not fail with NOENT, a CREATE retried must not
//! fail with EXIST.
//!
//! A call is known by (client address, xid, program, version, procedure,
//! CRC-32C of its arguments); the port is left out because a client that
//! reconnects may come from another one. A retransmission that arrives
//! while the first is still running is dropped (the client retries again
//! later). Bounded by entries, bytes and age.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries kept at most.
pub const DRC_ENTRIES_MAX: usize = 16_384;
/// Reply bytes kept at most.
pub const DRC_BYTES_MAX: usize = 16 << 20;
/// How long a reply is kept.
pub const DRC_AGE_MAX: Duration = Duration::from_secs(120);
/// Argument bytes the key's checksum covers (with their length): enough
/// to tell a retransmission from a new call that reuses the xid, without
/// checksumming every byte of a 1 MiB WRITE.
pub const DRC_ARGS_CRC_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallKey {
    pub client: Option<IpAddr>,
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_num: u32,
    pub args_crc: u32,
}

impl CallKey {
    pub fn new(
        client: Option<IpAddr>,
        xid: u32,
        prog: u32,
        vers: u32,
        proc_num: u32,
        args: &[u8],
    ) -> Self {
        CallKey {
            client,
            xid,
            prog,
            vers,
            proc_num,
            args_crc: crc32c::crc32c_append(
                crc32c::crc32c(&args[..args.len().min(DRC_ARGS_CRC_BYTES_MAX)]),
                &(args.len() as u64).to_le_bytes(),
            ),
        }
    }
}

enum Slot {
    Running,
    Done(Arc<[u8]>),
}

/// What to do with a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: run it, then [`ReplyCache::finish`].
    New,
    /// The same call is running now: drop this copy.
    Running,
    /// Answered before: send this reply again.
    Replay(Arc<[u8]>),
}

#[derive(Default)]
struct Inner {
    slots: HashMap<CallKey, Slot>,
    order: VecDeque<(Instant, CallKey)>,
    bytes: usize,
}

#[derive(Default)]
pub struct ReplyCache {
    inner: Mutex<Inner>,
}

impl ReplyCache {
    /// Look a call up, marking it running when it is new.
    pub fn begin(&self, key: CallKey) -> Seen {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("reply cache poisoned");
        g.expire(now);
        match g.slots.get(&key) {
            Some(Slot::Running) => Seen::Running,
            Some(Slot::Done(reply)) => Seen::Replay(reply.clone()),
            None => {
                g.slots.insert(key, Slot::Running);
                g.order.push_back((now, key));
                g.trim();
                Seen::New
            }
        }
    }

    /// Keep the reply of a call that [`ReplyCache::begin`] said was new.
    pub fn finish(&self, key: CallKey, reply: &[u8]) {
        let mut g = self.inner.lock().expect("reply cache poisoned");
        if let Some(slot) = g.slots.get_mut(&key) {
            *slot = Slot::Done(Arc::from(reply));
            g.bytes += reply.len();
            g.trim();
        }
    }

    /// The call produced no reply: forget it so a retransmission runs.
    pub fn abandon(&self, key: CallKey) {
        let mut g = self.inner.lock().expect("reply cache poisoned");
        if let Some(Slot::Done(r)) = g.slots.remove(&key) {
            g.bytes -= r.len();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("reply cache poisoned").slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn drop_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_front() else {
            return false;
        };
        if let Some(Slot::Done(r)) = self.slots.remove(&key) {
            self.bytes -= r.len();
        }
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.duration_since(at) < DRC_AGE_MAX {
                break;
            }
            self.drop_oldest();
        }
    }

    fn trim(&mut self) {
        while (self.slots.len() > DRC_ENTRIES_MAX || self.bytes > DRC_BYTES_MAX)
            && self.drop_oldest()
        {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(xid: u32, args: &[u8]) -> CallKey {
        CallKey::new(Some("10.0.0.1".parse().unwrap()), xid, 100_003, 3, 12, args)
    }

    #[test]
    fn retransmissions_are_replayed_not_rerun() {
        let c = ReplyCache::default();
        let k = key(7, b"remove x");
        assert_eq!(c.begin(k), Seen::New);
        assert_eq!(c.begin(k), Seen::Running, "a copy while it runs is dropped");
        c.finish(k, b"reply-1");
        assert_eq!(c.begin(k), Seen::Replay(Arc::from(&b"reply-1"[..])));
        // Same xid, other arguments or another client: a different call.
        assert_eq!(c.begin(key(7, b"remove y")), Seen::New);
        let other = CallKey {
            client: Some("10.0.0.2".parse().unwrap()),
            ..k
        };
        assert_eq!(c.begin(other), Seen::New);
    }

    #[test]
    fn abandoned_calls_run_again() {
        let c = ReplyCache::default();
        let k = key(1, b"a");
        assert_eq!(c.begin(k), Seen::New);
        c.abandon(k);
        assert_eq!(c.begin(k), Seen::New);
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let c = ReplyCache::default();
        for xid in 0..(DRC_ENTRIES_MAX as u32 + 100) {
            let k = key(xid, b"x");
            c.begin(k);
            c.finish(k, &[0u8; 16]);
        }
        assert!(c.len() <= DRC_ENTRIES_MAX);
        assert_eq!(c.begin(key(0, b"x")), Seen::New, "the oldest went first");
        let big = vec![0u8; 1 << 20];
        for xid in 0..40u32 {
            let k = key(1_000_000 + xid, b"big");
            c.begin(k);
            c.finish(k, &big);
        }
        assert!(c.inner.lock().unwrap().bytes <= DRC_BYTES_MAX);
    }
}
