//! Every parser in `src/proto` on arbitrary bytes: no panic, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proto::{ethernet, ipv4, ipv6, lease, netconfig, subnet_env, virtio, vxlan};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ipv4::Ipv4Packet::new_checked(data) {
        let _ = (p.src(), p.dst(), p.ttl(), p.protocol(), p.payload().len(), p.verify_checksum(), p.frag_offset());
        let mut out = [0u8; weft::proto::icmp::MAX_LEN];
        if let Some(n) = weft::proto::icmp::net_unreachable(&p, std::net::Ipv4Addr::LOCALHOST, &mut out) {
            assert!(ipv4::Ipv4Packet::new_checked(&out[..n]).unwrap().verify_checksum());
        }
        let mut copy = data.to_vec();
        let mut m = ipv4::Ipv4Packet::new_checked(&mut copy[..]).unwrap();
        let valid = m.verify_checksum();
        if m.decrement_ttl() {
            assert_eq!(m.verify_checksum(), valid);
        }
    }
    if let Ok(p) = ipv6::Ipv6Packet::new_checked(data) {
        let _ = (p.src(), p.dst(), p.hop_limit(), p.next_header(), p.total_len(), p.flow_hash());
        let mut out = [0u8; weft::proto::icmpv6::MAX_LEN];
        if let Some(n) = weft::proto::icmpv6::no_route(&p, std::net::Ipv6Addr::LOCALHOST, &mut out) {
            let reply = ipv6::Ipv6Packet::new_checked(&out[..n]).unwrap();
            assert!(ipv6::transport_checksum_ok(&reply, ipv6::NEXT_ICMPV6, reply.payload()));
        }
    }
    if let Ok(v) = vxlan::VxlanPacket::new_checked(data) {
        let _ = (v.vni(), v.payload().len());
    }
    if let Ok(h) = virtio::VnetHdr::parse(data) {
        let mut out = [0u8; virtio::LEN];
        h.write(&mut out).unwrap();
        assert_eq!(virtio::VnetHdr::parse(&out).unwrap(), h);
        let mut pkt = data[virtio::LEN..].to_vec();
        let _ = h.complete_checksum(&mut pkt);
    }
    if let Ok(e) = ethernet::EthernetFrame::new_checked(data) {
        let _ = (e.dst(), e.src(), e.ethertype(), e.payload().len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(k) = text.parse::<lease::SubnetKey>() {
            assert_eq!(k.to_string().parse::<lease::SubnetKey>().unwrap(), k);
        }
        if let Ok(a) = lease::LeaseAttrs::parse(text) {
            assert_eq!(lease::LeaseAttrs::parse(&a.to_json()).unwrap(), a);
            let _ = (a.vxlan_data(), a.vxlan_v6_data());
        }
        if let Ok(c) = netconfig::NetConfig::parse(text) {
            assert!(c.ipv4.is_some() || c.ipv6.is_some());
            if let Some(v4) = &c.ipv4 {
                assert!(v4.subnet_min <= v4.subnet_max);
                assert!(v4.subnets().take(3).all(|n| c.fits(&n)));
            }
            if let Some(v6) = &c.ipv6 {
                assert!(v6.subnet_min <= v6.subnet_max);
                assert!(v6.subnets().take(3).all(|n| c.fits_v6(&n)));
            }
        }
        if let Ok(e) = subnet_env::SubnetEnv::parse(text) {
            assert_eq!(subnet_env::SubnetEnv::parse(&e.render()).unwrap(), e);
        }
    }
});
