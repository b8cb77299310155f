//! Decapsulation as a whole, for both backends: arbitrary datagrams from a known or unknown
//! sender never panic, and whatever is delivered is an IPv4 packet for our subnet, or (on a
//! dual-stack or IPv6-only node) an IPv6 packet for our IPv6 subnet; an IPv6-only node's peer
//! sends from its PublicIPv6.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddr};
use weft::dataplane::forward::{Encap, Forwarder, ForwarderV4, ForwarderV6, Ingress};
use weft::dataplane::peers::{Peer, PeerTable, PeerV6};
use weft::proto::ipv4::Ipv4Packet;
use weft::proto::ipv6::Ipv6Packet;
use weft::proto::mac::MacAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, dgram)) = data.split_first() else { return };
    let v6_only = sel & 16 != 0;
    let (peer_at, stranger): (SocketAddr, SocketAddr) = match v6_only {
        false => ("198.18.0.2:8472".parse().unwrap(), "198.18.0.66:8472".parse().unwrap()),
        true => ("[2001:db8::2]:8472".parse().unwrap(), "[2001:db8::66]:8472".parse().unwrap()),
    };
    let peers = PeerTable::new([Peer {
        subnet: (!v6_only).then(|| "100.96.2.0/24".parse().unwrap()),
        endpoint: peer_at,
        vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
        v6: Some(PeerV6 { subnet: "2001:db8:1:2::/64".parse().unwrap(), vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])), public_ip: None }),
    }]);
    let subnet6 = "2001:db8:1:1::/64".parse().unwrap();
    let v6 = (sel & 8 == 0 || v6_only)
        .then_some(ForwarderV6 { subnet: subnet6, tun_addr: "2001:db8:1:1::".parse().unwrap() });
    let v4 = (!v6_only)
        .then_some(ForwarderV4 { subnet: "100.96.1.0/24".parse().unwrap(), tun_addr: Ipv4Addr::new(100, 96, 1, 0) });
    let encap = if sel & 1 == 0 { Encap::Udp } else { Encap::Vxlan { vni: 1, mac: MacAddr([2, 0, 0, 0, 0, 1]) } };
    let f = Forwarder {
        encap,
        v4,
        check_inner_src: sel & 2 == 0,
        mtu: 1450,
        v6,
    };
    let from = if sel & 4 == 0 { peer_at } else { stranger };
    let mut buf = dgram.to_vec();
    let len = buf.len();
    if let Ingress::Deliver(range) = f.ingress(&peers, from, &mut buf, len) {
        match Ipv6Packet::new_checked(&buf[range.clone()]) {
            Ok(p) => assert!(v6.is_some() && subnet6.contains(&p.dst())),
            Err(_) => {
                let p = Ipv4Packet::new_checked(&buf[range]).expect("delivered packets are valid IPv4 or IPv6");
                assert!(v4.is_some_and(|v4| v4.subnet.contains(&p.dst())));
            }
        }
    }
});
