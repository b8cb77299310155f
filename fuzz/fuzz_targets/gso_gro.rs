//! GSO split and GRO coalesce on arbitrary packets, IPv4 and IPv6, TCP (TSO) and UDP (USO): no
//! panic; every segment is a valid IP packet (IPv4 with a correct header checksum) whose
//! transport checksum the coalescer verifies; coalescing the segments gives back the payload, in order. Checksums
//! run as the engines run them (the widest word sum the CPU has), and the checksum of the input
//! agrees with RFC 1071's 16-bit definition.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proto::gro::{FlowRun, Rules};
use weft::proto::gso::Segmenter;
use weft::proto::ipv4::Ipv4Packet;
use weft::proto::ipv6::Ipv6Packet;

/// RFC 1071 by its definition: 16-bit big-endian words, odd byte padded, end-around carry.
fn reference_checksum(data: &[u8]) -> u16 {
    let mut acc: u64 = data.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !u16::try_from(acc).unwrap()
}

fuzz_target!(|data: &[u8]| {
    weft::dataplane::sys::simd::install_checksum();
    assert_eq!(weft::proto::checksum::checksum(data), reference_checksum(data));
    let Some((head, pkt)) = data.split_first_chunk::<2>() else { return };
    let head = u16::from_be_bytes(*head);
    // The top bit picks the transport; the rest is the gso_size.
    let udp = head & 0x8000 != 0;
    let mss = usize::from(head % 2048);
    // The packet's version nibble picks IPv4 or IPv6.
    let planned = Segmenter::for_packet(pkt, !udp, mss);
    let Ok(seg) = planned else { return };
    let headers = seg.headers(pkt).expect("a planned super-packet's header sums can be taken");
    let mut segments = Vec::new();
    for i in 0..seg.count().min(200) {
        // Whole, as the offload engine writes it for its GSO send.
        let mut s = vec![0u8; seg.segment_len(i)];
        assert_eq!(headers.write_segment(pkt, i, &mut s).unwrap(), s.len());
        match Ipv6Packet::new_checked(&s[..]) {
            Ok(ip) => assert_eq!(ip.total_len(), s.len()),
            Err(_) => {
                let ip = Ipv4Packet::new_checked(&s[..]).expect("segment is valid IPv4 or IPv6");
                assert!(ip.verify_checksum());
                assert_eq!(ip.total_len(), s.len());
            }
        }
        segments.push(s);
    }
    if segments.len() != seg.count() {
        return;
    }
    let original: Vec<u8> = (0..seg.count()).flat_map(|i| pkt[seg.payload(i)].to_vec()).collect();
    let mut rebuilt = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        match FlowRun::start(&segments[i], Rules { udp, verify: true }) {
            Err(_) => {
                // Only an empty TCP segment (a pure ACK) or IP options the UDP rules refuse
                // start no run; such a segment passes on alone.
                rebuilt.extend_from_slice(&segments[i][seg.hdr_len()..]);
                i += 1;
            }
            Ok(mut run) => {
                rebuilt.extend_from_slice(run.first_payload());
                let mut j = i + 1;
                while j < segments.len() {
                    match run.push(&segments[j]) {
                        Ok(p) => rebuilt.extend_from_slice(&segments[j][p]),
                        Err(_) => break,
                    }
                    j += 1;
                }
                let mut hdr = [0u8; 128];
                run.finish(&mut hdr).expect("a run's header fits");
                i = j;
            }
        }
    }
    assert_eq!(rebuilt, original);
});
