//! ICMPv4 destination-unreachable messages, as flannel's proxy writes them back into the TUN.

use super::checksum;
use super::ipv4::{self, Ipv4Packet};
use std::net::Ipv4Addr;

/// ICMP type 3, Destination Unreachable.
pub const TYPE_DEST_UNREACH: u8 = 3;
/// Code 0, net unreachable.
pub const CODE_NET_UNREACH: u8 = 0;
/// TTL of the generated message (flannel uses 8).
pub const REPLY_TTL: u8 = 8;
/// Largest message `net_unreachable` writes: 20 + 8 + a 60-byte offending header + 8.
pub const MAX_LEN: usize = 20 + 8 + 60 + 8;

/// True when RFC 792/1812 allow an ICMP error about this packet: not about an ICMP message
/// (flannel, like its proxy, skips every ICMP) and only for the first fragment.
pub fn may_answer(offender: &Ipv4Packet<&[u8]>) -> bool {
    offender.protocol() != ipv4::PROTO_ICMP && offender.frag_offset() == 0
}

/// Writes an ICMP net-unreachable about `offender` into `out`, from `src` back to the
/// offender's source. Returns the length written, or `None` when no message may be sent
/// (see [`may_answer`]) or `out` is shorter than [`MAX_LEN`].
pub fn net_unreachable(offender: &Ipv4Packet<&[u8]>, src: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    if !may_answer(offender) || out.len() < MAX_LEN {
        return None;
    }
    // The offending header plus up to 8 bytes of its payload.
    let quoted_len = (offender.header_len() + 8).min(offender.total_len());
    let raw = offender.into_inner();
    let quoted = raw.get(..quoted_len)?;
    let icmp_len = 8 + quoted.len();
    let total = ipv4::MIN_HEADER_LEN + icmp_len;
    let total_u16 = u16::try_from(total).ok()?;
    let out = &mut out[..total];
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&total_u16.to_be_bytes());
    out[8] = REPLY_TTL;
    out[9] = ipv4::PROTO_ICMP;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&offender.src().octets());
    Ipv4Packet::new_unchecked(&mut out[..]).fill_checksum();
    let icmp = &mut out[20..];
    icmp[0] = TYPE_DEST_UNREACH;
    icmp[1] = CODE_NET_UNREACH;
    icmp[8..].copy_from_slice(quoted);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ipv4::tests::echo;

    fn udp_probe() -> Vec<u8> {
        let mut v = echo();
        v[9] = ipv4::PROTO_UDP;
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        v
    }

    #[test]
    fn builds_a_valid_message() {
        let off = udp_probe();
        let mut out = [0u8; MAX_LEN];
        let p = Ipv4Packet::new_checked(&off[..]).unwrap();
        let n = net_unreachable(&p, Ipv4Addr::new(100, 96, 1, 0), &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let reply = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(reply.verify_checksum());
        assert_eq!(reply.protocol(), ipv4::PROTO_ICMP);
        assert_eq!(reply.ttl(), REPLY_TTL);
        assert_eq!(reply.src(), Ipv4Addr::new(100, 96, 1, 0));
        assert_eq!(reply.dst(), Ipv4Addr::new(100, 96, 1, 2));
        let icmp = reply.payload();
        assert_eq!(&icmp[..2], &[3, 0]);
        assert_eq!(checksum::checksum(icmp), 0);
        assert_eq!(&icmp[8..], &off[..]);
        // Cross-check with etherparse.
        let parsed = etherparse::SlicedPacket::from_ip(&out[..n]).unwrap();
        match parsed.transport {
            Some(etherparse::TransportSlice::Icmpv4(i)) => {
                assert!(matches!(
                    i.icmp_type(),
                    etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Network)
                ));
            }
            other => panic!("not ICMPv4: {other:?}"),
        }
    }

    #[test]
    fn never_about_icmp_or_later_fragments() {
        let icmp = echo();
        let mut out = [0u8; MAX_LEN];
        let p = Ipv4Packet::new_checked(&icmp[..]).unwrap();
        assert_eq!(net_unreachable(&p, Ipv4Addr::LOCALHOST, &mut out), None);
        let mut frag = udp_probe();
        frag[6..8].copy_from_slice(&0x0001u16.to_be_bytes());
        let p = Ipv4Packet::new_checked(&frag[..]).unwrap();
        assert_eq!(net_unreachable(&p, Ipv4Addr::LOCALHOST, &mut out), None);
    }

    #[test]
    fn short_payload_quotes_what_there_is() {
        let mut v = udp_probe();
        v.truncate(24);
        v[2..4].copy_from_slice(&24u16.to_be_bytes());
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        let mut out = [0u8; MAX_LEN];
        let n = net_unreachable(&p, Ipv4Addr::LOCALHOST, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 24);
    }
}
