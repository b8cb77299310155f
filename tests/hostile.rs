//! Hostile input, accounting, restarts and the health endpoints.

mod common;

use common::traffic::udp_stream_outage;
use common::*;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;
use weft::control::metrics::name;
use weft::dataplane::sys::netns;
use weft::lab::cluster::{Cluster, ClusterSpec, lab_vtep_mac};
use weft::lab::measure::{Samples, scrape};
use weft::lab::traffic::udp_flood;
use weft::proto::ipv4::Ipv4Packet;

const METRICS: &[&str] = &["--metrics-addr", "127.0.0.1:9100"];

fn drops(m: &Samples) -> BTreeMap<String, u64> {
    m.iter()
        .filter(|(k, v)| k.starts_with(name::DROPS) && **v > 0.0)
        .map(|(k, v)| {
            (
                k.trim_start_matches(name::DROPS).trim_start_matches("{reason=\"").trim_end_matches("\"}").to_string(),
                *v as u64,
            )
        })
        .collect()
}

/// An inner IPv4/UDP packet.
fn inner(src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv4(src, dst, 64).udp(5555, port).write(&mut v, b"rogue payload").unwrap();
    v
}

/// A VXLAN frame: header(vni) + Ethernet(dst mac, ethertype) + payload.
fn frame(vni: u32, dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(&dst);
    v.extend_from_slice(&[2, 0, 0, 0, 0, 0x99]);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An outer IPv4/UDP datagram with a forged source address (UDP checksum 0: none).
fn forged(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut v = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    v[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    Ipv4Packet::new_unchecked(&mut v[..20]).fill_checksum();
    v
}

fn rogue(mode: &str) {
    require_privileges();
    let mut spec = ClusterSpec::two_hosts(&format!("rogue{mode}"), r#"{"Type":"vxlan"}"#);
    spec.hosts = 3;
    spec.skip_hosts = vec![2];
    spec.extra_args = ["--mode", mode].iter().chain(METRICS).map(|s| s.to_string()).collect();
    let mut c = Cluster::build(&spec).unwrap();
    // Host 3 is not in the cluster: no lease, no weft. It is the rogue on the underlay.
    std::fs::remove_file(c.registry.path().join("subnets/100.96.3.0-24")).unwrap();
    c.start_all(bin(), &spec, Duration::from_secs(15)).unwrap();
    let (h1, h2, h3) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone(), c.topo.hosts[2].clone());
    // A listener in container 1 that nothing rogue may reach.
    let (tx, rx) = std::sync::mpsc::channel();
    let c1 = h1.container_ns.clone();
    let listener = std::thread::spawn(move || {
        netns::enter(&c1).unwrap();
        let s = UdpSocket::bind("0.0.0.0:7777").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        tx.send(()).unwrap();
        let mut got = 0;
        let mut b = [0u8; 2048];
        let until = std::time::Instant::now() + Duration::from_secs(6);
        while std::time::Instant::now() < until {
            if s.recv(&mut b).is_ok() {
                got += 1;
            }
        }
        got
    });
    rx.recv().unwrap();
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    let before = drops(&scrape(&h1.ns).unwrap());
    let mac1 = lab_vtep_mac(1).0;
    let good_inner = inner([100, 96, 2, 2], [100, 96, 1, 2], 7777);
    let mut truncated = good_inner.clone();
    truncated[2..4].copy_from_slice(&200u16.to_be_bytes());
    let mut bad_version = good_inner.clone();
    bad_version[0] = 0x55;
    // (payload, expected drop reason), each sent 10 times with PublicIP 198.18.0.2 forged.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x10, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9], "bad_vxlan"), // no I flag
        (vec![0x08, 0, 0], "bad_vxlan"),
        (frame(2, mac1, 0x0800, &good_inner), "wrong_vni"),
        (frame(1, [2, 0, 0, 0, 0, 0x55], 0x0800, &good_inner), "wrong_mac"),
        (frame(1, mac1, 0x0806, &[0; 28]), "not_ip"),
        (frame(1, mac1, 0x0800, &inner([100, 96, 9, 9], [100, 96, 1, 2], 7777)), "foreign_source"),
        (frame(1, mac1, 0x0800, &truncated), "truncated"),
        (frame(1, mac1, 0x0800, &bad_version), "bad_ip_header"),
        (frame(1, mac1, 0x0800, &good_inner[..10]), "too_short"),
    ];
    let h3ns = h3.ns.clone();
    let sent = std::thread::spawn(move || {
        netns::enter(&h3ns).unwrap();
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).unwrap();
        let to = SockAddr::from(SocketAddr::from(([198, 18, 0, 1], 0)));
        for (payload, _) in &cases {
            for _ in 0..10 {
                raw.send_to(&forged(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1), 8472, payload), &to)
                    .unwrap();
            }
        }
        // And a perfect frame from the rogue's own address: an unknown sender.
        let s = UdpSocket::bind("198.18.0.3:0").unwrap();
        for _ in 0..10 {
            s.send_to(&frame(1, mac1, 0x0800, &good_inner), "198.18.0.1:8472").unwrap();
        }
        cases.iter().map(|(_, r)| r.to_string()).collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after = drops(&scrape(&h1.ns).unwrap());
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for r in sent {
        *want.entry(r).or_default() += 10;
    }
    *want.entry("unknown_sender".into()).or_default() += 10;
    for (reason, n) in &want {
        let got = after.get(reason).copied().unwrap_or(0) - before.get(reason).copied().unwrap_or(0);
        assert_eq!(got, *n, "{mode}: drops for {reason}: {after:?}\n{}", c.logs());
    }
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "legitimate traffic goes on\n{}", c.logs());
    assert_eq!(listener.join().unwrap(), 0, "{mode}: a rogue datagram reached the container");
    assert!(c.procs[0].running(), "weft survived");
    assert!(c.procs[0].log_text().contains("dropping datagrams"), "drops are logged (rate-limited)");
}

#[test]
fn rogue_traffic_is_dropped_and_counted_naive() {
    rogue("naive");
}

#[test]
fn rogue_traffic_is_dropped_and_counted_batched() {
    rogue("batched");
}

#[test]
fn rogue_traffic_is_dropped_and_counted_offload() {
    rogue("offload");
}

fn value(m: &Samples, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0.0) as u64
}

/// Every packet that reached weft (read from the TUN or the socket) was forwarded or counted
/// under a drop reason.
fn accounting(mode: &str) {
    let extra: Vec<&str> = ["--mode", mode].into_iter().chain(METRICS.iter().copied()).collect();
    let c = cluster(&format!("acct{mode}"), r#"{"Type":"vxlan"}"#, &extra);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let u = udp_flood(&h2.container_ns, h2.container_ip, &h1.container_ns, Duration::from_secs(2)).unwrap();
    assert!(u.received > 0 && u.bad == 0, "{u:?}");
    // Some that no peer leases, too (ICMP answers, counted as no_route).
    for _ in 0..3 {
        let _ = common::traffic::udp_probe_error(
            &h1.container_ns,
            "100.96.77.2:9".parse().unwrap(),
            Duration::from_millis(100),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut reached, mut forwarded, mut dropped) = (0, 0, 0);
    for ns in [&h1.ns, &h2.ns] {
        let m = scrape(ns).unwrap();
        let p = |x: &str| value(&m, &format!("{}{{crossing=\"{x}\"}}", name::CROSSING_PACKETS));
        reached += p("tun_read") + p("udp_recv");
        forwarded += p("udp_send") + p("tun_write");
        dropped += drops(&m).values().sum::<u64>();
    }
    assert!(reached > u.received, "{mode}: {reached}");
    assert_eq!(reached, forwarded + dropped, "{mode}: reached {reached} != forwarded {forwarded} + dropped {dropped}");
}

#[test]
fn soak_accounting_naive() {
    accounting("naive");
}

#[test]
fn soak_accounting_batched() {
    accounting("batched");
}

#[test]
fn soak_accounting_offload() {
    accounting("offload");
}

#[test]
fn restart_with_persist_tun_keeps_everything_and_bounds_the_outage() {
    let mut c = cluster("restart", r#"{"Type":"udp"}"#, &["--persist-tun"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let addr_before = String::from_utf8(
        weft::lab::topology::ns_exec(&h1.ns, &["ip", "-4", "addr", "show", "flannel0"]).unwrap().stdout,
    )
    .unwrap();
    let env_before = std::fs::read_to_string(c.subnet_file(0)).unwrap();
    let (srv, ip, cli) = (h2.container_ns.clone(), h2.container_ip, h1.container_ns.clone());
    let stream =
        std::thread::spawn(move || udp_stream_outage(&srv, ip, &cli, Duration::from_secs(3), Duration::from_millis(1)));
    std::thread::sleep(Duration::from_millis(1000));
    let st = c.procs[0].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
    assert!(st.success());
    assert!(has_link(&h1.ns, "flannel0"), "--persist-tun keeps the TUN");
    c.start_host(bin(), 0, &["--persist-tun".into()]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    let r = stream.join().unwrap().unwrap();
    eprintln!(
        "restart outage with --persist-tun: {:.1} ms without delivery, {} of {} requests lost",
        r.max_gap_ms,
        r.sent - r.answered,
        r.sent
    );
    assert!(r.answered > 0 && r.sent > 1000, "{r:?}");
    assert!(r.max_gap_ms < 1000.0, "outage of {:.0} ms", r.max_gap_ms);
    let addr_after = String::from_utf8(
        weft::lab::topology::ns_exec(&h1.ns, &["ip", "-4", "addr", "show", "flannel0"]).unwrap().stdout,
    )
    .unwrap();
    let strip = |s: &str| s.lines().filter(|l| l.contains("inet ")).map(str::trim).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&addr_before), strip(&addr_after), "addresses changed");
    assert_eq!(env_before, std::fs::read_to_string(c.subnet_file(0)).unwrap(), "lease changed");
    // Without --persist-tun the device goes at exit.
    c.procs[0].stop(Duration::from_secs(5)).unwrap();
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    c.procs[0].stop(Duration::from_secs(5)).unwrap();
    assert!(!has_link(&h1.ns, "flannel0"));
}

fn http_get(ns: &str, port: u16, path: &str) -> (u16, String) {
    let (ns, path) = (ns.to_string(), path.to_string());
    std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, r)
    })
    .join()
    .unwrap()
}

#[test]
fn metrics_healthz_and_readyz() {
    let c = cluster(
        "endpoints",
        r#"{"Type":"udp"}"#,
        &["--healthz-ip", "127.0.0.1", "--healthz-port", "9200", "--metrics-addr", "127.0.0.1:9100"],
    );
    let h1 = c.topo.hosts[0].clone();
    assert!(ping(&h1.container_ns, c.topo.hosts[1].container_ip, 1));
    assert_eq!(http_get(&h1.ns, 9200, "/healthz").0, 200);
    assert_eq!(http_get(&h1.ns, 9200, "/readyz").0, 200);
    assert_eq!(http_get(&h1.ns, 9200, "/nope").0, 404);
    // flanneld's --healthz-port serves health only; the counters are on --metrics-addr.
    assert_eq!(http_get(&h1.ns, 9200, "/metrics").0, 404);
    let (code, body) = http_get(&h1.ns, 9100, "/metrics");
    assert_eq!(code, 200);
    for want in [
        "weft_crossing_packets_total{crossing=\"tun_read\"}",
        "weft_drops_total{reason=\"unknown_sender\"}",
        "weft_peers 1",
        // No --mode: auto, which takes offload on a kernel whose TUN accepts TSO.
        "weft_ready{dataplane=\"userspace/offload\"} 1",
        "weft_lease_expiry_timestamp_seconds",
    ] {
        assert!(body.contains(want), "{want} missing:\n{body}");
    }
}
