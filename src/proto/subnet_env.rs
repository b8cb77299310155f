//! `subnet.env`, the file flanneld writes for CNI and Docker.

use ipnet::{Ipv4Net, Ipv6Net};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` and `FLANNEL_SUBNET` (absent on an IPv6-only node, as flanneld).
    pub ipv4: Option<SubnetEnvV4>,
    /// `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` of a dual-stack or IPv6-only node.
    pub ipv6: Option<SubnetEnvV6>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

/// The IPv4 lines of `subnet.env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnvV4 {
    /// `FLANNEL_NETWORK`.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: the lease's first host address with the lease's prefix (`10.1.74.1/24`).
    pub subnet: Ipv4Net,
}

impl SubnetEnvV4 {
    /// The lines for an IPv4 lease: the subnet's `.1` address, as flannel writes it.
    pub fn for_lease(network: Ipv4Net, lease: Ipv4Net) -> Self {
        let first = Ipv4Addr::from(u32::from(lease.network()).wrapping_add(1));
        Self { network, subnet: Ipv4Net::new(first, lease.prefix_len()).unwrap_or(lease) }
    }
}

/// The IPv6 lines of `subnet.env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnvV6 {
    /// `FLANNEL_IPV6_NETWORK`.
    pub network: Ipv6Net,
    /// `FLANNEL_IPV6_SUBNET`: the lease's first host address with its prefix (`fc00:0:0:1::1/64`).
    pub subnet: Ipv6Net,
}

impl SubnetEnvV6 {
    /// The lines for an IPv6 lease: its `::1` address, as flannel writes it.
    pub fn for_lease(network: Ipv6Net, lease: Ipv6Net) -> Self {
        let first = Ipv6Addr::from(u128::from(lease.network()).wrapping_add(1));
        Self { network, subnet: Ipv6Net::new(first, lease.prefix_len()).unwrap_or(lease) }
    }
}

/// A malformed `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subnet.env: {0}")]
pub struct EnvError(pub String);

impl SubnetEnv {
    /// The file for an IPv4 lease.
    pub fn for_lease(network: Ipv4Net, lease: Ipv4Net, mtu: u32, ipmasq: bool) -> Self {
        Self { ipv4: Some(SubnetEnvV4::for_lease(network, lease)), ipv6: None, mtu, ipmasq }
    }

    /// The leased subnet itself (`10.1.74.1/24` → `10.1.74.0/24`).
    pub fn lease_subnet(&self) -> Option<Ipv4Net> {
        self.ipv4.map(|v4| v4.subnet.trunc())
    }

    /// The leased IPv6 subnet itself (`fc00:0:0:1::1/64` → `fc00:0:0:1::/64`).
    pub fn lease_subnet_v6(&self) -> Option<Ipv6Net> {
        self.ipv6.map(|v6| v6.subnet.trunc())
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(v4) = &self.ipv4 {
            let _ = writeln!(s, "FLANNEL_NETWORK={}", v4.network);
            let _ = writeln!(s, "FLANNEL_SUBNET={}", v4.subnet);
        }
        if let Some(v6) = &self.ipv6 {
            let _ = writeln!(s, "FLANNEL_IPV6_NETWORK={}", v6.network);
            let _ = writeln!(s, "FLANNEL_IPV6_SUBNET={}", v6.subnet);
        }
        let _ = writeln!(s, "FLANNEL_MTU={}", self.mtu);
        let _ = writeln!(s, "FLANNEL_IPMASQ={}", self.ipmasq);
        s
    }

    /// Parses the file; unknown keys and blank or `#` lines are ignored.
    pub fn parse(text: &str) -> Result<Self, EnvError> {
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, false);
        let (mut network6, mut subnet6) = (None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| EnvError(format!("line {}: no '='", n + 1)))?;
            let bad = || EnvError(format!("line {}: bad value for {k}: {v:?}", n + 1));
            match k.trim() {
                "FLANNEL_NETWORK" => network = Some(v.trim().parse::<Ipv4Net>().map_err(|_| bad())?),
                "FLANNEL_SUBNET" => subnet = Some(v.trim().parse::<Ipv4Net>().map_err(|_| bad())?),
                "FLANNEL_IPV6_NETWORK" => network6 = Some(v.trim().parse::<Ipv6Net>().map_err(|_| bad())?),
                "FLANNEL_IPV6_SUBNET" => subnet6 = Some(v.trim().parse::<Ipv6Net>().map_err(|_| bad())?),
                "FLANNEL_MTU" => mtu = Some(v.trim().parse::<u32>().map_err(|_| bad())?),
                "FLANNEL_IPMASQ" => ipmasq = v.trim().parse::<bool>().map_err(|_| bad())?,
                _ => {}
            }
        }
        let ipv4 = match (network, subnet) {
            (Some(network), Some(subnet)) => Some(SubnetEnvV4 { network, subnet }),
            (None, None) => None,
            _ => return Err(EnvError("FLANNEL_NETWORK and FLANNEL_SUBNET come together".into())),
        };
        let ipv6 = match (network6, subnet6) {
            (Some(network), Some(subnet)) => Some(SubnetEnvV6 { network, subnet }),
            (None, None) => None,
            _ => return Err(EnvError("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET come together".into())),
        };
        if ipv4.is_none() && ipv6.is_none() {
            return Err(EnvError("FLANNEL_NETWORK missing".into()));
        }
        Ok(Self { ipv4, ipv6, mtu: mtu.ok_or_else(|| EnvError("FLANNEL_MTU missing".into()))?, ipmasq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn render_matches_flannel() {
        let e = SubnetEnv::for_lease("10.244.0.0/16".parse().unwrap(), "10.244.2.0/24".parse().unwrap(), 1450, false);
        assert_eq!(e.render(), FILE);
        assert_eq!(SubnetEnv::parse(FILE).unwrap(), e);
        assert_eq!(e.lease_subnet(), Some("10.244.2.0/24".parse::<Ipv4Net>().unwrap()));
    }

    #[test]
    fn parse_errors() {
        assert!(SubnetEnv::parse("FLANNEL_SUBNET=10.1.74.1/24\n").is_err());
        assert!(SubnetEnv::parse("garbage").is_err());
        assert!(SubnetEnv::parse(&FILE.replace("1450", "x")).is_err());
        let half = format!("# comment\n\nFLANNEL_IPV6_NETWORK=fc00::/48\n{FILE}");
        assert!(SubnetEnv::parse(&half).is_err());
        let extra = format!("# comment\n\nFLANNEL_OTHER=1\n{FILE}");
        assert!(SubnetEnv::parse(&extra).is_ok());
    }

    #[test]
    fn dual_stack_lines_in_flannels_order() {
        let mut e =
            SubnetEnv::for_lease("10.244.0.0/16".parse().unwrap(), "10.244.2.0/24".parse().unwrap(), 1450, true);
        e.ipv6 = Some(SubnetEnvV6::for_lease("2001:db8:1::/48".parse().unwrap(), "2001:db8:1:2::/64".parse().unwrap()));
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\n\
                    FLANNEL_IPV6_NETWORK=2001:db8:1::/48\nFLANNEL_IPV6_SUBNET=2001:db8:1:2::1/64\n\
                    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(e.render(), text);
        let back = SubnetEnv::parse(text).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.lease_subnet_v6(), Some("2001:db8:1:2::/64".parse().unwrap()));
    }

    /// An IPv6-only node writes no IPv4 lines, as flanneld (`if config.EnableIPv4`).
    #[test]
    fn ipv6_only_has_no_ipv4_lines() {
        let v6 = SubnetEnvV6::for_lease("2001:db8:1::/48".parse().unwrap(), "2001:db8:1:2::/64".parse().unwrap());
        let e = SubnetEnv { ipv4: None, ipv6: Some(v6), mtu: 1430, ipmasq: false };
        let text = "FLANNEL_IPV6_NETWORK=2001:db8:1::/48\nFLANNEL_IPV6_SUBNET=2001:db8:1:2::1/64\n\
                    FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
        assert_eq!(e.render(), text);
        assert_eq!(SubnetEnv::parse(text).unwrap(), e);
        assert_eq!(e.lease_subnet(), None);
        assert!(SubnetEnv::parse("FLANNEL_MTU=1430\n").is_err());
    }
}
