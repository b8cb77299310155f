//! IPv6-only networks (`EnableIPv4: false`): the pods' IPv6 packets travel over the IPv6
//! underlay between the hosts' PublicIPv6 addresses, for every engine and both backends, and
//! on both kernel paths; leases take flanneld's IPv6-only key (`0.0.0.0-0&v6-len`) and
//! subnet.env has no IPv4 lines. A userspace vxlan node and a kernel-VXLAN node exchange IPv6
//! pods' packets: on such a network both carry them over the IPv6 underlay.

mod common;

use common::*;
use std::time::Duration;
use weft::control::metrics::name;
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::measure::scrape;
use weft::lab::topology::{Host, ns_exec};
use weft::proto::subnet_env::SubnetEnv;

fn v6_spec(tag: &str, backend: &str) -> ClusterSpec {
    ClusterSpec { ipv6_only: true, ..ClusterSpec::two_hosts(tag, backend) }
}

fn v6_cluster(tag: &str, backend: &str, args: &[&str]) -> Cluster {
    require_privileges();
    let spec = ClusterSpec { extra_args: args.iter().map(|a| a.to_string()).collect(), ..v6_spec(tag, backend) };
    Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster starts")
}

/// ping6 of several sizes and 20 MB of verified TCP over IPv6 each way; IPv4 is not carried.
fn ipv6_only_traffic(c: &Cluster, what: &str) {
    ipv6_traffic(c, what);
    // The network has no IPv4 side: the pods' IPv4 addresses are not routed between hosts.
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    assert!(!ping(&h1.container_ns, h2.container_ip, 1), "{what}: IPv4 crossed an IPv6-only network");
}

/// What the underlay carried between the hosts: IPv6 datagrams to the backend's port, no
/// IPv4 ones (the counters of the hosts' `eth0`, read with `ip -s`, would not tell families).
fn underlay_is_ipv6(h: &Host, port: u16, what: &str) {
    let sock = ns_exec(&h.ns, &["ss", "-H", "-u", "-a", "-n"]).unwrap();
    let sock = String::from_utf8_lossy(&sock.stdout);
    let at = format!("[{}]:{port}", h.underlay_ip6);
    assert!(sock.contains(&at), "{what}: nothing listens on {at}:\n{sock}");
    assert!(!sock.contains(&format!("{}:{port}", h.underlay_ip)), "{what}: an IPv4 socket:\n{sock}");
}

fn suite(tag: &str, backend: &str, mode: &str) {
    let c = v6_cluster(tag, backend, &["--mode", mode, "--metrics-addr", "127.0.0.1:9100"]);
    let what = format!("{mode}/{backend}");
    ipv6_only_traffic(&c, &what);
    let port = if backend.contains("vxlan") { 8472 } else { 8285 };
    for h in &c.topo.hosts {
        underlay_is_ipv6(h, port, &what);
        let m = scrape(&h.ns).unwrap();
        for reason in ["ipv6", "unknown_sender", "bad_ip_header", "truncated", "foreign_source", "not_for_us"] {
            let key = format!("{}{{reason=\"{reason}\"}}", name::DROPS);
            assert_eq!(m.get(&key).copied().unwrap_or(0.0), 0.0, "{what}: {key} on {}", h.ns);
        }
    }
    // An unleased IPv6 subnet: ICMPv6 no-route from the TUN, as on a dual-stack network.
    let h1 = &c.topo.hosts[0];
    let out = ns_exec(&h1.container_ns, &["ping", "-6", "-n", "-c", "1", "-W", "2", "2001:db8:96:77::2"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("Destination unreachable"), "{what}: {text}");
}

#[test]
fn naive_udp() {
    suite("v6nu", r#"{"Type":"udp"}"#, "naive");
}

#[test]
fn batched_udp() {
    suite("v6bu", r#"{"Type":"udp"}"#, "batched");
}

#[test]
fn offload_udp() {
    suite("v6ou", r#"{"Type":"udp"}"#, "offload");
}

#[test]
fn uring_udp() {
    suite("v6uu", r#"{"Type":"udp"}"#, "uring");
}

#[test]
fn naive_vxlan() {
    suite("v6nv", r#"{"Type":"vxlan"}"#, "naive");
}

#[test]
fn batched_vxlan() {
    suite("v6bv", r#"{"Type":"vxlan"}"#, "batched");
}

#[test]
fn offload_vxlan() {
    suite("v6ov", r#"{"Type":"vxlan"}"#, "offload");
}

#[test]
fn uring_vxlan() {
    suite("v6uv", r#"{"Type":"vxlan"}"#, "uring");
}

/// The kernel paths of an IPv6-only network: host-gw's IPv6 routes via each PublicIPv6, or
/// `flannel-v6.<VNI>` alone (no `flannel.<VNI>`).
fn kernel_suite(tag: &str, backend: &str) {
    let c = v6_cluster(tag, backend, &["--dataplane", "kernel"]);
    ipv6_only_traffic(&c, backend);
    ipv6_kernel_routes(&c, backend);
    let links = ns_exec(&c.topo.hosts[0].ns, &["ip", "-o", "link", "show"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("flannel.1:"), "an IPv6-only network made flannel.1: {links}");
}

#[test]
fn kernel_host_gw() {
    kernel_suite("v6hg", r#"{"Type":"host-gw"}"#);
}

#[test]
fn kernel_vxlan() {
    kernel_suite("v6kv", r#"{"Type":"vxlan"}"#);
}

/// On an IPv6-only network a userspace vxlan node and a kernel-VXLAN node (`flannel-v6.1`, as
/// flanneld makes it) both carry IPv6 over the IPv6 underlay, so they exchange pods' packets.
#[test]
fn a_userspace_node_and_a_kernel_vxlan_node_exchange_ipv6() {
    require_privileges();
    let spec = ClusterSpec { skip_hosts: vec![0, 1], ..v6_spec("v6mix", r#"{"Type":"vxlan"}"#) };
    let mut c = Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster builds");
    c.start_host(bin(), 0, &["--dataplane".into(), "kernel".into()]).unwrap();
    c.start_host(bin(), 1, &["--mode".into(), "offload".into()]).unwrap();
    c.wait_ready(Duration::from_secs(15)).unwrap();
    let h1 = c.topo.hosts[0].clone();
    // A real NIC completes the kernel sender's partial inner checksums (see vxlan_backend.rs).
    assert!(ns_exec(&h1.ns, &["ethtool", "-K", "eth0", "tx", "off"]).unwrap().status.success());
    ipv6_only_traffic(&c, "kernel VXLAN ↔ userspace offload");
    assert!(!c.logs().contains("ignoring lease"), "{}", c.logs());
}

/// With no leases written beforehand, each node takes an IPv6-only lease under flanneld's key,
/// announces its PublicIPv6 and the empty PublicIP, writes subnet.env without IPv4 lines, and
/// reuses the lease when it restarts.
#[test]
fn ipv6_only_leases_are_acquired_written_and_reused() {
    require_privileges();
    let spec = ClusterSpec { preseed: false, ..v6_spec("v6lease", r#"{"Type":"vxlan"}"#) };
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
    let publics: Vec<String> = c.topo.hosts.iter().map(|h| format!(r#""PublicIPv6":"{}""#, h.underlay_ip6)).collect();
    for key in &before {
        assert!(key.starts_with("0.0.0.0-0&2001:db8:96:") && key.ends_with("::-64"), "{key}");
        let value = std::fs::read_to_string(dir.join(key)).unwrap();
        assert!(value.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"#), "{value}");
        assert!(publics.iter().any(|p| value.contains(p.as_str())), "{value}");
        assert!(!value.contains("\"BackendData\"") && value.contains(r#""BackendV6Data":{"VNI":1,"#), "{value}");
    }
    let text = std::fs::read_to_string(c.subnet_file(0)).unwrap();
    assert!(!text.contains("FLANNEL_NETWORK=") && !text.contains("FLANNEL_SUBNET="), "{text}");
    let e = SubnetEnv::parse(&text).unwrap();
    let v6 = e.ipv6.expect("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET are written");
    assert_eq!(v6.network.to_string(), "2001:db8:96::/48");
    assert!(before.iter().any(|k| k.ends_with(&format!("&{}-64", v6.subnet.trunc().network()))), "{before:?}");
    c.procs[0].stop(Duration::from_secs(5)).unwrap();
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(15)).unwrap();
    assert_eq!(keys(), before, "a restart reuses its lease");
    assert_eq!(std::fs::read_to_string(c.subnet_file(0)).unwrap(), text);
}

fn weft_routes6(ns: &str) -> Vec<String> {
    let out = ns_exec(ns, &["ip", "-6", "route", "show", "proto", "87"]).unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A crashed host-gw weft leaves its IPv6 routes; the next start removes the stale ones (into
/// IPv6Network, marked as weft's) and adds nothing twice.
#[test]
fn restart_after_a_crash_removes_stale_ipv6_routes() {
    let mut c = v6_cluster("v6crash", r#"{"Type":"host-gw"}"#, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let route_to = |subnet: &str, via: &str| format!("{subnet} via {via} dev eth0 ");
    let h2_route = route_to(&h2.subnet6.to_string(), &h2.underlay_ip6.to_string());
    assert!(weft_routes6(&h1.ns).iter().any(|r| r.starts_with(&h2_route)), "{:?}", weft_routes6(&h1.ns));
    // While host 1 is down, host 2 leaves and another host's lease comes.
    c.procs[0].kill_hard();
    c.procs[1].stop(Duration::from_secs(5)).unwrap();
    let key = |net6: &str| c.registry.path().join("subnets").join(format!("0.0.0.0-0&{net6}-64"));
    std::fs::remove_file(key(&h2.subnet6.network().to_string())).unwrap();
    let value = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::3","BackendType":"host-gw"}"#;
    weft::control::registry::dir::write_atomic(&key("2001:db8:96:3::"), value.as_bytes()).unwrap();
    c.start_host(bin(), 0, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    let want = route_to("2001:db8:96:3::/64", "2001:db8:18::3");
    let routes = || weft_routes6(&h1.ns).into_iter().filter(|r| r.contains(" via ")).collect::<Vec<_>>();
    assert!(eventually(Duration::from_secs(5), || routes().len() == 1), "{:?}\n{}", routes(), c.logs());
    assert!(routes()[0].starts_with(&want), "{:?}", routes());
    assert!(c.logs().contains("removed 1 stale routes"), "{}", c.logs());
}

/// `--iface` with an IPv6 address picks the interface that holds it, and that address is the
/// PublicIPv6 (as flanneld's `--iface` takes an address of either family).
#[test]
fn iface_by_ipv6_address_gives_the_public_ipv6() {
    require_privileges();
    let spec = ClusterSpec { skip_hosts: vec![0], ..v6_spec("v6iface", r#"{"Type":"vxlan"}"#) };
    let c = Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster starts");
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let mut args = Vec::new();
    let mut given = c.host_args(0).into_iter();
    while let Some(a) = given.next() {
        match a.as_str() {
            "--iface" => {
                given.next();
                args.extend(["--iface".to_string(), h1.underlay_ip6.to_string()]);
            }
            "--public-ipv6" | "--public-ip" => {
                given.next();
            }
            _ => args.push(a),
        }
    }
    let log = c.registry.path().join("h1-iface.log");
    let _weft = weft::lab::cluster::spawn_weft(bin(), &h1.ns, &args, c.subnet_file(0), log.clone()).unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(eventually(Duration::from_secs(15), || c.subnet_file(0).exists()), "not ready:\n{}", log_text());
    let key = format!("0.0.0.0-0&{}-64", h1.subnet6.network());
    let value = std::fs::read_to_string(c.registry.path().join("subnets").join(key)).unwrap();
    assert!(value.contains(&format!(r#""PublicIPv6":"{}""#, h1.underlay_ip6)), "{value}");
    if let Err(out) = ping6(&h1.container_ns, h2.container_ip6, 56) {
        panic!("ping6 failed:\n{out}\n{}\n{}", log_text(), c.logs());
    }
}

/// `--ip-masq` and the forward rules of an IPv6-only network: one `ip6` table named after
/// IPv6Network and no `ip` table; the overlay passes a host's `ip6 filter FORWARD` drop policy;
/// nothing of weft's is left on exit.
#[test]
fn ipv6_only_firewall_rules_live_in_one_ip6_table() {
    require_privileges();
    let spec = ClusterSpec { skip_hosts: vec![0, 1], ..v6_spec("v6fw", r#"{"Type":"vxlan"}"#) };
    let mut c = Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster builds");
    let nft = |ns: &str, args: &[&str]| {
        let o = ns_exec(ns, &[&["nft"], args].concat()).unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    for h in &c.topo.hosts {
        let drop =
            "add table ip6 filter; add chain ip6 filter FORWARD { type filter hook forward priority 0; policy drop; }";
        assert!(nft(&h.ns, &[drop]).0);
    }
    for i in 0..2 {
        c.start_host(bin(), i, &["--ip-masq".into()]).unwrap();
    }
    c.wait_ready(Duration::from_secs(15)).unwrap();
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    if let Err(out) = ping6(&h1.container_ns, h2.container_ip6, 56) {
        panic!("the ip6 FORWARD drop policy stopped the overlay:\n{out}\n{}", c.logs());
    }
    let (ok, table) = nft(&h1.ns, &["list", "table", "ip6", "weft_2001_db8_96___48"]);
    assert!(ok && table.contains("ip6 saddr 2001:db8:96::/48 ip6 daddr != ff00::/8 masquerade"), "{table}");
    let (_, all) = nft(&h1.ns, &["list", "ruleset"]);
    assert!(!all.contains("table ip weft_"), "an IPv6-only network made an ip table:\n{all}");
    for i in 0..2 {
        c.procs[i].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
        let (_, left) = nft(&c.topo.hosts[i].ns, &["list", "ruleset"]);
        assert!(!left.contains("weft"), "host {}: weft's rules left:\n{left}", i + 1);
    }
}
