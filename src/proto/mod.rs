//! Wire and data formats. No I/O, no `unsafe`: every parser validates once and then cannot panic.

pub mod checksum;
pub mod cni;
pub mod ethernet;
pub mod gro;
pub mod gso;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod json;
pub mod lease;
pub mod mac;
pub mod netconfig;
pub mod subnet_env;
pub mod tcp;
pub mod udp;
pub mod virtio;
pub mod vxlan;

/// The IP version nibble of `pkt`'s first byte (4, 6, or anything a bad packet holds).
pub fn ip_version(pkt: &[u8]) -> Option<u8> {
    pkt.first().map(|b| b >> 4)
}

/// Why a packet view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its headers or its own length field says.
    #[error("truncated")]
    Truncated,
    /// The IP version nibble is not the one expected.
    #[error("bad IP version")]
    BadVersion,
    /// A header length field is out of range.
    #[error("bad header length")]
    BadHeaderLen,
    /// A field holds a value the protocol forbids.
    #[error("malformed")]
    Malformed,
}
