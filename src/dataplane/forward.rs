//! The forwarding decision, with no I/O: given a packet in a caller-owned buffer, say what to do.
//!
//! Buffers have [`HEADROOM`] bytes in front of the inner packet so that encapsulation writes the
//! outer headers in place, without copying the packet (see [`super::packet`]).

use super::counters::DropReason;
use super::packet::HEADROOM;
use super::peers::PeerTable;
use crate::proto::WireError;
use crate::proto::ethernet::{self, EthernetFrame};
use crate::proto::ipv4::{self, Ipv4Packet};
use crate::proto::ipv6::Ipv6Packet;
use crate::proto::mac::MacAddr;
use crate::proto::vxlan::{self, VxlanPacket};
use crate::proto::{icmp, icmpv6, ip_version};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

/// Bytes the scratch buffer of [`Forwarder::egress`] must hold: the larger of the ICMP and
/// ICMPv6 errors it may write there.
pub const SCRATCH_LEN: usize = if icmp::MAX_LEN > icmpv6::MAX_LEN { icmp::MAX_LEN } else { icmpv6::MAX_LEN };

/// How inner packets travel between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// flannel's UDP backend: the datagram is the bare inner IP packet.
    Udp,
    /// VXLAN: 8-byte header + inner Ethernet + IP.
    Vxlan {
        /// Our VNI.
        vni: u32,
        /// Our VTEP MAC (source of what we send, destination of what we accept).
        mac: MacAddr,
    },
}

/// Everything the forwarding decision needs to know about this node.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Encapsulation of the backend.
    pub encap: Encap,
    /// The IPv4 side (None on an IPv6-only network: IPv4 packets are dropped as `Ipv4`).
    pub v4: Option<ForwarderV4>,
    /// Accept only inner sources inside the sending peer's subnet (flannel accepts any).
    pub check_inner_src: bool,
    /// The overlay MTU: no peer sends a larger inner packet in one datagram (GSO segments
    /// included), so a larger one is dropped as `Oversize`.
    pub mtu: usize,
    /// The IPv6 side of a dual-stack or IPv6-only node (None: IPv6 packets are dropped as `Ipv6`).
    pub v6: Option<ForwarderV6>,
}

/// What the forwarding decision knows of a node's IPv4 side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderV4 {
    /// Our leased subnet.
    pub subnet: Ipv4Net,
    /// Address of the TUN device (source of the ICMP errors we generate).
    pub tun_addr: Ipv4Addr,
}

/// What the forwarding decision knows of a node's IPv6 side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderV6 {
    /// Our leased IPv6 subnet.
    pub subnet: Ipv6Net,
    /// The TUN's IPv6 address (source of the ICMPv6 errors we generate).
    pub tun_addr: Ipv6Addr,
}

/// What to do with a packet read from the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Send `buf[range]` as one UDP datagram to `to`.
    Send {
        /// The encapsulated frame within the buffer.
        range: Range<usize>,
        /// The peer's endpoint.
        to: SocketAddr,
        /// The inner packet's flow ([`Ipv4Packet::flow_hash`]): what picks its source port.
        flow: u32,
    },
    /// Write the first `len` bytes of the scratch buffer (an ICMP error) back into the TUN; the
    /// packet itself was dropped as `NoRoute`.
    Reply {
        /// Length of the reply in the scratch buffer.
        len: usize,
    },
    /// Drop the packet.
    Drop(DropReason),
}

/// What to do with a datagram received from the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingress {
    /// Write `buf[range]` (the inner IP packet) into the TUN.
    Deliver(Range<usize>),
    /// Drop it.
    Drop(DropReason),
}

/// Why `pkt` is dropped before the IPv4 view looks at it: too short for any IP header.
fn too_short(pkt: &[u8]) -> Option<DropReason> {
    (pkt.len() < ipv4::MIN_HEADER_LEN).then_some(DropReason::TooShort)
}

fn wire_drop(e: WireError) -> DropReason {
    match e {
        WireError::Truncated => DropReason::Truncated,
        _ => DropReason::BadIpHeader,
    }
}

impl Forwarder {
    /// Decides the fate of the packet at `buf[HEADROOM..HEADROOM + len]` read from the TUN.
    /// May rewrite the packet (TTL or hop limit) and the headroom (outer headers). `scratch`
    /// receives an ICMP error when one is due; it must hold [`SCRATCH_LEN`] bytes.
    pub fn egress(&self, peers: &PeerTable, buf: &mut [u8], len: usize, scratch: &mut [u8]) -> Egress {
        let Some(pkt) = buf.get_mut(HEADROOM..HEADROOM + len) else {
            return Egress::Drop(DropReason::Truncated);
        };
        if let Some(r) = too_short(pkt) {
            return Egress::Drop(r);
        }
        if ip_version(pkt) == Some(6) {
            return match &self.v6 {
                Some(v6) => self.egress_v6(v6, peers, buf, len, scratch),
                None => Egress::Drop(DropReason::Ipv6),
            };
        }
        let Some(v4) = &self.v4 else {
            return Egress::Drop(DropReason::Ipv4);
        };
        let mut ip = match Ipv4Packet::new_checked(&mut pkt[..]) {
            Ok(ip) => ip,
            Err(e) => return Egress::Drop(wire_drop(e)),
        };
        let dst = ip.dst();
        let Some(peer) = peers.lookup(dst) else {
            if v4.subnet.contains(&dst) {
                return Egress::Drop(DropReason::OwnSubnet);
            }
            let offender = Ipv4Packet::new_unchecked(&buf[HEADROOM..HEADROOM + len]);
            return match icmp::net_unreachable(&offender, v4.tun_addr, scratch) {
                Some(n) => Egress::Reply { len: n },
                None => Egress::Drop(DropReason::NoRoute),
            };
        };
        if peer.subnet == Some(v4.subnet) {
            return Egress::Drop(DropReason::OwnSubnet);
        }
        if !ip.decrement_ttl() {
            return Egress::Drop(DropReason::TtlExpired);
        }
        let inner = Inner { total: ip.total_len(), flow: ip.flow_hash(), ethertype: ethernet::ETHERTYPE_IPV4 };
        self.encapsulate(buf, inner, peer.endpoint, peer.vtep_mac)
    }

    /// [`Forwarder::egress`] for an IPv6 packet.
    fn egress_v6(&self, v6: &ForwarderV6, peers: &PeerTable, buf: &mut [u8], len: usize, scratch: &mut [u8]) -> Egress {
        let pkt = &mut buf[HEADROOM..HEADROOM + len];
        let mut ip = match Ipv6Packet::new_checked(&mut pkt[..]) {
            Ok(ip) => ip,
            Err(e) => return Egress::Drop(wire_drop(e)),
        };
        let dst = ip.dst();
        let Some((peer, peer_v6)) = peers.lookup_v6(dst) else {
            if v6.subnet.contains(&dst) {
                return Egress::Drop(DropReason::OwnSubnet);
            }
            let offender = Ipv6Packet::new_unchecked(&buf[HEADROOM..HEADROOM + len]);
            return match icmpv6::no_route(&offender, v6.tun_addr, scratch) {
                Some(n) => Egress::Reply { len: n },
                None => Egress::Drop(DropReason::NoRoute),
            };
        };
        if peer_v6.subnet.trunc() == v6.subnet.trunc() {
            return Egress::Drop(DropReason::OwnSubnet);
        }
        if !ip.decrement_hop_limit() {
            return Egress::Drop(DropReason::TtlExpired);
        }
        let inner = Inner { total: ip.total_len(), flow: ip.flow_hash(), ethertype: ethernet::ETHERTYPE_IPV6 };
        self.encapsulate(buf, inner, peer.endpoint, peer_v6.vtep_mac)
    }

    /// Writes the backend's outer headers in front of the inner packet at `buf[HEADROOM..]`.
    fn encapsulate(&self, buf: &mut [u8], inner: Inner, to: SocketAddr, peer_mac: Option<MacAddr>) -> Egress {
        let Inner { total, flow, ethertype } = inner;
        match self.encap {
            Encap::Udp => Egress::Send { range: HEADROOM..HEADROOM + total, to, flow },
            Encap::Vxlan { vni, mac } => {
                let Some(peer_mac) = peer_mac else {
                    return Egress::Drop(DropReason::PeerUnusable);
                };
                // HEADROOM == 8 + 14, so both writes fit in the headroom by construction.
                let _ = vxlan::write_header(&mut buf[..vxlan::HEADER_LEN], vni);
                let _ = ethernet::write_header(&mut buf[vxlan::HEADER_LEN..HEADROOM], peer_mac, mac, ethertype);
                Egress::Send { range: 0..HEADROOM + total, to, flow }
            }
        }
    }

    /// Decides the fate of the datagram `buf[..len]` received from `from`. May rewrite the
    /// inner packet (TTL).
    pub fn ingress(&self, peers: &PeerTable, from: SocketAddr, buf: &mut [u8], len: usize) -> Ingress {
        let from = from.ip();
        if !peers.is_sender(from) {
            return Ingress::Drop(DropReason::UnknownSender);
        }
        let Some(dgram) = buf.get(..len) else {
            return Ingress::Drop(DropReason::Truncated);
        };
        let (start, v6) = match self.encap {
            Encap::Udp => (0, ip_version(dgram) == Some(6)),
            Encap::Vxlan { vni, mac } => {
                let vx = match VxlanPacket::new_checked(dgram) {
                    Ok(v) => v,
                    Err(_) => return Ingress::Drop(DropReason::BadVxlan),
                };
                if vx.vni() != vni {
                    return Ingress::Drop(DropReason::WrongVni);
                }
                let Ok(eth) = EthernetFrame::new_checked(vx.payload()) else {
                    return Ingress::Drop(DropReason::TooShort);
                };
                if eth.dst() != mac {
                    return Ingress::Drop(DropReason::WrongMac);
                }
                match eth.ethertype() {
                    ethernet::ETHERTYPE_IPV4 => (HEADROOM, false),
                    ethernet::ETHERTYPE_IPV6 => (HEADROOM, true),
                    _ => return Ingress::Drop(DropReason::NotIp),
                }
            }
        };
        if let Some(r) = too_short(&buf[start..len]) {
            return Ingress::Drop(r);
        }
        if v6 {
            return match &self.v6 {
                Some(v6) => self.ingress_v6(v6, peers, from, &mut buf[..len], start),
                None => Ingress::Drop(DropReason::Ipv6),
            };
        }
        let Some(v4) = &self.v4 else {
            return Ingress::Drop(DropReason::Ipv4);
        };
        let inner = &mut buf[start..len];
        let mut ip = match Ipv4Packet::new_checked(&mut inner[..]) {
            Ok(ip) => ip,
            Err(e) => return Ingress::Drop(wire_drop(e)),
        };
        if self.check_inner_src {
            let src = ip.src();
            if !peers.senders(from).any(|p| p.subnet.is_some_and(|s| s.contains(&src))) {
                return Ingress::Drop(DropReason::ForeignSource);
            }
        }
        if !v4.subnet.contains(&ip.dst()) {
            return Ingress::Drop(DropReason::NotForUs);
        }
        if ip.total_len() > self.mtu {
            return Ingress::Drop(DropReason::Oversize);
        }
        if !ip.decrement_ttl() {
            return Ingress::Drop(DropReason::TtlExpired);
        }
        // Link-layer padding after Total Length is not part of the packet.
        Ingress::Deliver(start..start + ip.total_len())
    }

    /// [`Forwarder::ingress`] for the IPv6 packet at `dgram[start..]` from the peer at `from`.
    fn ingress_v6(&self, v6: &ForwarderV6, peers: &PeerTable, from: IpAddr, dgram: &mut [u8], start: usize) -> Ingress {
        let mut ip = match Ipv6Packet::new_checked(&mut dgram[start..]) {
            Ok(ip) => ip,
            Err(e) => return Ingress::Drop(wire_drop(e)),
        };
        if self.check_inner_src {
            let src = ip.src();
            if !peers.senders(from).any(|p| p.v6.is_some_and(|p6| p6.subnet.contains(&src))) {
                return Ingress::Drop(DropReason::ForeignSource);
            }
        }
        if !v6.subnet.contains(&ip.dst()) {
            return Ingress::Drop(DropReason::NotForUs);
        }
        if ip.total_len() > self.mtu {
            return Ingress::Drop(DropReason::Oversize);
        }
        if !ip.decrement_hop_limit() {
            return Ingress::Drop(DropReason::TtlExpired);
        }
        Ingress::Deliver(start..start + ip.total_len())
    }
}

/// What encapsulation needs of an inner packet.
#[derive(Debug, Clone, Copy)]
struct Inner {
    /// Its length (IPv4 Total Length, or the IPv6 header plus Payload Length).
    total: usize,
    /// Its flow hash, which picks the source port.
    flow: u32,
    /// The ethertype a vxlan frame carries it under.
    ethertype: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::packet::BUF_LEN;
    use crate::dataplane::peers::Peer;

    const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn fwd(encap: Encap) -> Forwarder {
        Forwarder { encap, v4: Some(v4("100.96.1.0/24")), check_inner_src: true, mtu: 1450, v6: None }
    }

    /// The IPv4 side of a node leasing `subnet`, its TUN at the network address.
    fn v4(subnet: &str) -> ForwarderV4 {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        ForwarderV4 { subnet, tun_addr: subnet.network() }
    }

    fn table(port: u16) -> PeerTable {
        PeerTable::new([Peer {
            subnet: Some("100.96.2.0/24".parse().unwrap()),
            endpoint: SocketAddr::new(PEER_IP.into(), port),
            vtep_mac: Some(PEER_MAC),
            v6: None,
        }])
    }

    /// A UDP packet src → dst with a 4-byte payload, TTL 64, valid header checksum.
    fn packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(src, dst, 64).udp(1000, 2000);
        let mut v = Vec::new();
        b.write(&mut v, &[1, 2, 3, 4]).unwrap();
        v
    }

    /// A UDP packet of exactly `len` bytes.
    fn packet_with_len(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(src, dst, 64).udp(1000, 2000);
        let mut v = Vec::new();
        b.write(&mut v, &vec![7u8; len - 28]).unwrap();
        v
    }

    fn in_buf(pkt: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BUF_LEN];
        b[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
        b
    }

    #[test]
    fn egress_udp_is_the_bare_packet_with_ttl_decremented() {
        let p = packet([100, 96, 1, 2], [100, 96, 2, 2]);
        let mut b = in_buf(&p);
        let mut s = [0u8; SCRATCH_LEN];
        let e = fwd(Encap::Udp).egress(&table(8285), &mut b, p.len(), &mut s);
        let Egress::Send { range, to, .. } = e else { panic!("{e:?}") };
        assert_eq!(to, SocketAddr::new(PEER_IP.into(), 8285));
        let out = Ipv4Packet::new_checked(&b[range]).unwrap();
        assert_eq!(out.ttl(), 63);
        assert!(out.verify_checksum());
        assert_eq!(out.payload(), &p[20..]);
    }

    #[test]
    fn egress_vxlan_frame_bytes() {
        let p = packet([100, 96, 1, 2], [100, 96, 2, 2]);
        let mut b = in_buf(&p);
        let mut s = [0u8; SCRATCH_LEN];
        let e = fwd(Encap::Vxlan { vni: 1, mac: LOCAL_MAC }).egress(&table(8472), &mut b, p.len(), &mut s);
        let Egress::Send { range, .. } = e else { panic!("{e:?}") };
        let f = &b[range];
        assert_eq!(&f[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&f[8..22], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        assert_eq!(f.len(), 22 + p.len());
        // What we send, the peer accepts.
        let peer = Forwarder {
            v4: Some(v4("100.96.2.0/24")),
            encap: Encap::Vxlan { vni: 1, mac: PEER_MAC },
            ..fwd(Encap::Udp)
        };
        let back = PeerTable::new([Peer {
            subnet: Some("100.96.1.0/24".parse().unwrap()),
            endpoint: SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), 8472),
            vtep_mac: Some(LOCAL_MAC),
            v6: None,
        }]);
        let mut rx = f.to_vec();
        let n = rx.len();
        let got = peer.ingress(&back, "198.18.0.1:8472".parse().unwrap(), &mut rx, n);
        assert_eq!(got, Ingress::Deliver(22..22 + p.len()));
        assert_eq!(Ipv4Packet::new_checked(&rx[22..]).unwrap().ttl(), 62);
    }

    #[test]
    fn egress_no_route_answers_icmp_and_own_subnet_drops() {
        let p = packet([100, 96, 1, 2], [100, 96, 77, 2]);
        let mut b = in_buf(&p);
        let mut s = [0u8; SCRATCH_LEN];
        let f = fwd(Encap::Udp);
        let Egress::Reply { len } = f.egress(&table(8285), &mut b, p.len(), &mut s) else { panic!() };
        let r = Ipv4Packet::new_checked(&s[..len]).unwrap();
        assert_eq!((r.src(), r.dst()), (Ipv4Addr::new(100, 96, 1, 0), Ipv4Addr::new(100, 96, 1, 2)));
        let p = packet([100, 96, 1, 2], [100, 96, 1, 9]);
        let mut b = in_buf(&p);
        assert_eq!(f.egress(&table(8285), &mut b, p.len(), &mut s), Egress::Drop(DropReason::OwnSubnet));
    }

    #[test]
    fn egress_drops_are_classified() {
        let f = fwd(Encap::Udp);
        let t = table(8285);
        let mut s = [0u8; SCRATCH_LEN];
        let mut ttl1 = packet([100, 96, 1, 2], [100, 96, 2, 2]);
        ttl1[8] = 1;
        Ipv4Packet::new_unchecked(&mut ttl1[..]).fill_checksum();
        let cases: Vec<(Vec<u8>, DropReason)> = vec![
            (vec![0x45; 10], DropReason::TooShort),
            (vec![0x60; 40], DropReason::Ipv6),
            (vec![0x55; 40], DropReason::BadIpHeader),
            (packet([100, 96, 1, 2], [100, 96, 2, 2])[..25].to_vec(), DropReason::Truncated),
            (ttl1, DropReason::TtlExpired),
        ];
        for (p, want) in cases {
            let mut b = in_buf(&p);
            assert_eq!(f.egress(&t, &mut b, p.len(), &mut s), Egress::Drop(want));
        }
        let mut small = vec![0u8; 10];
        assert_eq!(f.egress(&t, &mut small, 5, &mut s), Egress::Drop(DropReason::Truncated));
        // A vxlan peer without a MAC cannot be reached.
        let nomac = PeerTable::new([Peer {
            subnet: Some("100.96.2.0/24".parse().unwrap()),
            endpoint: SocketAddr::new(PEER_IP.into(), 8472),
            vtep_mac: None,
            v6: None,
        }]);
        let p = packet([100, 96, 1, 2], [100, 96, 2, 2]);
        let mut b = in_buf(&p);
        assert_eq!(
            fwd(Encap::Vxlan { vni: 1, mac: LOCAL_MAC }).egress(&nomac, &mut b, p.len(), &mut s),
            Egress::Drop(DropReason::PeerUnusable)
        );
    }

    #[test]
    fn ingress_checks_sender_source_and_destination() {
        let f = fwd(Encap::Udp);
        let t = table(8285);
        let from: SocketAddr = SocketAddr::new(PEER_IP.into(), 8285);
        let run = |p: &[u8], from: SocketAddr| {
            let mut b = p.to_vec();
            f.ingress(&t, from, &mut b, p.len())
        };
        let good = packet([100, 96, 2, 2], [100, 96, 1, 2]);
        assert_eq!(run(&good, from), Ingress::Deliver(0..good.len()));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(run(&padded, from), Ingress::Deliver(0..good.len()));
        assert_eq!(run(&good, "198.18.0.66:8285".parse().unwrap()), Ingress::Drop(DropReason::UnknownSender));
        assert_eq!(run(&good, "[::1]:8285".parse().unwrap()), Ingress::Drop(DropReason::UnknownSender));
        assert_eq!(run(&packet([100, 96, 3, 2], [100, 96, 1, 2]), from), Ingress::Drop(DropReason::ForeignSource));
        assert_eq!(run(&packet([100, 96, 2, 2], [100, 96, 9, 2]), from), Ingress::Drop(DropReason::NotForUs));
        assert_eq!(run(&good[..19], from), Ingress::Drop(DropReason::TooShort));
        assert_eq!(run(&good[..30], from), Ingress::Drop(DropReason::Truncated));
        let big = packet_with_len([100, 96, 2, 2], [100, 96, 1, 2], 1451);
        assert_eq!(run(&big, from), Ingress::Drop(DropReason::Oversize));
        assert_eq!(run(&packet_with_len([100, 96, 2, 2], [100, 96, 1, 2], 1450), from), Ingress::Deliver(0..1450));
        let relaxed = Forwarder { check_inner_src: false, ..f.clone() };
        let mut b = packet([100, 96, 3, 2], [100, 96, 1, 2]);
        let n = b.len();
        assert_eq!(relaxed.ingress(&t, from, &mut b, n), Ingress::Deliver(0..n));
    }

    #[test]
    fn ingress_vxlan_rejects_wrong_vni_mac_and_ethertype() {
        let f = fwd(Encap::Vxlan { vni: 1, mac: LOCAL_MAC });
        let t = table(8472);
        let from: SocketAddr = SocketAddr::new(PEER_IP.into(), 8472);
        let inner = packet([100, 96, 2, 2], [100, 96, 1, 2]);
        let frame = |vni: u32, dst: MacAddr, et: u16| {
            let mut v = vec![0u8; HEADROOM];
            vxlan::write_header(&mut v, vni).unwrap();
            ethernet::write_header(&mut v[8..], dst, PEER_MAC, et).unwrap();
            v.extend_from_slice(&inner);
            v
        };
        let run = |mut v: Vec<u8>| {
            let n = v.len();
            f.ingress(&t, from, &mut v, n)
        };
        assert_eq!(run(frame(1, LOCAL_MAC, 0x0800)), Ingress::Deliver(22..22 + inner.len()));
        assert_eq!(run(frame(2, LOCAL_MAC, 0x0800)), Ingress::Drop(DropReason::WrongVni));
        assert_eq!(run(frame(1, PEER_MAC, 0x0800)), Ingress::Drop(DropReason::WrongMac));
        assert_eq!(run(frame(1, LOCAL_MAC, 0x0806)), Ingress::Drop(DropReason::NotIp));
        assert_eq!(run(frame(1, LOCAL_MAC, 0x86dd)), Ingress::Drop(DropReason::Ipv6));
        let mut noflag = frame(1, LOCAL_MAC, 0x0800);
        noflag[0] = 0;
        assert_eq!(run(noflag), Ingress::Drop(DropReason::BadVxlan));
        assert_eq!(run(frame(1, LOCAL_MAC, 0x0800)[..7].to_vec()), Ingress::Drop(DropReason::BadVxlan));
        assert_eq!(run(frame(1, LOCAL_MAC, 0x0800)[..20].to_vec()), Ingress::Drop(DropReason::TooShort));
        assert_eq!(run(frame(1, LOCAL_MAC, 0x0800)[..30].to_vec()), Ingress::Drop(DropReason::TooShort));
    }

    const PEER6_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 6]);

    /// A dual-stack node 100.96.1.0/24 & 2001:db8:1:1::/64 with one dual-stack peer.
    fn dual(encap: Encap) -> (Forwarder, PeerTable) {
        let f = Forwarder {
            v6: Some(ForwarderV6 {
                subnet: "2001:db8:1:1::/64".parse().unwrap(),
                tun_addr: "2001:db8:1:1::".parse().unwrap(),
            }),
            ..fwd(encap)
        };
        let t = PeerTable::new([Peer {
            subnet: Some("100.96.2.0/24".parse().unwrap()),
            endpoint: SocketAddr::new(PEER_IP.into(), 8472),
            vtep_mac: Some(PEER_MAC),
            v6: Some(crate::dataplane::peers::PeerV6 {
                subnet: "2001:db8:1:2::/64".parse().unwrap(),
                vtep_mac: Some(PEER6_MAC),
                public_ip: None,
            }),
        }]);
        (f, t)
    }

    /// A TCP segment src → dst over IPv6 with `len` payload bytes, hop limit 64.
    fn packet6(src: &str, dst: &str, len: usize) -> Vec<u8> {
        let (s, d): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        let b = etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64).tcp(40000, 5201, 7, 1000);
        let mut v = Vec::new();
        b.write(&mut v, &vec![5u8; len]).unwrap();
        v
    }

    #[test]
    fn ipv6_goes_out_under_its_own_ethertype_and_mac_and_comes_back() {
        for encap in [Encap::Udp, Encap::Vxlan { vni: 1, mac: LOCAL_MAC }] {
            let (f, t) = dual(encap);
            let p = packet6("2001:db8:1:1::2", "2001:db8:1:2::2", 100);
            let mut b = in_buf(&p);
            let mut s = [0u8; SCRATCH_LEN];
            let Egress::Send { range, to, .. } = f.egress(&t, &mut b, p.len(), &mut s) else { panic!("{encap:?}") };
            assert_eq!(to, SocketAddr::new(PEER_IP.into(), 8472));
            let start = match encap {
                Encap::Udp => HEADROOM,
                Encap::Vxlan { .. } => {
                    assert_eq!(&b[8..22], &[2, 0, 0, 0, 0, 6, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
                    22
                }
            };
            assert_eq!(range, range.start..start + p.len());
            let sent = etherparse::SlicedPacket::from_ip(&b[start..range.end]).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = &sent.net else { panic!("not IPv6") };
            assert_eq!(ip.header().hop_limit(), 63);
            assert_eq!(&b[start + 40..range.end], &p[40..]);
            // What we send, the peer accepts: the same forwarder mirrored.
            let peer = Forwarder {
                v4: Some(v4("100.96.2.0/24")),
                encap: match encap {
                    Encap::Udp => Encap::Udp,
                    Encap::Vxlan { vni, .. } => Encap::Vxlan { vni, mac: PEER6_MAC },
                },
                v6: Some(ForwarderV6 {
                    subnet: "2001:db8:1:2::/64".parse().unwrap(),
                    tun_addr: "2001:db8:1:2::".parse().unwrap(),
                }),
                ..f.clone()
            };
            let back = PeerTable::new([Peer {
                subnet: Some("100.96.1.0/24".parse().unwrap()),
                endpoint: SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), 8472),
                vtep_mac: Some(LOCAL_MAC),
                v6: Some(crate::dataplane::peers::PeerV6 {
                    subnet: "2001:db8:1:1::/64".parse().unwrap(),
                    vtep_mac: Some(LOCAL_MAC),
                    public_ip: None,
                }),
            }]);
            let mut rx = b[range.clone()].to_vec();
            let n = rx.len();
            let got = peer.ingress(&back, "198.18.0.1:8472".parse().unwrap(), &mut rx, n);
            assert_eq!(got, Ingress::Deliver(start - range.start..n), "{encap:?}");
            assert_eq!(rx[start - range.start + 7], 62, "hop limit decremented on both hops");
        }
    }

    #[test]
    fn ipv6_no_route_answers_icmpv6_and_other_cases_drop() {
        let (f, t) = dual(Encap::Udp);
        let mut s = [0u8; SCRATCH_LEN];
        let run = |p: &[u8], s: &mut [u8]| {
            let mut b = in_buf(p);
            f.egress(&t, &mut b, p.len(), s)
        };
        let p = packet6("2001:db8:1:1::2", "2001:db8:1:77::2", 10);
        let Egress::Reply { len } = run(&p, &mut s) else { panic!() };
        let r = crate::proto::ipv6::Ipv6Packet::new_checked(&s[..len]).unwrap();
        assert_eq!((r.src(), r.dst()), ("2001:db8:1:1::".parse().unwrap(), "2001:db8:1:1::2".parse().unwrap()));
        assert_eq!(
            run(&packet6("2001:db8:1:1::2", "2001:db8:1:1::9", 10), &mut s),
            Egress::Drop(DropReason::OwnSubnet)
        );
        assert_eq!(run(&packet6("fe80::1", "ff02::2", 10), &mut s), Egress::Drop(DropReason::NoRoute));
        let mut hop1 = packet6("2001:db8:1:1::2", "2001:db8:1:2::2", 10);
        hop1[7] = 1;
        assert_eq!(run(&hop1, &mut s), Egress::Drop(DropReason::TtlExpired));
        let p = packet6("2001:db8:1:1::2", "2001:db8:1:2::2", 10);
        assert_eq!(run(&p[..50], &mut s), Egress::Drop(DropReason::Truncated));
        // An IPv4-only node drops IPv6 as before.
        let mut b = in_buf(&p);
        assert_eq!(fwd(Encap::Udp).egress(&t, &mut b, p.len(), &mut s), Egress::Drop(DropReason::Ipv6));
    }

    #[test]
    fn ipv6_ingress_checks_source_destination_size_and_hop_limit() {
        let (f, t) = dual(Encap::Udp);
        let from: SocketAddr = SocketAddr::new(PEER_IP.into(), 8472);
        let run = |f: &Forwarder, p: &[u8]| {
            let mut b = p.to_vec();
            f.ingress(&t, from, &mut b, p.len())
        };
        let good = packet6("2001:db8:1:2::2", "2001:db8:1:1::2", 100);
        assert_eq!(run(&f, &good), Ingress::Deliver(0..good.len()));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(run(&f, &padded), Ingress::Deliver(0..good.len()));
        assert_eq!(
            run(&f, &packet6("2001:db8:1:3::2", "2001:db8:1:1::2", 1)),
            Ingress::Drop(DropReason::ForeignSource)
        );
        assert_eq!(run(&f, &packet6("2001:db8:1:2::2", "2001:db8:1:9::2", 1)), Ingress::Drop(DropReason::NotForUs));
        assert_eq!(run(&f, &packet6("2001:db8:1:2::2", "2001:db8:1:1::2", 1391)), Ingress::Drop(DropReason::Oversize));
        assert_eq!(run(&f, &packet6("2001:db8:1:2::2", "2001:db8:1:1::2", 1390)), Ingress::Deliver(0..1450));
        let mut hop1 = good.clone();
        hop1[7] = 1;
        assert_eq!(run(&f, &hop1), Ingress::Drop(DropReason::TtlExpired));
        assert_eq!(run(&f, &good[..60]), Ingress::Drop(DropReason::Truncated));
        assert_eq!(run(&fwd(Encap::Udp), &good), Ingress::Drop(DropReason::Ipv6));
        let relaxed = Forwarder { check_inner_src: false, ..f.clone() };
        assert!(matches!(run(&relaxed, &packet6("2001:db8:1:3::2", "2001:db8:1:1::2", 1)), Ingress::Deliver(_)));
        // An IPv4-only peer's datagram may not carry IPv6 sources at all.
        let v4_peer = PeerTable::new([Peer { v6: None, ..t.iter().next().unwrap().clone() }]);
        let mut b = good.clone();
        let n = b.len();
        assert_eq!(f.ingress(&v4_peer, from, &mut b, n), Ingress::Drop(DropReason::ForeignSource));
    }

    /// An IPv6-only network: no IPv4 side, peers at their PublicIPv6 over the IPv6 underlay.
    #[test]
    fn ipv6_only_sends_to_public_ipv6_and_drops_ipv4() {
        let local6 =
            ForwarderV6 { subnet: "2001:db8:1:1::/64".parse().unwrap(), tun_addr: "2001:db8:1:1::".parse().unwrap() };
        let f = Forwarder { v4: None, v6: Some(local6), ..fwd(Encap::Vxlan { vni: 1, mac: LOCAL_MAC }) };
        let peer_at: SocketAddr = "[2001:db8::2]:8472".parse().unwrap();
        let t = PeerTable::new([Peer {
            subnet: None,
            endpoint: peer_at,
            vtep_mac: None,
            v6: Some(crate::dataplane::peers::PeerV6 {
                subnet: "2001:db8:1:2::/64".parse().unwrap(),
                vtep_mac: Some(PEER6_MAC),
                public_ip: Some("2001:db8::2".parse().unwrap()),
            }),
        }]);
        let mut s = [0u8; SCRATCH_LEN];
        let p = packet6("2001:db8:1:1::2", "2001:db8:1:2::2", 100);
        let mut b = in_buf(&p);
        let Egress::Send { range, to, .. } = f.egress(&t, &mut b, p.len(), &mut s) else { panic!() };
        assert_eq!(to, peer_at);
        assert_eq!(&b[8..22], &[2, 0, 0, 0, 0, 6, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        // The peer's reply comes from its PublicIPv6; from anywhere else it is unknown.
        let mut reply = vec![0u8; HEADROOM];
        vxlan::write_header(&mut reply, 1).unwrap();
        ethernet::write_header(&mut reply[8..], LOCAL_MAC, PEER6_MAC, 0x86dd).unwrap();
        let back = packet6("2001:db8:1:2::2", "2001:db8:1:1::2", 100);
        reply.extend_from_slice(&back);
        let run = |from: &str| {
            let mut rx = reply.clone();
            f.ingress(&t, from.parse().unwrap(), &mut rx, reply.len())
        };
        assert_eq!(run("[2001:db8::2]:8472"), Ingress::Deliver(HEADROOM..HEADROOM + back.len()));
        assert_eq!(run("[2001:db8::9]:8472"), Ingress::Drop(DropReason::UnknownSender));
        assert_eq!(run("198.18.0.2:8472"), Ingress::Drop(DropReason::UnknownSender));
        assert_eq!(range.len(), HEADROOM + p.len());
        // IPv4 has no place here, either way.
        let p4 = packet([100, 96, 1, 2], [100, 96, 2, 2]);
        let mut b = in_buf(&p4);
        assert_eq!(f.egress(&t, &mut b, p4.len(), &mut s), Egress::Drop(DropReason::Ipv4));
        let mut v4_frame = reply[..HEADROOM].to_vec();
        v4_frame[20..22].copy_from_slice(&[0x08, 0x00]);
        v4_frame.extend_from_slice(&packet([100, 96, 2, 2], [100, 96, 1, 2]));
        let n = v4_frame.len();
        assert_eq!(f.ingress(&t, peer_at, &mut v4_frame, n), Ingress::Drop(DropReason::Ipv4));
    }

    #[test]
    fn every_prefix_and_byte_flip_is_handled() {
        let (f, t) = dual(Encap::Vxlan { vni: 1, mac: LOCAL_MAC });
        for (et, inner) in [
            (0x0800, packet([100, 96, 2, 2], [100, 96, 1, 2])),
            (0x86dd, packet6("2001:db8:1:2::2", "2001:db8:1:1::2", 8)),
        ] {
            let mut frame = vec![0u8; HEADROOM];
            vxlan::write_header(&mut frame, 1).unwrap();
            ethernet::write_header(&mut frame[8..], LOCAL_MAC, PEER_MAC, et).unwrap();
            frame.extend_from_slice(&inner);
            for n in 0..=frame.len() {
                for i in 0..n {
                    let mut v = frame.clone();
                    v[i] ^= 0xff;
                    let _ = f.ingress(&t, "198.18.0.2:8472".parse().unwrap(), &mut v, n);
                }
            }
        }
    }
}
