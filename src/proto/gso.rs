//! TCP segmentation done in user space: an IPv4/TCP super-packet (as a TUN with TSO hands it
//! over) cut into MSS-sized segments. Each segment gets its own header — IP Total Length, IP ID,
//! TCP sequence number, flags, both checksums — written into a caller's buffer; payloads stay
//! where they are, so the sender can gather header + payload with iovecs and copy nothing.

use super::WireError;
use super::checksum;
use super::ipv4::Ipv4Packet;
use super::tcp::{self, TcpV4, flags};
use std::ops::Range;

/// Cuts one super-packet.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter {
    t: TcpV4,
    mss: usize,
    count: usize,
}

impl Segmenter {
    /// Plans the segments of `pkt` for payloads of `mss` bytes (`gso_size`).
    pub fn new(pkt: &[u8], mss: usize) -> Result<Self, WireError> {
        let t = TcpV4::parse(pkt)?;
        if mss == 0 {
            return Err(WireError::Malformed);
        }
        let count = t.payload_len().div_ceil(mss).max(1);
        Ok(Self { t, mss, count })
    }

    /// Number of segments.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Header length of every segment (IPv4 + TCP with options).
    pub fn hdr_len(&self) -> usize {
        self.t.hdr_len()
    }

    /// Bytes of segment `i` on the wire (header + payload).
    pub fn segment_len(&self, i: usize) -> usize {
        self.hdr_len() + self.payload(i).len()
    }

    /// Where segment `i`'s payload is in the super-packet.
    pub fn payload(&self, i: usize) -> Range<usize> {
        let start = (self.hdr_len() + i * self.mss).min(self.t.total);
        start..(start + self.mss).min(self.t.total)
    }

    /// Writes segment `i`'s headers into `out` and returns their length.
    pub fn write_header(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, WireError> {
        let hl = self.hdr_len();
        if i >= self.count || out.len() < hl || pkt.len() < self.t.total {
            return Err(WireError::Truncated);
        }
        let payload = &pkt[self.payload(i)];
        let h = &mut out[..hl];
        h.copy_from_slice(&pkt[..hl]);
        let total = u16::try_from(hl + payload.len()).map_err(|_| WireError::Malformed)?;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        let id = u16::from_be_bytes([h[4], h[5]]).wrapping_add(u16::try_from(i).unwrap_or(0));
        h[4..6].copy_from_slice(&id.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut h[..self.t.ip_hl]).fill_checksum();
        let ip_hl = self.t.ip_hl;
        let seq = self.t.seq(pkt).wrapping_add(u32::try_from(i * self.mss).unwrap_or(0));
        h[ip_hl + 4..ip_hl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = h[ip_hl + 13];
        if i + 1 != self.count {
            f &= !(flags::FIN | flags::PSH);
        }
        if i != 0 {
            f &= !flags::CWR;
        }
        h[ip_hl + 13] = f;
        let c = ip_hl + tcp::CHECKSUM_OFFSET;
        h[c..c + 2].copy_from_slice(&[0, 0]);
        let mut acc = tcp::pseudo_sum(&h[..ip_hl], self.t.tcp_hl + payload.len());
        acc = checksum::sum(acc, &h[ip_hl..]);
        acc = checksum::sum(acc, payload);
        h[c..c + 2].copy_from_slice(&checksum::finish(acc).to_be_bytes());
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

    #[test]
    fn splits_into_valid_segments() {
        for (len, mss) in [(5000usize, 1398usize), (1398, 1398), (1399, 1398), (1, 1398), (64000, 1410), (0, 1000)] {
            let data = payload(len);
            let sup = tcp_packet(1_000_000, &data);
            let s = Segmenter::new(&sup, mss).unwrap();
            assert_eq!(s.count(), len.div_ceil(mss).max(1), "{len}/{mss}");
            let mut joined = Vec::new();
            for i in 0..s.count() {
                let mut seg = vec![0u8; s.hdr_len()];
                assert_eq!(s.write_header(&sup, i, &mut seg).unwrap(), s.hdr_len());
                seg.extend_from_slice(&sup[s.payload(i)]);
                assert_eq!(seg.len(), s.segment_len(i));
                let p = etherparse::SlicedPacket::from_ip(&seg).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!() };
                let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport else { panic!() };
                let ih = ip.header().to_header();
                assert_eq!(ih.header_checksum, ih.calc_header_checksum(), "IP checksum of segment {i}");
                assert_eq!(ih.identification, 0x1000 + i as u16);
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

    #[test]
    fn refuses_what_it_cannot_cut() {
        let sup = tcp_packet(1, &payload(100));
        assert!(Segmenter::new(&sup, 0).is_err());
        assert!(Segmenter::new(&sup[..30], 10).is_err());
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9).udp(1, 2).write(&mut udp, b"x").unwrap();
        assert!(Segmenter::new(&udp, 10).is_err());
        let s = Segmenter::new(&sup, 40).unwrap();
        assert!(s.write_header(&sup, 3, &mut [0u8; 64]).is_err());
        assert!(s.write_header(&sup, 0, &mut [0u8; 10]).is_err());
    }
}
