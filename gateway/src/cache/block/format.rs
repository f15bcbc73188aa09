//! On-device format: a superblock at offset 0 and self-describing records.
//!
//! Superblock (one 4 KiB page, little-endian): magic `TGCACHE1`, format
//! version, block size, a random cache id, device bytes, region bytes,
//! region count, CRC-32C of the preceding bytes.
//!
//! Record (starts 4 KiB-aligned inside a region, occupies
//! `align_up(header_len + data_len)` bytes):
//!
//! ```text
//!  0 magic u32 "TGBK"   4 version u8, flags u8, header_len u16
//!  8 cache id [16]     24 region sequence u64   32 block index u64
//! 40 data_len u32      44 data CRC-32C u32      48 key_len u16, etag_len u16
//! 52 key, etag, header CRC-32C u32 (over everything before it)
//! then data_len bytes of object data
//! ```
//!
//! The cache id (random per formatted device) keeps object bytes that
//! happen to look like a record from ever parsing as one: cached data comes
//! from S3 and may be crafted, but it cannot know the id. The region
//! sequence tells a record of the region's current fill from leftovers of
//! an earlier one.

use thiserror::Error;

use crate::io::aligned::ALIGN_BYTES;

pub const SUPER_MAGIC: &[u8; 8] = b"TGCACHE1";
pub const FORMAT_VERSION: u32 = 1;
/// Bytes reserved at the start of the device for the superblock.
pub const SUPER_BYTES: u64 = ALIGN_BYTES as u64;
const SUPER_FIXED_BYTES: usize = 52;

pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TGBK");
const RECORD_VERSION: u8 = 1;
const HEADER_FIXED_BYTES: usize = 52;
const HEADER_CRC_BYTES: usize = 4;
/// Longest object key a record carries (S3 allows 1024 bytes).
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest ETag a record carries.
pub const ETAG_BYTES_MAX: usize = 256;
/// Largest header: room that every record buffer reserves.
pub const HEADER_BYTES_MAX: usize =
    HEADER_FIXED_BYTES + KEY_BYTES_MAX + ETAG_BYTES_MAX + HEADER_CRC_BYTES;

pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub block_bytes: u32,
    pub cache_id: [u8; 16],
    pub device_bytes: u64,
    pub region_bytes: u64,
    pub region_count: u32,
}

impl Superblock {
    pub fn encode(&self, out: &mut [u8]) {
        out[..SUPER_BYTES as usize].fill(0);
        out[0..8].copy_from_slice(SUPER_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.block_bytes.to_le_bytes());
        out[16..32].copy_from_slice(&self.cache_id);
        out[32..40].copy_from_slice(&self.device_bytes.to_le_bytes());
        out[40..48].copy_from_slice(&self.region_bytes.to_le_bytes());
        out[48..52].copy_from_slice(&self.region_count.to_le_bytes());
        let c = crc(&out[..SUPER_FIXED_BYTES]);
        out[SUPER_FIXED_BYTES..SUPER_FIXED_BYTES + 4].copy_from_slice(&c.to_le_bytes());
    }

    /// `None` when the page holds no valid superblock of this version.
    pub fn decode(b: &[u8]) -> Option<Superblock> {
        if b.len() < SUPER_FIXED_BYTES + 4 || &b[0..8] != SUPER_MAGIC {
            return None;
        }
        let c = u32::from_le_bytes(b[52..56].try_into().ok()?);
        if c != crc(&b[..SUPER_FIXED_BYTES]) || u32_at(b, 8) != FORMAT_VERSION {
            return None;
        }
        Some(Superblock {
            block_bytes: u32_at(b, 12),
            cache_id: b[16..32].try_into().ok()?,
            device_bytes: u64_at(b, 32),
            region_bytes: u64_at(b, 40),
            region_count: u32_at(b, 48),
        })
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Identity and placement of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub region_seq: u64,
    pub block_index: u64,
    pub data_len: u32,
    pub data_crc: u32,
    pub key: String,
    pub etag: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("no record here")]
    NoRecord,
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    #[error("record data checksum mismatch")]
    DataChecksum,
    #[error("record does not fit its buffer")]
    Truncated,
}

/// Bytes of the header of a record for `key` and `etag`.
pub fn header_len(key: &str, etag: &str) -> usize {
    HEADER_FIXED_BYTES + key.len() + etag.len() + HEADER_CRC_BYTES
}

/// Device bytes a record occupies.
pub fn record_len(header_len: usize, data_len: usize) -> usize {
    crate::io::aligned::align_up(header_len + data_len)
}

/// Whether a key and ETag fit in a record header.
pub fn fits(key: &str, etag: &str) -> bool {
    key.len() <= KEY_BYTES_MAX && etag.len() <= ETAG_BYTES_MAX
}

impl RecordHeader {
    /// Write the header into `out[..header_len]`; the data must already be
    /// in place behind it so its checksum is taken from there.
    pub fn encode(&self, cache_id: &[u8; 16], out: &mut [u8]) -> usize {
        let hl = header_len(&self.key, &self.etag);
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[4] = RECORD_VERSION;
        out[5] = 0;
        out[6..8].copy_from_slice(&(hl as u16).to_le_bytes());
        out[8..24].copy_from_slice(cache_id);
        out[24..32].copy_from_slice(&self.region_seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.block_index.to_le_bytes());
        out[40..44].copy_from_slice(&self.data_len.to_le_bytes());
        out[44..48].copy_from_slice(&self.data_crc.to_le_bytes());
        out[48..50].copy_from_slice(&(self.key.len() as u16).to_le_bytes());
        out[50..52].copy_from_slice(&(self.etag.len() as u16).to_le_bytes());
        let k = HEADER_FIXED_BYTES;
        out[k..k + self.key.len()].copy_from_slice(self.key.as_bytes());
        let e = k + self.key.len();
        out[e..e + self.etag.len()].copy_from_slice(self.etag.as_bytes());
        let c = crc(&out[..hl - HEADER_CRC_BYTES]);
        out[hl - HEADER_CRC_BYTES..hl].copy_from_slice(&c.to_le_bytes());
        hl
    }

    /// Parse and check a header at the start of `b`. Returns the header and
    /// its length. The data checksum is not checked here.
    pub fn decode(cache_id: &[u8; 16], b: &[u8]) -> Result<(RecordHeader, usize), RecordError> {
        if b.len() < HEADER_FIXED_BYTES + HEADER_CRC_BYTES
            || u32_at(b, 0) != RECORD_MAGIC
            || b[4] != RECORD_VERSION
            || &b[8..24] != cache_id
        {
            return Err(RecordError::NoRecord);
        }
        let hl = u16_at(b, 6) as usize;
        let key_len = u16_at(b, 48) as usize;
        let etag_len = u16_at(b, 50) as usize;
        if key_len > KEY_BYTES_MAX
            || etag_len > ETAG_BYTES_MAX
            || hl != HEADER_FIXED_BYTES + key_len + etag_len + HEADER_CRC_BYTES
        {
            return Err(RecordError::HeaderChecksum);
        }
        if hl > b.len() {
            return Err(RecordError::Truncated);
        }
        if u32_at(b, hl - HEADER_CRC_BYTES) != crc(&b[..hl - HEADER_CRC_BYTES]) {
            return Err(RecordError::HeaderChecksum);
        }
        let k = HEADER_FIXED_BYTES;
        let key =
            std::str::from_utf8(&b[k..k + key_len]).map_err(|_| RecordError::HeaderChecksum)?;
        let etag = std::str::from_utf8(&b[k + key_len..k + key_len + etag_len])
            .map_err(|_| RecordError::HeaderChecksum)?;
        Ok((
            RecordHeader {
                region_seq: u64_at(b, 24),
                block_index: u64_at(b, 32),
                data_len: u32_at(b, 40),
                data_crc: u32_at(b, 44),
                key: key.to_string(),
                etag: etag.to_string(),
            },
            hl,
        ))
    }

    /// Check the data behind a decoded header.
    pub fn check_data(&self, record: &[u8], header_len: usize) -> Result<(), RecordError> {
        let end = header_len + self.data_len as usize;
        if end > record.len() {
            return Err(RecordError::Truncated);
        }
        if crc(&record[header_len..end]) != self.data_crc {
            return Err(RecordError::DataChecksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: [u8; 16] = [7; 16];

    fn record(key: &str, etag: &str, data: &[u8]) -> Vec<u8> {
        let hl = header_len(key, etag);
        let mut b = vec![0u8; record_len(hl, data.len())];
        b[hl..hl + data.len()].copy_from_slice(data);
        let h = RecordHeader {
            region_seq: 9,
            block_index: 3,
            data_len: data.len() as u32,
            data_crc: crc(data),
            key: key.into(),
            etag: etag.into(),
        };
        assert_eq!(h.encode(&ID, &mut b), hl);
        b
    }

    #[test]
    fn superblock_round_trip_and_damage() {
        let sb = Superblock {
            block_bytes: 1 << 20,
            cache_id: ID,
            device_bytes: 10 << 30,
            region_bytes: 64 << 20,
            region_count: 160,
        };
        let mut page = vec![0u8; SUPER_BYTES as usize];
        sb.encode(&mut page);
        assert_eq!(Superblock::decode(&page), Some(sb));
        page[40] ^= 1;
        assert_eq!(Superblock::decode(&page), None);
    }

    #[test]
    fn record_checks() {
        let data = b"some object bytes".repeat(100);
        let b = record("dir/file.bin", "\"etag\"", &data);
        let (h, hl) = RecordHeader::decode(&ID, &b).unwrap();
        assert_eq!(
            (h.key.as_str(), h.block_index, h.region_seq),
            ("dir/file.bin", 3, 9)
        );
        h.check_data(&b, hl).unwrap();
        assert_eq!(&b[hl..hl + data.len()], &data[..]);
        // Another cache's id: not a record at all.
        assert_eq!(
            RecordHeader::decode(&[8; 16], &b),
            Err(RecordError::NoRecord)
        );
        let mut d = b.clone();
        d[hl + 5] ^= 0x40;
        assert_eq!(h.check_data(&d, hl), Err(RecordError::DataChecksum));
        let mut d = b.clone();
        d[60] ^= 1;
        assert_eq!(
            RecordHeader::decode(&ID, &d).unwrap_err(),
            RecordError::HeaderChecksum
        );
    }

    proptest! {
        #[test]
        fn any_single_flip_is_caught(at in 0usize..2000, bit in 0u8..8) {
            let data = vec![0xA5u8; 1500];
            let b = record("k", "e", &data);
            let mut d = b.clone();
            let at = at % (header_len("k", "e") + data.len());
            d[at] ^= 1 << bit;
            let caught = match RecordHeader::decode(&ID, &d) {
                Err(_) => true,
                Ok((h, hl)) => h.check_data(&d, hl).is_err(),
            };
            prop_assert!(caught);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = bytes;
            if b.len() >= 24 {
                b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
                b[4] = RECORD_VERSION;
                b[8..24].copy_from_slice(&ID);
            }
            let _ = RecordHeader::decode(&ID, &b);
        }
    }
}
