//! Dual-stack networks (`EnableIPv6`): IPv6 pods reach each other through weft over the IPv4
//! underlay, for every engine and both backends, while IPv4 keeps working; the leases and
//! subnet.env carry the IPv6 subnets as flanneld writes them; a packet to an unleased IPv6
//! subnet is answered with ICMPv6 no-route.

mod common;

use common::*;
use std::time::Duration;
use weft::control::metrics::name;
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::measure::scrape;
use weft::lab::topology::ns_exec;
use weft::lab::traffic::{Amount, tcp_bulk};
use weft::proto::subnet_env::SubnetEnv;

const MB: u64 = 1 << 20;

fn dual_cluster(tag: &str, backend: &str, args: &[&str]) -> Cluster {
    require_privileges();
    let spec = ClusterSpec {
        dual_stack: true,
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..ClusterSpec::two_hosts(tag, backend)
    };
    Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster starts")
}

/// ping6 of several sizes and 20 MB of verified TCP over IPv6 each way, and IPv4 beside it.
fn both_families(c: &Cluster, what: &str) {
    ipv6_traffic(c, what);
    // IPv4 still flows on the same network.
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{what}: IPv4 broke\n{}", c.logs());
    tcp_both_ways(c, 5 * MB);
}

fn suite(tag: &str, backend: &str, mode: &str) {
    let c = dual_cluster(tag, backend, &["--mode", mode, "--metrics-addr", "127.0.0.1:9100"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    both_families(&c, &format!("{mode}/{backend}"));
    if mode == "offload" {
        // TSO6 on host 1: the TUN hands IPv6 TCP over as super-packets, many segments per
        // read; GRO on host 2: the segments go into its TUN merged, many per write.
        let before = [scrape(&h1.ns).unwrap(), scrape(&h2.ns).unwrap()];
        let r = tcp_bulk(
            &h2.container_ns,
            h2.container_ip6,
            &h1.container_ns,
            1,
            Amount::Bytes(20 * MB),
            Duration::from_secs(60),
            None,
        )
        .unwrap();
        assert_eq!(r.bytes, 20 * MB);
        let after = [scrape(&h1.ns).unwrap(), scrape(&h2.ns).unwrap()];
        let per_call = |host: usize, crossing: &str| {
            let delta = |m: &str| {
                let key = format!("{m}{{crossing=\"{crossing}\"}}");
                after[host].get(&key).copied().unwrap_or(0.0) - before[host].get(&key).copied().unwrap_or(0.0)
            };
            delta(name::CROSSING_PACKETS) / delta(name::CROSSING_SYSCALLS).max(1.0)
        };
        let (read, written) = (per_call(0, "tun_read"), per_call(1, "tun_write"));
        assert!(read > 4.0, "{backend}: {read:.1} IPv6 segments per TUN read: no TSO6 super-packets");
        assert!(written > 4.0, "{backend}: {written:.1} IPv6 segments per TUN write: no GSO_TCPV6 writes");
        // USO6: a UDP_SEGMENT sender's IPv6 super-packets are cut into the same datagrams.
        let g =
            common::traffic::udp_gso_burst(&h2.container_ns, h2.container_ip6, &h1.container_ns, 20, 40, 1200).unwrap();
        assert!(g.received == 800 && g.bad == 0 && g.reordered == 0, "{backend}: IPv6 UDP GSO: {g:?}");
    }
    // An unleased IPv6 subnet: the TUN answers with ICMPv6 destination unreachable.
    let out = ns_exec(&h1.container_ns, &["ping", "-6", "-n", "-c", "1", "-W", "2", "2001:db8:96:77::2"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("Destination unreachable"), "{mode}/{backend}: {text}");
    let m = scrape(&h1.ns).unwrap();
    let no_route = m.get(&format!("{}{{reason=\"no_route\"}}", name::DROPS)).copied().unwrap_or(0.0);
    assert!(no_route >= 1.0, "{mode}/{backend}: the unrouted ping6 is not counted: {m:?}");
    // Nothing was dropped for being IPv6, and nothing damaged or foreign arrived.
    for h in [&h1, &h2] {
        let m = scrape(&h.ns).unwrap();
        for reason in ["ipv6", "bad_ip_header", "truncated", "foreign_source", "not_for_us", "too_short"] {
            let key = format!("{}{{reason=\"{reason}\"}}", name::DROPS);
            assert_eq!(m.get(&key).copied().unwrap_or(0.0), 0.0, "{mode}/{backend}: {key} on {}", h.ns);
        }
    }
}

/// The kernel paths as flanneld programs them for IPv6: host-gw routes via each peer's
/// PublicIPv6, and `flannel-v6.<VNI>` over the IPv6 underlay with its neighbour, fdb and route
/// per peer.
fn kernel_suite(tag: &str, backend: &str) {
    let c = dual_cluster(tag, backend, &["--dataplane", "kernel"]);
    both_families(&c, backend);
    ipv6_kernel_routes(&c, backend);
}

#[test]
fn kernel_host_gw() {
    kernel_suite("d6hg", r#"{"Type":"host-gw"}"#);
}

#[test]
fn kernel_vxlan() {
    kernel_suite("d6kv", r#"{"Type":"vxlan"}"#);
}

/// A kernel-path node announces the PublicIPv6 it takes IPv6 on; a userspace node announces
/// none (it carries IPv6 over the IPv4 underlay). Side by side, each routes the other's IPv4
/// subnet, says why it does not route the IPv6 one, and a ping6 gets "unreachable" at once
/// instead of vanishing.
#[test]
fn kernel_and_userspace_nodes_share_ipv4_and_refuse_each_others_ipv6_aloud() {
    require_privileges();
    let spec = ClusterSpec {
        dual_stack: true,
        skip_hosts: vec![0, 1],
        ..ClusterSpec::two_hosts("d6mix", r#"{"Type":"vxlan"}"#)
    };
    let mut c = Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster builds");
    c.start_host(bin(), 0, &["--dataplane".into(), "kernel".into()]).unwrap();
    c.start_host(bin(), 1, &["--mode".into(), "offload".into()]).unwrap();
    c.wait_ready(Duration::from_secs(15)).unwrap();
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let lease = |h: &weft::lab::topology::Host| {
        let key = format!("{}-24&{}-64", h.subnet.network(), h.subnet6.network());
        std::fs::read_to_string(c.registry.path().join("subnets").join(key)).unwrap()
    };
    assert!(lease(&h1).contains(&format!(r#""PublicIPv6":"{}""#, h1.underlay_ip6)), "{}", lease(&h1));
    assert!(lease(&h2).contains(r#""PublicIPv6":null"#), "{}", lease(&h2));
    // A real NIC completes the kernel sender's partial inner checksums (see vxlan_backend.rs).
    assert!(ns_exec(&h1.ns, &["ethtool", "-K", "eth0", "tx", "off"]).unwrap().status.success());
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "IPv4 kernel → userspace\n{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 2), "IPv4 userspace → kernel\n{}", c.logs());
    tcp_both_ways(&c, 5 * MB);
    for (from, to) in [(&h1, &h2), (&h2, &h1)] {
        let out =
            ns_exec(&from.container_ns, &["ping", "-6", "-n", "-c", "1", "-W", "2", &to.container_ip6.to_string()])
                .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && text.contains("nreachable"), "{} → {}: {text}", from.ns, to.ns);
    }
    assert!(
        eventually(Duration::from_secs(5), || c.logs().matches("routing its IPv4 subnet only").count() == 2),
        "{}",
        c.logs()
    );
}

/// With no leases written beforehand, each node leases a pair of subnets as flanneld does
/// (`v4-len&v6-len`), writes both into subnet.env, and reuses the pair when it restarts.
#[test]
fn dual_stack_leases_are_acquired_written_and_reused() {
    require_privileges();
    let spec =
        ClusterSpec { dual_stack: true, preseed: false, ..ClusterSpec::two_hosts("d6lease", r#"{"Type":"vxlan"}"#) };
    let mut c = Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster starts");
    let dir = c.registry.path().join("subnets");
    let keys = || -> Vec<String> {
        let mut k: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        k.sort();
        k
    };
    let before = keys();
    assert_eq!(before.len(), 2, "{before:?}");
    for key in &before {
        let (v4, v6) = key.split_once('&').unwrap_or_else(|| panic!("{key} is not a dual-stack key"));
        assert!(v4.starts_with("100.96.") && v4.ends_with("-24"), "{key}");
        assert!(v6.starts_with("2001:db8:96:") && v6.ends_with("::-64"), "{key}");
        let value = std::fs::read_to_string(dir.join(key)).unwrap();
        // The userspace path carries IPv6 over the IPv4 underlay and announces no PublicIPv6.
        assert!(value.contains(r#""PublicIPv6":null"#), "{value}");
        assert!(value.contains(r#""BackendV6Data":{"VNI":1,"VtepMAC":""#), "{value}");
    }
    let env = |path: std::path::PathBuf| SubnetEnv::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let e = env(c.subnet_file(0));
    let v6 = e.ipv6.expect("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET are written");
    assert_eq!(v6.network.to_string(), "2001:db8:96::/48");
    assert!(before.iter().any(|k| k.ends_with(&format!("&{}-64", v6.subnet.trunc().network()))), "{before:?} {v6:?}");
    // The pods of this test have fixed addresses, not the leased ones: only the leases matter.
    c.procs[0].stop(Duration::from_secs(5)).unwrap();
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(15)).unwrap();
    assert_eq!(keys(), before, "a restart reuses its pair");
    assert_eq!(env(c.subnet_file(0)), e);
}

#[test]
fn naive_udp() {
    suite("d6nu", r#"{"Type":"udp"}"#, "naive");
}

#[test]
fn batched_udp() {
    suite("d6bu", r#"{"Type":"udp"}"#, "batched");
}

#[test]
fn offload_udp() {
    suite("d6ou", r#"{"Type":"udp"}"#, "offload");
}

#[test]
fn uring_udp() {
    suite("d6uu", r#"{"Type":"udp"}"#, "uring");
}

#[test]
fn naive_vxlan() {
    suite("d6nv", r#"{"Type":"vxlan"}"#, "naive");
}

#[test]
fn batched_vxlan() {
    suite("d6bv", r#"{"Type":"vxlan"}"#, "batched");
}

#[test]
fn offload_vxlan() {
    suite("d6ov", r#"{"Type":"vxlan"}"#, "offload");
}

#[test]
fn uring_vxlan() {
    suite("d6uv", r#"{"Type":"vxlan"}"#, "uring");
}
