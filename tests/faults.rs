//! The faults an operator's cluster throws at weft, each reproduced with real components in
//! namespaces of the test's own: a second weft on a host, an etcd with auth restarting, an etcd
//! that lost its data, a rogue overwrite of a host's own lease, nonsense leases, routes and a
//! TUN deleted by hand.

mod common;

use common::traffic::udp_probe_error;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use weft::lab::cluster::{Cluster, ClusterSpec, spawn_weft};
use weft::lab::etcd::Etcd;
use weft::lab::topology::ns_exec;

const UDP: &str = r#"{"Type":"udp"}"#;
const PREFIX: &str = "/coreos.com/network";

fn out(ns: &str, cmd: &[&str]) -> String {
    String::from_utf8_lossy(&ns_exec(ns, cmd).unwrap().stdout).into_owned()
}

/// True when a datagram from `ns` to `dst` is refused with net-unreachable (no peer leases it).
fn unreachable(ns: &str, dst: &str) -> bool {
    let dst: SocketAddr = dst.parse().unwrap();
    udp_probe_error(ns, dst, Duration::from_millis(300))
        .unwrap()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ENETUNREACH))
}

#[test]
fn a_second_weft_on_a_host_leaves_the_first_ones_routes_alone() {
    let c = cluster("second", UDP, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let first_route = "100.96.0.0/16 dev flannel0";
    assert!(out(&h1.ns, &["ip", "route"]).contains(first_route));
    // weft B on host 1: another registry, network, port and TUN.
    let reg = tempfile::tempdir().unwrap();
    std::fs::write(reg.path().join("config"), r#"{"Network":"100.97.0.0/16","Backend":{"Type":"udp","Port":8286}}"#)
        .unwrap();
    let env = reg.path().join("b.env");
    let args: Vec<String> = [
        "--registry-dir",
        reg.path().to_str().unwrap(),
        "--iface",
        "eth0",
        "--subnet-file",
        env.to_str().unwrap(),
        "--tun-name",
        "flannel1",
    ]
    .map(String::from)
    .into();
    let mut b = spawn_weft(bin(), &h1.ns, &args, env.clone(), reg.path().join("b.log")).unwrap();
    assert!(eventually(Duration::from_secs(10), || env.exists()), "weft B not ready:\n{}", b.log_text());
    let routes = out(&h1.ns, &["ip", "route"]);
    assert!(routes.contains(first_route), "weft B removed weft A's route:\n{routes}\n{}", b.log_text());
    assert!(routes.contains("100.97.0.0/16 dev flannel1"), "{routes}");
    assert!(!b.log_text().contains("stale route"), "{}", b.log_text());
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{}", c.logs());
    b.stop(Duration::from_secs(5)).unwrap().expect("weft B exits");
    assert!(out(&h1.ns, &["ip", "route"]).contains(first_route));
    // A route of A's deleted by hand comes back within the heal period.
    assert!(ns_exec(&h1.ns, &["ip", "route", "del", "100.96.0.0/16", "dev", "flannel0"]).unwrap().status.success());
    assert!(
        eventually(Duration::from_secs(5), || out(&h1.ns, &["ip", "route"]).contains(first_route)),
        "route not restored\n{}",
        c.logs()
    );
    assert!(c.procs[0].log_text().contains("removed from outside; restoring it"), "{}", c.logs());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
}

#[test]
fn a_tun_deleted_by_hand_comes_back_and_forwarding_resumes() {
    let mut c = cluster("tundel", r#"{"Type":"vxlan"}"#, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    assert!(ns_exec(&h1.ns, &["ip", "link", "del", "weft.1"]).unwrap().status.success());
    assert!(
        eventually(Duration::from_secs(5), || ping(&h1.container_ns, h2.container_ip, 1)),
        "no forwarding after the TUN was deleted\n{}",
        c.logs()
    );
    assert!(c.procs[0].running(), "weft exited:\n{}", c.logs());
    assert!(c.procs[0].log_text().contains("the TUN device is back"), "{}", c.logs());
    assert!(out(&h1.ns, &["ip", "route"]).contains("100.96.0.0/16 dev weft.1"));
    c.procs[0].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
    assert!(!has_link(&h1.ns, "weft.1"));
}

#[test]
fn an_overwritten_own_lease_is_written_back_and_the_peer_follows() {
    let c = cluster("rogue-own", UDP, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h2.container_ns, h1.container_ip, 1), "{}", c.logs());
    let lease = c.registry.path().join("subnets/100.96.1.0-24");
    let ours = std::fs::read_to_string(&lease).unwrap();
    weft::control::registry::dir::write_atomic(&lease, br#"{"PublicIP":"198.18.0.9","PublicIPv6":null}"#).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&lease).unwrap() == ours),
        "host 1 did not take its lease back\n{}",
        c.logs()
    );
    assert!(c.procs[0].log_text().contains("our lease was overwritten"), "{}", c.logs());
    assert!(eventually(Duration::from_secs(5), || ping(&h2.container_ns, h1.container_ip, 1)), "{}", c.logs());
}

#[test]
fn nonsense_leases_are_ignored_and_said_once() {
    let c = cluster("nonsense", UDP, &[]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let subnets = c.registry.path().join("subnets");
    let put = |k: &str, v: &str| weft::control::registry::dir::write_atomic(&subnets.join(k), v.as_bytes()).unwrap();
    // A /25 inside host 2's /24 would hijack half its traffic; the others go nowhere.
    put("100.96.2.0-25", r#"{"PublicIP":"198.18.0.9","PublicIPv6":null}"#);
    put("100.96.9.0-24", r#"{"PublicIP":"127.0.0.1","PublicIPv6":null}"#);
    put("100.96.8.0-24", r#"{"PublicIP":"224.0.0.1","PublicIPv6":null}"#);
    put("100.96.7.0-24", "not json");
    std::thread::sleep(Duration::from_secs(3));
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "the /25 hijacked host 2's traffic\n{}", c.logs());
    assert!(unreachable(&h1.container_ns, "100.96.9.2:9"), "a loopback PublicIP was routed");
    let log = c.procs[0].log_text();
    for key in ["100.96.2.0-25", "100.96.9.0-24", "100.96.8.0-24"] {
        let said = log.lines().filter(|l| l.contains("ignoring lease") && l.contains(key)).count();
        assert_eq!(said, 1, "{key}:\n{log}");
    }
    assert_eq!(log.matches("skipping lease").count(), 1, "an unreadable lease is said once:\n{log}");
}

/// Two hosts against a real etcd in host 1's namespace, with user/password auth when asked.
fn etcd_cluster(tag: &str, password: Option<&str>) -> (Cluster, Etcd, ClusterSpec) {
    require_privileges();
    let mut spec = ClusterSpec::two_hosts(tag, UDP);
    spec.etcd_endpoints = Some("http://198.18.0.1:2379".into());
    if let Some(p) = password {
        spec.extra_args = ["--etcd-username", "root", "--etcd-password", p].map(String::from).into();
    }
    let c = Cluster::build(&spec).unwrap();
    let mut e = Etcd::in_netns(&c.topo.hosts[0].ns, "198.18.0.1").unwrap();
    e.wait_healthy(Duration::from_secs(20));
    if let Some(p) = password {
        e.enable_auth(p).unwrap();
    }
    e.put(&format!("{PREFIX}/config"), r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#);
    e.put(&format!("{PREFIX}/subnets/100.96.1.0-24"), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
    e.put(&format!("{PREFIX}/subnets/100.96.2.0-24"), r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#);
    e.put(&format!("{PREFIX}/subnets/100.96.3.0-24"), r#"{"PublicIP":"198.18.0.3","PublicIPv6":null}"#);
    (c, e, spec)
}

#[test]
fn etcd_with_auth_down_at_start_and_restarted_keeps_weft_following() {
    let (mut c, mut e, spec) = etcd_cluster("etcdauth", Some("s3cret"));
    // Down when weft starts: weft waits for it instead of exiting.
    e.kill();
    for i in 0..2 {
        c.start_host(bin(), i, &spec.extra_args).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.procs.iter_mut().all(|p| p.running()), "weft gave up on etcd:\n{}", c.logs());
    e.restart().unwrap();
    c.wait_ready(Duration::from_secs(20)).unwrap_or_else(|err| panic!("{err}\n{}", e.log()));
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    // Restarted: the tokens it gave out are gone. weft authenticates again and follows.
    e.restart().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    assert!(unreachable(&h1.container_ns, "100.96.4.2:9"));
    e.put(&format!("{PREFIX}/subnets/100.96.4.0-24"), r#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#);
    assert!(
        eventually(Duration::from_secs(15), || !unreachable(&h1.container_ns, "100.96.4.2:9")),
        "a lease put after the restart was not routed\n{}",
        c.logs()
    );
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
}

#[test]
fn etcd_restored_empty_gets_the_leases_back_and_stale_peers_go() {
    let (mut c, mut e, spec) = etcd_cluster("etcdwipe", None);
    c.start_all(bin(), &spec, Duration::from_secs(20)).unwrap_or_else(|err| panic!("{err}\n{}", e.log()));
    let h1 = c.topo.hosts[0].clone();
    assert!(!unreachable(&h1.container_ns, "100.96.3.2:9"), "the phantom host's lease is routed");
    // etcd loses its data; the operator puts the config back.
    e.wipe().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.put(&format!("{PREFIX}/config"), r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#);
    let keys = || {
        let o = e.ctl(&["get", &format!("{PREFIX}/subnets/"), "--prefix", "--keys-only"]);
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(15), || keys().len() == 2),
        "the hosts did not re-create their leases: {:?}\n{}",
        keys(),
        c.logs()
    );
    assert!(keys().iter().any(|k| k.ends_with("100.96.1.0-24")) && keys().iter().any(|k| k.ends_with("100.96.2.0-24")));
    // The phantom host's lease is gone from the new store, so its route goes.
    assert!(
        eventually(Duration::from_secs(10), || unreachable(&h1.container_ns, "100.96.3.2:9")),
        "a stale peer stayed routed\n{}",
        c.logs()
    );
    // And the watch follows the new store.
    e.put(&format!("{PREFIX}/subnets/100.96.5.0-24"), r#"{"PublicIP":"198.18.0.5","PublicIPv6":null}"#);
    assert!(eventually(Duration::from_secs(10), || !unreachable(&h1.container_ns, "100.96.5.2:9")), "{}", c.logs());
    assert!(ping(&h1.container_ns, c.topo.hosts[1].container_ip, 1), "{}", c.logs());
}
