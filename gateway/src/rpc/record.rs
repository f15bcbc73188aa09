//! Record marking for ONC RPC over TCP (RFC 5531 §11).
//!
//! A record is a sequence of fragments, each led by a 4-byte mark: the top
//! bit says "last fragment", the low 31 bits give the fragment length. The
//! assembler is a pure state machine fed with whatever bytes the socket
//! produced. It grows a record only as its bytes actually arrive, so a mark
//! that claims 2 GiB costs nothing until the limit check rejects it.

use thiserror::Error;

const LAST_FRAGMENT: u32 = 0x8000_0000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of at least {claimed_bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge {
        claimed_bytes: u64,
        max_bytes: usize,
    },
}

/// Reassembles records from a byte stream.
#[derive(Debug)]
pub struct RecordAssembler {
    max_record_bytes: usize,
    record: Vec<u8>,
    mark: [u8; 4],
    mark_len: usize,
    /// Bytes still expected in the current fragment, when inside one.
    fragment_left: usize,
    in_fragment: bool,
    last_fragment: bool,
}

impl RecordAssembler {
    pub fn new(max_record_bytes: usize) -> Self {
        Self {
            max_record_bytes,
            record: Vec::new(),
            mark: [0; 4],
            mark_len: 0,
            fragment_left: 0,
            in_fragment: false,
            last_fragment: false,
        }
    }

    /// True when no partial record is buffered.
    pub fn is_idle(&self) -> bool {
        !self.in_fragment && self.mark_len == 0 && self.record.is_empty()
    }

    /// Consume `input`, handing every completed record to `emit`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut emit: impl FnMut(Vec<u8>),
    ) -> Result<(), RecordError> {
        while !input.is_empty() {
            if !self.in_fragment {
                let want = 4 - self.mark_len;
                let n = want.min(input.len());
                self.mark[self.mark_len..self.mark_len + n].copy_from_slice(&input[..n]);
                self.mark_len += n;
                input = &input[n..];
                if self.mark_len < 4 {
                    break;
                }
                self.mark_len = 0;
                let mark = u32::from_be_bytes(self.mark);
                let len = (mark & !LAST_FRAGMENT) as usize;
                let total = self.record.len() as u64 + len as u64;
                if total > self.max_record_bytes as u64 {
                    return Err(RecordError::TooLarge {
                        claimed_bytes: total,
                        max_bytes: self.max_record_bytes,
                    });
                }
                self.fragment_left = len;
                self.last_fragment = mark & LAST_FRAGMENT != 0;
                self.in_fragment = true;
                if self.record.is_empty() && self.last_fragment {
                    // A whole record in one fragment: size the buffer once,
                    // but never beyond what has actually arrived.
                    self.record.reserve_exact(len.min(input.len()));
                }
            }
            let n = self.fragment_left.min(input.len());
            self.record.extend_from_slice(&input[..n]);
            input = &input[n..];
            self.fragment_left -= n;
            if self.fragment_left == 0 {
                self.in_fragment = false;
                if self.last_fragment {
                    emit(std::mem::take(&mut self.record));
                }
            }
        }
        Ok(())
    }
}

/// Write the record mark into the first 4 bytes of `buf`, for a record of
/// `buf` (after the mark) followed by `more_bytes` sent separately.
pub fn finish_record(buf: &mut [u8], more_bytes: usize) {
    let len = (buf.len() - 4 + more_bytes) as u32;
    buf[..4].copy_from_slice(&(len | LAST_FRAGMENT).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(fragments: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, f) in fragments.iter().enumerate() {
            let mut mark = f.len() as u32;
            if i + 1 == fragments.len() {
                mark |= LAST_FRAGMENT;
            }
            v.extend_from_slice(&mark.to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn joins_fragments() {
        let mut a = RecordAssembler::new(1024);
        let mut out = Vec::new();
        a.feed(&frame(&[b"abc", b"", b"defg"]), |r| out.push(r))
            .unwrap();
        assert_eq!(out, vec![b"abcdefg".to_vec()]);
        assert!(a.is_idle());
    }

    #[test]
    fn huge_mark_is_rejected_before_allocation() {
        let mut a = RecordAssembler::new(1 << 20);
        let err = a.feed(&0xffff_ffffu32.to_be_bytes(), |_| {}).unwrap_err();
        assert_eq!(
            err,
            RecordError::TooLarge {
                claimed_bytes: 0x7fff_ffff,
                max_bytes: 1 << 20
            }
        );
        assert!(a.record.capacity() < 4096);
    }

    #[test]
    fn limit_counts_all_fragments() {
        let mut a = RecordAssembler::new(10);
        let mut v = 6u32.to_be_bytes().to_vec();
        v.extend_from_slice(b"123456");
        v.extend_from_slice(&(LAST_FRAGMENT | 6).to_be_bytes());
        assert!(a.feed(&v, |_| {}).is_err());
    }

    #[test]
    fn finish_record_sets_mark() {
        let mut v = vec![0, 0, 0, 0, 9, 9];
        finish_record(&mut v, 0);
        assert_eq!(&v[..4], &(LAST_FRAGMENT | 2).to_be_bytes());
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_records(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..5),
            chunk in 1usize..17,
        ) {
            let mut stream = Vec::new();
            for r in &records {
                let mid = r.len() / 2;
                stream.extend(frame(&[&r[..mid], &r[mid..]]));
            }
            let mut a = RecordAssembler::new(1000);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                a.feed(piece, |r| out.push(r)).unwrap();
            }
            prop_assert_eq!(out, records);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut a = RecordAssembler::new(256);
            let _ = a.feed(&data, |r| assert!(r.len() <= 256));
        }
    }
}
