//! File handles: 16 opaque bytes that name a node across restarts.
//!
//! Layout: magic `T` (0x54), version 1, kind (1 file, 2 directory), a zero
//! byte, the export id (u32, big-endian) and the node id (u64, big-endian).
//! A handle of another length, magic, version or kind is *bad*; a
//! well-formed handle from another export or for an id the table does not
//! know (or whose object is gone) is *stale*.

use crate::vfs::{FsError, Node, NodeKind};

pub const FH_BYTES: usize = 16;
const MAGIC: u8 = 0x54;
const VERSION: u8 = 1;

pub fn encode(export_id: u32, node: &Node) -> [u8; FH_BYTES] {
    encode_id(export_id, node.id, node.kind())
}

pub fn encode_id(export_id: u32, id: u64, kind: NodeKind) -> [u8; FH_BYTES] {
    let mut fh = [0u8; FH_BYTES];
    fh[0] = MAGIC;
    fh[1] = VERSION;
    fh[2] = match kind {
        NodeKind::File | NodeKind::Symlink => 1,
        NodeKind::Dir => 2,
    };
    fh[4..8].copy_from_slice(&export_id.to_be_bytes());
    fh[8..16].copy_from_slice(&id.to_be_bytes());
    fh
}

/// The node id in a handle, after checking its shape and export.
pub fn decode(export_id: u32, fh: &[u8]) -> Result<(u64, NodeKind), FsError> {
    if fh.len() != FH_BYTES || fh[0] != MAGIC || fh[1] != VERSION || fh[3] != 0 {
        return Err(FsError::BadHandle);
    }
    let kind = match fh[2] {
        1 => NodeKind::File,
        2 => NodeKind::Dir,
        _ => return Err(FsError::BadHandle),
    };
    let export = u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]);
    if export != export_id {
        return Err(FsError::Stale);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&fh[8..16]);
    Ok((u64::from_be_bytes(id), kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn roundtrip_and_rejections() {
        let n = Node {
            id: 0xdead_beef_1234,
            key: Arc::from("a/b/"),
        };
        let fh = encode(7, &n);
        assert_eq!(decode(7, &fh).unwrap(), (n.id, NodeKind::Dir));
        assert!(matches!(decode(8, &fh), Err(FsError::Stale)));
        assert!(matches!(decode(7, &fh[..15]), Err(FsError::BadHandle)));
        let mut bad = fh;
        bad[2] = 9;
        assert!(matches!(decode(7, &bad), Err(FsError::BadHandle)));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(1, &data);
        }
    }
}
