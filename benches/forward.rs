//! Per-packet cost of the forwarding decision (no I/O): encapsulate and decapsulate for each
//! backend, and peer lookup as the table grows.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use weft::dataplane::forward::{Egress, Encap, Forwarder, ForwarderV4, Ingress};
use weft::dataplane::packet::{BUF_LEN, HEADROOM};
use weft::dataplane::peers::{Peer, PeerTable};
use weft::proto::ipv4::Ipv4Packet;
use weft::proto::mac::MacAddr;

const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

/// `n` peers with /24 subnets 100.64.0.0/24, 100.64.1.0/24, ... (inside 100.64.0.0/10).
fn peers(n: u32) -> PeerTable {
    PeerTable::new((0..n).map(|i| {
        let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (i << 8));
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1);
        Peer {
            subnet: ipnet::Ipv4Net::new(net, 24).ok(),
            endpoint: SocketAddr::new(ip.into(), 8472),
            vtep_mac: Some(PEER_MAC),
            v6: None,
        }
    }))
}

/// A 1400-byte IPv4/TCP-sized packet from `src` to `dst` with a valid header checksum.
fn packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 1400];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&1400u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

fn forwarder(encap: Encap, subnet: &str) -> Forwarder {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let v4 = Some(ForwarderV4 { subnet, tun_addr: subnet.network() });
    Forwarder { encap, v4, check_inner_src: true, mtu: 1450, v6: None }
}

fn encap_decap(c: &mut Criterion) {
    let table = peers(2);
    let mut g = c.benchmark_group("per_packet_1400B");
    g.throughput(Throughput::Elements(1));
    for (name, encap) in [("udp", Encap::Udp), ("vxlan", Encap::Vxlan { vni: 1, mac: LOCAL_MAC })] {
        // Egress: local subnet 100.64.9.0/24 (not a peer) to peer 100.64.1.0/24.
        let f = forwarder(encap, "100.64.9.0/24");
        let pkt = packet(Ipv4Addr::new(100, 64, 9, 2), Ipv4Addr::new(100, 64, 1, 2));
        let mut buf = vec![0u8; BUF_LEN];
        let mut scratch = [0u8; weft::proto::icmp::MAX_LEN];
        g.bench_function(BenchmarkId::new("encapsulate", name), |b| {
            b.iter(|| {
                buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
                let e = f.egress(&table, &mut buf, pkt.len(), &mut scratch);
                assert!(matches!(e, Egress::Send { .. }));
                black_box(e)
            })
        });
        // Ingress: what peer 100.64.1.0/24 (198.18.0.2) sends to us (100.64.0.0/24 = peer 1's
        // subnet is the receiver's own here).
        let rx = forwarder(encap, "100.64.0.0/24");
        let mut frame = vec![0u8; BUF_LEN];
        buf[HEADROOM..HEADROOM + pkt.len()]
            .copy_from_slice(&packet(Ipv4Addr::new(100, 64, 1, 2), Ipv4Addr::new(100, 64, 0, 2)));
        let Egress::Send { range, .. } = forwarder(
            match encap {
                Encap::Udp => Encap::Udp,
                Encap::Vxlan { vni, .. } => Encap::Vxlan { vni, mac: PEER_MAC },
            },
            "100.64.1.0/24",
        )
        .egress(&peers_for_rx(encap), &mut buf, pkt.len(), &mut scratch) else {
            panic!("no frame")
        };
        let wire = buf[range].to_vec();
        let from = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 8472));
        g.bench_function(BenchmarkId::new("decapsulate", name), |b| {
            b.iter(|| {
                frame[..wire.len()].copy_from_slice(&wire);
                let r = rx.ingress(&table, from, &mut frame, wire.len());
                assert!(matches!(r, Ingress::Deliver(_)), "{r:?}");
                black_box(r)
            })
        });
    }
    g.finish();
}

/// The table the sending side (100.64.1.0/24) uses to reach 100.64.0.0/24 with our MAC.
fn peers_for_rx(encap: Encap) -> PeerTable {
    let mac = match encap {
        Encap::Udp => None,
        Encap::Vxlan { .. } => Some(LOCAL_MAC),
    };
    PeerTable::new([Peer {
        subnet: "100.64.0.0/24".parse().ok(),
        endpoint: SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), 8472),
        vtep_mac: mac,
        v6: None,
    }])
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_lookup");
    for n in [10u32, 1_000, 10_000] {
        let t = peers(n);
        let dsts: Vec<Ipv4Addr> = (0..256u32)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 7)) + (((i * 7919) % n) << 8)))
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &dsts, |b, dsts| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 255;
                black_box(t.lookup(dsts[i]).is_some())
            })
        });
    }
    g.finish();
}

/// A 64 KiB-ish TCP super-packet (45 × 1410 payload bytes), valid headers.
fn super_packet() -> Vec<u8> {
    let payload: Vec<u8> = (0..45 * 1410).map(|i| (i % 251) as u8).collect();
    let b = etherparse::PacketBuilder::ipv4([100, 64, 9, 2], [100, 64, 1, 2], 64).tcp(40000, 5201, 1, 64240).ack(1);
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

fn gso_gro(c: &mut Criterion) {
    use weft::proto::{gro::Run, gso::Segmenter};
    let sup = super_packet();
    let mut g = c.benchmark_group("per_64KiB");
    g.throughput(Throughput::Bytes(sup.len() as u64));
    let mut hdrs = vec![0u8; 64 * 128];
    // The one pass over the payload that both split and verified coalescing make: the build's
    // baseline loop, then (as the engines run it, and everything below) the widest one the CPU has.
    g.bench_function("checksum_portable", |b| b.iter(|| black_box(weft::proto::checksum::sum_words(black_box(&sup)))));
    weft::dataplane::sys::simd::install_checksum();
    g.bench_function("checksum", |b| b.iter(|| black_box(weft::proto::checksum::checksum(black_box(&sup)))));
    // The same pass in segment-sized parts, as split and verified coalescing make it: the floor
    // under both (what they cost above it is per-segment header work).
    g.bench_function("checksum_45_parts", |b| {
        b.iter(|| {
            let mut a = 0u32;
            for c in black_box(&sup[40..]).chunks(1410) {
                a = a.wrapping_add(weft::proto::checksum::sum(0, c));
            }
            black_box(a)
        })
    });
    g.bench_function("gso_split_45_segments", |b| {
        b.iter(|| {
            let s = Segmenter::new(&sup, 1410).unwrap();
            let h = s.headers(&sup).unwrap();
            for i in 0..s.count() {
                h.write(&sup, i, &mut hdrs[i * 128..]).unwrap();
            }
            black_box(s.count())
        })
    });
    // What the offload engine does per super-packet: every segment written whole, one after
    // another, as one GSO send takes them (the headers above, plus the payload copy).
    let mut frames = vec![0u8; 64 * 1500];
    g.bench_function("gso_split_45_segments_whole", |b| {
        b.iter(|| {
            let s = Segmenter::new(&sup, 1410).unwrap();
            let h = s.headers(&sup).unwrap();
            let mut at = 0;
            for i in 0..s.count() {
                at += h.write_segment(&sup, i, &mut frames[at..]).unwrap();
            }
            black_box(at)
        })
    });
    let s = Segmenter::new(&sup, 1410).unwrap();
    let segs: Vec<Vec<u8>> = (0..s.count())
        .map(|i| {
            let mut v = vec![0u8; s.hdr_len()];
            s.write_header(&sup, i, &mut v).unwrap();
            v.extend_from_slice(&sup[s.payload(i)]);
            v
        })
        .collect();
    let mut out = [0u8; 128];
    // Trusting the checksums (udp backend: the outer checksum covered them) and verifying
    // each segment's first (vxlan, whose kernel peers send no outer checksum).
    for (name, verify) in [("gro_coalesce_45_segments", false), ("gro_coalesce_45_segments_verified", true)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut run = Run::start(&segs[0], verify).unwrap();
                for n in &segs[1..] {
                    black_box(run.push(n).unwrap());
                }
                black_box(run.finish(&mut out).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encap_decap, lookup, gso_gro);
criterion_main!(benches);
