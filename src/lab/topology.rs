//! The lab's (and the integration tests') network: hosts and containers in network namespaces.
//!
//! ```text
//!  container c1 ─veth─ host h1 ══ underlay veth ══ host h2 ─veth─ container c2
//!  100.96.1.2/24       100.96.1.1   198.18.0.1/24    198.18.0.2/24   100.96.2.1   100.96.2.2/24
//! ```
//!
//! Host i (1-based) has underlay address 198.18.0.i and pod subnet 100.96.i.0/24 (addresses from
//! 198.18.0.0/15 and 100.64.0.0/10 only). A dual-stack topology gives host i the IPv6 pod subnet
//! 2001:db8:96:i::/64 and the underlay address 2001:db8:18::i as well (from the documentation
//! range 2001:db8::/32). Every namespace is removed when the `Topology` drops, also on panic.

use ipnet::{Ipv4Net, Ipv6Net};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The pod network the lab and tests configure.
pub const POD_NETWORK: &str = "100.96.0.0/16";
/// The IPv6 pod network of a dual-stack lab.
pub const POD_NETWORK_V6: &str = "2001:db8:96::/48";
/// Name of the underlay interface in every host namespace.
pub const UNDERLAY_IF: &str = "eth0";

/// One host and the container behind it.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's namespace.
    pub ns: String,
    /// The container's namespace.
    pub container_ns: String,
    /// Underlay address (PublicIP).
    pub underlay_ip: Ipv4Addr,
    /// The pod subnet this host should lease.
    pub subnet: Ipv4Net,
    /// The container's address.
    pub container_ip: Ipv4Addr,
    /// The IPv6 pod subnet this host should lease (configured in a dual-stack topology only).
    pub subnet6: Ipv6Net,
    /// The container's IPv6 address (configured in a dual-stack topology only).
    pub container_ip6: Ipv6Addr,
    /// Underlay IPv6 address, 2001:db8:18::i (PublicIPv6; dual-stack topology only).
    pub underlay_ip6: Ipv6Addr,
}

/// A set of namespaces that is torn down on drop.
#[derive(Debug)]
pub struct Topology {
    /// The hosts, index 0 = host 1.
    pub hosts: Vec<Host>,
    namespaces: Vec<String>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, turning a failure into an error that quotes the command.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs a command inside namespace `ns` (`ip netns exec`).
pub fn ns_exec(ns: &str, cmd: &[&str]) -> io::Result<std::process::Output> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    Command::new("ip").args(&args).stdin(Stdio::null()).output()
}

fn sysctl_in(ns: &str, key: &str, value: &str) -> io::Result<()> {
    let out = ns_exec(ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
    if !out.status.success() {
        return Err(io::Error::other(format!("sysctl {key} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

impl Topology {
    /// A unique namespace-name prefix for `tag` (unique per process and call).
    pub fn unique_prefix(tag: &str) -> String {
        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        format!("weft-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
    }

    /// Builds `n` hosts (2 ≤ n ≤ 200) with a container each. With 2 hosts the underlay is one
    /// veth pair; with more, a bridge in a switch namespace.
    pub fn build(tag: &str, n: usize) -> io::Result<Self> {
        Self::build_with(tag, n, false)
    }

    /// [`Topology::build`], with IPv6 pod addresses too when `dual_stack`.
    pub fn build_with(tag: &str, n: usize, dual_stack: bool) -> io::Result<Self> {
        if !(2..=200).contains(&n) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "hosts must be 2..=200"));
        }
        let prefix = Self::unique_prefix(tag);
        let mut t = Topology { hosts: Vec::new(), namespaces: Vec::new() };
        for i in 1..=n {
            let i8 = u8::try_from(i).map_err(io::Error::other)?;
            t.hosts.push(Host {
                ns: format!("{prefix}-h{i}"),
                container_ns: format!("{prefix}-c{i}"),
                underlay_ip: Ipv4Addr::new(198, 18, 0, i8),
                subnet: Ipv4Net::new(Ipv4Addr::new(100, 96, i8, 0), 24).map_err(io::Error::other)?,
                container_ip: Ipv4Addr::new(100, 96, i8, 2),
                subnet6: Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0x96, u16::from(i8), 0, 0, 0, 0), 64)
                    .map_err(io::Error::other)?,
                container_ip6: Ipv6Addr::new(0x2001, 0xdb8, 0x96, u16::from(i8), 0, 0, 0, 2),
                underlay_ip6: Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, u16::from(i8)),
            });
        }
        // From here on, `t` owns what it creates: an early return tears it down.
        let hosts = t.hosts.clone();
        for h in &hosts {
            t.add_ns(&h.ns)?;
            t.add_ns(&h.container_ns)?;
        }
        if n == 2 {
            ip(&[
                "-n",
                &hosts[0].ns,
                "link",
                "add",
                UNDERLAY_IF,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IF,
                "netns",
                &hosts[1].ns,
            ])?;
        } else {
            let sw = format!("{prefix}-sw");
            t.add_ns(&sw)?;
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            for (i, h) in hosts.iter().enumerate() {
                let port = format!("p{}", i + 1);
                ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", UNDERLAY_IF, "netns", &h.ns])?;
                ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            }
        }
        for h in &hosts {
            let gw = Ipv4Addr::from(u32::from(h.subnet.network()) + 1);
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &h.ns, "addr", "add", &format!("{}/24", h.underlay_ip), "dev", UNDERLAY_IF])?;
            ip(&["-n", &h.ns, "link", "set", UNDERLAY_IF, "up"])?;
            ip(&[
                "-n",
                &h.ns,
                "link",
                "add",
                "veth-c",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &h.container_ns,
            ])?;
            ip(&["-n", &h.ns, "addr", "add", &format!("{gw}/24"), "dev", "veth-c"])?;
            ip(&["-n", &h.ns, "link", "set", "veth-c", "up"])?;
            ip(&["-n", &h.container_ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &h.container_ns, "addr", "add", &format!("{}/24", h.container_ip), "dev", "eth0"])?;
            ip(&["-n", &h.container_ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h.container_ns, "route", "add", "default", "via", &gw.to_string()])?;
            sysctl_in(&h.ns, "net.ipv4.ip_forward", "1")?;
            if dual_stack {
                add_ipv6(h)?;
            }
        }
        Ok(t)
    }

    fn add_ns(&mut self, name: &str) -> io::Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        Ok(())
    }
}

/// The IPv6 side of host `h`: its underlay address, the container's address and default
/// route, and the host's gateway address on the container link, with forwarding on.
fn add_ipv6(h: &Host) -> io::Result<()> {
    let gw = Ipv6Addr::from(u128::from(h.subnet6.network()) + 1);
    let cidr = |a: Ipv6Addr| format!("{a}/{}", h.subnet6.prefix_len());
    ip(&["-n", &h.ns, "-6", "addr", "add", &format!("{}/64", h.underlay_ip6), "dev", UNDERLAY_IF, "nodad"])?;
    ip(&["-n", &h.ns, "-6", "addr", "add", &cidr(gw), "dev", "veth-c", "nodad"])?;
    ip(&["-n", &h.container_ns, "-6", "addr", "add", &cidr(h.container_ip6), "dev", "eth0", "nodad"])?;
    ip(&["-n", &h.container_ns, "-6", "route", "add", "default", "via", &gw.to_string()])?;
    sysctl_in(&h.ns, "net.ipv6.conf.all.forwarding", "1")
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("weft: could not remove namespace {ns}: {e}");
            }
        }
    }
}
