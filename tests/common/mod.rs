//! Shared helpers of the integration tests: every test builds its own namespaces (unique
//! names) and removes them through guards, also when it fails.
#![allow(dead_code)]

pub mod traffic;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::topology::ns_exec;

/// The weft binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft"))
}

/// These tests need root and /dev/net/tun. Missing them is a failure, never a skip.
pub fn require_privileges() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "integration tests need root (network namespaces, TUN); run them as root"
    );
    assert!(Path::new("/dev/net/tun").exists(), "/dev/net/tun is missing");
}

/// Starts a 2-host cluster with `backend` and pre-seeded leases.
pub fn cluster(tag: &str, backend: &str, extra: &[&str]) -> Cluster {
    require_privileges();
    let spec = ClusterSpec {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..ClusterSpec::two_hosts(tag, backend)
    };
    Cluster::start(bin(), &spec, Duration::from_secs(15)).expect("cluster starts")
}

/// `ping -c count` from namespace `ns` to `dst`; true when every echo was answered.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32) -> bool {
    let out = ns_exec(ns, &["ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2", &dst.to_string()])
        .expect("ping runs (apt-get install iputils-ping)");
    out.status.success()
}

/// Polls `f` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to process `pid` (a child the test started).
pub fn sigterm(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits an i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM is sent");
}

/// True when namespace `ns` has a link called `name`.
pub fn has_link(ns: &str, name: &str) -> bool {
    ns_exec(ns, &["ip", "link", "show", name]).map(|o| o.status.success()).unwrap_or(false)
}

/// Sends `bytes` of verified TCP from container 1 to container 2 and back (one stream each way).
pub fn tcp_both_ways(c: &Cluster, bytes: u64) {
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    for (srv, cli) in [(h2, h1), (h1, h2)] {
        let r = weft::lab::traffic::tcp_bulk(
            &srv.container_ns,
            srv.container_ip,
            &cli.container_ns,
            1,
            weft::lab::traffic::Amount::Bytes(bytes),
            Duration::from_secs(120),
            None,
        )
        .unwrap_or_else(|e| panic!("TCP {} → {}: {e}\n{}", cli.container_ip, srv.container_ip, c.logs()));
        assert_eq!(r.bytes, bytes);
    }
}

/// `ping -6` of `size` bytes; returns ping's output when not every echo came back.
pub fn ping6(ns: &str, dst: Ipv6Addr, size: usize) -> Result<(), String> {
    let out = ns_exec(
        ns,
        &["ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-s", &size.to_string(), &dst.to_string()],
    )
    .expect("ping runs (apt-get install iputils-ping)");
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
    }
}

/// ping6 of several sizes and 20 MB of verified TCP over IPv6 each way between the two pods.
pub fn ipv6_traffic(c: &Cluster, what: &str) {
    const MB: u64 = 1 << 20;
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    for (from, to) in [(h1, h2), (h2, h1)] {
        // 3000 bytes: the sending container cuts it into IPv6 fragments after the host's
        // Packet Too Big (the overlay MTU is below the container link's).
        for size in [56, 1200, 3000] {
            if let Err(out) = ping6(&from.container_ns, to.container_ip6, size) {
                panic!("{what}: ping6 -s {size} {} failed:\n{out}\n{}", to.container_ip6, c.logs());
            }
        }
        let r = weft::lab::traffic::tcp_bulk(
            &to.container_ns,
            to.container_ip6,
            &from.container_ns,
            1,
            weft::lab::traffic::Amount::Bytes(20 * MB),
            Duration::from_secs(60),
            None,
        )
        .unwrap_or_else(|e| panic!("{what}: TCP over IPv6 to {}: {e}\n{}", to.container_ip6, c.logs()));
        assert_eq!(r.bytes, 20 * MB);
    }
}

/// The IPv6 side of a kernel path as flanneld programs it, seen from host 1: host-gw's route
/// via host 2's PublicIPv6, or `flannel-v6.1` over the IPv6 underlay with its onlink route and
/// fdb entry.
pub fn ipv6_kernel_routes(c: &Cluster, backend: &str) {
    let (h1, h2) = (&c.topo.hosts[0], &c.topo.hosts[1]);
    let text = |args: &[&str]| String::from_utf8_lossy(&ns_exec(&h1.ns, args).unwrap().stdout).into_owned();
    let routes = text(&["ip", "-6", "route", "show", &h2.subnet6.to_string()]);
    match backend.contains("vxlan") {
        true => {
            assert!(routes.contains(&format!("via {} dev flannel-v6.1 ", h2.subnet6.network())), "{routes}");
            let d = text(&["ip", "-d", "link", "show", "flannel-v6.1"]);
            assert!(d.contains(&format!("local {}", h1.underlay_ip6)) && d.contains("dstport 8472"), "{d}");
            let fdb = text(&["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
            assert!(fdb.contains(&format!("dst {} self permanent", h2.underlay_ip6)), "{fdb}");
        }
        false => assert!(routes.contains(&format!("via {} dev eth0", h2.underlay_ip6)), "{routes}"),
    }
}
