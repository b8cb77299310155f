//! The vxlan backend: weft ↔ weft, and weft ↔ a kernel VXLAN device set up exactly as flanneld
//! sets up flannel.1 (neighbour, fdb, route, in that order), in both directions.

mod common;

use common::*;
use std::time::Duration;
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::topology::{Host, UNDERLAY_IF, ip, ns_exec};

use weft::proto::lease::LeaseAttrs;
use weft::proto::mac::MacAddr;

const MB50: u64 = 50 << 20;

fn lease_of(c: &Cluster, h: &Host) -> LeaseAttrs {
    let key = format!("{}-{}", h.subnet.network(), h.subnet.prefix_len());
    LeaseAttrs::parse(&std::fs::read_to_string(c.registry.path().join("subnets").join(key)).unwrap()).unwrap()
}

#[test]
fn weft_to_weft_ping_and_tcp() {
    let c = cluster("vxww", r#"{"Type":"vxlan"}"#, &[]);
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    assert!(ping(&h1.container_ns, h2.container_ip, 3), "{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 3), "{}", c.logs());
    tcp_both_ways(&c, MB50);
    let env = std::fs::read_to_string(c.subnet_file(0)).unwrap();
    assert!(env.contains("FLANNEL_MTU=1450"), "vxlan MTU = 1500 - 50: {env}");
}

#[test]
fn weft_to_weft_on_port_4789() {
    let c = cluster("vx4789", r#"{"Type":"vxlan","Port":4789,"VNI":4096}"#, &[]);
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{}", c.logs());
    let ss = String::from_utf8(ns_exec(&h1.ns, &["ss", "-uln"]).unwrap().stdout).unwrap();
    assert!(ss.contains("198.18.0.1:4789"), "{ss}");
}

#[test]
fn vtep_mac_is_kept_when_the_lease_is_reused() {
    let mut c = cluster("vxmac", r#"{"Type":"vxlan"}"#, &[]);
    let h1 = c.topo.hosts[0].clone();
    let before = lease_of(&c, &h1).vxlan_data().unwrap();
    c.procs[0].stop(Duration::from_secs(5)).unwrap();
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    let after = lease_of(&c, &h1).vxlan_data().unwrap();
    assert_eq!(before, after);
    assert!(after.vtep_mac.is_unicast() && after.vtep_mac.0[0] & 2 == 2);
}

/// Programs host `h` as flanneld's vxlan backend would, for one remote lease.
fn kernel_flannel(h: &Host, own_mac: MacAddr, vni: u32, port: u16, remote: &Host, remote_mac: MacAddr) {
    let ns = h.ns.as_str();
    let dev = format!("flannel.{vni}");
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        &dev,
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "local",
        &h.underlay_ip.to_string(),
        "dev",
        UNDERLAY_IF,
        "dstport",
        &port.to_string(),
        "nolearning",
    ])
    .unwrap();
    ip(&["-n", ns, "link", "set", &dev, "address", &own_mac.to_string(), "mtu", "1450", "up"]).unwrap();
    ip(&["-n", ns, "addr", "add", &format!("{}/32", h.subnet.network()), "dev", &dev]).unwrap();
    let gw = remote.subnet.network().to_string();
    ip(&["-n", ns, "neigh", "replace", &gw, "lladdr", &remote_mac.to_string(), "dev", &dev, "nud", "permanent"])
        .unwrap();
    let out = ns_exec(
        ns,
        &["bridge", "fdb", "append", &remote_mac.to_string(), "dev", &dev, "dst", &remote.underlay_ip.to_string()],
    )
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ip(&["-n", ns, "route", "add", &remote.subnet.to_string(), "via", &gw, "dev", &dev, "onlink"]).unwrap();
}

fn mixed_pair(tag: &str, backend: &str, vni: u32, port: u16) {
    require_privileges();
    let spec = ClusterSpec { skip_hosts: vec![1], ..ClusterSpec::two_hosts(tag, backend) };
    let c = Cluster::start(bin(), &spec, Duration::from_secs(15)).unwrap();
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let weft_mac = lease_of(&c, &h1).vxlan_data().unwrap().vtep_mac;
    let kernel_mac = lease_of(&c, &h2).vxlan_data().unwrap().vtep_mac;
    kernel_flannel(&h2, kernel_mac, vni, port, &h1, weft_mac);
    // A kernel VXLAN sender leaves inner TCP checksums CHECKSUM_PARTIAL for the NIC to finish.
    // A veth never finishes them, and a user-space receiver sees only bytes, so make the kernel
    // host's underlay behave like a real NIC: checksums completed before the wire.
    let out =
        ns_exec(&h2.ns, &["ethtool", "-K", UNDERLAY_IF, "tx", "off"]).expect("ethtool runs (apt-get install ethtool)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ping(&h1.container_ns, h2.container_ip, 3), "weft → kernel\n{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 3), "kernel → weft\n{}", c.logs());
    tcp_both_ways(&c, MB50);
}

#[test]
fn weft_and_kernel_flannel_interoperate() {
    mixed_pair("vxkern", r#"{"Type":"vxlan"}"#, 1, 8472);
}

#[test]
fn weft_and_kernel_flannel_interoperate_on_4789() {
    mixed_pair("vxkern4789", r#"{"Type":"vxlan","Port":4789}"#, 1, 4789);
}

/// A dual-stack lease as flanneld writes it (key `v4-len&v6-len`, value with `PublicIPv6` and
/// `BackendV6Data`) is read as it is written, left unchanged, and its IPv4 part routed: here to a
/// kernel VXLAN node set up as flanneld sets up flannel.1. (weft refuses a net-config with
/// `EnableIPv6` for now; this pins the lease reading that dual-stack support builds on.)
#[test]
fn a_dual_stack_lease_written_by_flanneld_is_followed_over_ipv4() {
    require_privileges();
    let spec = ClusterSpec { skip_hosts: vec![1], ..ClusterSpec::two_hosts("vxdual", r#"{"Type":"vxlan"}"#) };
    let c = Cluster::start(bin(), &spec, Duration::from_secs(15)).unwrap();
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let weft_mac = lease_of(&c, &h1).vxlan_data().unwrap().vtep_mac;
    let kernel_mac = lease_of(&c, &h2).vxlan_data().unwrap().vtep_mac;
    let subnets = c.registry.path().join("subnets");
    let v4_key = format!("{}-{}", h2.subnet.network(), h2.subnet.prefix_len());
    let dual_key = format!("{v4_key}&2001:db8:0:2::-64");
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{kernel_mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{kernel_mac}"}}}}"#,
        h2.underlay_ip
    );
    weft::control::registry::dir::write_atomic(&subnets.join(&dual_key), value.as_bytes()).unwrap();
    std::fs::remove_file(subnets.join(&v4_key)).unwrap();
    kernel_flannel(&h2, kernel_mac, 1, 8472, &h1, weft_mac);
    let out = ns_exec(&h2.ns, &["ethtool", "-K", UNDERLAY_IF, "tx", "off"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(5), || ping(&h1.container_ns, h2.container_ip, 1)),
        "weft → kernel over the dual-stack lease\n{}",
        c.logs()
    );
    assert!(ping(&h2.container_ns, h1.container_ip, 2), "kernel → weft\n{}", c.logs());
    tcp_both_ways(&c, MB50);
    // The lease is left as flanneld wrote it.
    assert_eq!(std::fs::read_to_string(subnets.join(&dual_key)).unwrap(), value);
    assert!(!c.logs().contains("ignoring lease"), "{}", c.logs());
}
