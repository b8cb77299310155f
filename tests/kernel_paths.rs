//! Kernel data paths programmed by weft's control plane: host-gw, and kernel VXLAN next to a
//! userspace-VXLAN weft (a host switched between the two by a restart).

mod common;

use common::*;
use std::time::Duration;
use weft::lab::topology::{UNDERLAY_IF, ns_exec};
use weft::lab::traffic::{Amount, tcp_bulk};

fn out(ns: &str, cmd: &[&str]) -> String {
    String::from_utf8(ns_exec(ns, cmd).unwrap().stdout).unwrap()
}

#[test]
fn host_gw_pair_routes_and_unroutes() {
    let mut c = cluster("hostgw", r#"{"Type":"host-gw"}"#, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{}", c.logs());
    let r = tcp_bulk(
        &h2.container_ns,
        h2.container_ip,
        &h1.container_ns,
        1,
        Amount::Bytes(50 << 20),
        Duration::from_secs(60),
        None,
    )
    .unwrap();
    assert_eq!(r.bytes, 50 << 20);
    let route = out(&h1.ns, &["ip", "route", "show", "100.96.2.0/24"]);
    assert!(route.contains("via 198.18.0.2"), "{route}");
    // Host 2 leaves and its lease is removed: exactly its route goes.
    c.procs[1].stop(Duration::from_secs(5)).unwrap();
    std::fs::remove_file(c.registry.path().join("subnets/100.96.2.0-24")).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || out(&h1.ns, &["ip", "route", "show", "100.96.2.0/24"]).is_empty()),
        "{}",
        c.logs()
    );
    assert!(out(&h1.ns, &["ip", "route", "show", "100.96.1.0/24"]).contains("veth-c"));
    // Shutdown removes what weft installed and nothing else.
    let before = out(&h1.ns, &["ip", "route"]);
    c.procs[0].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
    assert_eq!(before, out(&h1.ns, &["ip", "route"]), "no host-gw routes were left to remove");
}

#[test]
fn kernel_vxlan_and_userspace_vxlan_talk_and_a_host_can_switch() {
    let mut c = cluster("kvx", r#"{"Type":"vxlan"}"#, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    // Switch host 2 to the kernel data path by restarting weft.
    c.procs[1].stop(Duration::from_secs(5)).unwrap();
    c.start_host(bin(), 1, &["--dataplane".into(), "kernel".into()]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    // A kernel VXLAN sender leaves inner checksums partial for the NIC (see vxlan_backend.rs).
    assert!(ns_exec(&h2.ns, &["ethtool", "-K", UNDERLAY_IF, "tx", "off"]).unwrap().status.success());
    let link = out(&h2.ns, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains("vxlan id 1")
            && link.contains("dstport 8472")
            && link.contains("nolearning")
            && link.contains("mtu 1450"),
        "{link}"
    );
    let mac1 = weft::proto::lease::LeaseAttrs::parse(
        &std::fs::read_to_string(c.registry.path().join("subnets/100.96.1.0-24")).unwrap(),
    )
    .unwrap()
    .vxlan_data()
    .unwrap()
    .vtep_mac
    .to_string();
    let neigh = out(&h2.ns, &["ip", "neigh", "show", "dev", "flannel.1"]);
    assert!(neigh.contains(&format!("100.96.1.0 lladdr {mac1} PERMANENT")), "{neigh}");
    let fdb = out(&h2.ns, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    assert!(fdb.contains(&format!("{mac1} dst 198.18.0.1")), "{fdb}");
    let route = out(&h2.ns, &["ip", "route", "show", "100.96.1.0/24"]);
    assert!(route.starts_with("100.96.1.0/24 via 100.96.1.0 dev flannel.1") && route.contains("onlink"), "{route}");
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "userspace → kernel\n{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 2), "kernel → userspace\n{}", c.logs());
    tcp_both_ways(&c, 50 << 20);
    // A clean exit leaves the kernel forwarding, as flanneld does. Back to user space: the
    // userspace start removes the device (it holds the port), and traffic flows again.
    c.procs[1].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
    assert!(has_link(&h2.ns, "flannel.1"), "a clean exit of a kernel path removed flannel.1");
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "the kernel stopped forwarding when weft exited");
    c.start_host(bin(), 1, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    assert!(!has_link(&h2.ns, "flannel.1"), "flannel.1 left beside the userspace path");
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{}", c.logs());
}

#[test]
fn udp_backend_has_no_kernel_path() {
    require_privileges();
    let spec = weft::lab::cluster::ClusterSpec {
        extra_args: vec!["--dataplane".into(), "kernel".into()],
        ..weft::lab::cluster::ClusterSpec::two_hosts("udpkern", r#"{"Type":"udp"}"#)
    };
    let err = weft::lab::cluster::Cluster::start(bin(), &spec, Duration::from_secs(10)).err().expect("refused");
    assert!(err.to_string().contains("no kernel data path"), "{err}");
}

fn write_lease(c: &weft::lab::cluster::Cluster, key: &str, value: &str) {
    weft::control::registry::dir::write_atomic(&c.registry.path().join("subnets").join(key), value.as_bytes()).unwrap();
}

fn weft_routes(ns: &str) -> Vec<String> {
    out(ns, &["ip", "route", "show", "proto", "87"]).lines().map(str::to_string).collect()
}

#[test]
fn restart_after_a_crash_removes_stale_routes_and_adds_no_duplicates() {
    let mut c = cluster("hgwcrash", r#"{"Type":"host-gw"}"#, &[]);
    let h1 = c.topo.hosts[0].clone();
    assert_eq!(weft_routes(&h1.ns), vec!["100.96.2.0/24 via 198.18.0.2 dev eth0 "]);
    // A crash leaves the route behind; while weft is down host 2 leaves (a running host 2 would
    // take its deleted lease again at once) and another host's lease comes.
    c.procs[0].kill_hard();
    c.procs[1].stop(Duration::from_secs(5)).unwrap();
    std::fs::remove_file(c.registry.path().join("subnets/100.96.2.0-24")).unwrap();
    write_lease(&c, "100.96.3.0-24", r#"{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"host-gw"}"#);
    assert_eq!(weft_routes(&h1.ns).len(), 1, "the crash left its route");
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(weft_routes(&h1.ns), vec!["100.96.3.0/24 via 198.18.0.3 dev eth0 "], "{}", c.logs());
    // Restarting again over a healthy state adds nothing twice.
    c.procs[0].kill_hard();
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(weft_routes(&h1.ns), vec!["100.96.3.0/24 via 198.18.0.3 dev eth0 "], "{}", c.logs());
}

#[test]
fn host_gw_refuses_a_peer_off_the_segment() {
    let c = cluster("hgwoff", r#"{"Type":"host-gw"}"#, &[]);
    let h1 = c.topo.hosts[0].clone();
    write_lease(&c, "100.96.3.0-24", r#"{"PublicIP":"198.19.0.3","PublicIPv6":null,"BackendType":"host-gw"}"#);
    assert!(
        eventually(Duration::from_secs(3), || c.procs[0].log_text().contains("refusing host-gw peer 100.96.3.0/24")),
        "{}",
        c.logs()
    );
    assert!(out(&h1.ns, &["ip", "route", "show", "100.96.3.0/24"]).is_empty());
    assert!(ping(&h1.container_ns, c.topo.hosts[1].container_ip, 1), "the good peer still works");
}

#[test]
fn kernel_vxlan_device_deleted_by_hand_comes_back() {
    let c = cluster("kvxheal", r#"{"Type":"vxlan"}"#, &["--dataplane", "kernel"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    weft::lab::topology::ip(&["-n", &h2.ns, "link", "del", "flannel.1"]).unwrap();
    assert!(eventually(Duration::from_secs(6), || has_link(&h2.ns, "flannel.1")), "{}", c.logs());
    assert!(eventually(Duration::from_secs(5), || ping(&h1.container_ns, h2.container_ip, 1)), "{}", c.logs());
    assert_eq!(out(&h2.ns, &["ip", "neigh", "show", "dev", "flannel.1"]).lines().count(), 1);
    assert_eq!(
        out(&h2.ns, &["bridge", "fdb", "show", "dev", "flannel.1"]).lines().filter(|l| l.contains("dst")).count(),
        1
    );
}

#[test]
fn direct_routing_routes_segment_peers_without_vxlan() {
    let c = cluster("kvxdirect", r#"{"Type":"vxlan","DirectRouting":true}"#, &["--dataplane", "kernel"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{}", c.logs());
    assert!(
        out(&h1.ns, &["ip", "route", "show", "100.96.2.0/24"]).starts_with("100.96.2.0/24 via 198.18.0.2 dev eth0")
    );
    assert_eq!(
        out(&h1.ns, &["bridge", "fdb", "show", "dev", "flannel.1"]).lines().filter(|l| l.contains("dst")).count(),
        0
    );
    // A peer off the segment still goes through VXLAN.
    let mac = "02:00:00:00:00:33";
    write_lease(
        &c,
        "100.96.3.0-24",
        &format!(
            r#"{{"PublicIP":"198.19.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        ),
    );
    assert!(
        eventually(Duration::from_secs(3), || out(&h1.ns, &["ip", "route", "show", "100.96.3.0/24"])
            .contains("dev flannel.1")),
        "{}",
        c.logs()
    );
    assert!(out(&h1.ns, &["bridge", "fdb", "show", "dev", "flannel.1"]).contains(&format!("{mac} dst 198.19.0.3")));
}
