//! What one `UDP_SEGMENT` send of a super-packet's segments costs the offload engine's egress
//! thread, in the two layouts it can hand the kernel:
//! - `gathered`: three iovecs per segment (outer header, segment headers, payload), no payload
//!   byte copied in user space;
//! - `written_whole`: each segment copied behind its outer header and headers into one buffer
//!   (`Headers::write_segment`), one iovec — what the engine does.
//!
//! Both include the header work (44 segments of 1 410 payload bytes, datagrams of 1 472). The sends go over the loopback of a network namespace this
//! bench creates and removes (address 198.18.0.1), to a socket with `UDP_GRO` that a second
//! thread drains, so each send's time includes the kernel's delivery, as in the lab.
//! Needs root. Run with `cargo bench --bench gso_send`.

use criterion::{Criterion, Throughput};
use std::array;
use std::hint::black_box;
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use weft::dataplane::sys::{netns, udp};
use weft::proto::gso::Segmenter;

/// Bytes in front of each segment in the datagram: the vxlan backend's VXLAN and inner
/// Ethernet headers (the kernel adds the outer IPv4 and UDP headers).
const OUTER: usize = 22;
/// Payload bytes per segment: a 1 450-byte inner MTU (1 500 − 50) less 40 bytes of IPv4 and
/// TCP headers (a real stream's timestamps move 12 bytes from payload to header).
const MSS: usize = 1410;
/// Segments per send: as many datagrams of 1 472 bytes as one GSO send takes.
const SEGMENTS: usize = 44;

/// The namespace, removed when dropped (also on panic).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    assert!(ok, "ip {} failed", args.join(" "));
}

/// A TCP super-packet of `SEGMENTS` × `MSS` payload bytes, valid headers.
fn super_packet() -> Vec<u8> {
    let payload: Vec<u8> = (0..SEGMENTS * MSS).map(|i| (i % 251) as u8).collect();
    let b = etherparse::PacketBuilder::ipv4([100, 96, 1, 2], [100, 96, 2, 2], 64).tcp(40000, 5201, 1, 64240).ack(1);
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    if !nix::unistd::Uid::effective().is_root() {
        assert!(std::env::var_os("CI").is_none(), "gso_send needs root (a network namespace)");
        eprintln!("gso_send: needs root (it creates a network namespace); not run");
        return;
    }
    let ns = Netns(format!("weft-bench-gso-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.0.1/32", "dev", "lo"]);
    // Sockets made after this live in the namespace; the draining thread only uses one.
    netns::enter(&ns.0).expect("enter the bench's network namespace");
    let rx = udp::bind(SocketAddr::from(([198, 18, 0, 1], 0))).unwrap();
    udp::enable_gro(&rx).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut buf, mut cmsg) = (vec![0u8; 1 << 16], udp::gro_cmsg_space());
            while !stop.load(Ordering::Relaxed) {
                let _ = udp::recv_gro(&rx, &mut buf, &mut cmsg);
            }
        })
    };

    let sup = super_packet();
    let seg = Segmenter::new(&sup, MSS).unwrap();
    assert_eq!(seg.count(), SEGMENTS);
    let size = OUTER + seg.segment_len(0);
    let outer = [0x5au8; OUTER];
    let mut hdrs = vec![0u8; SEGMENTS * 128];
    let mut frames = vec![0u8; SEGMENTS * size];
    let segment = Some(u16::try_from(size).unwrap());

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("gso_send_44_segments");
    g.throughput(Throughput::Bytes(u64::try_from(SEGMENTS * size).unwrap()));
    g.bench_function("gathered", |b| {
        b.iter(|| {
            let h = seg.headers(&sup).unwrap();
            for i in 0..SEGMENTS {
                h.write(&sup, i, &mut hdrs[i * 128..]).unwrap();
            }
            let hl = seg.hdr_len();
            let iov: [IoSlice<'_>; 3 * SEGMENTS] = array::from_fn(|k| {
                let i = k / 3;
                IoSlice::new(match k % 3 {
                    0 => &outer[..],
                    1 => &hdrs[i * 128..i * 128 + hl],
                    _ => &sup[seg.payload(i)],
                })
            });
            black_box(udp::send_gso(&tx, &iov, segment, to).unwrap())
        })
    });
    g.bench_function("written_whole", |b| {
        b.iter(|| {
            let h = seg.headers(&sup).unwrap();
            let mut at = 0;
            for i in 0..SEGMENTS {
                frames[at..at + OUTER].copy_from_slice(&outer);
                at += OUTER + h.write_segment(&sup, i, &mut frames[at + OUTER..]).unwrap();
            }
            black_box(udp::send_gso(&tx, &[IoSlice::new(&frames[..at])], segment, to).unwrap())
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    c.final_summary();
}
