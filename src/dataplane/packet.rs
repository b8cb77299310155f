//! Packet buffers: where a packet sits in a caller-owned buffer, defined once.
//!
//! Egress: a TUN read lands the inner packet at [`HEADROOM`] (a TUN with `IFF_VNET_HDR` puts its
//! `virtio_net_hdr` just in front, from [`READ_AT`]), and the egress decision writes the outer
//! headers into the room in front of it, so that encapsulation copies nothing. Ingress: a
//! datagram is received at 0, and decapsulation only finds where the inner packet starts.

use crate::proto::virtio::{self, VnetHdr};
use crate::proto::{WireError, ethernet, vxlan};

/// Room reserved in front of every inner packet: the largest outer header weft writes in user
/// space (VXLAN 8 + Ethernet 14; the outer IP/UDP headers are the kernel's).
pub const HEADROOM: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

/// Largest inner packet: an IPv4 packet can be 65 535 bytes.
pub const MAX_PACKET: usize = 65_535;

/// A buffer size that holds any datagram or packet with headroom.
pub const BUF_LEN: usize = HEADROOM + MAX_PACKET;

/// Where a read from a TUN with a `virtio_net_hdr` starts, so that the packet behind the header
/// lands at [`HEADROOM`].
pub const READ_AT: usize = HEADROOM - virtio::LEN;

/// What one TUN read put into a [`PacketBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunRead {
    /// The `virtio_net_hdr` in front of the packet (all zeros for a TUN without one).
    pub vnet: VnetHdr,
    /// Bytes of the inner packet, at [`HEADROOM`].
    pub len: usize,
}

/// What a read of `n` bytes from a TUN (with a `virtio_net_hdr` where `vnet`) put into `buf` at
/// [`READ_AT`] (else at [`HEADROOM`]); `Truncated` when it is shorter than its `virtio_net_hdr`.
pub fn tun_read(buf: &[u8], vnet: bool, n: usize) -> Result<TunRead, WireError> {
    if !vnet {
        return Ok(TunRead { vnet: VnetHdr::default(), len: n });
    }
    let len = n.checked_sub(virtio::LEN).ok_or(WireError::Truncated)?;
    Ok(TunRead { vnet: VnetHdr::parse(buf.get(READ_AT..HEADROOM).ok_or(WireError::Truncated)?)?, len })
}

/// One packet buffer of [`BUF_LEN`] bytes, owned by an engine and reused for every packet.
#[derive(Debug, Clone)]
pub struct PacketBuf {
    bytes: Box<[u8]>,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self { bytes: vec![0u8; BUF_LEN].into_boxed_slice() }
    }
}

impl PacketBuf {
    /// `n` buffers.
    pub fn many(n: usize) -> Vec<Self> {
        (0..n).map(|_| Self::default()).collect()
    }

    /// Where a TUN read goes: at [`READ_AT`] for a TUN with a `virtio_net_hdr` (`vnet`), else at
    /// [`HEADROOM`].
    pub fn tun_read_area(&mut self, vnet: bool) -> &mut [u8] {
        &mut self.bytes[if vnet { READ_AT } else { HEADROOM }..]
    }

    /// What a read of `n` bytes into [`PacketBuf::tun_read_area`] holds; `Truncated` when it is
    /// shorter than its `virtio_net_hdr`.
    pub fn tun_read(&self, vnet: bool, n: usize) -> Result<TunRead, WireError> {
        tun_read(&self.bytes, vnet, n)
    }

    /// The inner packet of `len` bytes read from the TUN.
    pub fn inner(&self, len: usize) -> &[u8] {
        self.bytes.get(HEADROOM..HEADROOM.saturating_add(len)).unwrap_or(&[])
    }

    /// [`PacketBuf::inner`], writable.
    pub fn inner_mut(&mut self, len: usize) -> &mut [u8] {
        self.bytes.get_mut(HEADROOM..HEADROOM.saturating_add(len)).unwrap_or(&mut [])
    }

    /// The outer header written in front of the inner packet, from `start` up to [`HEADROOM`],
    /// and everything from the inner packet on.
    pub fn outer_and_inner(&self, start: usize) -> (&[u8], &[u8]) {
        let (front, inner) = self.bytes.split_at(HEADROOM);
        (front.get(start..).unwrap_or(&[]), inner)
    }

    /// The whole buffer: what the egress decision takes (inner packet at [`HEADROOM`]) and
    /// what a receive fills (datagram at 0).
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// [`PacketBuf::as_slice`], writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl AsRef<[u8]> for PacketBuf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for PacketBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_with_a_virtio_header_puts_the_packet_at_headroom() {
        let mut b = PacketBuf::default();
        let vh = VnetHdr { gso_type: virtio::GSO_TCPV4, gso_size: 1400, ..Default::default() };
        let area = b.tun_read_area(true);
        vh.write(area).unwrap();
        area[virtio::LEN..virtio::LEN + 3].copy_from_slice(&[0x45, 1, 2]);
        assert_eq!(b.tun_read(true, virtio::LEN + 3).unwrap(), TunRead { vnet: vh, len: 3 });
        assert_eq!(b.inner(3), &[0x45, 1, 2]);
        assert_eq!(b.tun_read(true, virtio::LEN - 1).unwrap_err(), WireError::Truncated);
        assert_eq!(b.tun_read(false, 3).unwrap().len, 3);
        b.tun_read_area(false)[0] = 0x46;
        assert_eq!(b.inner(1), &[0x46]);
        assert!(b.inner(BUF_LEN).is_empty(), "a length past the end is no packet, not a panic");
        let (outer, inner) = b.outer_and_inner(HEADROOM - 2);
        assert_eq!((outer.len(), inner[0]), (2, 0x46));
    }
}
