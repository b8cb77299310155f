//! VXLAN header (RFC 7348): flags (I bit), 24-bit VNI. Reserved bits ignored on receive, zero on send.

use super::WireError;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;

mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
}

/// A view of a VXLAN header and what follows it.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps and checks: at least 8 bytes, I flag set.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let d = buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if d[field::FLAGS] & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        Ok(Self { buffer })
    }

    /// The VNI.
    pub fn vni(&self) -> u32 {
        let v = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, v[0], v[1], v[2]])
    }

    /// The bytes after the header (the inner Ethernet frame).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Writes a VXLAN header for `vni` (which must fit in 24 bits; higher bits are dropped)
/// into the first 8 bytes of `out`; `Truncated` when `out` is too short.
pub fn write_header(out: &mut [u8], vni: u32) -> Result<(), WireError> {
    let h = out.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
    let v = (vni & 0x00ff_ffff).to_be_bytes();
    h.copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_vectors() {
        let mut h = [0xffu8; 8];
        write_header(&mut h, 1).unwrap();
        assert_eq!(h, [0x08, 0, 0, 0, 0, 0, 1, 0]);
        write_header(&mut h, 0x123456).unwrap();
        assert_eq!(h, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert_eq!(p.vni(), 0x123456);
        assert!(p.payload().is_empty());
        assert_eq!(write_header(&mut h[..7], 1), Err(WireError::Truncated));
    }

    #[test]
    fn reserved_bits_are_ignored_and_i_flag_required() {
        let p = VxlanPacket::new_checked(&[0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0xff][..]).unwrap();
        assert_eq!(p.vni(), 1);
        assert_eq!(VxlanPacket::new_checked(&[0u8, 0, 0, 0, 0, 0, 1, 0][..]).unwrap_err(), WireError::Malformed);
        for n in 0..8 {
            assert_eq!(VxlanPacket::new_checked(&[8u8; 8][..n]).unwrap_err(), WireError::Truncated);
        }
    }
}
