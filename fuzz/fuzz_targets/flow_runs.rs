//! Coalescing arbitrary packets into TCP and UDP runs, as the TUN writer does: no panic; a run
//! merges at most its limit; its merged header fits and says how long the merged packet is,
//! for IPv4 and IPv6 alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proto::gro::{FlowRun, MAX_UDP_SEGMENTS, Rules};
use weft::proto::virtio;

fuzz_target!(|data: &[u8]| {
    // Packets, each prefixed by a one-byte length; the first byte repeats the next packet that
    // many times, so that runs happen.
    let Some((&repeat, mut rest)) = data.split_first() else { return };
    let mut packets: Vec<&[u8]> = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (pkt, tail) = tail.split_at(len);
        for _ in 0..=usize::from(repeat % 8) {
            packets.push(pkt);
        }
        rest = tail;
    }
    let mut i = 0;
    while i < packets.len() {
        let Ok(mut run) = FlowRun::start(packets[i], Rules::ALL_VERIFIED) else {
            i += 1;
            continue;
        };
        let mut payload = run.first_payload().len();
        let mut j = i + 1;
        while j < packets.len() {
            match run.push(packets[j]) {
                Ok(p) => payload += p.len(),
                Err(_) => break,
            }
            j += 1;
        }
        assert_eq!(run.segments(), j - i);
        if let FlowRun::Udp(_) = run {
            assert!(run.segments() <= MAX_UDP_SEGMENTS);
        }
        let mut hdr = [0u8; 128];
        let (hl, vh) = run.finish(&mut hdr).expect("a run's header fits");
        // IPv4 Total Length, or the IPv6 fixed header plus Payload Length.
        let total = match hdr[0] >> 4 {
            6 => 40 + usize::from(u16::from_be_bytes([hdr[4], hdr[5]])),
            _ => usize::from(u16::from_be_bytes([hdr[2], hdr[3]])),
        };
        if run.segments() > 1 {
            assert_eq!(total, hl + payload);
            assert_eq!(usize::from(vh.hdr_len), hl);
            assert!(matches!(vh.gso_kind(), virtio::GSO_TCPV4 | virtio::GSO_TCPV6 | virtio::GSO_UDP_L4));
        }
        i = j;
    }
});
