//! IPv6 fixed header view (RFC 8200).

use super::WireError;
use std::net::Ipv6Addr;

/// Byte ranges of the fixed header's fields.
pub mod field {
    use std::ops::Range;
    /// Payload Length.
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    /// Next Header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop Limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC: Range<usize> = 8..24;
    /// Destination address.
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Next Header value of ICMPv6.
pub const NEXT_ICMPV6: u8 = 58;

/// A view of an IPv6 packet; see `Ipv4Packet` for the contract.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps without checking.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and validates: version 6, fixed header and payload within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The validation contract of `new_checked`.
    pub fn check_len(&self) -> Result<(), WireError> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if d[0] >> 4 != 6 {
            return Err(WireError::BadVersion);
        }
        if HEADER_LEN + self.payload_len() > d.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Payload Length field.
    pub fn payload_len(&self) -> usize {
        let f = &self.b()[field::PAYLOAD_LEN];
        usize::from(u16::from_be_bytes([f[0], f[1]]))
    }

    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Next Header field.
    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }

    /// Hop Limit field.
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::SRC]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::DST]);
        Ipv6Addr::from(a)
    }

    /// The payload (extension headers included), up to Payload Length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.total_len()]
    }

    /// A hash of the inner flow, as `Ipv4Packet::flow_hash` for IPv6: addresses, Next Header,
    /// and the ports when TCP or UDP follows the fixed header directly. The flow label is left
    /// out: a host may change it mid-connection (RFC 6437 allows it on path changes).
    pub fn flow_hash(&self) -> u32 {
        let b = self.b();
        let word = |at: usize| b.get(at..at + 4).map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        let next = self.next_header();
        let ports = match next {
            super::ipv4::PROTO_TCP | super::ipv4::PROTO_UDP => word(HEADER_LEN),
            _ => 0,
        };
        let fold =
            |r: std::ops::Range<usize>| (r.start..r.end).step_by(4).fold(0u32, |h, at| h.rotate_left(5) ^ word(at));
        let mut h = fold(field::SRC) ^ fold(field::DST).rotate_left(13) ^ ports.rotate_left(7) ^ u32::from(next);
        // murmur3's finalizer, as for IPv4.
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// True when the transport checksum of `segment` (protocol `next`) right after the fixed
/// header of `ip` is right.
pub fn transport_checksum_ok(ip: &Ipv6Packet<&[u8]>, next: u8, segment: &[u8]) -> bool {
    let sum = super::checksum::sum(pseudo_sum(&ip.src(), &ip.dst(), next, segment.len()), segment);
    super::checksum::finish(sum) == 0
}

/// The sum of IPv6's pseudo-header (RFC 8200 §8.1) for an upper-layer packet of `len` bytes
/// and protocol `next`, between `src` and `dst`.
pub fn pseudo_sum(src: &Ipv6Addr, dst: &Ipv6Addr, next: u8, len: usize) -> u32 {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let acc = super::checksum::sum(super::checksum::sum(0, &src.octets()), &dst.octets());
    super::checksum::add(super::checksum::add(super::checksum::add(acc, len >> 16), len & 0xffff), u32::from(next))
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Decrements Hop Limit (IPv6 has no header checksum). `false` means discard.
    pub fn decrement_hop_limit(&mut self) -> bool {
        let h = self.hop_limit();
        if h <= 1 {
            return false;
        }
        self.buffer.as_mut()[field::HOP_LIMIT] = h - 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UDP fd00::1 → fd00::2, 4-byte payload, hop limit 64.
    const PKT: [u8; 44] = [
        0x60, 0, 0, 0, 0, 4, 17, 64, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 2, 1, 2, 3, 4,
    ];

    #[test]
    fn parses_fields() {
        let p = Ipv6Packet::new_checked(&PKT[..]).unwrap();
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst(), "fd00::2".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn flow_hash_follows_addresses_and_ports() {
        let mut tcp = PKT;
        tcp[6] = 6;
        let base = Ipv6Packet::new_checked(&tcp[..]).unwrap().flow_hash();
        let mut other_port = tcp;
        other_port[41] ^= 1;
        assert_ne!(Ipv6Packet::new_checked(&other_port[..]).unwrap().flow_hash(), base);
        let mut other_src = tcp;
        other_src[23] ^= 2;
        assert_ne!(Ipv6Packet::new_checked(&other_src[..]).unwrap().flow_hash(), base);
        let mut other_label = tcp;
        other_label[3] = 0x55;
        assert_eq!(Ipv6Packet::new_checked(&other_label[..]).unwrap().flow_hash(), base);
    }

    #[test]
    fn rejects_and_decrements() {
        for n in 0..PKT.len() {
            assert!(Ipv6Packet::new_checked(&PKT[..n]).is_err());
        }
        let mut v = PKT;
        v[0] = 0x40;
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap_err(), WireError::BadVersion);
        let mut v = PKT;
        let mut p = Ipv6Packet::new_checked(&mut v[..]).unwrap();
        assert!(p.decrement_hop_limit());
        assert_eq!(p.hop_limit(), 63);
        v[7] = 1;
        assert!(!Ipv6Packet::new_checked(&mut v[..]).unwrap().decrement_hop_limit());
    }
}
