//! Two weft hosts in network namespaces running against a real etcd (inside host 1's namespace,
//! reachable over the underlay), configured with etcdctl in flanneld's exact JSON.

mod common;

use common::traffic::udp_probe_error;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::etcd::Etcd;

const PREFIX: &str = "/coreos.com/network";
/// A lease for a host that does not exist (so no weft re-creates it when it is deleted).
const PHANTOM_KEY: &str = "/coreos.com/network/subnets/100.96.3.0-24";
const PHANTOM_VALUE: &str = r#"{"PublicIP":"198.18.0.3","PublicIPv6":null}"#;

fn unreachable(ns: &str, dst: &str) -> bool {
    let dst: SocketAddr = dst.parse().unwrap();
    udp_probe_error(ns, dst, Duration::from_millis(300))
        .unwrap()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ENETUNREACH))
}

fn etcd_cluster(tag: &str) -> (Cluster, Etcd) {
    require_privileges();
    let mut spec = ClusterSpec::two_hosts(tag, r#"{"Type":"udp"}"#);
    spec.etcd_endpoints = Some("http://198.18.0.1:2379".into());
    let mut c = Cluster::build(&spec).unwrap();
    let e = Etcd::in_netns(&c.topo.hosts[0].ns, "198.18.0.1").unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.put(&format!("{PREFIX}/config"), r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#);
    e.put(&format!("{PREFIX}/subnets/100.96.1.0-24"), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
    e.put(&format!("{PREFIX}/subnets/100.96.2.0-24"), r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#);
    e.put(PHANTOM_KEY, PHANTOM_VALUE);
    c.start_all(bin(), &spec, Duration::from_secs(20)).unwrap_or_else(|err| panic!("{err}\n{}", e.log()));
    (c, e)
}

#[test]
fn hosts_over_etcd_reuse_leases_carry_traffic_and_follow_etcdctl() {
    let (c, e) = etcd_cluster("etcdhosts");
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 2), "{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 2), "{}", c.logs());
    for i in 0..2 {
        let env = std::fs::read_to_string(c.subnet_file(i)).unwrap();
        assert!(env.contains(&format!("FLANNEL_SUBNET=100.96.{}.1/24", i + 1)), "lease not reused: {env}");
    }
    let keys =
        String::from_utf8(e.ctl(&["get", &format!("{PREFIX}/subnets/"), "--prefix", "--keys-only"]).stdout).unwrap();
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 3, "{keys}");
    // The leases were put with etcdctl, without a TTL: reservations, which keep none when weft
    // reuses them, as flanneld (a lease weft takes itself carries one: tests/flanneld.rs).
    let json =
        String::from_utf8(e.ctl(&["get", &format!("{PREFIX}/subnets/100.96.1.0-24"), "-w", "json"]).stdout).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["kvs"][0]["lease"].as_i64().unwrap_or(0) == 0,
        "{json}"
    );
    // A lease deleted with etcdctl stops being routed within 2 s, and comes back when re-put.
    assert!(!unreachable(&h1.container_ns, "100.96.3.2:9"));
    e.del(PHANTOM_KEY);
    assert!(eventually(Duration::from_secs(2), || unreachable(&h1.container_ns, "100.96.3.2:9")), "{}", c.logs());
    e.put(PHANTOM_KEY, PHANTOM_VALUE);
    assert!(eventually(Duration::from_secs(2), || !unreachable(&h1.container_ns, "100.96.3.2:9")), "{}", c.logs());
    // A new lease put with etcdctl becomes a route within 1 s.
    assert!(unreachable(&h1.container_ns, "100.96.4.2:9"));
    e.put(&format!("{PREFIX}/subnets/100.96.4.0-24"), r#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#);
    assert!(eventually(Duration::from_secs(1), || !unreachable(&h1.container_ns, "100.96.4.2:9")), "{}", c.logs());
}

#[test]
fn etcd_down_forwarding_continues_then_resyncs() {
    let (c, mut e) = etcd_cluster("etcddown");
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    e.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert!(ping(&h1.container_ns, h2.container_ip, 3), "forwarding stopped with etcd down\n{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 3), "{}", c.logs());
    e.restart().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.del(PHANTOM_KEY);
    assert!(
        eventually(Duration::from_secs(8), || unreachable(&h1.container_ns, "100.96.3.2:9")),
        "no resync after etcd returned\n{}",
        c.logs()
    );
    assert!(c.logs().contains("etcd"), "the outage is logged:\n{}", c.logs());
}

#[test]
fn etcd_unreachable_at_start_is_retried() {
    require_privileges();
    let mut spec = ClusterSpec::two_hosts("etcdlate", r#"{"Type":"udp"}"#);
    spec.etcd_endpoints = Some("http://198.18.0.1:2379".into());
    spec.skip_hosts = vec![1];
    let mut c = Cluster::build(&spec).unwrap();
    c.start_host(bin(), 0, &[]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.procs[0].running(), "weft gave up on an unreachable etcd:\n{}", c.logs());
    assert!(c.procs[0].log_text().contains("retrying"), "{}", c.logs());
    let e = Etcd::in_netns(&c.topo.hosts[0].ns, "198.18.0.1").unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.put(&format!("{PREFIX}/config"), r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#);
    c.wait_ready(Duration::from_secs(15)).unwrap_or_else(|err| panic!("{err}"));
}
