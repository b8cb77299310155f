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
