//! weft as a drop-in for flanneld, with real components in namespaces of the test's own:
//! masquerade and forward rules in nftables, the flannel CNI plugin with Debian's bridge,
//! host-local and portmap plugins and kube-flannel's conflist, Backend.MTU, renewals, etcd
//! reservations, a kernel path that survives a restart, interface choice, FLANNELD_ variables
//! and systemd's READY=1.

mod common;

use common::*;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft::dataplane::sys::netns;
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::etcd::Etcd;
use weft::lab::topology::{Topology, ns_exec};

fn out(ns: &str, cmd: &[&str]) -> String {
    String::from_utf8_lossy(&ns_exec(ns, cmd).unwrap().stdout).into_owned()
}

fn run_ok(ns: &str, cmd: &[&str]) {
    let o = ns_exec(ns, cmd).unwrap();
    assert!(o.status.success(), "{cmd:?} in {ns}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The source address of one UDP datagram sent from namespace `from` to `to`, as a listener in
/// namespace `at` sees it.
fn seen_source(at: &str, to: SocketAddr, from: &str) -> Option<IpAddr> {
    let any = weft::lab::traffic::unspecified(to.ip());
    let (tx, rx) = std::sync::mpsc::channel();
    let at = at.to_string();
    let listener = std::thread::spawn(move || {
        netns::enter(&at).unwrap();
        let s = UdpSocket::bind((any, to.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).ok().map(|(_, src)| src.ip())
    });
    rx.recv().unwrap();
    let from = from.to_string();
    std::thread::spawn(move || {
        netns::enter(&from).unwrap();
        let s = UdpSocket::bind((any, 0)).unwrap();
        for _ in 0..3 {
            let _ = s.send_to(b"who am i", to);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .join()
    .unwrap();
    listener.join().unwrap()
}

fn nft_rules(ns: &str) -> String {
    out(ns, &["nft", "list", "ruleset"])
}

fn add_forward_drop(ns: &str) {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                b"table ip filter {\n chain FORWARD {\n  type filter hook forward priority 0; policy drop;\n }\n}\n",
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn masquerade_and_forward_rules_as_flanneld() {
    require_privileges();
    // Host 3 is outside the overlay: on the underlay, with no weft and no lease.
    let spec = ClusterSpec {
        hosts: 3,
        skip_hosts: vec![2],
        extra_args: ["--ip-masq", "--iptables-resync", "1"].map(String::from).into(),
        ..ClusterSpec::two_hosts("masq", r#"{"Type":"vxlan"}"#)
    };
    let mut c = Cluster::build(&spec).unwrap();
    std::fs::remove_file(c.registry.path().join("subnets/100.96.3.0-24")).unwrap();
    // Host 2 drops whatever it forwards unless told otherwise (Docker's and ufw's default).
    add_forward_drop(&c.topo.hosts[1].ns);
    c.start_all(bin(), &spec, Duration::from_secs(15)).unwrap();
    let (h1, h2, h3) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone(), c.topo.hosts[2].clone());
    assert!(std::fs::read_to_string(c.subnet_file(0)).unwrap().contains("FLANNEL_IPMASQ=true"));
    // pod → outside: from its host's address; pod → remote pod: from the pod's own.
    let outside = SocketAddr::new(h3.underlay_ip.into(), 7001);
    assert_eq!(seen_source(&h3.ns, outside, &h1.container_ns), Some(h1.underlay_ip.into()), "{}", c.logs());
    let pod = SocketAddr::new(h2.container_ip.into(), 7002);
    assert_eq!(seen_source(&h2.container_ns, pod, &h1.container_ns), Some(h1.container_ip.into()), "{}", c.logs());
    assert!(ping(&h2.container_ns, h1.container_ip, 1), "host 2's FORWARD drop policy stopped the overlay");
    // A DROP policy that appears later (Docker started after weft) is met within the resync.
    add_forward_drop(&h1.ns);
    assert!(eventually(Duration::from_secs(4), || ping(&h1.container_ns, h2.container_ip, 1)), "{}", c.logs());
    assert!(out(&h1.ns, &["nft", "list", "chain", "ip", "filter", "FORWARD"]).contains("weft 100.96.0.0/16"));
    // Flushed from outside: back within the resync period.
    run_ok(&h1.ns, &["nft", "flush", "ruleset"]);
    assert!(
        eventually(Duration::from_secs(4), || nft_rules(&h1.ns).contains("masquerade")),
        "rules not restored\n{}",
        c.logs()
    );
    assert_eq!(seen_source(&h3.ns, outside, &h1.container_ns), Some(h1.underlay_ip.into()));
    assert!(c.procs[0].log_text().contains("removed from outside; restoring them"), "{}", c.logs());
    // On exit, none of weft's rules remain, and the other table's chain is as it was.
    for i in 0..2 {
        c.procs[i].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
        let left = nft_rules(&c.topo.hosts[i].ns);
        assert!(!left.contains("weft"), "host {}: weft's rules left:\n{left}", i + 1);
    }
    assert!(nft_rules(&h2.ns).contains("policy drop"));
}

/// A dual-stack network with `--ip-masq` through hosts whose IPv6 forward policy is drop (ufw's
/// `ip6 filter FORWARD`): weft masquerades IPv6 pods leaving the network and accepts the IPv6
/// network's traffic, in its own `ip6` table and at the head of the dropping chain, as for
/// IPv4, and leaves nothing behind on exit.
#[test]
fn ipv6_masquerade_and_forward_rules_on_a_dual_stack_network() {
    require_privileges();
    // Host 3 is outside the overlay: on the underlay, with no weft and no lease.
    let spec = ClusterSpec {
        dual_stack: true,
        hosts: 3,
        skip_hosts: vec![2],
        extra_args: vec!["--ip-masq".into()],
        ..ClusterSpec::two_hosts("fwd6", r#"{"Type":"vxlan"}"#)
    };
    let mut c = Cluster::build(&spec).unwrap();
    std::fs::remove_file(c.registry.path().join("subnets/100.96.3.0-24&2001:db8:96:3::-64")).unwrap();
    for h in &c.topo.hosts[..2] {
        let o = ns_exec(&h.ns, &["nft", "add table ip6 filter; add chain ip6 filter FORWARD { type filter hook forward priority 0; policy drop; }"])
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    c.start_all(bin(), &spec, Duration::from_secs(15)).unwrap();
    let (h1, h2, h3) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone(), c.topo.hosts[2].clone());
    let o = ns_exec(
        &h1.container_ns,
        &["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", &h2.container_ip6.to_string()],
    )
    .unwrap();
    assert!(o.status.success(), "the ip6 FORWARD drop policy stopped the overlay\n{}", c.logs());
    // IPv6 pod → outside: from its host's IPv6 address; pod → remote pod: from the pod's own.
    let outside = SocketAddr::new(h3.underlay_ip6.into(), 7003);
    assert_eq!(seen_source(&h3.ns, outside, &h1.container_ns), Some(h1.underlay_ip6.into()), "{}", c.logs());
    let pod = SocketAddr::new(h2.container_ip6.into(), 7004);
    assert_eq!(seen_source(&h2.container_ns, pod, &h1.container_ns), Some(h1.container_ip6.into()), "{}", c.logs());
    let chain = out(&h1.ns, &["nft", "list", "chain", "ip6", "filter", "FORWARD"]);
    assert!(chain.contains("ip6 saddr 2001:db8:96::/48 accept comment \"weft 100.96.0.0/16\""), "{chain}");
    assert!(out(&h1.ns, &["nft", "list", "table", "ip6", "weft_100_96_0_0_16"]).contains("ip6 daddr 2001:db8:96::/48"));
    for i in 0..2 {
        c.procs[i].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
        let left = nft_rules(&c.topo.hosts[i].ns);
        assert!(!left.contains("weft"), "host {}: weft's rules left:\n{left}", i + 1);
        assert!(left.contains("policy drop"), "host {}: the other table's chain changed:\n{left}", i + 1);
    }
}

/// A container namespace made for the CNI test, removed by its guard.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        run_ip(&["netns", "add", &name]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run_ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A CNI bin dir: weft as `flannel`, Debian's plugins beside it.
fn plugin_dir(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(bin(), bin_dir.join("flannel")).unwrap();
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        let src = Path::new("/usr/lib/cni").join(p);
        assert!(src.exists(), "{} is missing (apt-get install containernetworking-plugins)", src.display());
        std::os::unix::fs::symlink(src, bin_dir.join(p)).unwrap();
    }
    bin_dir
}

/// One plugin call as a runtime makes it: CNI_ variables set, the configuration on stdin;
/// in `host_ns` when given. Returns the exit status and stdout.
fn cni_exec(
    host_ns: Option<&str>,
    plugin: &Path,
    (cmd, id, netns): (&str, &str, &str),
    cni_path: &Path,
    conf: &Value,
) -> (Option<i32>, String) {
    use std::io::Write;
    let mut command = match host_ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(plugin);
            c
        }
        None => Command::new(plugin),
    };
    let mut child = command
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        eprintln!("{cmd} {}: {stdout}\n{}", plugin.display(), String::from_utf8_lossy(&o.stderr));
    }
    (o.status.code(), stdout)
}

/// A call in the host's namespace: (success, stdout).
fn cni_call(
    host_ns: &str,
    plugin: &Path,
    cmd: &str,
    id: &str,
    netns: &str,
    cni_path: &Path,
    conf: &Value,
) -> (bool, String) {
    let (code, stdout) = cni_exec(Some(host_ns), plugin, (cmd, id, netns), cni_path, conf);
    (code == Some(0), stdout)
}

/// kube-flannel's conflist (name cbr0, cniVersion 0.3.1: flannel with hairpinMode and
/// isDefaultGateway, then portmap), with the paths of the test's own: subnetFile, flannel's
/// dataDir and host-local's.
fn conflist(subnet_file: &Path, data: &Path) -> Vec<Value> {
    vec![
        json!({"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
               "delegate":{"hairpinMode":true,"isDefaultGateway":true},
               "subnetFile": subnet_file, "dataDir": data.join("flannel"),
               "ipam":{"dataDir": data.join("ipam")}}),
        json!({"cniVersion":"0.3.1","name":"cbr0","type":"portmap","capabilities":{"portMappings":true}}),
    ]
}

/// ADD through the conflist as libcni does: each plugin in order, the previous result handed
/// to the next. Returns the container's address.
fn conflist_add(host_ns: &str, bins: &Path, id: &str, netns: &str, list: &[Value]) -> Ipv4Addr {
    let mut prev: Option<Value> = None;
    for conf in list {
        let mut conf = conf.clone();
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        let plugin = bins.join(conf["type"].as_str().unwrap());
        let (ok, stdout) = cni_call(host_ns, &plugin, "ADD", id, netns, bins, &conf);
        assert!(ok, "ADD {id} through {}: {stdout}", conf["type"]);
        prev = Some(serde_json::from_str(&stdout).unwrap());
    }
    let result = prev.unwrap();
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().parse().unwrap()
}

fn conflist_del(host_ns: &str, bins: &Path, id: &str, netns: &str, list: &[Value]) {
    for conf in list.iter().rev() {
        let plugin = bins.join(conf["type"].as_str().unwrap());
        let (ok, stdout) = cni_call(host_ns, &plugin, "DEL", id, netns, bins, conf);
        assert!(ok, "DEL {id} through {}: {stdout}", conf["type"]);
    }
}

fn cni_suite(tag: &str, extra: &[&str]) {
    let c = cluster(tag, r#"{"Type":"vxlan"}"#, extra);
    let work = tempfile::tempdir().unwrap();
    let bins = plugin_dir(work.path());
    let prefix = Topology::unique_prefix(tag);
    let mut pods: Vec<(usize, String, Netns, Ipv4Addr)> = Vec::new();
    for (i, h) in c.topo.hosts.iter().enumerate() {
        // The lab's own container holds the lease's gateway address; the bridge takes it here.
        run_ok(&h.ns, &["ip", "link", "del", "veth-c"]);
        let list = conflist(&c.subnet_file(i), &work.path().join(format!("h{i}")));
        for j in 0..3 {
            let ns = Netns::new(format!("{prefix}-p{i}{j}"));
            let id = format!("{tag}-{i}-{j}");
            let ip = conflist_add(&h.ns, &bins, &id, &ns.0, &list);
            assert!(h.subnet.contains(&ip), "{ip} is not in host {}'s lease {}", i + 1, h.subnet);
            pods.push((i, id, ns, ip));
        }
        let bridge = out(&h.ns, &["ip", "-d", "link", "show", "cni0"]);
        assert!(bridge.contains("mtu 1450"), "the bridge has FLANNEL_MTU: {bridge}");
    }
    for (_, _, from, _) in pods.iter().filter(|p| p.0 == 0) {
        for (_, _, _, to) in pods.iter().filter(|p| p.0 == 1) {
            assert!(ping(&from.0, *to, 1), "{} → {to}\n{}", from.0, c.logs());
        }
    }
    assert!(ping(&pods[3].2.0, pods[0].3, 1), "host 2 → host 1\n{}", c.logs());
    // DEL after the lease file changed works from what ADD saved.
    std::fs::write(
        c.subnet_file(0),
        "FLANNEL_NETWORK=100.96.0.0/16\nFLANNEL_SUBNET=100.96.77.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    for (i, id, ns, ip) in &pods {
        let list = conflist(&c.subnet_file(*i), &work.path().join(format!("h{i}")));
        conflist_del(&c.topo.hosts[*i].ns, &bins, id, &ns.0, &list);
        assert!(!out(&ns.0, &["ip", "addr"]).contains(&ip.to_string()), "{ip} still on {}", ns.0);
        // A second DEL finds nothing saved and succeeds.
        conflist_del(&c.topo.hosts[*i].ns, &bins, id, &ns.0, &list);
    }
    for i in 0..2 {
        let ipam = work.path().join(format!("h{i}/ipam/cbr0"));
        let held: Vec<_> = std::fs::read_dir(&ipam)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("100."))
            .collect();
        assert!(held.is_empty(), "host-local still holds {held:?}");
    }
}

/// On a dual-stack network the plugin hands host-local both leased ranges: each pod gets an
/// IPv4 and an IPv6 address from its host's lease and reaches the other host's pod over both.
#[test]
fn cni_plugin_gives_pods_both_families_on_a_dual_stack_network() {
    require_privileges();
    let spec = ClusterSpec { dual_stack: true, ..ClusterSpec::two_hosts("cnidual", r#"{"Type":"vxlan"}"#) };
    let c = Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster starts");
    let work = tempfile::tempdir().unwrap();
    let bins = plugin_dir(work.path());
    let prefix = Topology::unique_prefix("cnidual");
    let mut pods = Vec::new();
    for (i, h) in c.topo.hosts.iter().enumerate() {
        run_ok(&h.ns, &["ip", "link", "del", "veth-c"]);
        let list = conflist(&c.subnet_file(i), &work.path().join(format!("h{i}")));
        let ns = Netns::new(format!("{prefix}-p{i}"));
        let id = format!("cnidual-{i}");
        let mut prev: Option<Value> = None;
        for conf in &list {
            let mut conf = conf.clone();
            if let Some(p) = &prev {
                conf["prevResult"] = p.clone();
            }
            let plugin = bins.join(conf["type"].as_str().unwrap());
            let (ok, stdout) = cni_call(&h.ns, &plugin, "ADD", &id, &ns.0, &bins, &conf);
            assert!(ok, "ADD {id} through {}: {stdout}", conf["type"]);
            prev = Some(serde_json::from_str(&stdout).unwrap());
        }
        let ips: Vec<std::net::IpAddr> = prev.unwrap()["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap())
            .collect();
        let v4 = ips.iter().find_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(*a),
            _ => None,
        });
        let v6 = ips.iter().find_map(|a| match a {
            std::net::IpAddr::V6(a) => Some(*a),
            _ => None,
        });
        let (Some(v4), Some(v6)) = (v4, v6) else { panic!("host {}: pod addresses {ips:?}", i + 1) };
        assert!(h.subnet.contains(&v4) && h.subnet6.contains(&v6), "{v4} {v6} outside host {}'s lease", i + 1);
        pods.push((ns, v4, v6));
    }
    assert!(ping(&pods[0].0.0, pods[1].1, 2), "IPv4 pod → pod\n{}", c.logs());
    let out6 = ns_exec(&pods[0].0.0, &["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", &pods[1].2.to_string()])
        .unwrap();
    assert!(out6.status.success(), "IPv6 pod → pod: {}\n{}", String::from_utf8_lossy(&out6.stdout), c.logs());
}

#[test]
fn cni_plugin_with_debians_plugins_over_userspace_vxlan() {
    cni_suite("cniuser", &[]);
}

#[test]
fn cni_plugin_with_debians_plugins_over_kernel_vxlan() {
    cni_suite("cnikern", &["--dataplane", "kernel"]);
}

#[test]
fn cni_errors_are_cni_errors() {
    require_privileges();
    let work = tempfile::tempdir().unwrap();
    let bins = plugin_dir(work.path());
    let flannel = bins.join("flannel");
    let call = |cmd: &str, conf: &Value| cni_exec(None, &flannel, (cmd, "x1", "none"), &bins, conf);
    let (code, v) = call("VERSION", &json!({"cniVersion":"0.3.1"}));
    assert_eq!(code, Some(0));
    assert!(serde_json::from_str::<Value>(&v).unwrap()["supportedVersions"].as_array().unwrap().len() > 3);
    let missing = work.path().join("no-subnet.env");
    let conf = json!({"cniVersion":"0.3.1","name":"cbr0","type":"flannel","subnetFile":missing,"dataDir":work.path().join("d")});
    let (code, v) = call("ADD", &conf);
    assert_eq!(code, Some(1));
    let err: Value = serde_json::from_str(&v).unwrap();
    assert_eq!((err["cniVersion"].as_str(), err["code"].as_u64()), (Some("0.3.1"), Some(5)), "{v}");
    assert!(err["msg"].as_str().unwrap().contains("no-subnet.env"), "{v}");
    // Nothing saved: DEL succeeds. CHECK does nothing.
    assert_eq!(call("DEL", &conf).0, Some(0));
    assert_eq!(call("CHECK", &conf).0, Some(0));
    let (code, v) = call("ADD", &json!({"name":"cbr0","type":"flannel","delegate":{"name":"x"}}));
    assert_eq!(code, Some(1));
    assert_eq!(serde_json::from_str::<Value>(&v).unwrap()["code"], 7, "{v}");
    let (code, v) = call("FROB", &conf);
    assert_eq!((code, serde_json::from_str::<Value>(&v).unwrap()["code"].as_u64()), (Some(1), Some(4)));
}

#[test]
fn backend_mtu_is_the_underlay_mtu() {
    let c = cluster("mtu", r#"{"Type":"vxlan","MTU":1400}"#, &[]);
    let h1 = c.topo.hosts[0].clone();
    assert!(out(&h1.ns, &["ip", "link", "show", "weft.1"]).contains("mtu 1350"));
    assert!(std::fs::read_to_string(c.subnet_file(0)).unwrap().contains("FLANNEL_MTU=1350"));
    let k = cluster("mtuk", r#"{"Type":"vxlan","MTU":1400}"#, &["--dataplane", "kernel"]);
    assert!(out(&k.topo.hosts[0].ns, &["ip", "link", "show", "flannel.1"]).contains("mtu 1350"));
    assert!(std::fs::read_to_string(k.subnet_file(0)).unwrap().contains("FLANNEL_MTU=1350"));
}

#[test]
fn a_kernel_path_keeps_forwarding_through_a_restart() {
    let mut c = cluster("kkeep", r#"{"Type":"vxlan"}"#, &["--dataplane", "kernel"]);
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    let link = || {
        let l = out(&h1.ns, &["ip", "-o", "link", "show", "flannel.1"]);
        let index = l.split(':').next().unwrap_or("").to_string();
        let mac = l.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
        (index, mac)
    };
    let before = link();
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{before:?}");
    // Pings every 20 ms for 3 s while weft is killed and started again on host 1.
    let c2 = h2.container_ns.clone();
    let target = h1.container_ip.to_string();
    let pinger = std::thread::spawn(move || {
        let o = ns_exec(&c2, &["ping", "-n", "-q", "-c", "150", "-i", "0.02", "-W", "1", &target]).unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_millis(500));
    c.procs[0].kill_hard();
    std::thread::sleep(Duration::from_millis(500));
    c.start_host(bin(), 0, &["--dataplane".into(), "kernel".into()]).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    let summary = pinger.join().unwrap();
    assert!(summary.contains(" 0% packet loss"), "traffic stopped during the restart: {summary}\n{}", c.logs());
    assert_eq!(link(), before, "flannel.1 was made anew instead of adopted\n{}", c.logs());
    assert!(c.procs[0].log_text().contains("adopting the existing VXLAN device"), "{}", c.logs());
    // A clean stop leaves it forwarding too.
    c.procs[0].stop(Duration::from_secs(5)).unwrap().expect("clean exit");
    assert_eq!(link(), before);
    assert!(ping(&h2.container_ns, h1.container_ip, 1));
}

#[test]
fn interfaces_chosen_as_flanneld_chooses_them_and_flags_from_the_environment() {
    require_privileges();
    let c = Cluster::build(&ClusterSpec::two_hosts("iface", r#"{"Type":"udp"}"#)).unwrap();
    let h1 = c.topo.hosts[0].clone();
    let reg = c.registry.path().display().to_string();
    let env_file = c.subnet_file(0);
    let notify = c.registry.path().join("notify.sock");
    let ready = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    ready.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (k, (args, env)) in [
        (vec!["--iface", "nope0,198.18.0.1"], vec![]),
        (vec!["--iface-regex", "^nothing$", "--iface-regex", "^198\\.18\\.0\\."], vec![]),
        (vec!["--iface-can-reach", "198.18.0.2"], vec![]),
        (vec![], vec![("FLANNELD_IFACE", "eth0"), ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "30")]),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = std::fs::remove_file(&env_file);
        let mut all: Vec<String> = vec!["--registry-dir".into(), reg.clone(), "--subnet-file".into()];
        all.push(env_file.display().to_string());
        all.extend(args.iter().map(|s| s.to_string()));
        let log = c.registry.path().join(format!("iface{k}.log"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h1.ns]).arg(bin()).arg("run").args(&all).env("NOTIFY_SOCKET", &notify);
        for (name, value) in &env {
            cmd.env(name, value);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // systemd's READY=1 comes once subnet.env is written.
        let mut buf = [0u8; 64];
        let got = ready.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(got.ok().as_deref(), Some("READY=1"), "case {k} {args:?}:\n{text}");
        assert!(env_file.exists(), "READY=1 before subnet.env");
        assert!(text.contains("iface=eth0 public_ip=198.18.0.1"), "case {k} {args:?}:\n{text}");
        sigterm(child.id());
        assert!(child.wait().unwrap().success());
        let mut buf = [0u8; 64];
        let stopping = ready.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        assert_eq!(stopping.ok().as_deref(), Some("STOPPING=1"));
    }
}

/// Two hosts against a real etcd in host 1's namespace.
fn etcd_hosts(tag: &str, extra: &[&str]) -> (Cluster, Etcd, ClusterSpec) {
    require_privileges();
    let mut spec = ClusterSpec::two_hosts(tag, r#"{"Type":"udp"}"#);
    spec.etcd_endpoints = Some("http://198.18.0.1:2379".into());
    spec.extra_args = extra.iter().map(|s| s.to_string()).collect();
    let c = Cluster::build(&spec).unwrap();
    let e = Etcd::in_netns(&c.topo.hosts[0].ns, "198.18.0.1").unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.put("/coreos.com/network/config", r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#);
    (c, e, spec)
}

fn etcd_lease_id(e: &Etcd, key: &str) -> i64 {
    let json = String::from_utf8(e.ctl(&["get", key, "-w", "json"]).stdout).unwrap();
    serde_json::from_str::<Value>(&json).unwrap()["kvs"][0]["lease"].as_i64().unwrap_or(0)
}

#[test]
fn a_reservation_keeps_no_ttl() {
    let (mut c, e, spec) = etcd_hosts("reserve", &[]);
    let key = "/coreos.com/network/subnets/100.96.1.0-24";
    // An operator's reservation for host 1: written without a TTL. Host 2 takes a lease itself.
    e.put(key, r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
    c.start_all(bin(), &spec, Duration::from_secs(20)).unwrap();
    assert!(std::fs::read_to_string(c.subnet_file(0)).unwrap().contains("FLANNEL_SUBNET=100.96.1.1/24"));
    assert_eq!(etcd_lease_id(&e, key), 0, "weft gave a reservation a TTL\n{}", c.logs());
    let env2 = std::fs::read_to_string(c.subnet_file(1)).unwrap();
    let subnet2: ipnet::Ipv4Net =
        env2.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET=")).unwrap().parse().unwrap();
    let key2 = format!("/coreos.com/network/subnets/{}-{}", subnet2.trunc().addr(), subnet2.prefix_len());
    assert_ne!(etcd_lease_id(&e, &key2), 0, "a lease weft took itself has a TTL");
}

#[test]
fn a_failed_renewal_is_retried_a_minute_later() {
    // Renewal 60 s after the start (the margin leaves a minute of the 24 h), then every minute
    // after a failure, as flanneld.
    let (mut c, mut e, spec) = etcd_hosts("renew", &["--subnet-lease-renew-margin", "1439"]);
    c.start_all(bin(), &spec, Duration::from_secs(20)).unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(45));
    e.kill();
    assert!(
        eventually(Duration::from_secs(40), || c.procs[0].log_text().contains("lease renewal failed")),
        "{}",
        c.logs()
    );
    e.restart().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(75), || c.procs[0].log_text().contains("lease renewed")),
        "no renewal after etcd returned\n{}",
        c.logs()
    );
    assert!(back.elapsed() < Duration::from_secs(75) && started.elapsed() > Duration::from_secs(100));
    // The renewed lease carries a fresh 24 h etcd lease.
    let env = std::fs::read_to_string(c.subnet_file(0)).unwrap();
    let subnet: ipnet::Ipv4Net = env.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET=")).unwrap().parse().unwrap();
    let key = format!("/coreos.com/network/subnets/{}-{}", subnet.trunc().addr(), subnet.prefix_len());
    let id = etcd_lease_id(&e, &key);
    let ttl = String::from_utf8(e.ctl(&["lease", "timetolive", &format!("{id:x}")]).stdout).unwrap();
    assert!(ttl.contains("granted with TTL(86400s)"), "{ttl}");
}

#[test]
fn a_kernel_path_on_a_drop_policy_host_forwards_after_weft_exits_and_restarts() {
    require_privileges();
    let spec = ClusterSpec {
        extra_args: ["--dataplane", "kernel", "--ip-masq"].map(String::from).into(),
        ..ClusterSpec::two_hosts("kdrop", r#"{"Type":"vxlan"}"#)
    };
    let mut c = Cluster::build(&spec).unwrap();
    for h in &c.topo.hosts {
        add_forward_drop(&h.ns);
    }
    c.start_all(bin(), &spec, Duration::from_secs(15)).unwrap();
    let (h1, h2) = (c.topo.hosts[0].clone(), c.topo.hosts[1].clone());
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
    // The kernel goes on forwarding when weft exits, so its forward accepts stay; the
    // masquerade rules go.
    for p in c.procs.iter_mut() {
        p.stop(Duration::from_secs(5)).unwrap().expect("clean exit");
    }
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "forwarding stopped with weft");
    let rules = nft_rules(&h1.ns);
    assert!(!rules.contains("masquerade"), "{rules}");
    let accepts =
        |ns: &str| out(ns, &["nft", "list", "chain", "ip", "filter", "FORWARD"]).matches("weft 100.96.0.0/16").count();
    assert_eq!(accepts(&h1.ns), 2);
    // A restart finds them and adds none twice.
    c.start_host(bin(), 0, &spec.extra_args).unwrap();
    c.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(accepts(&h1.ns), 2, "{}", c.logs());
    assert!(nft_rules(&h1.ns).contains("masquerade"));
    assert!(ping(&h1.container_ns, h2.container_ip, 1), "{}", c.logs());
}
