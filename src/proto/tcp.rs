//! The few TCP header fields segmentation and coalescing need, on an IPv4 packet.

use super::WireError;
use super::ipv4::{self, Ipv4Packet};

/// TCP flag bits (byte 13).
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// Offset of the checksum within the TCP header.
pub const CHECKSUM_OFFSET: usize = 16;

/// Where the parts of an IPv4/TCP packet are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpV4 {
    /// IPv4 header length.
    pub ip_hl: usize,
    /// TCP header length (with options).
    pub tcp_hl: usize,
    /// Total length (IPv4 Total Length).
    pub total: usize,
}

impl TcpV4 {
    /// Locates the headers of an IPv4 packet carrying TCP (first fragment only).
    pub fn parse(pkt: &[u8]) -> Result<Self, WireError> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        if ip.protocol() != ipv4::PROTO_TCP || ip.frag_offset() != 0 || pkt[6] & 0x20 != 0 {
            return Err(WireError::Malformed);
        }
        let ip_hl = ip.header_len();
        let total = ip.total_len();
        let doff = pkt.get(ip_hl + 12).ok_or(WireError::Truncated)?;
        let tcp_hl = usize::from(doff >> 4) * 4;
        if tcp_hl < 20 || ip_hl + tcp_hl > total {
            return Err(WireError::BadHeaderLen);
        }
        Ok(Self { ip_hl, tcp_hl, total })
    }

    /// IPv4 + TCP header length.
    pub fn hdr_len(&self) -> usize {
        self.ip_hl + self.tcp_hl
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        self.total - self.hdr_len()
    }

    /// Sequence number.
    pub fn seq(&self, pkt: &[u8]) -> u32 {
        let o = self.ip_hl + 4;
        u32::from_be_bytes([pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]])
    }

    /// Flags byte.
    pub fn flags(&self, pkt: &[u8]) -> u8 {
        pkt[self.ip_hl + 13]
    }

    /// True when the TCP checksum of `pkt` (the packet this was parsed from) is right.
    pub fn checksum_ok(&self, pkt: &[u8]) -> bool {
        let (Some(ip_hdr), Some(seg)) = (pkt.get(..self.ip_hl), pkt.get(self.ip_hl..self.total)) else {
            return false;
        };
        ipv4::transport_checksum_ok(ip_hdr, ipv4::PROTO_TCP, seg)
    }
}

/// The pseudo-header sum (RFC 793) of an IPv4 TCP segment of `tcp_len` bytes, unfolded.
pub fn pseudo_sum(ip_hdr: &[u8], tcp_len: usize) -> u32 {
    ipv4::pseudo_sum(ip_hdr, ipv4::PROTO_TCP, tcp_len)
}
