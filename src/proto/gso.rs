//! Segmentation done in user space: an IPv4 super-packet (as a TUN with TSO or USO hands it
//! over) cut into segments of `gso_size` payload bytes. TCP (TSO): each segment gets its own
//! header — IP Total Length, IP ID, TCP sequence number, flags, both checksums. UDP (USO,
//! `GSO_UDP_L4`): each datagram gets its own IP Total Length, IP ID, UDP length and both
//! checksums. Headers are written into a caller's buffer; payloads stay where they are, so the
//! sender can gather header + payload with iovecs and copy nothing.

use super::WireError;
use super::checksum;
use super::ipv4::{self, Ipv4Packet};
use super::tcp::{self, TcpV4, flags};
use super::udp::{CHECKSUM_OFFSET as UDP_CHECKSUM_OFFSET, HDR_LEN as UDP_HDR, LENGTH_OFFSET as UDP_LENGTH_OFFSET};
use std::ops::Range;

/// What is cut: the transport decides which header fields each segment gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// Cuts one super-packet.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter {
    transport: Transport,
    ip_hl: usize,
    /// IPv4 + transport header length (with TCP options).
    hdr_len: usize,
    /// The super-packet's IPv4 Total Length.
    total: usize,
    mss: usize,
    count: usize,
}

impl Segmenter {
    /// Plans the segments of the TCP super-packet `pkt` for payloads of `mss` bytes (`gso_size`).
    pub fn new(pkt: &[u8], mss: usize) -> Result<Self, WireError> {
        let t = TcpV4::parse(pkt)?;
        Self::plan(Transport::Tcp, t.ip_hl, t.hdr_len(), t.total, mss)
    }

    /// Plans the datagrams of the UDP super-packet `pkt` (`GSO_UDP_L4`) for payloads of `size`
    /// bytes (`gso_size`).
    pub fn new_udp(pkt: &[u8], size: usize) -> Result<Self, WireError> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        if ip.protocol() != ipv4::PROTO_UDP || ip.frag_offset() != 0 || pkt[6] & 0x20 != 0 {
            return Err(WireError::Malformed);
        }
        let (ip_hl, total) = (ip.header_len(), ip.total_len());
        if ip_hl + UDP_HDR > total {
            return Err(WireError::BadHeaderLen);
        }
        Self::plan(Transport::Udp, ip_hl, ip_hl + UDP_HDR, total, size)
    }

    fn plan(transport: Transport, ip_hl: usize, hdr_len: usize, total: usize, mss: usize) -> Result<Self, WireError> {
        if mss == 0 {
            return Err(WireError::Malformed);
        }
        let count = (total - hdr_len).div_ceil(mss).max(1);
        Ok(Self { transport, ip_hl, hdr_len, total, mss, count })
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

    /// Writes segment `i`'s headers into `out` and returns their length.
    pub fn write_header(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, WireError> {
        let hl = self.hdr_len();
        if i >= self.count || out.len() < hl || pkt.len() < self.total {
            return Err(WireError::Truncated);
        }
        let payload = &pkt[self.payload(i)];
        let h = &mut out[..hl];
        h.copy_from_slice(&pkt[..hl]);
        let total = u16::try_from(hl + payload.len()).map_err(|_| WireError::Malformed)?;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        let id = u16::from_be_bytes([h[4], h[5]]).wrapping_add(u16::try_from(i).unwrap_or(0));
        h[4..6].copy_from_slice(&id.to_be_bytes());
        let ip_hl = self.ip_hl;
        Ipv4Packet::new_unchecked(&mut h[..ip_hl]).fill_checksum();
        let l4_len = hl - ip_hl + payload.len();
        let (proto, c) = match self.transport {
            Transport::Tcp => {
                let seq = u32::from_be_bytes([pkt[ip_hl + 4], pkt[ip_hl + 5], pkt[ip_hl + 6], pkt[ip_hl + 7]])
                    .wrapping_add(u32::try_from(i * self.mss).unwrap_or(0));
                h[ip_hl + 4..ip_hl + 8].copy_from_slice(&seq.to_be_bytes());
                let mut f = h[ip_hl + 13];
                if i + 1 != self.count {
                    f &= !(flags::FIN | flags::PSH);
                }
                if i != 0 {
                    f &= !flags::CWR;
                }
                h[ip_hl + 13] = f;
                (ipv4::PROTO_TCP, ip_hl + tcp::CHECKSUM_OFFSET)
            }
            Transport::Udp => {
                let o = ip_hl + UDP_LENGTH_OFFSET;
                h[o..o + 2].copy_from_slice(&total.saturating_sub(u16::try_from(ip_hl).unwrap_or(0)).to_be_bytes());
                (ipv4::PROTO_UDP, ip_hl + UDP_CHECKSUM_OFFSET)
            }
        };
        h[c..c + 2].copy_from_slice(&[0, 0]);
        let mut acc = ipv4::pseudo_sum(&h[..ip_hl], proto, l4_len);
        acc = checksum::sum(acc, &h[ip_hl..]);
        acc = checksum::sum(acc, payload);
        let mut sum = checksum::finish(acc);
        if self.transport == Transport::Udp && sum == 0 {
            sum = 0xffff; // RFC 768: a computed zero is sent as all ones (zero means "none")
        }
        h[c..c + 2].copy_from_slice(&sum.to_be_bytes());
        Ok(hl)
    }
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
    fn cut(s: &Segmenter, sup: &[u8], i: usize, first_id: u16) -> Vec<u8> {
        let mut seg = vec![0u8; s.hdr_len()];
        assert_eq!(s.write_header(sup, i, &mut seg).unwrap(), s.hdr_len());
        seg.extend_from_slice(&sup[s.payload(i)]);
        assert_eq!(seg.len(), s.segment_len(i));
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
    }
}
