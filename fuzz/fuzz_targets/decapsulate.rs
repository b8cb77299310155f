//! Decapsulation as a whole, for both backends: arbitrary datagrams from a known or unknown
//! sender never panic, and whatever is delivered is an IPv4 packet for our subnet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use weft::dataplane::forward::{Encap, Forwarder, Ingress};
use weft::dataplane::peers::{Peer, PeerTable};
use weft::proto::ipv4::Ipv4Packet;
use weft::proto::mac::MacAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, dgram)) = data.split_first() else { return };
    let peers = PeerTable::new([Peer {
        subnet: "100.96.2.0/24".parse().unwrap(),
        endpoint: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 8472),
        vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
    }]);
    let encap = if sel & 1 == 0 { Encap::Udp } else { Encap::Vxlan { vni: 1, mac: MacAddr([2, 0, 0, 0, 0, 1]) } };
    let f = Forwarder {
        encap,
        subnet: "100.96.1.0/24".parse().unwrap(),
        tun_addr: Ipv4Addr::new(100, 96, 1, 0),
        check_inner_src: sel & 2 == 0,
        mtu: 1450,
    };
    let from = if sel & 4 == 0 {
        SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 8472))
    } else {
        SocketAddr::from((Ipv4Addr::new(198, 18, 0, 66), 8472))
    };
    let mut buf = dgram.to_vec();
    let len = buf.len();
    if let Ingress::Deliver(range) = f.ingress(&peers, from, &mut buf, len) {
        let p = Ipv4Packet::new_checked(&buf[range]).expect("delivered packets are valid IPv4");
        assert!(f.subnet.contains(&p.dst()));
    }
});
