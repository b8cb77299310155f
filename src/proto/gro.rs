//! Coalescing received TCP segments back into one super-packet (the kernel's GRO rules, in user
//! space), so that one TUN write with a `virtio_net_hdr` carries many segments.
//!
//! A run merges while each next segment: is the same flow (addresses, ports), has the same IP
//! TOS/TTL/DF, the same ACK, window and TCP options, continues the sequence exactly, carries no
//! SYN/RST/URG, and follows a full-sized segment without PSH or FIN. PSH or FIN ends a run after
//! the segment that carries it; a shorter segment ends it too.

use super::checksum;
use super::ipv4::Ipv4Packet;
use super::tcp::{self, TcpV4, flags};
use super::virtio::{self, VnetHdr};

/// Most bytes a merged packet may have (IPv4 Total Length).
pub const MAX_MERGED: usize = 65_535;

/// The first segment of a run and what has been merged so far.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    t: TcpV4,
    /// Payload bytes per segment (the first segment's).
    pub mss: usize,
    /// Total payload merged.
    pub payload: usize,
    /// Segments merged.
    pub segments: usize,
    next_seq: u32,
    last_flags: u8,
    open: bool,
}

impl Run {
    /// Starts a run with `pkt`, if it is a TCP segment that can start one.
    pub fn start(pkt: &[u8]) -> Option<Self> {
        let t = TcpV4::parse(pkt).ok()?;
        let f = t.flags(pkt);
        if t.payload_len() == 0 || f & (flags::SYN | flags::RST | flags::URG) != 0 {
            return None;
        }
        let next_seq = t.seq(pkt).wrapping_add(u32::try_from(t.payload_len()).ok()?);
        Some(Self {
            t,
            mss: t.payload_len(),
            payload: t.payload_len(),
            segments: 1,
            next_seq,
            last_flags: f,
            open: f & (flags::PSH | flags::FIN) == 0,
        })
    }

    /// Tries to merge `next` (the first segment of the run is `first`). Returns its payload
    /// range within `next` when merged.
    pub fn push(&mut self, first: &[u8], next: &[u8]) -> Option<std::ops::Range<usize>> {
        if !self.open || self.payload != self.mss * self.segments {
            return None;
        }
        let n = TcpV4::parse(next).ok()?;
        let (a, b, ip) = (first, next, self.t.ip_hl);
        let nf = n.flags(next);
        let same = n.ip_hl == ip
            && n.tcp_hl == self.t.tcp_hl
            && a[1] == b[1]
            && a[6] & 0x40 == b[6] & 0x40
            && a[8] == b[8]
            && a[12..20] == b[12..20]
            && a[ip..ip + 4] == b[ip..ip + 4]
            && a[ip + 8..ip + 12] == b[ip + 8..ip + 12]
            && a[ip + 14..ip + 16] == b[ip + 14..ip + 16]
            && a[ip + 20..ip + self.t.tcp_hl] == b[ip + 20..ip + n.tcp_hl];
        let ok_flags = nf & (flags::SYN | flags::RST | flags::URG | flags::CWR) == 0
            && (nf ^ self.last_flags) & !(flags::PSH | flags::FIN) == 0;
        let len = n.payload_len();
        if !same
            || !ok_flags
            || len == 0
            || len > self.mss
            || n.seq(next) != self.next_seq
            || self.t.hdr_len() + self.payload + len > MAX_MERGED
        {
            return None;
        }
        self.payload += len;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(u32::try_from(len).ok()?);
        self.last_flags = nf;
        self.open = nf & (flags::PSH | flags::FIN) == 0 && len == self.mss;
        Some(n.hdr_len()..n.total)
    }

    /// Header length of the merged packet.
    pub fn hdr_len(&self) -> usize {
        self.t.hdr_len()
    }

    /// The first segment's payload range (within the first segment).
    pub fn first_payload(&self) -> std::ops::Range<usize> {
        self.t.hdr_len()..self.t.total
    }

    /// Writes the merged packet's headers (from `first`) into `out` and returns the
    /// `virtio_net_hdr` to write with it. With one segment, the packet is passed on as it came
    /// (no offload); with more, as a TCPv4 GSO packet whose TCP checksum is left partial (the
    /// pseudo-header sum) for the kernel to finish.
    pub fn finish(&self, first: &[u8], out: &mut [u8]) -> Option<(usize, VnetHdr)> {
        let hl = self.hdr_len();
        let h = out.get_mut(..hl)?;
        h.copy_from_slice(first.get(..hl)?);
        if self.segments == 1 {
            return Some((hl, VnetHdr::default()));
        }
        let ip = self.t.ip_hl;
        let total = u16::try_from(hl + self.payload).ok()?;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut h[..ip]).fill_checksum();
        h[ip + 13] |= self.last_flags & (flags::PSH | flags::FIN);
        let partial = !checksum::finish(tcp::pseudo_sum(&h[..ip], self.t.tcp_hl + self.payload));
        let c = ip + tcp::CHECKSUM_OFFSET;
        h[c..c + 2].copy_from_slice(&partial.to_be_bytes());
        let vh = VnetHdr {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: virtio::GSO_TCPV4,
            hdr_len: u16::try_from(hl).ok()?,
            gso_size: u16::try_from(self.mss).ok()?,
            csum_start: u16::try_from(ip).ok()?,
            csum_offset: u16::try_from(tcp::CHECKSUM_OFFSET).ok()?,
        };
        Some((hl, vh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gso::Segmenter;
    use crate::proto::gso::tests::{payload, tcp_packet};

    fn segments(sup: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let s = Segmenter::new(sup, mss).unwrap();
        (0..s.count())
            .map(|i| {
                let mut v = vec![0u8; s.hdr_len()];
                s.write_header(sup, i, &mut v).unwrap();
                v.extend_from_slice(&sup[s.payload(i)]);
                v
            })
            .collect()
    }

    /// Coalesces `segs` in order; returns the merged packets (checksums completed) and the
    /// number of segments in each.
    fn coalesce(segs: &[Vec<u8>]) -> Vec<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < segs.len() {
            let Some(mut run) = Run::start(&segs[i]) else {
                out.push((segs[i].clone(), 1));
                i += 1;
                continue;
            };
            let mut body = segs[i][run.first_payload()].to_vec();
            let mut j = i + 1;
            while j < segs.len() {
                match run.push(&segs[i], &segs[j]) {
                    Some(r) => body.extend_from_slice(&segs[j][r]),
                    None => break,
                }
                j += 1;
            }
            let mut hdr = vec![0u8; 128];
            let (hl, vh) = run.finish(&segs[i], &mut hdr).unwrap();
            let mut pkt = hdr[..hl].to_vec();
            pkt.extend_from_slice(&body);
            vh.complete_checksum(&mut pkt).unwrap();
            out.push((pkt, run.segments));
            i = j;
        }
        out
    }

    #[test]
    fn split_then_coalesce_gives_back_the_super_packet() {
        for (len, mss) in [(5000usize, 1398usize), (64000, 1410), (1398, 1398), (2796, 1398), (10, 1398)] {
            let sup = tcp_packet(42, &payload(len));
            let merged = coalesce(&segments(&sup, mss));
            assert_eq!(merged.len(), 1, "{len}/{mss}");
            assert_eq!(merged[0].1, len.div_ceil(mss));
            assert_eq!(merged[0].0, sup, "{len}/{mss}: merged packet differs from the original");
        }
    }

    #[test]
    fn runs_break_where_gro_would() {
        let mss = 1000;
        let mut segs = segments(&tcp_packet(0, &payload(3000)), mss); // PSH on the 3rd
        segs.extend(segments(&tcp_packet(3000, &payload(2000)), mss)); // continues the flow
        assert_eq!(coalesce(&segs).iter().map(|m| m.1).collect::<Vec<_>>(), vec![3, 2], "PSH ends a run");
        // A gap in the sequence.
        let gap =
            [segments(&tcp_packet(0, &payload(1000)), mss), segments(&tcp_packet(5000, &payload(1000)), mss)].concat();
        let mut gap = gap;
        for s in &mut gap {
            s[33] &= !0x08; // clear PSH
            Ipv4Packet::new_unchecked(&mut s[..20]).fill_checksum();
        }
        assert_eq!(coalesce(&gap).len(), 2);
        // A different flow (port) does not merge; a SYN never starts a run.
        let mut other = segments(&tcp_packet(1000, &payload(1000)), mss);
        other[0][20] ^= 1;
        let mut first = segments(&tcp_packet(0, &payload(1000)), mss);
        first[0][33] &= !0x08;
        assert_eq!(coalesce(&[first[0].clone(), other[0].clone()]).len(), 2);
        let mut syn = first[0].clone();
        syn[33] |= 0x02;
        assert!(Run::start(&syn).is_none());
        // Non-TCP and pure ACKs pass through unmerged.
        assert!(Run::start(&tcp_packet(0, &[])).is_none());
    }
}
