//! ICMPv6 destination-unreachable messages (RFC 4443), written back into the TUN for a packet
//! with no route, as [`super::icmp`] does for IPv4.

use super::checksum;
use super::ipv6::{self, Ipv6Packet};
use std::net::Ipv6Addr;

/// ICMPv6 type 1, Destination Unreachable.
pub const TYPE_DEST_UNREACH: u8 = 1;
/// Code 0, no route to destination.
pub const CODE_NO_ROUTE: u8 = 0;
/// Hop limit of the generated message (the same as the IPv4 reply's TTL).
pub const REPLY_HOP_LIMIT: u8 = super::icmp::REPLY_TTL;
/// How much of the offending packet is quoted: its fixed header and the start of what follows,
/// enough for the sender to find its socket (RFC 4443 asks for "as much as possible"; this
/// keeps the message in a small scratch buffer).
pub const QUOTE_LEN: usize = ipv6::HEADER_LEN + 64;
/// Largest message `no_route` writes.
pub const MAX_LEN: usize = ipv6::HEADER_LEN + 8 + QUOTE_LEN;

/// True when RFC 4443 §2.4 allows an error about this packet: not about an ICMPv6 error
/// message (types below 128), not from the unspecified or a multicast source, and not to a
/// multicast destination (the TUN's own router solicitations and MLD reports go there).
pub fn may_answer(offender: &Ipv6Packet<&[u8]>) -> bool {
    let (src, dst) = (offender.src(), offender.dst());
    let is_error = offender.next_header() == ipv6::NEXT_ICMPV6 && offender.payload().first().is_some_and(|t| *t < 128);
    !is_error && !src.is_unspecified() && !src.is_multicast() && !dst.is_multicast()
}

/// Writes an ICMPv6 no-route message about `offender` into `out`, from `src` back to the
/// offender's source. Returns the length written, or `None` when no message may be sent (see
/// [`may_answer`]) or `out` is shorter than [`MAX_LEN`].
pub fn no_route(offender: &Ipv6Packet<&[u8]>, src: Ipv6Addr, out: &mut [u8]) -> Option<usize> {
    if !may_answer(offender) || out.len() < MAX_LEN {
        return None;
    }
    let dst = offender.src();
    let quoted_len = QUOTE_LEN.min(offender.total_len());
    let raw = offender.into_inner();
    let quoted = raw.get(..quoted_len)?;
    let icmp_len = 8 + quoted.len();
    let total = ipv6::HEADER_LEN + icmp_len;
    let out = &mut out[..total];
    out.fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&u16::try_from(icmp_len).ok()?.to_be_bytes());
    out[6] = ipv6::NEXT_ICMPV6;
    out[7] = REPLY_HOP_LIMIT;
    out[8..24].copy_from_slice(&src.octets());
    out[24..40].copy_from_slice(&dst.octets());
    let icmp = &mut out[ipv6::HEADER_LEN..];
    icmp[0] = TYPE_DEST_UNREACH;
    icmp[1] = CODE_NO_ROUTE;
    icmp[8..].copy_from_slice(quoted);
    let sum = checksum::sum(ipv6::pseudo_sum(&src, &dst, ipv6::NEXT_ICMPV6, icmp_len), icmp);
    icmp[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp6(src: &str, dst: &str, payload: usize) -> Vec<u8> {
        let (s, d): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        let b = etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64).udp(1000, 2000);
        let mut v = Vec::new();
        b.write(&mut v, &vec![9u8; payload]).unwrap();
        v
    }

    #[test]
    fn builds_a_message_etherparse_accepts() {
        let off = udp6("2001:db8:1:1::2", "2001:db8:1:77::2", 200);
        let mut out = [0u8; MAX_LEN];
        let src: Ipv6Addr = "2001:db8:1:1::".parse().unwrap();
        let n = no_route(&Ipv6Packet::new_checked(&off[..]).unwrap(), src, &mut out).unwrap();
        assert_eq!(n, MAX_LEN);
        let parsed = etherparse::SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &parsed.net else { panic!("not IPv6") };
        assert_eq!(ip.header().hop_limit(), REPLY_HOP_LIMIT);
        assert_eq!(ip.header().source_addr(), src);
        assert_eq!(ip.header().destination_addr(), "2001:db8:1:1::2".parse::<Ipv6Addr>().unwrap());
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &parsed.transport else { panic!("not ICMPv6") };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::NoRoute)
        );
        let h = ip.header();
        let want =
            etherparse::Icmpv6Header::with_checksum(icmp.icmp_type(), h.source(), h.destination(), icmp.payload())
                .unwrap();
        assert_eq!(icmp.checksum(), want.checksum);
        assert_eq!(&out[48..n], &off[..QUOTE_LEN]);
        // A short offender is quoted whole.
        let short = udp6("2001:db8:1:1::2", "2001:db8:1:77::2", 4);
        let mut out = [0u8; MAX_LEN];
        let n = no_route(&Ipv6Packet::new_checked(&short[..]).unwrap(), src, &mut out).unwrap();
        assert_eq!(&out[48..n], &short[..]);
    }

    #[test]
    fn never_about_errors_multicast_or_unspecified() {
        let src: Ipv6Addr = "2001:db8:1:1::".parse().unwrap();
        let mut out = [0u8; MAX_LEN];
        let mut err = udp6("2001:db8:1:1::2", "2001:db8:1:77::2", 8);
        err[6] = ipv6::NEXT_ICMPV6;
        err[40] = 1;
        let mut echo = err.clone();
        echo[40] = 128;
        for (pkt, want) in [
            (err, false),
            (echo, true),
            (udp6("ff02::2", "2001:db8:1:77::2", 8), false),
            (udp6("::", "2001:db8:1:77::2", 8), false),
            (udp6("fe80::1", "ff02::2", 8), false),
        ] {
            let p = Ipv6Packet::new_checked(&pkt[..]).unwrap();
            assert_eq!(no_route(&p, src, &mut out).is_some(), want, "{:?} -> {:?}", p.src(), p.dst());
        }
        let ok = udp6("2001:db8:1:1::2", "2001:db8:1:77::2", 8);
        assert_eq!(no_route(&Ipv6Packet::new_checked(&ok[..]).unwrap(), src, &mut out[..MAX_LEN - 1]), None);
    }
}
