//! The per-core runtime facade.
//!
//! Each worker thread is pinned to one CPU and runs a tokio current-thread
//! runtime with its own io_uring ([`ring::Ring`]). Network accept, receive
//! and send go through that ring; upper layers see only [`net::Listener`],
//! [`net::Stream`] and owned buffers, so registered buffers, O_DIRECT device
//! reads and zero-copy sends can be added behind the same calls.

pub mod aligned;
pub mod buf;
pub mod cpu;
pub mod disk;
pub mod net;
pub mod ring;
