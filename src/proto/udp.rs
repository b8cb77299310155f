//! UDP header view (RFC 768), and the located UDP datagram of an IPv4 packet that the code
//! cutting UDP super-packets (`gso`) and merging datagrams back into them (`gro`) works on.
//!
//! `UdpPacket::new_checked` validates once; afterwards no accessor can panic.

use super::WireError;
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};

/// Byte ranges of the header.
pub(crate) mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    /// Header + payload length.
    pub const LENGTH: Range<usize> = 4..6;
    /// Zero: none (IPv4 only).
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of a UDP header.
pub const HDR_LEN: usize = 8;

/// A read (and, for `T: AsMut`, write) view of a UDP datagram: header and payload.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic until `check_len` succeeded.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and validates: a whole header, and a Length field that covers it and stays within
    /// the buffer. After this, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The validation contract of `new_checked`.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < HDR_LEN {
            return Err(WireError::Truncated);
        }
        let len = self.len();
        if len < HDR_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if len > data.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn word(&self, r: std::ops::Range<usize>) -> u16 {
        let f = &self.buffer.as_ref()[r];
        u16::from_be_bytes([f[0], f[1]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.word(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.word(field::DST_PORT)
    }

    /// The Length field: header + payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        usize::from(self.word(field::LENGTH))
    }

    /// Checksum field (zero: none).
    pub fn checksum(&self) -> u16 {
        self.word(field::CHECKSUM)
    }

    /// Whether the datagram carries a checksum.
    pub fn has_checksum(&self) -> bool {
        self.checksum() != 0
    }

    /// The payload, up to the Length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HDR_LEN..self.len()]
    }
}

/// An unfragmented IPv4 packet carrying UDP whose UDP Length agrees with the IP Total Length,
/// located. Both views are checked.
#[derive(Debug, Clone, Copy)]
pub struct UdpV4<'a> {
    /// The IPv4 header (and the whole packet up to Total Length).
    pub ip: Ipv4Packet<&'a [u8]>,
    /// The UDP datagram.
    pub udp: UdpPacket<&'a [u8]>,
}

impl<'a> UdpV4<'a> {
    /// Locates the headers of `pkt`, an IPv4 packet carrying UDP that is not a fragment.
    /// A UDP Length other than what the IP packet holds is `Malformed`: segmentation and
    /// merging rewrite it, so a datagram that lies about it must not pass.
    pub fn parse(pkt: &'a [u8]) -> Result<Self, WireError> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        if ip.protocol() != ipv4::PROTO_UDP || ip.is_fragment() {
            return Err(WireError::Malformed);
        }
        let segment = &pkt[ip.header_len()..ip.total_len()];
        let udp = UdpPacket::new_checked(segment).map_err(|_| WireError::BadHeaderLen)?;
        if udp.len() != segment.len() {
            return Err(WireError::Malformed);
        }
        Ok(Self { ip, udp })
    }

    /// IPv4 header length.
    pub fn ip_hl(&self) -> usize {
        self.ip.header_len()
    }

    /// IPv4 + UDP header length.
    pub fn hdr_len(&self) -> usize {
        self.ip_hl() + HDR_LEN
    }

    /// The IPv4 Total Length.
    pub fn total(&self) -> usize {
        self.ip.total_len()
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        self.total() - self.hdr_len()
    }

    /// Whether both checksums are right: the IPv4 header's, and the UDP checksum where the
    /// datagram has one.
    pub fn checksums_ok(&self) -> bool {
        self.ip.verify_checksum()
            && (!self.udp.has_checksum()
                || ipv4::transport_checksum_ok(self.ip.header(), ipv4::PROTO_UDP, self.ip.payload()))
    }
}

/// An IPv6 packet carrying UDP right after its fixed header, whose UDP Length agrees with the
/// Payload Length, located. Both views are checked.
#[derive(Debug, Clone, Copy)]
pub struct UdpV6<'a> {
    /// The IPv6 header (and the whole packet up to Payload Length).
    pub ip: Ipv6Packet<&'a [u8]>,
    /// The UDP datagram.
    pub udp: UdpPacket<&'a [u8]>,
}

impl<'a> UdpV6<'a> {
    /// Locates the headers of `pkt`, an IPv6 packet whose Next Header is UDP; a UDP Length
    /// other than what the packet holds is `Malformed`, as for [`UdpV4::parse`].
    pub fn parse(pkt: &'a [u8]) -> Result<Self, WireError> {
        let ip = Ipv6Packet::new_checked(pkt)?;
        if ip.next_header() != ipv4::PROTO_UDP {
            return Err(WireError::Malformed);
        }
        let segment = &pkt[ipv6::HEADER_LEN..ip.total_len()];
        let udp = UdpPacket::new_checked(segment).map_err(|_| WireError::BadHeaderLen)?;
        if udp.len() != segment.len() {
            return Err(WireError::Malformed);
        }
        Ok(Self { ip, udp })
    }

    /// Whether the UDP checksum is right (IPv6 UDP always carries one; zero is wrong).
    pub fn checksum_ok(&self) -> bool {
        self.udp.has_checksum() && ipv6::transport_checksum_ok(&self.ip, ipv4::PROTO_UDP, self.ip.payload())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5353 → 53, length 11, checksum 0x1234, payload "abc".
    const DATAGRAM: [u8; 12] = [0x14, 0xe9, 0x00, 0x35, 0x00, 0x0b, 0x12, 0x34, b'a', b'b', b'c', 0xee];

    #[test]
    fn reads_a_header_and_stops_the_payload_at_its_length() {
        let u = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port(), u.len(), u.checksum()), (5353, 53, 11, 0x1234));
        assert!(u.has_checksum());
        assert_eq!(u.payload(), b"abc", "trailing padding is not payload");
    }

    #[test]
    fn refuses_what_its_accessors_could_not_read() {
        assert_eq!(UdpPacket::new_checked(&DATAGRAM[..7]).unwrap_err(), WireError::Truncated);
        assert_eq!(UdpPacket::new_checked(&DATAGRAM[..10]).unwrap_err(), WireError::Truncated);
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(UdpPacket::new_checked(&short[..]).unwrap_err(), WireError::BadHeaderLen);
    }

    #[test]
    fn a_datagram_in_ipv4_must_agree_with_its_ip_length() {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], 64).udp(1, 2).write(&mut v, b"xyz").unwrap();
        let d = UdpV4::parse(&v).unwrap();
        assert_eq!((d.hdr_len(), d.payload_len(), d.total()), (28, 3, 31));
        assert!(d.checksums_ok());
        let mut liar = v.clone();
        liar[25] -= 1;
        assert_eq!(UdpV4::parse(&liar).unwrap_err(), WireError::Malformed);
        let mut frag = v;
        frag[6] |= ipv4::flag::MF;
        assert_eq!(UdpV4::parse(&frag).unwrap_err(), WireError::Malformed);
    }
}
