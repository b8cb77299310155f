//! Ethernet II header, the inner frame of VXLAN.

use super::WireError;
use super::mac::MacAddr;

/// Length of an Ethernet II header (no VLAN tag).
pub const HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps and checks the length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    fn mac(&self, r: std::ops::Range<usize>) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[r]);
        MacAddr(m)
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        self.mac(field::DST)
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        self.mac(field::SRC)
    }

    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        let e = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([e[0], e[1]])
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Writes an Ethernet II header into the first 14 bytes of `out`; `Truncated` when too short.
pub fn write_header(out: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) -> Result<(), WireError> {
    let h = out.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
    h[field::DST].copy_from_slice(&dst.0);
    h[field::SRC].copy_from_slice(&src.0);
    h[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_vectors() {
        let dst: MacAddr = "c6:d2:32:6f:8f:44".parse().unwrap();
        let src: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let mut h = [0u8; 20];
        write_header(&mut h, dst, src, ETHERTYPE_IPV4).unwrap();
        assert_eq!(&h[..14], &[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let f = EthernetFrame::new_checked(&h[..]).unwrap();
        assert_eq!((f.dst(), f.src(), f.ethertype()), (dst, src, ETHERTYPE_IPV4));
        assert_eq!(f.payload().len(), 6);
        assert!(EthernetFrame::new_checked(&h[..13]).is_err());
        assert_eq!(write_header(&mut h[..13], dst, src, 1), Err(WireError::Truncated));
    }
}
