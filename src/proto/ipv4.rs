//! IPv4 header view (RFC 791).
//!
//! `Ipv4Packet::new_checked` validates once; afterwards no accessor can panic.

use super::{WireError, checksum};
use std::net::Ipv4Addr;

/// Byte ranges of the fixed header.
pub(crate) mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Flag bits of the first byte of `field::FLG_OFF`.
pub mod flag {
    /// Don't Fragment.
    pub const DF: u8 = 0x40;
    /// More Fragments.
    pub const MF: u8 = 0x20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// IANA protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// A read (and, for `T: AsMut`, write) view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it. Accessors may panic until `check_len` succeeded.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and validates: version 4, header length within bounds, total length within the
    /// buffer. After this, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The validation contract of `new_checked`.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if data[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::BadVersion);
        }
        let hl = usize::from(data[field::VER_IHL] & 0x0f) * 4;
        if hl < MIN_HEADER_LEN || hl > data.len() {
            return Err(WireError::BadHeaderLen);
        }
        let total = usize::from(u16::from_be_bytes([data[field::LENGTH.start], data[field::LENGTH.start + 1]]));
        if total < hl {
            return Err(WireError::BadHeaderLen);
        }
        if total > data.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }

    /// The Total Length field.
    pub fn total_len(&self) -> usize {
        let f = &self.b()[field::LENGTH];
        usize::from(u16::from_be_bytes([f[0], f[1]]))
    }

    /// Identification field.
    pub fn ident(&self) -> u16 {
        let f = &self.b()[field::IDENT];
        u16::from_be_bytes([f[0], f[1]])
    }

    /// Type of service (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.b()[field::TOS]
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.b()[field::FLG_OFF.start] & flag::DF != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.b()[field::FLG_OFF.start] & flag::MF != 0
    }

    /// Whether this is a fragment (more follow, or it is not the first): no transport header
    /// of its own to segment or merge by.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// The options between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.b()[MIN_HEADER_LEN..self.header_len()]
    }

    /// Fragment offset in 8-byte units (flags masked off).
    pub fn frag_offset(&self) -> u16 {
        let f = &self.b()[field::FLG_OFF];
        u16::from_be_bytes([f[0], f[1]]) & 0x1fff
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        let f = &self.b()[field::CHECKSUM];
        u16::from_be_bytes([f[0], f[1]])
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        let f = &self.b()[field::SRC];
        Ipv4Addr::new(f[0], f[1], f[2], f[3])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let f = &self.b()[field::DST];
        Ipv4Addr::new(f[0], f[1], f[2], f[3])
    }

    /// True when the header checksum is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()]) == 0
    }

    /// A hash of the packet's flow: addresses and protocol, and the ports of a TCP or UDP packet
    /// that is not a fragment. Every packet of one flow gets the same value, which is what picks
    /// a flow's outer source port (kernel VXLAN does the same with its skb hash). Fragments
    /// hash by addresses and protocol only, so that all of a datagram's fragments agree.
    pub fn flow_hash(&self) -> u32 {
        let b = self.b();
        let word = |r: std::ops::Range<usize>| b.get(r).map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        let proto = self.protocol();
        let ports = match proto {
            PROTO_TCP | PROTO_UDP if !self.is_fragment() => {
                let hl = self.header_len();
                word(hl..hl + 4)
            }
            _ => 0,
        };
        // murmur3's finalizer over a fold of the fields: cheap, and every input bit reaches
        // every output bit, so that ports that differ by one land on different sockets.
        let mut h = word(field::SRC) ^ word(field::DST).rotate_left(13) ^ ports.rotate_left(7) ^ u32::from(proto);
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    /// The header bytes including options.
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// The payload, up to Total Length (trailing link padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.bm()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(&self.b()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// Decrements TTL as a router does and patches the checksum incrementally (RFC 1624), as
    /// flannel's proxy does. Returns `false`, leaving the packet unchanged, when the packet
    /// must be discarded because its TTL would reach zero.
    pub fn decrement_ttl(&mut self) -> bool {
        let ttl = self.ttl();
        if ttl <= 1 {
            return false;
        }
        // TTL is the high byte of the 16-bit word it shares with Protocol.
        let proto = self.protocol();
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl - 1, proto]);
        let check = checksum::update_word(self.checksum(), old, new);
        self.bm()[field::TTL] = ttl - 1;
        self.set_checksum(check);
        true
    }
}

/// The pseudo-header sum (RFC 768 / 793) of the IPv4 header `ip_hdr` (at least 20 bytes) for a
/// transport segment of protocol `proto` and `len` bytes, unfolded.
pub fn pseudo_sum(ip_hdr: &[u8], proto: u8, len: usize) -> u32 {
    let a = &ip_hdr[field::SRC.start..field::DST.end];
    let word = |k: usize| u32::from(u16::from_be_bytes([a[k], a[k + 1]]));
    // Six 16-bit values: their sum cannot overflow 32 bits, and needs no fold until `finish`.
    word(0) + word(2) + word(4) + word(6) + u32::from(proto) + u32::from(u16::try_from(len).unwrap_or(u16::MAX))
}

/// True when the transport checksum of `segment` (header and payload, of protocol `proto`)
/// carried after the IPv4 header `ip_hdr` is right.
pub fn transport_checksum_ok(ip_hdr: &[u8], proto: u8, segment: &[u8]) -> bool {
    super::checksum::finish(super::checksum::sum(pseudo_sum(ip_hdr, proto, segment.len()), segment)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn flows_hash_by_addresses_protocol_and_ports() {
        let udp = |sport: u16, dport: u16| {
            let mut v = Vec::new();
            etherparse::PacketBuilder::ipv4([100, 64, 1, 2], [100, 64, 2, 2], 64)
                .udp(sport, dport)
                .write(&mut v, b"x")
                .unwrap();
            v
        };
        let h = |v: &[u8]| Ipv4Packet::new_checked(v).unwrap().flow_hash();
        let a = udp(4000, 53);
        assert_eq!(h(&a), h(&udp(4000, 53)), "one flow, one hash");
        let buckets: std::collections::BTreeSet<u32> = (0..64).map(|p| h(&udp(4000 + p, 53)) % 8).collect();
        assert!(buckets.len() >= 6, "flows spread over 8 buckets: {buckets:?}");
        let mut ttl = a.clone();
        ttl[8] = 3;
        assert_eq!(h(&a), h(&ttl), "the TTL is not part of the flow");
        let mut frag = a.clone();
        frag[6] |= flag::MF;
        let mut other_frag = udp(4001, 53);
        other_frag[6] |= flag::MF;
        assert_eq!(h(&frag), h(&other_frag), "fragments hash without ports");
    }

    /// An ICMP echo request 100.96.1.2 → 100.96.2.2, TTL 64, as ping sends it (header + 8 bytes).
    pub const ECHO: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 100, 96, 1, 2, 100, 96, 2, 2, 0x08,
        0x00, 0xf7, 0xff, 0x00, 0x00, 0x00, 0x00,
    ];

    pub fn echo() -> Vec<u8> {
        let mut v = ECHO.to_vec();
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        v
    }

    #[test]
    fn parses_fields() {
        let v = echo();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_ICMP);
        assert_eq!(p.src(), Ipv4Addr::new(100, 96, 1, 2));
        assert_eq!(p.dst(), Ipv4Addr::new(100, 96, 2, 2));
        assert_eq!(p.ident(), 0x1234);
        assert_eq!(p.frag_offset(), 0);
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn checked_rejects_bad_input() {
        let v = echo();
        assert_eq!(Ipv4Packet::new_checked(&v[..19]).unwrap_err(), WireError::Truncated);
        // Total Length says 28, buffer holds 27.
        assert_eq!(Ipv4Packet::new_checked(&v[..27]).unwrap_err(), WireError::Truncated);
        let mut bad = v.clone();
        bad[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]).unwrap_err(), WireError::BadVersion);
        bad[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]).unwrap_err(), WireError::BadHeaderLen);
        bad[0] = 0x4f; // 60-byte header in a 28-byte buffer
        assert_eq!(Ipv4Packet::new_checked(&bad[..]).unwrap_err(), WireError::BadHeaderLen);
        let mut short_total = v.clone();
        short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&short_total[..]).unwrap_err(), WireError::BadHeaderLen);
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        for ttl in 2..=255u8 {
            let mut v = echo();
            v[8] = ttl;
            Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
            let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
            assert!(p.decrement_ttl());
            assert_eq!(p.ttl(), ttl - 1);
            assert!(p.verify_checksum(), "ttl {ttl}");
        }
    }

    #[test]
    fn ttl_one_is_discarded_unchanged() {
        let mut v = echo();
        v[8] = 1;
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        let before = v.clone();
        assert!(!Ipv4Packet::new_checked(&mut v[..]).unwrap().decrement_ttl());
        assert_eq!(v, before);
    }

    #[test]
    fn every_prefix_of_a_packet_is_handled_without_panic() {
        let v = echo();
        for n in 0..v.len() {
            assert!(Ipv4Packet::new_checked(&v[..n]).is_err());
        }
    }
}
