//! Live migration: `fastcr migrate` (source) and `fastcr receive` (destination), over a
//! versioned, framed, authenticated protocol (docs/protocol.md).

pub mod auth;
pub mod proto;
