//! TCP header view (RFC 9293), and the located TCP segment of an IPv4 packet that segmentation
//! and coalescing work on.
//!
//! `TcpPacket::new_checked` validates once; afterwards no accessor can panic.

use super::WireError;
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};

/// Byte ranges of the fixed header.
pub(crate) mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    /// Both ports: what, with the addresses, names the flow.
    pub const PORTS: Range<usize> = 0..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    /// Data offset (high nibble) and reserved bits.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    /// Data offset and flags: one 16-bit word of the checksum.
    pub const OFFSET_FLAGS: Range<usize> = 12..14;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits ([`field::FLAGS`]).
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

/// A read (and, for `T: AsMut`, write) view of a TCP segment: header and payload.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic until `check_len` succeeded.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and validates: the data offset is at least 20 and within the buffer. After this,
    /// no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The validation contract of `new_checked`.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        let Some(&off) = data.get(field::DATA_OFF) else { return Err(WireError::Truncated) };
        let hl = usize::from(off >> 4) * 4;
        if hl < MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if hl > data.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn word(&self, r: std::ops::Range<usize>) -> u16 {
        let f = &self.b()[r];
        u16::from_be_bytes([f[0], f[1]])
    }

    fn long(&self, r: std::ops::Range<usize>) -> u32 {
        let f = &self.b()[r];
        u32::from_be_bytes([f[0], f[1], f[2], f[3]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.word(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.word(field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        self.long(field::SEQ)
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        self.long(field::ACK)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte ([`flags`]).
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }

    /// FIN: the sender is done.
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    /// SYN: opens a connection.
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// RST: resets a connection.
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    /// PSH: deliver now.
    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    /// URG: the urgent pointer is set.
    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    /// CWR: the sender reduced its congestion window.
    pub fn cwr(&self) -> bool {
        self.flags() & flags::CWR != 0
    }

    /// Receive window.
    pub fn window(&self) -> u16 {
        self.word(field::WINDOW)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        self.word(field::CHECKSUM)
    }

    /// The options, between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.b()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The payload (everything in the buffer behind the header).
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
}

/// An unfragmented IPv4 packet carrying TCP, located: where its headers end and its payload
/// is. Both views are checked, so every accessor of [`TcpV4::ip`] and [`TcpV4::tcp`] is safe
/// to call.
#[derive(Debug, Clone, Copy)]
pub struct TcpV4<'a> {
    /// The IPv4 header (and the whole packet up to Total Length).
    pub ip: Ipv4Packet<&'a [u8]>,
    /// The TCP segment (header and payload, up to the IP Total Length).
    pub tcp: TcpPacket<&'a [u8]>,
}

impl<'a> TcpV4<'a> {
    /// Locates the headers of `pkt`, an IPv4 packet carrying TCP that is not a fragment.
    pub fn parse(pkt: &'a [u8]) -> Result<Self, WireError> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        if ip.protocol() != ipv4::PROTO_TCP || ip.is_fragment() {
            return Err(WireError::Malformed);
        }
        let tcp = TcpPacket::new_checked(&pkt[ip.header_len()..ip.total_len()]).map_err(|e| match e {
            WireError::Truncated => WireError::BadHeaderLen,
            e => e,
        })?;
        Ok(Self { ip, tcp })
    }

    /// IPv4 header length.
    pub fn ip_hl(&self) -> usize {
        self.ip.header_len()
    }

    /// IPv4 + TCP header length.
    pub fn hdr_len(&self) -> usize {
        self.ip_hl() + self.tcp.header_len()
    }

    /// The IPv4 Total Length.
    pub fn total(&self) -> usize {
        self.ip.total_len()
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        self.total() - self.hdr_len()
    }

    /// Whether both checksums are right: the IPv4 header's, and the TCP checksum over the
    /// pseudo-header, header and payload.
    pub fn checksums_ok(&self) -> bool {
        self.ip.verify_checksum() && ipv4::transport_checksum_ok(self.ip.header(), ipv4::PROTO_TCP, self.ip.payload())
    }
}

/// An IPv6 packet carrying TCP right after its fixed header (no extension headers), located.
/// Both views are checked.
#[derive(Debug, Clone, Copy)]
pub struct TcpV6<'a> {
    /// The IPv6 header (and the whole packet up to Payload Length).
    pub ip: Ipv6Packet<&'a [u8]>,
    /// The TCP segment (header and payload).
    pub tcp: TcpPacket<&'a [u8]>,
}

impl<'a> TcpV6<'a> {
    /// Locates the headers of `pkt`, an IPv6 packet whose Next Header is TCP.
    pub fn parse(pkt: &'a [u8]) -> Result<Self, WireError> {
        let ip = Ipv6Packet::new_checked(pkt)?;
        if ip.next_header() != ipv4::PROTO_TCP {
            return Err(WireError::Malformed);
        }
        let tcp = TcpPacket::new_checked(&pkt[ipv6::HEADER_LEN..ip.total_len()]).map_err(|e| match e {
            WireError::Truncated => WireError::BadHeaderLen,
            e => e,
        })?;
        Ok(Self { ip, tcp })
    }

    /// Whether the TCP checksum over the IPv6 pseudo-header, header and payload is right.
    pub fn checksum_ok(&self) -> bool {
        ipv6::transport_checksum_ok(&self.ip, ipv4::PROTO_TCP, self.ip.payload())
    }
}

/// The pseudo-header sum (RFC 9293) of an IPv4 TCP segment of `tcp_len` bytes, unfolded.
pub fn pseudo_sum(ip_hdr: &[u8], tcp_len: usize) -> u32 {
    ipv4::pseudo_sum(ip_hdr, ipv4::PROTO_TCP, tcp_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP header: ports 0x1234 → 80, seq 1, ack 2, data offset 6 (one 4-byte option),
    /// flags ACK|PSH, window 0xffff, checksum 0xabcd, urgent 0; option NOP NOP NOP EOL; payload "hi".
    const SEGMENT: [u8; 26] = [
        0x12, 0x34, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x18, 0xff, 0xff, 0xab, 0xcd, 0, 0, 1, 1, 1, 0, b'h',
        b'i',
    ];

    #[test]
    fn reads_a_header_with_options() {
        let t = TcpPacket::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port(), t.seq(), t.ack()), (0x1234, 80, 1, 2));
        assert_eq!((t.header_len(), t.window(), t.checksum()), (24, 0xffff, 0xabcd));
        assert_eq!(t.flags(), flags::ACK | flags::PSH);
        assert!(t.psh() && !t.fin() && !t.syn() && !t.rst() && !t.urg() && !t.cwr());
        assert_eq!(t.options(), &[1, 1, 1, 0]);
        assert_eq!(t.payload(), b"hi");
    }

    #[test]
    fn refuses_what_its_accessors_could_not_read() {
        assert_eq!(TcpPacket::new_checked(&SEGMENT[..12]).unwrap_err(), WireError::Truncated);
        assert_eq!(TcpPacket::new_checked(&SEGMENT[..23]).unwrap_err(), WireError::Truncated);
        let mut short = SEGMENT;
        short[field::DATA_OFF] = 0x40;
        assert_eq!(TcpPacket::new_checked(&short[..]).unwrap_err(), WireError::BadHeaderLen);
        // Every prefix either parses or is refused; none panics.
        for n in 0..=SEGMENT.len() {
            if let Ok(t) = TcpPacket::new_checked(&SEGMENT[..n]) {
                let _ = (t.options(), t.payload(), t.seq(), t.checksum());
            }
        }
    }
}
