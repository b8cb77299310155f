//! Encapsulation of arbitrary TUN reads: never panics, frames stay inside the buffer, and an
//! ICMP reply is a valid IPv4 packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use weft::dataplane::forward::{Egress, Encap, Forwarder};
use weft::dataplane::packet::{BUF_LEN, HEADROOM};
use weft::dataplane::peers::{Peer, PeerTable};
use weft::proto::ipv4::Ipv4Packet;
use weft::proto::mac::MacAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, pkt)) = data.split_first() else { return };
    if pkt.len() > BUF_LEN - HEADROOM {
        return;
    }
    let peers = PeerTable::new([Peer {
        subnet: "100.96.2.0/24".parse().unwrap(),
        endpoint: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 8472),
        vtep_mac: if sel & 2 == 0 { Some(MacAddr([2, 0, 0, 0, 0, 2])) } else { None },
    }]);
    let encap = if sel & 1 == 0 { Encap::Udp } else { Encap::Vxlan { vni: 1, mac: MacAddr([2, 0, 0, 0, 0, 1]) } };
    let f = Forwarder {
        encap,
        subnet: "100.96.1.0/24".parse().unwrap(),
        tun_addr: Ipv4Addr::new(100, 96, 1, 0),
        check_inner_src: true,
        mtu: 1450,
    };
    let mut buf = vec![0u8; BUF_LEN];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    let mut scratch = [0u8; weft::proto::icmp::MAX_LEN];
    match f.egress(&peers, &mut buf, pkt.len(), &mut scratch) {
        Egress::Send { range, .. } => assert!(range.end <= HEADROOM + pkt.len()),
        Egress::Reply { len } => assert!(Ipv4Packet::new_checked(&scratch[..len]).unwrap().verify_checksum()),
        Egress::Drop(_) => {}
    }
});
