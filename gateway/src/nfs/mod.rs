//! NFS protocol adapters. RFC names stay inside these modules; each
//! procedure decodes its arguments, calls the [`crate::vfs`] layer and
//! encodes the result.

pub mod fh;
pub mod mount;
pub mod v3;
pub mod xdr;
