//! Coalescing received TCP segments back into one super-packet (the kernel's GRO rules, in user
//! space), so that one TUN write with a `virtio_net_hdr` carries many segments.
//!
//! A run merges while each next segment: is the same flow (addresses, ports), has the same IP
//! TOS/TTL/DF, the same ACK, window and TCP options, continues the sequence exactly, carries no
//! SYN/RST/URG, and follows a full-sized segment without PSH or FIN. PSH or FIN ends a run after
//! the segment that carries it; a shorter segment ends it too.
//!
//! Checksums: the merged packet leaves with an IPv4 header checksum weft computes and a
//! transport checksum the kernel computes afresh, so merging a damaged packet would launder it.
//! With [`Rules::verify`] every packet's IPv4 header checksum and transport checksum are
//! verified first, as the kernel's GRO does, and a damaged packet is neither merged nor starts a
//! run (written alone, it is dropped by the receiving stack). An engine asks for that where no
//! outer checksum covered the inner packet: VXLAN, whose kernel peers send a zero outer UDP
//! checksum. On flannel's UDP backend the outer UDP checksum covers the whole inner packet and
//! the kernel has verified it before weft receives the datagram, so a second pass is not needed.
//!
//! [`UdpRun`] does the same for UDP datagrams (USO, `GSO_UDP_L4`): a run of one flow's
//! datagrams of one size, the last one possibly shorter, leaves as one packet that the kernel
//! cuts back into the same datagrams before any socket sees them.

use super::WireError;
use super::checksum;
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::tcp::{self, TcpPacket, TcpV4, TcpV6, flags};
use super::udp::{self, UdpPacket, UdpV4, UdpV6};
use super::virtio::{self, VnetHdr};
use std::ops::Range;

/// Most bytes a merged packet may have (IPv4 Total Length; IPv6's Payload Length would allow
/// 40 more, which the kernel's GRO does not use either).
pub const MAX_MERGED: usize = 65_535;

/// The IP header of a packet a run merges: IPv4, or IPv6 with the transport header right
/// after the fixed one.
#[derive(Debug, Clone, Copy)]
enum Ip<'a> {
    V4(Ipv4Packet<&'a [u8]>),
    V6(Ipv6Packet<&'a [u8]>),
}

impl<'a> Ip<'a> {
    fn header_len(&self) -> usize {
        match self {
            Self::V4(ip) => ip.header_len(),
            Self::V6(_) => ipv6::HEADER_LEN,
        }
    }

    fn total_len(&self) -> usize {
        match self {
            Self::V4(ip) => ip.total_len(),
            Self::V6(ip) => ip.total_len(),
        }
    }

    /// The whole packet the view was made of.
    fn bytes(&self) -> &'a [u8] {
        match self {
            Self::V4(ip) => ip.into_inner(),
            Self::V6(ip) => ip.into_inner(),
        }
    }

    /// Source and destination addresses, as they lie in the header.
    fn addrs(&self) -> &'a [u8] {
        let r = match self {
            Self::V4(_) => ipv4::field::SRC.start..ipv4::field::DST.end,
            Self::V6(_) => ipv6::field::SRC.start..ipv6::field::DST.end,
        };
        self.bytes().get(r).unwrap_or(&[])
    }

    /// The transport segment: from the end of the IP header to the IP length.
    fn payload(&self) -> &'a [u8] {
        self.bytes().get(self.header_len()..self.total_len()).unwrap_or(&[])
    }
}

/// A packet of one transport located behind its IP header: `l4` is a TCP or UDP view.
#[derive(Debug, Clone, Copy)]
struct Located<'a, L> {
    ip: Ip<'a>,
    l4: L,
}

impl<'a> Located<'a, TcpPacket<&'a [u8]>> {
    fn tcp(pkt: &'a [u8]) -> Result<Self, WireError> {
        match super::ip_version(pkt) {
            Some(6) => {
                let t = TcpV6::parse(pkt)?;
                Ok(Self { ip: Ip::V6(t.ip), l4: t.tcp })
            }
            _ => {
                let t = TcpV4::parse(pkt)?;
                Ok(Self { ip: Ip::V4(t.ip), l4: t.tcp })
            }
        }
    }

    fn hdr_len(&self) -> usize {
        self.ip.header_len() + self.l4.header_len()
    }

    /// Whether its checksums are right (IPv4 header and TCP; IPv6 has only TCP's).
    fn checksums_ok(&self) -> bool {
        match self.ip {
            Ip::V4(ip) => TcpV4 { ip, tcp: self.l4 }.checksums_ok(),
            Ip::V6(ip) => TcpV6 { ip, tcp: self.l4 }.checksum_ok(),
        }
    }
}

impl<'a> Located<'a, UdpPacket<&'a [u8]>> {
    fn udp(pkt: &'a [u8]) -> Result<Self, WireError> {
        match super::ip_version(pkt) {
            Some(6) => {
                let u = UdpV6::parse(pkt)?;
                Ok(Self { ip: Ip::V6(u.ip), l4: u.udp })
            }
            _ => {
                let u = UdpV4::parse(pkt)?;
                Ok(Self { ip: Ip::V4(u.ip), l4: u.udp })
            }
        }
    }

    fn hdr_len(&self) -> usize {
        self.ip.header_len() + udp::HDR_LEN
    }

    /// Whether its checksums are right (IPv4 header and UDP where it has one; IPv6 UDP's).
    fn checksums_ok(&self) -> bool {
        match self.ip {
            Ip::V4(ip) => UdpV4 { ip, udp: self.l4 }.checksums_ok(),
            Ip::V6(ip) => UdpV6 { ip, udp: self.l4 }.checksum_ok(),
        }
    }
}

impl<L> Located<'_, L> {
    fn total(&self) -> usize {
        self.ip.total_len()
    }
}

/// What a run may merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// UDP datagrams too, not only TCP segments (the TUN takes USO).
    pub udp: bool,
    /// Verify each packet's IPv4 header and transport checksums before merging it (no outer
    /// checksum covered it).
    pub verify: bool,
}

impl Rules {
    /// TCP and UDP, checksums verified: what is safe whatever the outer header was.
    pub const ALL_VERIFIED: Self = Self { udp: true, verify: true };
}

/// Why a packet neither starts nor joins a run: each is one of the kernel's GRO rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an unfragmented IPv4 packet (or an IPv6 one without extension headers) of the
    /// run's transport with sound lengths.
    NotMergeable(WireError),
    /// A checksum is wrong: merging would launder it (only with [`Rules::verify`]).
    Damaged,
    /// No payload: a pure ACK or an empty datagram has nothing to merge.
    Empty,
    /// SYN, RST or URG (and CWR on a later segment): these must reach the stack as they came.
    Flags,
    /// The run already ended (PSH, FIN, or a shorter segment or datagram), or is full.
    Closed,
    /// Another IP version, other addresses or ports.
    OtherFlow,
    /// Another TOS, TTL, DF or IP options (IPv6: traffic class, flow label or hop limit): the
    /// merged packet carries the first one's.
    IpFields,
    /// Another TCP header length, ACK, window, options or flags (beyond PSH and FIN).
    TcpFields,
    /// The sequence number does not continue the run exactly.
    NotNext,
    /// A longer payload than the run's first: segments after it would be cut differently.
    Longer,
    /// The merged packet would exceed [`MAX_MERGED`] bytes.
    TooBig,
}

impl Refusal {
    /// One line for a log or a test failure.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotMergeable(_) => "not an unfragmented IP packet of the run's transport",
            Self::Damaged => "a checksum is wrong",
            Self::Empty => "no payload",
            Self::Flags => "SYN, RST, URG or CWR set",
            Self::Closed => "the run has ended (PSH, FIN, a shorter packet) or is full",
            Self::OtherFlow => "another flow (IP version, addresses, ports)",
            Self::IpFields => "another TOS, TTL, DF or IP options (IPv6: traffic class, flow label, hop limit)",
            Self::TcpFields => "another TCP header length, ACK, window, options or flags",
            Self::NotNext => "the sequence number does not continue the run",
            Self::Longer => "a longer payload than the run's first packet",
            Self::TooBig => "the merged packet would exceed 65 535 bytes",
        }
    }
}

fn check(ok: bool, refusal: Refusal) -> Result<(), Refusal> {
    if ok { Ok(()) } else { Err(refusal) }
}

/// Same IP version, addresses and ports (TCP and UDP headers both start with the two ports).
fn same_flow(a: &Ip<'_>, b: &Ip<'_>) -> Result<(), Refusal> {
    let same_version = matches!((a, b), (Ip::V4(_), Ip::V4(_)) | (Ip::V6(_), Ip::V6(_)));
    let same_ports = a.payload().get(tcp::field::PORTS) == b.payload().get(tcp::field::PORTS);
    check(same_version && a.addrs() == b.addrs() && same_ports, Refusal::OtherFlow)
}

/// Same TOS, TTL, DF and IP options; for IPv6 the same first word (traffic class, flow label)
/// and hop limit, as the kernel's `ipv6_gro_receive` asks: the merged packet carries the first
/// packet's.
fn same_ip_fields(a: &Ip<'_>, b: &Ip<'_>) -> Result<(), Refusal> {
    let same = match (a, b) {
        (Ip::V4(a), Ip::V4(b)) => {
            a.tos() == b.tos() && a.ttl() == b.ttl() && a.dont_frag() == b.dont_frag() && a.options() == b.options()
        }
        (Ip::V6(a), Ip::V6(b)) => a.into_inner().get(..4) == b.into_inner().get(..4) && a.hop_limit() == b.hop_limit(),
        _ => false,
    };
    check(same, Refusal::IpFields)
}

/// Same TCP header length, ACK, window and options, and flags that differ in PSH and FIN at most.
fn same_tcp_fields(a: &tcp::TcpPacket<&[u8]>, b: &tcp::TcpPacket<&[u8]>, last_flags: u8) -> Result<(), Refusal> {
    let same = a.header_len() == b.header_len()
        && a.ack() == b.ack()
        && a.window() == b.window()
        && a.options() == b.options()
        && (b.flags() ^ last_flags) & !(flags::PSH | flags::FIN) == 0;
    check(same, Refusal::TcpFields)
}

/// No flag that must reach the stack on its own segment (`first`: the run's first may carry CWR).
fn plain_flags(t: &tcp::TcpPacket<&[u8]>, first: bool) -> Result<(), Refusal> {
    check(!(t.syn() || t.rst() || t.urg() || (!first && t.cwr())), Refusal::Flags)
}

/// The packet's checksums are right, or need no checking here.
fn sound(verify: bool, ok: impl FnOnce() -> bool) -> Result<(), Refusal> {
    check(!verify || ok(), Refusal::Damaged)
}

/// The first segment of a run and what has been merged so far.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    first: Located<'a, TcpPacket<&'a [u8]>>,
    /// Payload bytes per segment (the first segment's).
    pub mss: usize,
    /// Total payload merged.
    pub payload: usize,
    /// Segments merged.
    pub segments: usize,
    next_seq: u32,
    last_flags: u8,
    open: bool,
    verify: bool,
}

impl<'a> Run<'a> {
    /// Starts a run with `pkt`, if it is a TCP segment that can start one (and, with `verify`,
    /// whose checksums are right).
    pub fn start(pkt: &'a [u8], verify: bool) -> Result<Self, Refusal> {
        let t = Located::tcp(pkt).map_err(Refusal::NotMergeable)?;
        let len = t.total() - t.hdr_len();
        check(len > 0, Refusal::Empty)?;
        plain_flags(&t.l4, true)?;
        sound(verify, || t.checksums_ok())?;
        let seq_len = u32::try_from(len).map_err(|_| Refusal::TooBig)?;
        Ok(Self {
            first: t,
            mss: len,
            payload: len,
            segments: 1,
            next_seq: t.l4.seq().wrapping_add(seq_len),
            last_flags: t.l4.flags(),
            open: !(t.l4.psh() || t.l4.fin()),
            verify,
        })
    }

    /// Merges `next` if every rule allows. Returns its payload range within `next`.
    pub fn push(&mut self, next: &[u8]) -> Result<Range<usize>, Refusal> {
        check(self.open && self.payload == self.mss * self.segments, Refusal::Closed)?;
        let a = &self.first;
        let n = Located::tcp(next).map_err(Refusal::NotMergeable)?;
        same_flow(&a.ip, &n.ip)?;
        same_ip_fields(&a.ip, &n.ip)?;
        plain_flags(&n.l4, false)?;
        same_tcp_fields(&a.l4, &n.l4, self.last_flags)?;
        let len = n.total() - n.hdr_len();
        check(len > 0, Refusal::Empty)?;
        check(len <= self.mss, Refusal::Longer)?;
        check(n.l4.seq() == self.next_seq, Refusal::NotNext)?;
        check(self.hdr_len() + self.payload + len <= MAX_MERGED, Refusal::TooBig)?;
        sound(self.verify, || n.checksums_ok())?;
        self.payload += len;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(u32::try_from(len).map_err(|_| Refusal::TooBig)?);
        self.last_flags = n.l4.flags();
        self.open = !(n.l4.psh() || n.l4.fin()) && len == self.mss;
        Ok(n.hdr_len()..n.total())
    }

    /// Header length of the merged packet.
    pub fn hdr_len(&self) -> usize {
        self.first.hdr_len()
    }

    /// The first segment's payload.
    pub fn first_payload(&self) -> &'a [u8] {
        payload_after(self.first.ip, self.hdr_len())
    }

    /// Writes the merged packet's headers (the first segment's, adjusted) into `out` and
    /// returns their length and the `virtio_net_hdr` to write with them. With one segment, the
    /// packet is passed on as it came (no offload); with more, as a TCPv4 or TCPv6 GSO packet
    /// whose TCP checksum is left partial (the pseudo-header sum) for the kernel to finish.
    pub fn finish(&self, out: &mut [u8]) -> Result<(usize, VnetHdr), WireError> {
        let (hl, ip_hl) = (self.hdr_len(), self.first.ip.header_len());
        let h = copy_headers(self.first.ip, hl, out)?;
        if self.segments == 1 {
            return Ok((hl, VnetHdr::default()));
        }
        h[ip_hl + tcp::field::FLAGS] |= self.last_flags & (flags::PSH | flags::FIN);
        let merged = Merged { ip: self.first.ip, payload: self.payload, gso_size: self.mss };
        let gso_type = match self.first.ip {
            Ip::V4(_) => virtio::GSO_TCPV4,
            Ip::V6(_) => virtio::GSO_TCPV6,
        };
        Ok((hl, merged.finish(h, ipv4::PROTO_TCP, tcp::field::CHECKSUM.start, gso_type)?))
    }
}

/// What follows the first `hl` bytes of headers of `ip`, up to its IP length.
fn payload_after<'a>(ip: Ip<'a>, hl: usize) -> &'a [u8] {
    ip.bytes().get(hl..ip.total_len()).unwrap_or(&[])
}

/// Copies the first `hl` bytes of headers of `ip` into `out`; the merged header starts as that.
fn copy_headers<'o>(ip: Ip<'_>, hl: usize, out: &'o mut [u8]) -> Result<&'o mut [u8], WireError> {
    let h = out.get_mut(..hl).ok_or(WireError::Truncated)?;
    h.copy_from_slice(ip.bytes().get(..hl).ok_or(WireError::Truncated)?);
    Ok(h)
}

/// A merged packet's shape: the first packet's IP header, payload merged, payload per segment.
struct Merged<'a> {
    ip: Ip<'a>,
    payload: usize,
    gso_size: usize,
}

impl Merged<'_> {
    /// Finishes the merged header `h` (IP header, then the transport header, copied from the
    /// first packet): the IP length (and IPv4 header checksum), the transport checksum at
    /// `csum_offset` left partial (the pseudo-header sum for `proto`) for the kernel to finish per
    /// segment. Returns the `virtio_net_hdr` of a `gso_type` packet.
    fn finish(&self, h: &mut [u8], proto: u8, csum_offset: usize, gso_type: u8) -> Result<VnetHdr, WireError> {
        let (hl, ip) = (h.len(), self.ip.header_len());
        let too_big = |_| WireError::Malformed;
        let total = u16::try_from(hl + self.payload).map_err(too_big)?;
        let l4_len = hl - ip + self.payload;
        let pseudo = match self.ip {
            Ip::V4(_) => {
                h.get_mut(ipv4::field::LENGTH).ok_or(WireError::Truncated)?.copy_from_slice(&total.to_be_bytes());
                Ipv4Packet::new_unchecked(h.get_mut(..ip).ok_or(WireError::Truncated)?).fill_checksum();
                ipv4::pseudo_sum(&h[..ip], proto, l4_len)
            }
            Ip::V6(first) => {
                let payload_len = u16::try_from(l4_len).map_err(too_big)?;
                let f = h.get_mut(ipv6::field::PAYLOAD_LEN).ok_or(WireError::Truncated)?;
                f.copy_from_slice(&payload_len.to_be_bytes());
                ipv6::pseudo_sum(&first.src(), &first.dst(), proto, l4_len)
            }
        };
        let partial = !checksum::finish(pseudo);
        let at = ip + csum_offset;
        h.get_mut(at..at + 2).ok_or(WireError::Truncated)?.copy_from_slice(&partial.to_be_bytes());
        Ok(VnetHdr {
            flags: virtio::F_NEEDS_CSUM,
            gso_type,
            hdr_len: u16::try_from(hl).map_err(too_big)?,
            gso_size: u16::try_from(self.gso_size).map_err(too_big)?,
            csum_start: u16::try_from(ip).map_err(too_big)?,
            csum_offset: u16::try_from(csum_offset).map_err(too_big)?,
        })
    }
}

/// Most datagrams in one UDP run (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_UDP_SEGMENTS: usize = 64;

/// The first datagram of a UDP run and what has been merged so far.
#[derive(Debug, Clone, Copy)]
pub struct UdpRun<'a> {
    first: Located<'a, UdpPacket<&'a [u8]>>,
    /// Payload bytes per datagram (the first datagram's): the `gso_size`.
    pub size: usize,
    /// Total payload merged.
    pub payload: usize,
    /// Datagrams merged.
    pub segments: usize,
    open: bool,
    verify: bool,
}

impl<'a> UdpRun<'a> {
    /// Starts a run with `pkt`, if it is a sound UDP datagram with a payload (and, with
    /// `verify`, a right checksum or none: merging discards each datagram's own checksum, so a
    /// damaged one must not be laundered into a good one).
    pub fn start(pkt: &'a [u8], verify: bool) -> Result<Self, Refusal> {
        let u = Located::udp(pkt).map_err(Refusal::NotMergeable)?;
        let size = u.total() - u.hdr_len();
        check(size > 0, Refusal::Empty)?;
        sound(verify, || u.checksums_ok())?;
        Ok(Self { first: u, size, payload: size, segments: 1, open: true, verify })
    }

    /// Merges `next` if every rule allows: same addresses, ports, TOS, TTL, DF and IP options
    /// as the first datagram, a payload no longer than the first's (a shorter one ends the
    /// run). Returns its payload range within `next`.
    pub fn push(&mut self, next: &[u8]) -> Result<Range<usize>, Refusal> {
        check(self.open && self.segments < MAX_UDP_SEGMENTS, Refusal::Closed)?;
        let a = &self.first;
        let n = Located::udp(next).map_err(Refusal::NotMergeable)?;
        same_flow(&a.ip, &n.ip)?;
        same_ip_fields(&a.ip, &n.ip)?;
        let len = n.total() - n.hdr_len();
        check(len > 0, Refusal::Empty)?;
        check(len <= self.size, Refusal::Longer)?;
        check(self.hdr_len() + self.payload + len <= MAX_MERGED, Refusal::TooBig)?;
        sound(self.verify, || n.checksums_ok())?;
        self.payload += len;
        self.segments += 1;
        self.open = len == self.size;
        Ok(n.hdr_len()..n.total())
    }

    /// Header length of the merged packet (IP + UDP).
    pub fn hdr_len(&self) -> usize {
        self.first.hdr_len()
    }

    /// The first datagram's payload.
    pub fn first_payload(&self) -> &'a [u8] {
        payload_after(self.first.ip, self.hdr_len())
    }

    /// Writes the merged packet's headers (from `first`) into `out` and returns their length
    /// and the `virtio_net_hdr` to write with them: a lone datagram passes as it came; a run
    /// becomes one `GSO_UDP_L4` packet whose checksum is left partial for the kernel to finish
    /// per datagram.
    pub fn finish(&self, out: &mut [u8]) -> Result<(usize, VnetHdr), WireError> {
        let hl = self.hdr_len();
        let h = copy_headers(self.first.ip, hl, out)?;
        if self.segments == 1 {
            return Ok((hl, VnetHdr::default()));
        }
        let ip = self.first.ip.header_len();
        let udp_len = u16::try_from(udp::HDR_LEN + self.payload).map_err(|_| WireError::Malformed)?;
        let at = ip + udp::field::LENGTH.start;
        h[at..at + 2].copy_from_slice(&udp_len.to_be_bytes());
        let merged = Merged { ip: self.first.ip, payload: self.payload, gso_size: self.size };
        Ok((hl, merged.finish(h, ipv4::PROTO_UDP, udp::field::CHECKSUM.start, virtio::GSO_UDP_L4)?))
    }
}

/// A run of either kind, so that an engine can coalesce whatever arrives with one loop.
#[derive(Debug, Clone, Copy)]
pub enum FlowRun<'a> {
    /// TCP segments of one flow.
    Tcp(Run<'a>),
    /// UDP datagrams of one flow.
    Udp(UdpRun<'a>),
}

impl<'a> FlowRun<'a> {
    /// Starts a run with `pkt`: TCP if it can; UDP too when `rules.udp` (the TUN takes USO).
    /// The refusal is the TCP one unless `pkt` is UDP.
    pub fn start(pkt: &'a [u8], rules: Rules) -> Result<Self, Refusal> {
        match Run::start(pkt, rules.verify) {
            Ok(r) => Ok(Self::Tcp(r)),
            Err(Refusal::NotMergeable(_)) if rules.udp => UdpRun::start(pkt, rules.verify).map(Self::Udp),
            Err(e) => Err(e),
        }
    }

    /// See [`Run::push`] and [`UdpRun::push`].
    pub fn push(&mut self, next: &[u8]) -> Result<Range<usize>, Refusal> {
        match self {
            Self::Tcp(r) => r.push(next),
            Self::Udp(r) => r.push(next),
        }
    }

    /// The first packet's payload.
    pub fn first_payload(&self) -> &'a [u8] {
        match self {
            Self::Tcp(r) => r.first_payload(),
            Self::Udp(r) => r.first_payload(),
        }
    }

    /// Packets merged.
    pub fn segments(&self) -> usize {
        match self {
            Self::Tcp(r) => r.segments,
            Self::Udp(r) => r.segments,
        }
    }

    /// See [`Run::finish`] and [`UdpRun::finish`].
    pub fn finish(&self, out: &mut [u8]) -> Result<(usize, VnetHdr), WireError> {
        match self {
            Self::Tcp(r) => r.finish(out),
            Self::Udp(r) => r.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gso::Segmenter;
    use crate::proto::gso::tests::{payload, tcp_packet};

    fn segments(sup: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let s = Segmenter::new(sup, mss).unwrap();
        let h = s.headers(sup).unwrap();
        (0..s.count())
            .map(|i| {
                let mut v = vec![0u8; s.segment_len(i)];
                h.write_segment(sup, i, &mut v).unwrap();
                v
            })
            .collect()
    }

    /// Coalesces `pkts` in order (UDP runs too with `udp`); returns each merged packet (checksum
    /// completed) with its `virtio_net_hdr` and the number of packets in it.
    fn coalesce_runs(pkts: &[Vec<u8>], udp: bool) -> Vec<(Vec<u8>, VnetHdr, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < pkts.len() {
            let Ok(mut run) = FlowRun::start(&pkts[i], Rules { udp, verify: true }) else {
                out.push((pkts[i].clone(), VnetHdr::default(), 1));
                i += 1;
                continue;
            };
            let mut body = run.first_payload().to_vec();
            let mut j = i + 1;
            while j < pkts.len() {
                match run.push(&pkts[j]) {
                    Ok(r) => body.extend_from_slice(&pkts[j][r]),
                    Err(_) => break,
                }
                j += 1;
            }
            let mut hdr = vec![0u8; 128];
            let (hl, vh) = run.finish(&mut hdr).unwrap();
            let mut pkt = hdr[..hl].to_vec();
            pkt.extend_from_slice(&body);
            vh.complete_checksum(&mut pkt).unwrap();
            out.push((pkt, vh, run.segments()));
            i = j;
        }
        out
    }

    /// TCP runs only: each merged packet and its segment count.
    fn coalesce(segs: &[Vec<u8>]) -> Vec<(Vec<u8>, usize)> {
        coalesce_runs(segs, false).into_iter().map(|(p, _, n)| (p, n)).collect()
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

    /// Recomputes the IPv4 and TCP checksums of a segment whose headers a test changed.
    fn refill(seg: &mut [u8]) {
        Ipv4Packet::new_unchecked(&mut seg[..20]).fill_checksum();
        let t = TcpV4::parse(seg).unwrap();
        let (ip_hl, total) = (t.ip_hl(), t.total());
        let c = ip_hl + tcp::field::CHECKSUM.start;
        seg[c..c + 2].fill(0);
        let sum = checksum::finish(checksum::sum(tcp::pseudo_sum(&seg[..ip_hl], total - ip_hl), &seg[ip_hl..]));
        seg[c..c + 2].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn damaged_segments_are_neither_merged_nor_start_a_run() {
        let segs = segments(&tcp_packet(0, &payload(5000)), 1000);
        assert_eq!(coalesce(&segs).iter().map(|m| m.1).collect::<Vec<_>>(), vec![5]);
        for hit in [0, 2, 4] {
            // One payload bit flipped in flight, IP header intact: the segment must go alone.
            let mut bad = segs.clone();
            let at = bad[hit].len() - 1;
            bad[hit][at] ^= 0x10;
            let runs: Vec<usize> = coalesce(&bad).iter().map(|m| m.1).collect();
            let want = match hit {
                0 => vec![1, 4],
                2 => vec![2, 1, 2],
                _ => vec![4, 1],
            };
            assert_eq!(runs, want, "damage in segment {hit}");
            assert!(coalesce(&bad).iter().any(|(p, _)| p == &bad[hit]), "the damaged segment passes unchanged");
            // Trusting the checksums (an outer checksum covered them), the same segments merge.
            let mut trusting = Run::start(&bad[0], false).unwrap();
            assert!(bad[1..].iter().all(|n| trusting.push(n).is_ok()), "damage in segment {hit}");
        }
        // A damaged IPv4 header (its ID here, which no other check covers) goes alone too: the
        // merged header's checksum is computed afresh, so merging would launder it.
        for hit in [0, 3] {
            let mut bad = segs.clone();
            bad[hit][5] ^= 0x01;
            let runs: Vec<usize> = coalesce(&bad).iter().map(|m| m.1).collect();
            assert_eq!(runs, if hit == 0 { vec![1, 4] } else { vec![3, 1, 1] }, "IP header damage in segment {hit}");
            assert!(coalesce(&bad).iter().any(|(p, _)| p == &bad[hit]), "the damaged segment passes unchanged");
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
            refill(s);
        }
        assert_eq!(coalesce(&gap).len(), 2);
        // A different flow (port) does not merge; a SYN never starts a run.
        let mut other = segments(&tcp_packet(1000, &payload(1000)), mss);
        other[0][20] ^= 1;
        refill(&mut other[0]);
        let mut first = segments(&tcp_packet(0, &payload(1000)), mss);
        first[0][33] &= !0x08;
        refill(&mut first[0]);
        assert_eq!(coalesce(&[first[0].clone(), other[0].clone()]).len(), 2);
        // ... while the same two segments, the flow made one again, do.
        let mut same = other[0].clone();
        same[20] ^= 1;
        refill(&mut same);
        assert_eq!(coalesce(&[first[0].clone(), same]).iter().map(|m| m.1).collect::<Vec<_>>(), vec![2]);
        let mut syn = first[0].clone();
        syn[33] |= 0x02;
        refill(&mut syn);
        assert!(Run::start(&syn, true).is_err());
        // Non-TCP and pure ACKs pass through unmerged.
        assert!(Run::start(&tcp_packet(0, &[]), true).is_err());
    }

    #[test]
    fn each_gro_rule_refuses_with_its_own_reason() {
        let mss = 1000;
        let segs = segments(&tcp_packet(0, &payload(4000)), mss); // PSH on the 4th
        let changed = |k: usize, f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = segs[k].clone();
            f(&mut v);
            refill(&mut v);
            v
        };
        let refusal = |next: &[u8]| Run::start(&segs[0], true).unwrap().push(next).unwrap_err();
        assert_eq!(Run::start(&segs[0], true).unwrap().push(&segs[1]), Ok(52..1052));
        assert_eq!(refusal(&changed(1, &|v| v[20] ^= 1)), Refusal::OtherFlow);
        assert_eq!(refusal(&changed(1, &|v| v[8] -= 1)), Refusal::IpFields);
        assert_eq!(refusal(&changed(1, &|v| v[1] = 4)), Refusal::IpFields, "TOS");
        assert_eq!(refusal(&changed(1, &|v| v[34] ^= 1)), Refusal::TcpFields, "window");
        assert_eq!(refusal(&changed(1, &|v| v[28] ^= 1)), Refusal::TcpFields, "ACK number");
        assert_eq!(refusal(&changed(1, &|v| v[33] |= flags::SYN)), Refusal::Flags);
        assert_eq!(refusal(&changed(1, &|v| v[33] |= flags::CWR)), Refusal::Flags, "CWR after the first");
        assert_eq!(refusal(&segs[2]), Refusal::NotNext);
        let mut bad = segs[1].clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(refusal(&bad), Refusal::Damaged);
        assert_eq!(refusal(&tcp_packet(1000, &[])), Refusal::Empty);
        assert_eq!(refusal(&[0x45, 0]), Refusal::NotMergeable(crate::proto::WireError::Truncated));
        let longer = segments(&tcp_packet(1000, &payload(1500)), 1500);
        assert_eq!(refusal(&changed_all(&longer[0])), Refusal::Longer);
        let mut run = Run::start(&segs[0], true).unwrap();
        for s in &segs[1..] {
            run.push(s).unwrap();
        }
        assert_eq!(run.push(&segments(&tcp_packet(4000, &payload(1000)), mss)[0]), Err(Refusal::Closed), "PSH");
        for r in [Refusal::Closed, Refusal::Longer, Refusal::TooBig] {
            assert!(!r.reason().is_empty());
        }
    }

    /// `seg` with PSH cleared (checksums refilled), so that only the rule under test refuses it.
    fn changed_all(seg: &[u8]) -> Vec<u8> {
        let mut v = seg.to_vec();
        v[33] &= !flags::PSH;
        refill(&mut v);
        v
    }

    /// An IPv4/UDP datagram from 100.96.1.2:`sport` with a valid checksum and IP ID `id`.
    fn udp_datagram(sport: u16, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], 64)
            .udp(sport, 9000)
            .write(&mut v, payload)
            .unwrap();
        v[4..6].copy_from_slice(&id.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut v[..20]).fill_checksum();
        v
    }

    fn coalesce_udp(dgrams: &[Vec<u8>]) -> Vec<(Vec<u8>, VnetHdr, usize)> {
        coalesce_runs(dgrams, true)
    }

    /// What the kernel's UDP GSO does with a merged packet: datagrams of `gso_size` payload bytes
    /// with the merged header, lengths and checksums fixed.
    fn segment_udp(pkt: &[u8], vh: &VnetHdr) -> Vec<Vec<u8>> {
        let hl = usize::from(vh.hdr_len);
        pkt[hl..]
            .chunks(usize::from(vh.gso_size))
            .map(|chunk| {
                let mut v = Vec::new();
                etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], pkt[8])
                    .udp(u16::from_be_bytes([pkt[20], pkt[21]]), u16::from_be_bytes([pkt[22], pkt[23]]))
                    .write(&mut v, chunk)
                    .unwrap();
                v
            })
            .collect()
    }

    #[test]
    fn udp_runs_merge_one_flow_and_give_back_the_same_datagrams() {
        // 10 datagrams of 64 bytes and a shorter last one: one run of 11.
        let mut dgrams: Vec<Vec<u8>> = (0..10).map(|k| udp_datagram(4000, 7 + k, &payload(64))).collect();
        dgrams.push(udp_datagram(4000, 99, &payload(20)));
        let merged = coalesce_udp(&dgrams);
        assert_eq!(merged.len(), 1);
        let (pkt, vh, segs) = &merged[0];
        assert_eq!(*segs, 11);
        assert_eq!(vh.gso_kind(), virtio::GSO_UDP_L4);
        assert_eq!((vh.hdr_len, vh.gso_size, vh.csum_start, vh.csum_offset), (28, 64, 20, 6));
        // The merged packet is a sound UDP datagram (reference checksum by etherparse) ...
        let p = etherparse::SlicedPacket::from_ip(pkt).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!() };
        let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else { panic!() };
        let ih = ip.header().to_header();
        assert_eq!(ih.header_checksum, ih.calc_header_checksum());
        assert_eq!(u.to_header().checksum, u.to_header().calc_checksum_ipv4(&ih, u.payload()).unwrap());
        assert_eq!(u.payload().len(), 10 * 64 + 20);
        // ... and cut the kernel's way it gives back every datagram's payload and ports.
        let again = segment_udp(pkt, vh);
        assert_eq!(again.len(), dgrams.len());
        for (a, d) in again.iter().zip(&dgrams) {
            assert_eq!(a[20..], d[20..], "UDP header and payload");
        }
    }

    #[test]
    fn udp_runs_break_where_they_must() {
        let d = |sport, len| udp_datagram(sport, 1, &payload(len));
        let runs = |v: &[Vec<u8>]| coalesce_udp(v).iter().map(|m| m.2).collect::<Vec<_>>();
        // Another port, a longer datagram, and anything after a shorter one start new runs.
        assert_eq!(runs(&[d(1, 64), d(1, 64), d(2, 64), d(2, 64)]), vec![2, 2]);
        assert_eq!(runs(&[d(1, 64), d(1, 100), d(1, 100)]), vec![1, 2]);
        assert_eq!(runs(&[d(1, 64), d(1, 10), d(1, 10)]), vec![2, 1]);
        // Another TTL or TOS.
        let mut ttl = d(1, 64);
        ttl[8] = 9;
        Ipv4Packet::new_unchecked(&mut ttl[..20]).fill_checksum();
        assert_eq!(runs(&[d(1, 64), ttl]), vec![1, 1]);
        // At most MAX_UDP_SEGMENTS per run.
        let many: Vec<Vec<u8>> = (0..MAX_UDP_SEGMENTS + 1).map(|_| d(1, 8)).collect();
        assert_eq!(runs(&many), vec![MAX_UDP_SEGMENTS, 1]);
        // A damaged checksum is neither merged nor starts a run; a zero (absent) one is fine.
        let mut bad = d(1, 64);
        bad[40] ^= 0xff;
        assert!(UdpRun::start(&bad, true).is_err());
        assert_eq!(runs(&[d(1, 64), bad.clone(), d(1, 64)]), vec![1, 1, 1]);
        let mut bad_ip = d(1, 64);
        bad_ip[4] ^= 0x01; // the IP ID: no other check covers it
        assert!(UdpRun::start(&bad_ip, true).is_err());
        assert!(UdpRun::start(&bad_ip, false).is_ok());
        assert_eq!(runs(&[d(1, 64), bad_ip, d(1, 64)]), vec![1, 1, 1]);
        let mut none = d(1, 64);
        none[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(runs(&[d(1, 64), none]), vec![2]);
        // Fragments, empty payloads, lying UDP lengths and TCP never start a run.
        let mut frag = d(1, 64);
        frag[6] |= 0x20;
        Ipv4Packet::new_unchecked(&mut frag[..20]).fill_checksum();
        assert!(UdpRun::start(&frag, true).is_err());
        assert!(UdpRun::start(&d(1, 0), true).is_err());
        let mut liar = d(1, 64);
        liar[25] ^= 1;
        assert!(UdpRun::start(&liar, true).is_err());
        assert!(UdpRun::start(&tcp_packet(0, &payload(10)), true).is_err());
        // A lone datagram passes through without a GSO header.
        let lone = coalesce_udp(&[d(1, 64)]);
        assert_eq!((lone[0].1, lone[0].0.clone()), (VnetHdr::default(), d(1, 64)));
    }

    fn segments_v6(sup: &[u8], mss: usize, tcp: bool) -> Vec<Vec<u8>> {
        let s = Segmenter::for_packet(sup, tcp, mss).unwrap();
        let h = s.headers(sup).unwrap();
        (0..s.count())
            .map(|i| {
                let mut v = vec![0u8; s.segment_len(i)];
                h.write_segment(sup, i, &mut v).unwrap();
                v
            })
            .collect()
    }

    /// TSO6's way back: IPv6 TCP segments merge into the super-packet they were cut from, as a
    /// GSO_TCPV6 packet whose partial checksum the kernel finishes over the IPv6 pseudo-header.
    #[test]
    fn ipv6_tcp_split_then_coalesce_gives_back_the_super_packet() {
        use crate::proto::gso::tests::tcp6_packet;
        for (len, mss) in [(5000usize, 1378usize), (63000, 1390), (1378, 1378), (10, 1378)] {
            let mut sup = tcp6_packet(42, &payload(len));
            // FIN and CWR make the flags of the first and last segments differ; this test is
            // about the IPv6 header, so keep the flags every segment shares.
            let f = 40 + tcp::field::FLAGS;
            sup[f] &= !(flags::FIN | flags::CWR);
            let c = 40 + tcp::field::CHECKSUM.start;
            sup[c..c + 2].fill(0);
            let sum = checksum::finish(checksum::sum(
                ipv6::pseudo_sum(
                    &"2001:db8:96:1::2".parse().unwrap(),
                    &"2001:db8:96:2::2".parse().unwrap(),
                    ipv4::PROTO_TCP,
                    sup.len() - 40,
                ),
                &sup[40..],
            ));
            sup[c..c + 2].copy_from_slice(&sum.to_be_bytes());
            let merged = coalesce_runs(&segments_v6(&sup, mss, true), false);
            assert_eq!(merged.len(), 1, "{len}/{mss}");
            let (pkt, vh, n) = &merged[0];
            assert_eq!(*n, len.div_ceil(mss));
            if *n > 1 {
                assert_eq!(vh.gso_kind(), virtio::GSO_TCPV6);
                assert_eq!((usize::from(vh.gso_size), vh.csum_start), (mss, 40));
            }
            assert_eq!(pkt, &sup, "{len}/{mss}: merged packet differs from the original");
        }
    }

    #[test]
    fn ipv6_udp_runs_merge_and_ipv6_rules_hold() {
        let (a, b) = (
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        );
        let mut sup = Vec::new();
        etherparse::PacketBuilder::ipv6(a, b, 64).udp(4433, 443).write(&mut sup, &payload(10 * 64 + 20)).unwrap();
        let dgrams = segments_v6(&sup, 64, false);
        let merged = coalesce_runs(&dgrams, true);
        assert_eq!(merged.len(), 1);
        let (pkt, vh, n) = &merged[0];
        assert_eq!((*n, vh.gso_kind(), vh.csum_start), (11, virtio::GSO_UDP_L4, 40));
        let p = etherparse::SlicedPacket::from_ip(pkt).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else { panic!("not IPv6") };
        let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else { panic!("not UDP") };
        let (src, dst) = (ip.header().source(), ip.header().destination());
        assert_eq!(u.checksum(), u.to_header().calc_checksum_ipv6_raw(src, dst, u.payload()).unwrap());
        assert_eq!(u.payload(), &payload(10 * 64 + 20)[..]);
        // Another flow label, hop limit or IP version, or a damaged datagram, breaks the run.
        let segs = segments_v6(&tcp6_plain(3000), 1000, true);
        let mut run = Run::start(&segs[0], true).unwrap();
        let mut label = segs[1].clone();
        label[3] ^= 1;
        assert_eq!(run.push(&label), Err(Refusal::IpFields));
        let mut hop = segs[1].clone();
        hop[7] -= 1;
        assert_eq!(run.push(&hop), Err(Refusal::IpFields));
        let mut bad = segs[1].clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(run.push(&bad), Err(Refusal::Damaged));
        let v4 = segments(&tcp_packet(1000, &payload(3000)), 1000);
        assert_eq!(run.push(&v4[1]), Err(Refusal::OtherFlow));
        assert!(run.push(&segs[1]).is_ok());
        let mut ext = segs[2].clone();
        ext[6] = 0;
        assert!(matches!(run.push(&ext), Err(Refusal::NotMergeable(_))));
    }

    /// An IPv6 TCP super-packet with only PSH|ACK on it.
    fn tcp6_plain(len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .tcp(1, 2, 1000, 500)
        .ack(1)
        .write(&mut v, &payload(len))
        .unwrap();
        v
    }
}
