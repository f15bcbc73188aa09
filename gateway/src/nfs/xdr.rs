//! XDR (RFC 4506) decoding from borrowed slices and encoding into caller
//! buffers. No I/O happens here.
//!
//! Every variable-length item is read against an explicit maximum supplied by
//! the caller, so a hostile length field can never make the decoder allocate
//! or read past its input: it fails with [`XdrError`] instead.

use thiserror::Error;

/// Why a decode failed. All variants are the client's fault (GARBAGE_ARGS).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum XdrError {
    #[error("input ends {needed_bytes} bytes early")]
    Truncated { needed_bytes: usize },
    #[error("length {len} exceeds the limit of {max}")]
    TooLong { len: u32, max: u32 },
    #[error("boolean with value {0}")]
    BadBool(u32),
    #[error("enum or discriminant with unknown value {0}")]
    BadEnum(u32),
}

pub type XdrResult<T> = Result<T, XdrError>;

/// Round a byte count up to the 4-byte XDR unit.
#[inline]
pub const fn padded_len(len: usize) -> usize {
    (len + 3) & !3
}

/// A cursor over borrowed XDR input.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(XdrError::Truncated {
                needed_bytes: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> XdrResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> XdrResult<i32> {
        Ok(self.u32()? as i32)
    }

    pub fn u64(&mut self) -> XdrResult<u64> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Ok((hi << 32) | lo)
    }

    pub fn bool(&mut self) -> XdrResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError::BadBool(v)),
        }
    }

    /// Fixed-length opaque of `n` bytes (plus padding).
    pub fn opaque_fixed(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        let b = self.take(padded_len(n))?;
        Ok(&b[..n])
    }

    /// Variable-length opaque of at most `max` bytes.
    pub fn opaque(&mut self, max: u32) -> XdrResult<&'a [u8]> {
        let len = self.u32()?;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        self.opaque_fixed(len as usize)
    }

    /// A string is an opaque on the wire; the caller validates its contents.
    pub fn string(&mut self, max: u32) -> XdrResult<&'a [u8]> {
        self.opaque(max)
    }

    /// Length of a counted array, bounded by `max` elements.
    pub fn array_len(&mut self, max: u32) -> XdrResult<u32> {
        let len = self.u32()?;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        Ok(len)
    }
}

/// Appends XDR items to a caller-owned buffer.
pub struct Encoder<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Encoder<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.u32(v as u32)
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }

    pub fn opaque_fixed(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        let pad = padded_len(data.len()) - data.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(data.len() as u32);
        self.opaque_fixed(data)
    }

    pub fn string(&mut self, s: &[u8]) -> &mut Self {
        self.opaque(s)
    }

    /// Reserve a 4-byte slot to patch later with [`Encoder::patch_u32`].
    pub fn reserve_u32(&mut self) -> usize {
        let at = self.buf.len();
        self.u32(0);
        at
    }

    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn opaque_pads_to_four_bytes() {
        let mut v = Vec::new();
        Encoder::new(&mut v).opaque(b"abcde");
        assert_eq!(v.len(), 4 + 8);
        assert_eq!(&v[4..9], b"abcde");
        assert_eq!(&v[9..], &[0, 0, 0]);
        let mut d = Decoder::new(&v);
        assert_eq!(d.opaque(16).unwrap(), b"abcde");
        assert!(d.remaining().is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_without_reading() {
        let v = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        let mut d = Decoder::new(&v);
        assert_eq!(
            d.opaque(64),
            Err(XdrError::TooLong {
                len: u32::MAX,
                max: 64
            })
        );
    }

    #[test]
    fn truncated_input_is_an_error() {
        let v = [0, 0, 0, 8, 1, 2, 3];
        assert!(matches!(
            Decoder::new(&v).opaque(64),
            Err(XdrError::Truncated { .. })
        ));
        assert!(matches!(
            Decoder::new(&v[..3]).u32(),
            Err(XdrError::Truncated { needed_bytes: 1 })
        ));
    }

    #[test]
    fn bool_rejects_other_values() {
        assert_eq!(
            Decoder::new(&[0, 0, 0, 2]).bool(),
            Err(XdrError::BadBool(2))
        );
    }

    proptest! {
        #[test]
        fn roundtrip(a in any::<u32>(), b in any::<u64>(), c in any::<bool>(),
                     data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = Vec::new();
            Encoder::new(&mut v).u32(a).u64(b).bool(c).opaque(&data).i32(-5);
            prop_assert_eq!(v.len() % 4, 0);
            let mut d = Decoder::new(&v);
            prop_assert_eq!(d.u32().unwrap(), a);
            prop_assert_eq!(d.u64().unwrap(), b);
            prop_assert_eq!(d.bool().unwrap(), c);
            prop_assert_eq!(d.opaque(300).unwrap(), &data[..]);
            prop_assert_eq!(d.i32().unwrap(), -5);
            prop_assert!(d.remaining().is_empty());
        }

        #[test]
        fn every_prefix_of_valid_input_fails_cleanly(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut v = Vec::new();
            Encoder::new(&mut v).u64(7).opaque(&data);
            for cut in 0..v.len() {
                let mut d = Decoder::new(&v[..cut]);
                let r = d.u64().and_then(|_| d.opaque(64).map(|_| ()));
                prop_assert!(r.is_err());
            }
        }
    }
}
