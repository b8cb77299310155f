//! The UDP header's layout (RFC 768), shared by the code that cuts UDP super-packets
//! (`gso`) and the code that merges datagrams back into them (`gro`).

/// Length of a UDP header.
pub const HDR_LEN: usize = 8;
/// Offset of the length (header + payload) within the UDP header.
pub const LENGTH_OFFSET: usize = 4;
/// Offset of the checksum within the UDP header (zero: none, over IPv4).
pub const CHECKSUM_OFFSET: usize = 6;
