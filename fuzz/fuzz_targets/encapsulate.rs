//! Encapsulation of arbitrary TUN reads: never panics, frames stay inside the buffer, and an
//! ICMP reply is a valid IPv4 packet, or (IPv6 on a dual-stack node) a valid ICMPv6 one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddr};
use weft::dataplane::forward::{Egress, Encap, Forwarder, ForwarderV4, ForwarderV6, SCRATCH_LEN};
use weft::dataplane::packet::{BUF_LEN, HEADROOM};
use weft::dataplane::peers::{Peer, PeerTable, PeerV6};
use weft::proto::ipv4::Ipv4Packet;
use weft::proto::ipv6::Ipv6Packet;
use weft::proto::mac::MacAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, pkt)) = data.split_first() else { return };
    if pkt.len() > BUF_LEN - HEADROOM {
        return;
    }
    // An IPv6-only node: no IPv4 side, the peer at its PublicIPv6.
    let v6_only = sel & 8 != 0;
    let peers = PeerTable::new([Peer {
        subnet: (!v6_only).then(|| "100.96.2.0/24".parse().unwrap()),
        endpoint: match v6_only {
            false => SocketAddr::new(Ipv4Addr::new(198, 18, 0, 2).into(), 8472),
            true => "[2001:db8::2]:8472".parse().unwrap(),
        },
        vtep_mac: if sel & 2 == 0 { Some(MacAddr([2, 0, 0, 0, 0, 2])) } else { None },
        v6: Some(PeerV6 { subnet: "2001:db8:1:2::/64".parse().unwrap(), vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])), public_ip: None }),
    }]);
    let v6 = (sel & 4 == 0 || v6_only).then_some(ForwarderV6 {
        subnet: "2001:db8:1:1::/64".parse().unwrap(),
        tun_addr: "2001:db8:1:1::".parse().unwrap(),
    });
    let encap = if sel & 1 == 0 { Encap::Udp } else { Encap::Vxlan { vni: 1, mac: MacAddr([2, 0, 0, 0, 0, 1]) } };
    let f = Forwarder {
        encap,
        v4: (!v6_only)
            .then_some(ForwarderV4 { subnet: "100.96.1.0/24".parse().unwrap(), tun_addr: Ipv4Addr::new(100, 96, 1, 0) }),
        check_inner_src: true,
        mtu: 1450,
        v6,
    };
    let mut buf = vec![0u8; BUF_LEN];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    let mut scratch = [0u8; SCRATCH_LEN];
    match f.egress(&peers, &mut buf, pkt.len(), &mut scratch) {
        Egress::Send { range, .. } => assert!(range.end <= HEADROOM + pkt.len()),
        Egress::Reply { len } => match Ipv6Packet::new_checked(&scratch[..len]) {
            Ok(p) => assert!(v6.is_some() && p.next_header() == weft::proto::ipv6::NEXT_ICMPV6),
            Err(_) => assert!(Ipv4Packet::new_checked(&scratch[..len]).unwrap().verify_checksum()),
        },
        Egress::Drop(_) => {}
    }
});
