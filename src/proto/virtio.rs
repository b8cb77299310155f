//! `struct virtio_net_hdr` (10 bytes), which precedes every packet read from or written to a
//! TUN device opened with `IFF_VNET_HDR`. Little-endian (the TUN's byte order on little-endian
//! hosts; weft targets x86-64 and arm64).

use super::WireError;

/// Length of the header (without `num_buffers`).
pub const LEN: usize = 10;
/// `flags`: the checksum at `csum_start + csum_offset` is partial and must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a GSO packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: ECN (CWR) set on the super-packet.
pub const GSO_ECN: u8 = 0x80;

/// A parsed `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `flags`.
    pub flags: u8,
    /// `gso_type` (with the ECN bit).
    pub gso_type: u8,
    /// `hdr_len`: not trusted on read (the kernel's value is a hint).
    pub hdr_len: u16,
    /// `gso_size`: payload bytes per segment.
    pub gso_size: u16,
    /// `csum_start`: where checksumming starts.
    pub csum_start: u16,
    /// `csum_offset`: where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`LEN`] bytes.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let b = b.get(..LEN).ok_or(WireError::Truncated)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    /// Writes the header into the first [`LEN`] bytes of `out`; `Truncated` if too short.
    pub fn write(&self, out: &mut [u8]) -> Result<(), WireError> {
        let o = out.get_mut(..LEN).ok_or(WireError::Truncated)?;
        o[0] = self.flags;
        o[1] = self.gso_type;
        o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        Ok(())
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Completes a partial checksum in `pkt` as the header asks (`F_NEEDS_CSUM`): the field
    /// holds the pseudo-header sum; the checksum covers `pkt[csum_start..]`.
    pub fn complete_checksum(&self, pkt: &mut [u8]) -> Result<(), WireError> {
        if self.flags & F_NEEDS_CSUM == 0 {
            return Ok(());
        }
        let start = usize::from(self.csum_start);
        let at = start + usize::from(self.csum_offset);
        if at + 2 > pkt.len() || start > pkt.len() {
            return Err(WireError::Malformed);
        }
        let c = super::checksum::checksum(&pkt[start..]);
        pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_vector() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; LEN];
        h.write(&mut b).unwrap();
        assert_eq!(b, [1, 0x81, 52, 0, 0x76, 0x05, 20, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b).unwrap(), h);
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert_eq!(VnetHdr::parse(&b[..9]).unwrap_err(), WireError::Truncated);
        assert_eq!(h.write(&mut [0u8; 9]), Err(WireError::Truncated));
    }

    #[test]
    fn completes_a_partial_checksum() {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], 64)
            .udp(1, 2)
            .write(&mut v, b"hello")
            .unwrap();
        let good = v.clone();
        // Replace the UDP checksum by the pseudo-header sum, as the kernel hands it over.
        let udp_len = u16::try_from(v.len() - 20).unwrap();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&v[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&udp_len.to_be_bytes());
        let partial = !super::super::checksum::checksum(&pseudo);
        v[26..28].copy_from_slice(&partial.to_be_bytes());
        let h = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 6, ..Default::default() };
        h.complete_checksum(&mut v).unwrap();
        assert_eq!(v, good);
        let bad = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 200, csum_offset: 6, ..Default::default() };
        assert!(bad.complete_checksum(&mut v).is_err());
    }
}
