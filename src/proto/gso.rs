//! Segmentation done in user space: an IPv4 or IPv6 super-packet (as a TUN with TSO or USO
//! hands it over) cut into segments of `gso_size` payload bytes. TCP (TSO): each segment gets
//! its own header — IPv4 Total Length, IP ID and header checksum (IPv6: Payload Length), TCP
//! sequence number, flags and checksum. UDP (USO, `GSO_UDP_L4`): each datagram gets its own IP
//! length (and IPv4 ID and header checksum), UDP length and checksum. IPv6 super-packets carry
//! the transport header right after the fixed header (the kernel's TSO6 takes no extension
//! headers from a TUN either). A segment is written into a caller's buffer, headers alone ([`Headers::write`],
//! the payload left where it is for a sender that gathers) or whole ([`Headers::write_segment`]).

use super::WireError;
use super::checksum;
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::tcp::{self, TcpV4, flags};
use super::udp::{self, HDR_LEN as UDP_HDR};
use std::ops::Range;

/// What is cut: the transport decides which header fields each segment gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// The IP version of a super-packet: which header fields each segment gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ip {
    V4,
    V6,
}

/// Cuts one super-packet.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter {
    transport: Transport,
    ip: Ip,
    ip_hl: usize,
    /// IP + transport header length (with TCP options).
    hdr_len: usize,
    /// The super-packet's length (IPv4 Total Length, or 40 + IPv6 Payload Length).
    total: usize,
    mss: usize,
    count: usize,
}

/// The header sums every segment of one super-packet shares, taken once (see
/// [`Segmenter::headers`]), so that writing a segment's headers makes one pass, over its payload.
#[derive(Debug, Clone, Copy)]
pub struct Headers {
    seg: Segmenter,
    /// The IPv4 header's sum with Total Length, ID and the checksum taken as zero: a segment's
    /// header checksum adds only its own two fields to it (unused for IPv6, which has none).
    ip_base: u32,
    /// The transport checksum's sum over what every segment shares: the pseudo-header's
    /// addresses and protocol, and the transport header with the fields that differ per segment
    /// (TCP sequence number, data offset and flags; UDP length) and the checksum taken as zero.
    l4_base: u32,
}

impl Segmenter {
    /// Plans the segments of the TCP super-packet `pkt` for payloads of `mss` bytes (`gso_size`).
    pub fn new(pkt: &[u8], mss: usize) -> Result<Self, WireError> {
        let t = TcpV4::parse(pkt)?;
        Self::plan(Transport::Tcp, Ip::V4, t.ip_hl(), t.hdr_len(), t.total(), mss)
    }

    /// Plans the segments of the IPv6 TCP super-packet `pkt` (`GSO_TCPV6`).
    pub fn new_v6(pkt: &[u8], mss: usize) -> Result<Self, WireError> {
        let (ip, l4) = v6_transport(pkt, ipv4::PROTO_TCP)?;
        let t = tcp::TcpPacket::new_checked(l4).map_err(|_| WireError::BadHeaderLen)?;
        let hl = ipv6::HEADER_LEN;
        Self::plan(Transport::Tcp, Ip::V6, hl, hl + t.header_len(), ip.total_len(), mss)
    }

    /// Plans the datagrams of the IPv6 UDP super-packet `pkt` (`GSO_UDP_L4`).
    pub fn new_udp_v6(pkt: &[u8], size: usize) -> Result<Self, WireError> {
        let (ip, l4) = v6_transport(pkt, ipv4::PROTO_UDP)?;
        if l4.len() < UDP_HDR {
            return Err(WireError::BadHeaderLen);
        }
        let hl = ipv6::HEADER_LEN;
        Self::plan(Transport::Udp, Ip::V6, hl, hl + UDP_HDR, ip.total_len(), size)
    }

    /// Plans a super-packet of either IP version as its `gso_type` says: TCP (`tcp`) or UDP.
    pub fn for_packet(pkt: &[u8], tcp: bool, size: usize) -> Result<Self, WireError> {
        match (super::ip_version(pkt), tcp) {
            (Some(6), true) => Self::new_v6(pkt, size),
            (Some(6), false) => Self::new_udp_v6(pkt, size),
            (_, true) => Self::new(pkt, size),
            (_, false) => Self::new_udp(pkt, size),
        }
    }

    /// Plans the datagrams of the UDP super-packet `pkt` (`GSO_UDP_L4`) for payloads of `size`
    /// bytes (`gso_size`).
    pub fn new_udp(pkt: &[u8], size: usize) -> Result<Self, WireError> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        // The UDP Length of a super-packet is not each datagram's: only the header is needed.
        if ip.protocol() != ipv4::PROTO_UDP || ip.is_fragment() {
            return Err(WireError::Malformed);
        }
        let (ip_hl, total) = (ip.header_len(), ip.total_len());
        if ip_hl + UDP_HDR > total {
            return Err(WireError::BadHeaderLen);
        }
        Self::plan(Transport::Udp, Ip::V4, ip_hl, ip_hl + UDP_HDR, total, size)
    }

    fn plan(
        transport: Transport,
        ip: Ip,
        ip_hl: usize,
        hdr_len: usize,
        total: usize,
        mss: usize,
    ) -> Result<Self, WireError> {
        if mss == 0 || hdr_len > total || hdr_len > MAX_HDR_LEN {
            return Err(WireError::Malformed);
        }
        let count = (total - hdr_len).div_ceil(mss).max(1);
        Ok(Self { transport, ip, ip_hl, hdr_len, total, mss, count })
    }

    /// Takes the header sums every segment of `pkt` shares from its headers as they are now.
    /// Take them after the last change to the super-packet's headers (the egress decision
    /// decrements its TTL after it was planned), and write segments of that same packet.
    pub fn headers(&self, pkt: &[u8]) -> Result<Headers, WireError> {
        let (hl, ip_hl) = (self.hdr_len, self.ip_hl);
        // Every segment's header starts as a copy of these bytes; sum once what stays the same.
        let mut hdr = [0u8; MAX_HDR_LEN];
        hdr.get_mut(..hl).ok_or(WireError::BadHeaderLen)?.copy_from_slice(pkt.get(..hl).ok_or(WireError::Truncated)?);
        let (ip, l4) = hdr[..hl].split_at_mut(ip_hl);
        if self.ip == Ip::V4 {
            for f in [ipv4::field::LENGTH, ipv4::field::IDENT, ipv4::field::CHECKSUM] {
                ip[f].fill(0);
            }
        }
        let zeroed: &[Range<usize>] = match self.transport {
            Transport::Tcp => &[tcp::field::SEQ, tcp::field::OFFSET_FLAGS, tcp::field::CHECKSUM],
            Transport::Udp => &[udp::field::LENGTH, udp::field::CHECKSUM],
        };
        for f in zeroed {
            l4[f.clone()].fill(0);
        }
        let (ip_base, pseudo) = match self.ip {
            Ip::V4 => (checksum::sum(0, ip), ipv4::pseudo_sum(ip, proto(self.transport), 0)),
            Ip::V6 => {
                let v6 = Ipv6Packet::new_unchecked(&*ip);
                (0, ipv6::pseudo_sum(&v6.src(), &v6.dst(), proto(self.transport), 0))
            }
        };
        let l4_base = checksum::sum(pseudo, l4);
        Ok(Headers { seg: *self, ip_base, l4_base })
    }

    /// Writes segment `i`'s headers into `out` and returns their length (for many segments,
    /// [`Segmenter::headers`] once and [`Headers::write`] for each is cheaper).
    pub fn write_header(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, WireError> {
        self.headers(pkt)?.write(pkt, i, out)
    }

    /// Number of segments.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Header length of every segment (IPv4 + TCP with options, or IPv4 + UDP).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Bytes of segment `i` on the wire (header + payload).
    pub fn segment_len(&self, i: usize) -> usize {
        self.hdr_len() + self.payload(i).len()
    }

    /// Where segment `i`'s payload is in the super-packet.
    pub fn payload(&self, i: usize) -> Range<usize> {
        let start = (self.hdr_len() + i * self.mss).min(self.total);
        start..(start + self.mss).min(self.total)
    }
}

impl Headers {
    /// Writes segment `i`'s headers into `out` and returns their length. `pkt` is the
    /// super-packet the sums were taken from, unchanged since.
    pub fn write(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, WireError> {
        let s = &self.seg;
        let (hl, ip_hl) = (s.hdr_len, s.ip_hl);
        if i >= s.count || out.len() < hl || pkt.len() < s.total {
            return Err(WireError::Truncated);
        }
        let payload = &pkt[s.payload(i)];
        let h = &mut out[..hl];
        h.copy_from_slice(&pkt[..hl]);
        let total = u16::try_from(hl + payload.len()).map_err(|_| WireError::Malformed)?;
        // `total` fits in 16 bits and exceeds the IP header, so this cannot wrap.
        let l4_len = total - u16::try_from(ip_hl).map_err(|_| WireError::Malformed)?;
        match s.ip {
            Ip::V4 => {
                let ip_id = Ipv4Packet::new_unchecked(&h[..ip_hl]).ident();
                let id = ip_id.wrapping_add(u16::try_from(i).map_err(|_| WireError::Malformed)?);
                h[ipv4::field::LENGTH].copy_from_slice(&total.to_be_bytes());
                h[ipv4::field::IDENT].copy_from_slice(&id.to_be_bytes());
                let ip_sum = checksum::add(checksum::add(self.ip_base, total.into()), id.into());
                h[ipv4::field::CHECKSUM].copy_from_slice(&checksum::finish(ip_sum).to_be_bytes());
            }
            // Payload Length is what follows the fixed header: the transport's length.
            Ip::V6 => h[ipv6::field::PAYLOAD_LEN].copy_from_slice(&l4_len.to_be_bytes()),
        }
        let l4 = &mut h[ip_hl..];
        let mut acc = checksum::add(self.l4_base, l4_len.into());
        let c = match s.transport {
            Transport::Tcp => {
                let first = tcp::TcpPacket::new_unchecked(&*l4);
                let seq = first.seq().wrapping_add(u32::try_from(i * s.mss).map_err(|_| WireError::Malformed)?);
                let mut f = first.flags();
                l4[tcp::field::SEQ].copy_from_slice(&seq.to_be_bytes());
                if i + 1 != s.count {
                    f &= !(flags::FIN | flags::PSH);
                }
                if i != 0 {
                    f &= !flags::CWR;
                }
                l4[tcp::field::FLAGS] = f;
                acc = checksum::add(acc, seq);
                acc = checksum::add(acc, u16::from_be_bytes([l4[tcp::field::DATA_OFF], f]).into());
                tcp::field::CHECKSUM
            }
            Transport::Udp => {
                l4[udp::field::LENGTH].copy_from_slice(&l4_len.to_be_bytes());
                acc = checksum::add(acc, l4_len.into());
                udp::field::CHECKSUM
            }
        };
        let mut sum = checksum::finish(checksum::sum(acc, payload));
        if s.transport == Transport::Udp && sum == 0 {
            sum = 0xffff; // RFC 768: a computed zero is sent as all ones (zero means "none")
        }
        l4[c].copy_from_slice(&sum.to_be_bytes());
        Ok(hl)
    }

    /// Writes segment `i` whole into `out` — its headers as [`Headers::write`] makes them, its
    /// payload copied behind them — and returns its length. A sender that lays segments out
    /// one after another this way hands the kernel one contiguous buffer: a `UDP_SEGMENT` send
    /// gathered from three iovecs per segment costs more in the kernel's copy (per-piece
    /// overhead) than this copy does in user space.
    pub fn write_segment(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, WireError> {
        let len = self.seg.segment_len(i);
        let out = out.get_mut(..len).ok_or(WireError::Truncated)?;
        let hl = self.write(pkt, i, out)?;
        out[hl..].copy_from_slice(&pkt[self.seg.payload(i)]);
        Ok(len)
    }
}

/// The IP protocol number of a transport.
fn proto(t: Transport) -> u8 {
    match t {
        Transport::Tcp => ipv4::PROTO_TCP,
        Transport::Udp => ipv4::PROTO_UDP,
    }
}

/// Most bytes of IP + transport headers (IPv4's 60 + TCP's 60; IPv6's 40 + 60 is less).
pub const MAX_HDR_LEN: usize = 120;

/// The fixed IPv6 header of `pkt` and the transport segment right behind it, when that is
/// protocol `next` (a super-packet with extension headers is not cut).
fn v6_transport(pkt: &[u8], next: u8) -> Result<(Ipv6Packet<&[u8]>, &[u8]), WireError> {
    let ip = Ipv6Packet::new_checked(pkt)?;
    if ip.next_header() != next {
        return Err(WireError::Malformed);
    }
    Ok((ip, &pkt[ipv6::HEADER_LEN..ip.total_len()]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4/TCP packet with `payload` (valid checksums), TCP timestamps option, PSH|ACK.
    pub fn tcp_packet(seq: u32, payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], 64)
            .tcp(40000, 5201, seq, 64240)
            .ack(777)
            .psh()
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(1, 2),
            ])
            .unwrap();
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v[4..6].copy_from_slice(&0x1000u16.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut v[..20]).fill_checksum();
        v
    }

    pub fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Segment `i` of `sup` (header written by `s`, payload behind it), with what every
    /// segment must have checked: its length, its IPv4 header checksum and its IP ID.
    /// The segment written whole (`write_segment`, as the offload engine sends it) must be the
    /// same bytes.
    fn cut(s: &Segmenter, sup: &[u8], i: usize, first_id: u16) -> Vec<u8> {
        let mut seg = vec![0u8; s.hdr_len()];
        assert_eq!(s.write_header(sup, i, &mut seg).unwrap(), s.hdr_len());
        seg.extend_from_slice(&sup[s.payload(i)]);
        assert_eq!(seg.len(), s.segment_len(i));
        let mut whole = vec![0xa5u8; seg.len() + 3];
        assert_eq!(s.headers(sup).unwrap().write_segment(sup, i, &mut whole).unwrap(), seg.len());
        assert_eq!(whole[..seg.len()], seg[..], "segment {i} written whole");
        assert_eq!(whole[seg.len()..], [0xa5; 3], "nothing written past segment {i}");
        let ip = Ipv4Packet::new_checked(&seg[..]).unwrap();
        assert!(ip.verify_checksum(), "IP checksum of segment {i}");
        assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), first_id.wrapping_add(u16::try_from(i).unwrap()));
        seg
    }

    #[test]
    fn splits_into_valid_segments() {
        for (len, mss) in [(5000usize, 1398usize), (1398, 1398), (1399, 1398), (1, 1398), (64000, 1410), (0, 1000)] {
            let data = payload(len);
            let sup = tcp_packet(1_000_000, &data);
            let s = Segmenter::new(&sup, mss).unwrap();
            assert_eq!(s.count(), len.div_ceil(mss).max(1), "{len}/{mss}");
            let mut joined = Vec::new();
            for i in 0..s.count() {
                let seg = cut(&s, &sup, i, 0x1000);
                let p = etherparse::SlicedPacket::from_ip(&seg).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!() };
                let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport else { panic!() };
                let ih = ip.header().to_header();
                let th = t.to_header();
                assert_eq!(
                    th.checksum,
                    th.calc_checksum_ipv4(&ih, t.payload()).unwrap(),
                    "TCP checksum of segment {i}"
                );
                assert_eq!(th.sequence_number, 1_000_000 + (i * mss) as u32);
                assert_eq!(th.acknowledgment_number, 777);
                assert_eq!(th.psh, i + 1 == s.count(), "PSH only on the last segment");
                assert_eq!(th.options.as_slice(), &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2][..]);
                assert!(t.payload().len() <= mss);
                joined.extend_from_slice(t.payload());
            }
            assert_eq!(joined, data);
        }
    }

    /// As a TUN with TSO hands a super-packet over: its TCP checksum field holds the partial
    /// pseudo-header sum, not a checksum, and its IP header checksum and Total Length are the
    /// super-packet's. Each segment's checksums must come out as if computed from scratch, with
    /// CWR only on the first segment and FIN and PSH only on the last.
    #[test]
    fn segments_of_a_tun_super_packet_with_cwr_and_fin() {
        let data = payload(4000);
        let mut sup = tcp_packet(0xffff_f000, &data); // the sequence number wraps inside it
        sup[20 + 13] |= flags::CWR | flags::FIN | flags::ECE;
        let partial = !checksum::finish(ipv4::pseudo_sum(&sup[..20], ipv4::PROTO_TCP, sup.len() - 20));
        sup[20 + 16..20 + 18].copy_from_slice(&partial.to_be_bytes());
        sup[10..12].copy_from_slice(&[0xde, 0xad]);
        let s = Segmenter::new(&sup, 1000).unwrap();
        assert_eq!(s.count(), 4);
        for i in 0..s.count() {
            let seg = cut(&s, &sup, i, 0x1000);
            assert!(ipv4::transport_checksum_ok(&seg[..20], ipv4::PROTO_TCP, &seg[20..]), "segment {i}");
            let t = TcpV4::parse(&seg).unwrap();
            assert_eq!(t.tcp.seq(), 0xffff_f000u32.wrapping_add(u32::try_from(i * 1000).unwrap()));
            let f = t.tcp.flags();
            assert_eq!(f & flags::CWR != 0, i == 0, "CWR of segment {i}");
            assert_eq!(f & (flags::FIN | flags::PSH) != 0, i == 3, "FIN/PSH of segment {i}");
            assert_ne!(f & flags::ECE, 0);
        }
    }

    /// The egress decision decrements the TTL after the segments were planned: the header sums
    /// are taken from the packet as it is when the headers are written, not when planned.
    #[test]
    fn header_sums_are_taken_after_the_ttl_changed() {
        for udp in [false, true] {
            let mut sup = if udp { udp_super_packet(&payload(3000)) } else { tcp_packet(7, &payload(3000)) };
            let s = if udp { Segmenter::new_udp(&sup, 1000) } else { Segmenter::new(&sup, 1000) }.unwrap();
            assert!(Ipv4Packet::new_unchecked(&mut sup[..20]).decrement_ttl());
            let h = s.headers(&sup).unwrap();
            for i in 0..s.count() {
                let mut seg = vec![0u8; s.hdr_len()];
                h.write(&sup, i, &mut seg).unwrap();
                seg.extend_from_slice(&sup[s.payload(i)]);
                assert_eq!(seg[8], 63, "TTL of segment {i}");
                assert!(Ipv4Packet::new_unchecked(&seg[..20]).verify_checksum(), "IP checksum of segment {i}");
                let proto = if udp { ipv4::PROTO_UDP } else { ipv4::PROTO_TCP };
                assert!(ipv4::transport_checksum_ok(&seg[..20], proto, &seg[20..]), "checksum of segment {i}");
            }
        }
    }

    /// An IPv4/UDP super-packet as a TUN with USO hands it over: one header, `payload` behind.
    pub fn udp_super_packet(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], 64)
            .udp(4433, 443)
            .write(&mut v, payload)
            .unwrap();
        v[4..6].copy_from_slice(&0x2000u16.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut v[..20]).fill_checksum();
        v
    }

    #[test]
    fn splits_udp_into_valid_datagrams() {
        for (len, size) in [(5000usize, 1200usize), (1200, 1200), (1201, 1200), (1, 1200), (63000, 1400), (0, 1000)] {
            let data = payload(len);
            let sup = udp_super_packet(&data);
            let s = Segmenter::new_udp(&sup, size).unwrap();
            assert_eq!(s.count(), len.div_ceil(size).max(1), "{len}/{size}");
            assert_eq!(s.hdr_len(), 28);
            let mut joined = Vec::new();
            for i in 0..s.count() {
                let d = cut(&s, &sup, i, 0x2000);
                let p = etherparse::SlicedPacket::from_ip(&d).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!() };
                let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else { panic!() };
                let ih = ip.header().to_header();
                let uh = u.to_header();
                assert_eq!(usize::from(uh.length), d.len() - 20, "UDP length of datagram {i}");
                assert_eq!(uh.checksum, uh.calc_checksum_ipv4(&ih, u.payload()).unwrap(), "UDP checksum of {i}");
                assert_eq!((uh.source_port, uh.destination_port), (4433, 443));
                assert!(u.payload().len() <= size);
                joined.extend_from_slice(u.payload());
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn refuses_what_it_cannot_cut() {
        let sup = tcp_packet(1, &payload(100));
        assert!(Segmenter::new(&sup, 0).is_err());
        assert!(Segmenter::new(&sup[..30], 10).is_err());
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9).udp(1, 2).write(&mut udp, b"x").unwrap();
        assert!(Segmenter::new(&udp, 10).is_err());
        // ... and the UDP cutter takes neither TCP, a fragment, nor a zero size.
        assert!(Segmenter::new_udp(&sup, 10).is_err());
        assert!(Segmenter::new_udp(&udp, 0).is_err());
        let mut frag = udp.clone();
        frag[6] |= 0x20;
        Ipv4Packet::new_unchecked(&mut frag[..20]).fill_checksum();
        assert!(Segmenter::new_udp(&frag, 10).is_err());
        assert!(Segmenter::new_udp(&udp[..24], 10).is_err());
        let s = Segmenter::new(&sup, 40).unwrap();
        assert!(s.write_header(&sup, 3, &mut [0u8; 64]).is_err());
        assert!(s.write_header(&sup, 0, &mut [0u8; 10]).is_err());
        let h = s.headers(&sup).unwrap();
        assert!(h.write_segment(&sup, 0, &mut vec![0u8; s.segment_len(0) - 1]).is_err());
        assert!(h.write_segment(&sup, 3, &mut vec![0u8; 4096]).is_err());
        assert!(h.write_segment(&sup[..sup.len() - 1], 0, &mut vec![0u8; 4096]).is_err());
    }

    /// An IPv6 TCP super-packet with `payload`, as a TUN with TSO6 hands it over (Payload
    /// Length covering the whole, TCP timestamps, FIN|PSH|ACK|CWR on the super-packet).
    pub fn tcp6_packet(seq: u32, payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv6(
            "2001:db8:96:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "2001:db8:96:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .tcp(40000, 5201, seq, 64240)
        .ack(777)
        .psh()
        .fin()
        .cwr()
        .options(&[
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::Timestamp(1, 2),
        ])
        .unwrap();
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// Cuts `sup` with `s` and checks every segment as etherparse reads it: the IPv6 Payload
    /// Length, the transport checksum over the IPv6 pseudo-header, and (TCP) the sequence
    /// numbers and flags; returns the payloads joined.
    fn cut_v6(s: &Segmenter, sup: &[u8], tcp: bool) -> Vec<u8> {
        let h = s.headers(sup).unwrap();
        let mut joined = Vec::new();
        for i in 0..s.count() {
            let mut seg = vec![0u8; s.segment_len(i)];
            assert_eq!(h.write_segment(sup, i, &mut seg).unwrap(), seg.len());
            let p = etherparse::SlicedPacket::from_ip(&seg).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else { panic!("segment {i} is not IPv6") };
            assert_eq!(usize::from(ip.header().payload_length()), seg.len() - 40, "segment {i}");
            let (src, dst) = (ip.header().source(), ip.header().destination());
            match &p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) if tcp => {
                    let want = t.to_header().calc_checksum_ipv6_raw(src, dst, t.payload()).unwrap();
                    assert_eq!(t.checksum(), want, "TCP checksum of segment {i}");
                    assert_eq!(t.sequence_number(), 1000 + u32::try_from(i * s.payload(0).len()).unwrap());
                    let last = i + 1 == s.count();
                    assert_eq!((t.fin(), t.psh(), t.cwr()), (last, last, i == 0), "flags of segment {i}");
                    joined.extend_from_slice(t.payload());
                }
                Some(etherparse::TransportSlice::Udp(u)) if !tcp => {
                    let want = u.to_header().calc_checksum_ipv6_raw(src, dst, u.payload()).unwrap();
                    assert_eq!(u.checksum(), want, "UDP checksum of segment {i}");
                    assert_eq!(usize::from(u.length()), seg.len() - 40);
                    joined.extend_from_slice(u.payload());
                }
                other => panic!("segment {i}: {other:?}"),
            }
        }
        joined
    }

    #[test]
    fn splits_ipv6_tcp_and_udp_into_segments_etherparse_accepts() {
        for (len, mss) in [(5000usize, 1378usize), (1378, 1378), (1379, 1378), (1, 1378), (63000, 1390)] {
            let data = payload(len);
            let sup = tcp6_packet(1000, &data);
            let s = Segmenter::for_packet(&sup, true, mss).unwrap();
            assert_eq!(s.count(), len.div_ceil(mss).max(1));
            assert_eq!(cut_v6(&s, &sup, true), data, "TCP {len}/{mss}");
            let mut udp = Vec::new();
            etherparse::PacketBuilder::ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .udp(4433, 443)
            .write(&mut udp, &data)
            .unwrap();
            let s = Segmenter::for_packet(&udp, false, mss).unwrap();
            assert_eq!(cut_v6(&s, &udp, false), data, "UDP {len}/{mss}");
        }
        // IPv6 with an extension header, the wrong transport, or a short header is not cut.
        let sup = tcp6_packet(1, &payload(100));
        let mut ext = sup.clone();
        ext[6] = 0; // Hop-by-Hop
        assert!(Segmenter::new_v6(&ext, 10).is_err());
        assert!(Segmenter::new_udp_v6(&sup, 10).is_err());
        assert!(Segmenter::new_v6(&sup[..50], 10).is_err());
        assert!(Segmenter::new_v6(&sup, 0).is_err());
    }
}
