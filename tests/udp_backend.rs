//! The udp backend end to end: two weft hosts in network namespaces, a container behind each.

mod common;

use common::traffic::udp_probe_error;
use common::*;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

const UDP: &str = r#"{"Type":"udp"}"#;

#[test]
fn ping_both_ways_and_leases_are_reused() {
    let c = cluster("udpping", UDP, &[]);
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    assert!(ping(&h1.container_ns, h2.container_ip, 3), "c1 → c2\n{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 3), "c2 → c1\n{}", c.logs());
    // The TUN queue is weft's default, not the kernel's 500.
    let link = tun_link(&h1.ns, "flannel0");
    assert!(link.contains(&format!("qlen {}", weft::control::daemon::DEFAULT_TUN_QUEUE_LEN)), "{link}");
    // Each host reused its pre-seeded lease: subnet.env says so and no other lease appeared.
    for (i, h) in c.topo.hosts.iter().enumerate() {
        let env = std::fs::read_to_string(c.subnet_file(i)).unwrap();
        let first = std::net::Ipv4Addr::from(u32::from(h.subnet.network()) + 1);
        assert!(env.contains(&format!("FLANNEL_SUBNET={first}/24")), "{env}");
        assert!(env.contains("FLANNEL_MTU=1472"), "udp MTU = 1500 - 28: {env}");
        assert!(env.contains("FLANNEL_NETWORK=100.96.0.0/16"), "{env}");
    }
    let leases: Vec<_> = std::fs::read_dir(c.registry.path().join("subnets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let mut leases = leases;
    leases.sort();
    assert_eq!(leases, vec!["100.96.1.0-24", "100.96.2.0-24"]);
    let v = std::fs::read_to_string(c.registry.path().join("subnets/100.96.1.0-24")).unwrap();
    assert_eq!(v, r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
}

#[test]
fn tcp_50mb_arrives_byte_exact() {
    let c = cluster("udptcp", UDP, &[]);
    tcp_both_ways(&c, 50 << 20);
}

#[test]
fn unleased_destination_gets_net_unreachable() {
    let c = cluster("udpunreach", UDP, &[]);
    let h1 = &c.topo.hosts[0];
    let dst: SocketAddr = "100.96.77.2:9".parse().unwrap();
    let err =
        udp_probe_error(&h1.container_ns, dst, Duration::from_secs(3)).unwrap().expect("an ICMP error comes back");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}\n{}", c.logs());
    // A leased destination does not produce that error (it is reachable; the port is closed).
    let ok = udp_probe_error(
        &h1.container_ns,
        SocketAddr::new(c.topo.hosts[1].container_ip.into(), 9),
        Duration::from_secs(3),
    )
    .unwrap();
    assert!(ok.as_ref().is_none_or(|e| e.kind() == ErrorKind::ConnectionRefused), "{ok:?}");
}

#[test]
fn lease_removed_and_added_while_running() {
    let mut c = cluster("udpchurn", UDP, &[]);
    let (c1, c2ip) = (c.topo.hosts[0].container_ns.clone(), c.topo.hosts[1].container_ip);
    assert!(ping(&c1, c2ip, 1), "{}", c.logs());
    // Host 2 goes away and its lease is deleted: host 1 stops routing to it.
    let st = c.procs[1].stop(Duration::from_secs(5)).unwrap().expect("weft exits on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", c.logs());
    let lease = c.registry.path().join("subnets/100.96.2.0-24");
    let saved = std::fs::read(&lease).unwrap();
    std::fs::remove_file(&lease).unwrap();
    let probe = SocketAddr::new(c2ip.into(), 9);
    assert!(
        eventually(Duration::from_secs(2), || udp_probe_error(&c1, probe, Duration::from_millis(300))
            .unwrap()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ENETUNREACH))),
        "removed lease still routed\n{}",
        c.logs()
    );
    // The lease comes back and host 2 returns: reachable again.
    weft::control::registry::dir::write_atomic(&lease, &saved).unwrap();
    c.start_host(bin(), 1, &[]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    assert!(eventually(Duration::from_secs(5), || ping(&c1, c2ip, 1)), "re-added lease not routed\n{}", c.logs());
    assert!(c.logs().contains("peer added: 100.96.2.0/24"), "{}", c.logs());
}

#[test]
fn sigterm_exits_zero_and_removes_the_tun() {
    let mut c = cluster("udpstop", UDP, &["--tun-queue-len", "777"]);
    let ns = c.topo.hosts[0].ns.clone();
    let link = tun_link(&ns, "flannel0");
    assert!(link.contains("qlen 777"), "--tun-queue-len not applied: {link}");
    let st = c.procs[0].stop(Duration::from_secs(5)).unwrap().expect("exits within 5 s");
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert!(!has_link(&ns, "flannel0"), "flannel0 left behind");
    let log = c.procs[0].log_text();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
}

#[test]
fn new_node_without_lease_gets_a_free_subnet() {
    // No pre-seeded leases: each host allocates; the two subnets differ and fit the config.
    require_privileges();
    let spec = weft::lab::cluster::ClusterSpec {
        preseed: false,
        ..weft::lab::cluster::ClusterSpec::two_hosts("udpalloc", UDP)
    };
    let c = weft::lab::cluster::Cluster::start(bin(), &spec, Duration::from_secs(15)).unwrap();
    let subnets: Vec<String> = (0..2)
        .map(|i| {
            std::fs::read_to_string(c.subnet_file(i))
                .unwrap()
                .lines()
                .find(|l| l.starts_with("FLANNEL_SUBNET="))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(subnets[0], subnets[1]);
    let files = std::fs::read_dir(c.registry.path().join("subnets"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(files, 2);
}

/// `ip link show name` in `ns`.
fn tun_link(ns: &str, name: &str) -> String {
    let o = weft::lab::topology::ns_exec(ns, &["ip", "link", "show", name]).unwrap();
    assert!(o.status.success(), "no {name} in {ns}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}
