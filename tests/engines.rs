//! Every engine, both backends: byte-exact TCP (200 MB each way), small verified UDP, ICMP of
//! mixed sizes (fragmented too), net-unreachable, the offload and uring engines against a kernel
//! VXLAN peer set up as flanneld does, and both with GSO sends turned off.

mod common;

use common::traffic::{udp_gso_burst, udp_probe_error};
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use weft::control::metrics::name;
use weft::lab::measure::{Samples, scrape};
use weft::lab::topology::ns_exec;
use weft::lab::traffic::udp_flood;

const MB200: u64 = 200 << 20;

fn ping_sizes(ns: &str, dst: std::net::Ipv4Addr) {
    for size in ["56", "1000", "1400", "3000", "9000"] {
        let out = ns_exec(ns, &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", "-s", size, &dst.to_string()])
            .unwrap();
        assert!(out.status.success(), "ping -s {size} {dst}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// What a host's counter `metric` on `crossing` grew by between two scrapes.
fn crossing_delta(before: &Samples, after: &Samples, metric: &str, crossing: &str) -> f64 {
    let key = format!("{metric}{{crossing=\"{crossing}\"}}");
    after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
}

/// Packets per call on `crossing` between two scrapes of one host: per syscall, or for the
/// uring engine per io_uring request (its sends and writes make no syscall of their own).
fn packets_per_call(before: &Samples, after: &Samples, crossing: &str, mode: &str) -> f64 {
    let calls = if mode == "uring" { name::CROSSING_REQUESTS } else { name::CROSSING_SYSCALLS };
    let n = crossing_delta(before, after, calls, crossing);
    assert!(n > 0.0, "{mode}: no {calls} on {crossing}");
    crossing_delta(before, after, name::CROSSING_PACKETS, crossing) / n
}

fn suite(tag: &str, backend: &str, mode: &str) {
    let c = cluster(tag, backend, &["--mode", mode, "--metrics-addr", "127.0.0.1:9100"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    ping_sizes(&h1.container_ns, h2.container_ip);
    ping_sizes(&h2.container_ns, h1.container_ip);
    tcp_both_ways(&c, MB200);
    let before = [scrape(&h1.ns).unwrap(), scrape(&h2.ns).unwrap()];
    let u = udp_flood(&h2.container_ns, h2.container_ip, &h1.container_ns, Duration::from_millis(500)).unwrap();
    assert!(u.received > 0 && u.bad == 0, "{mode}/{backend}: {u:?}");
    if mode != "naive" {
        // The flood's datagrams leave host 1 in GSO runs and enter host 2's TUN in USO runs.
        let per_call = |host: usize, crossing: &str| {
            packets_per_call(&before[host], &scrape(&c.topo.hosts[host].ns).unwrap(), crossing, mode)
        };
        let (sent, written) = (per_call(0, "udp_send"), per_call(1, "tun_write"));
        assert!(
            sent > 4.0 && written > 4.0,
            "{mode}/{backend}: {sent:.1} datagrams per send, {written:.1} per TUN write"
        );
    }
    if mode == "offload" || mode == "uring" {
        // A sender using UDP_SEGMENT (as QUIC stacks do): with USO the TUN hands each of its
        // 40-datagram sends to weft as one super-packet, which weft cuts into the same datagrams.
        let before = scrape(&h1.ns).unwrap();
        let g = udp_gso_burst(&h2.container_ns, h2.container_ip, &h1.container_ns, 20, 40, 1200).unwrap();
        assert!(g.received == 800 && g.bad == 0, "{backend}: UDP GSO datagrams lost or damaged: {g:?}");
        // Super-packets of 40 read back to back leave as GSO sends of up to 52–53 (one's tail
        // leads the next one's first send), and still in order.
        assert_eq!(g.reordered, 0, "{backend}: UDP GSO datagrams reordered: {g:?}");
        let per_read = packets_per_call(&before, &scrape(&h1.ns).unwrap(), "tun_read", mode);
        assert!(per_read > 4.0, "{backend}: {per_read:.1} datagrams per TUN read: no USO super-packets");
    }
    let err = udp_probe_error(&h1.container_ns, "100.96.77.2:9".parse::<SocketAddr>().unwrap(), Duration::from_secs(3))
        .unwrap()
        .expect("an ICMP error");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{mode}/{backend}: {err}");
}

#[test]
fn batched_udp() {
    suite("batudp", r#"{"Type":"udp"}"#, "batched");
}

#[test]
fn batched_vxlan() {
    suite("batvx", r#"{"Type":"vxlan"}"#, "batched");
}

#[test]
fn offload_udp() {
    suite("offudp", r#"{"Type":"udp"}"#, "offload");
}

#[test]
fn offload_vxlan() {
    suite("offvx", r#"{"Type":"vxlan"}"#, "offload");
}

#[test]
fn uring_udp() {
    suite("urudp", r#"{"Type":"udp"}"#, "uring");
}

#[test]
fn uring_vxlan() {
    suite("urvx", r#"{"Type":"vxlan"}"#, "uring");
}

#[test]
fn offload_vxlan_with_a_kernel_vxlan_peer() {
    with_a_kernel_vxlan_peer("offkern", "offload");
}

#[test]
fn uring_vxlan_with_a_kernel_vxlan_peer() {
    with_a_kernel_vxlan_peer("urkern", "uring");
}

/// `--no-udp-gso`: the offload engine still reads and cuts super-packets, but sends every
/// datagram with its own `sendmsg`, the path it falls back to when the kernel refuses GSO; all
/// of it still byte-exact.
#[test]
fn offload_vxlan_without_udp_gso() {
    without_udp_gso("offnogso", "offload");
}

/// The same for the uring engine: one datagram per queued send.
#[test]
fn uring_vxlan_without_udp_gso() {
    without_udp_gso("urnogso", "uring");
}

fn without_udp_gso(tag: &str, mode: &str) {
    let c = cluster(tag, r#"{"Type":"vxlan"}"#, &["--mode", mode, "--no-udp-gso", "--metrics-addr", "127.0.0.1:9100"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    ping_sizes(&h1.container_ns, h2.container_ip);
    tcp_both_ways(&c, MB200);
    // Host 1 sends 20 MB: its TUN reads still return super-packets, its sends one datagram each
    // (the data segments; the few small packets that leave in sendmmsg batches count too).
    let before = scrape(&h1.ns).unwrap();
    let amount = weft::lab::traffic::Amount::Bytes(20 << 20);
    let r = weft::lab::traffic::tcp_bulk(
        &h2.container_ns,
        h2.container_ip,
        &h1.container_ns,
        1,
        amount,
        Duration::from_secs(60),
        None,
    )
    .unwrap_or_else(|e| panic!("{mode}: TCP without GSO: {e}\n{}", c.logs()));
    assert_eq!(r.bytes, 20 << 20);
    let after = scrape(&h1.ns).unwrap();
    let per_read = packets_per_call(&before, &after, "tun_read", mode);
    let per_send = packets_per_call(&before, &after, "udp_send", mode);
    assert!(per_read > 4.0, "{mode}: {per_read:.1} segments per TUN read: no super-packets");
    let sent = crossing_delta(&before, &after, name::CROSSING_PACKETS, "udp_send");
    assert!(sent > 14_000.0 && per_send < 1.5, "{mode}: {per_send:.2} datagrams per send without GSO ({sent} sent)");
}

fn with_a_kernel_vxlan_peer(tag: &str, mode: &str) {
    let mut c = cluster(tag, r#"{"Type":"vxlan"}"#, &["--mode", mode]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    c.procs[1].stop(Duration::from_secs(5)).unwrap();
    c.start_host(bin(), 1, &["--dataplane".into(), "kernel".into()]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    // A real NIC completes the kernel sender's partial inner checksums (see vxlan_backend.rs).
    assert!(ns_exec(&h2.ns, &["ethtool", "-K", "eth0", "tx", "off"]).unwrap().status.success());
    ping_sizes(&h1.container_ns, h2.container_ip);
    tcp_both_ways(&c, MB200);
}

/// `--threads 2 --flow-ports 16`: each worker sends from 16 ports, each inner flow from one of
/// them, so that the peer's SO_REUSEPORT group spreads flows over both of its workers (not only
/// senders); every flow keeps one path, so none is reordered, and TCP stays byte-exact.
#[test]
fn flows_spread_over_workers_and_keep_their_order() {
    flows_spread("flowsoff", "offload");
}

/// The same with the batched engine, whose every datagram goes through the per-socket sends.
#[test]
fn flows_spread_with_the_batched_engine() {
    flows_spread("flowsbat", "batched");
}

/// The same with the uring engine, whose sends are queued on the ring per socket.
#[test]
fn flows_spread_with_the_uring_engine() {
    flows_spread("flowsur", "uring");
}

fn flows_spread(tag: &str, mode: &str) {
    let args = ["--mode", mode, "--threads", "2", "--flow-ports", "16", "--metrics-addr", "127.0.0.1:9100"];
    let c = cluster(tag, r#"{"Type":"vxlan"}"#, &args);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let ss = ns_exec(&h1.ns, &["ss", "-uanH"]).unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    let from = h1.underlay_ip.to_string();
    let ours = ss.lines().filter(|l| l.split_whitespace().nth(3).is_some_and(|a| a.starts_with(&from))).count();
    assert_eq!(ours, 2 + 2 * 16, "two receiving sockets and 16 sending ones per worker:\n{ss}");
    let before = scrape(&h2.ns).unwrap();
    let streams = 16;
    let r = weft::lab::traffic::tcp_bulk(
        &h2.container_ns,
        h2.container_ip,
        &h1.container_ns,
        streams,
        weft::lab::traffic::Amount::Bytes(4 << 20),
        Duration::from_secs(120),
        None,
    )
    .unwrap_or_else(|e| panic!("{streams} streams: {e}\n{}", c.logs()));
    assert_eq!(r.bytes, u64::try_from(streams).unwrap() * (4 << 20), "{r:?}");
    let after = scrape(&h2.ns).unwrap();
    let received = |w: usize| {
        let key = format!("{}{{worker=\"{w}\",crossing=\"udp_recv\"}}", name::WORKER_PACKETS);
        after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
    };
    let (w0, w1) = (received(0), received(1));
    eprintln!("{mode}, {streams} streams: host 2's workers received {w0} and {w1} datagrams");
    assert!(w0 > 0.0 && w1 > 0.0, "{mode}: both of host 2's workers receive: {w0} and {w1} datagrams");
    // One flow: one sending port, one receiving worker, so it arrives in the order it was sent.
    let u = udp_flood(&h2.container_ns, h2.container_ip, &h1.container_ns, Duration::from_millis(500)).unwrap();
    assert!(u.received > 0 && u.bad == 0 && u.reordered == 0, "{mode}: {u:?}");
    tcp_both_ways(&c, MB200);
}

/// `--threads 2`: a TUN with two queues and two SO_REUSEPORT sockets per host (plus one sending
/// socket per worker), each worker with one engine thread (uring: one per direction), a second
/// weft refused, and the whole suite still byte-exact.
fn multi_queue(tag: &str, backend: &str, mode: &str, tun: &str, port: &str) {
    let c = cluster(tag, backend, &["--mode", mode, "--threads", "2"]);
    let per_worker = if mode == "uring" { 2 } else { 1 };
    for p in &c.procs {
        let pid = p.pid().expect("weft is running");
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .collect();
        let engine = threads.iter().filter(|t| t.starts_with(&format!("weft-{mode}"))).count();
        assert_eq!(engine, 2 * per_worker, "{mode}: engine threads of two workers: {threads:?}");
    }
    for h in &c.topo.hosts {
        let q = ns_exec(&h.ns, &["ls", &format!("/sys/class/net/{tun}/queues")]).unwrap();
        let queues = String::from_utf8_lossy(&q.stdout);
        assert_eq!(queues.split_whitespace().filter(|q| q.starts_with("tx-")).count(), 2, "{}: {queues}", h.ns);
        let ss = ns_exec(&h.ns, &["ss", "-uanH"]).unwrap();
        let ss = String::from_utf8_lossy(&ss.stdout);
        let on_port = ss.lines().filter(|l| l.split_whitespace().nth(3).is_some_and(|a| a.ends_with(port))).count();
        assert_eq!(on_port, 2, "{}: two sockets on {port}:\n{ss}", h.ns);
        let from = h.underlay_ip.to_string();
        let senders = ss.lines().filter(|l| l.split_whitespace().nth(3).is_some_and(|a| a.starts_with(&from))).count();
        assert_eq!(senders, 4, "{}: two receiving and two sending sockets:\n{ss}", h.ns);
    }
    // A second weft on host 1 must not join the running one's reuseport group and TUN queues.
    let mut args: Vec<String> = c.host_args(0);
    let sf = args.iter().position(|a| a == "--subnet-file").unwrap() + 1;
    args[sf] = format!("{}.second", args[sf]);
    args.extend(["--mode", mode, "--threads", "2"].map(String::from));
    let mut cmd = vec!["timeout", "20", bin().to_str().unwrap(), "run"];
    cmd.extend(args.iter().map(String::as_str));
    let second = ns_exec(&c.topo.hosts[0].ns, &cmd).unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "second weft: {err}");
    assert!(err.contains("is another weft running?"), "{err}");
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    ping_sizes(&h1.container_ns, h2.container_ip);
    tcp_both_ways(&c, MB200);
    let u = udp_flood(&h2.container_ns, h2.container_ip, &h1.container_ns, Duration::from_millis(500)).unwrap();
    assert!(u.received > 0 && u.bad == 0, "{mode}/{backend}: {u:?}");
}

#[test]
fn multi_queue_batched_udp() {
    multi_queue("mqbat", r#"{"Type":"udp"}"#, "batched", "flannel0", ":8285");
}

#[test]
fn multi_queue_offload_vxlan() {
    multi_queue("mqoff", r#"{"Type":"vxlan"}"#, "offload", "weft.1", ":8472");
}

#[test]
fn multi_queue_uring_vxlan() {
    multi_queue("mqur", r#"{"Type":"vxlan"}"#, "uring", "weft.1", ":8472");
}
