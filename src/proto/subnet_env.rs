//! `subnet.env`, the file flanneld writes for CNI and Docker.

use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: the lease's first host address with the lease's prefix (`10.1.74.1/24`).
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

/// A malformed `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subnet.env: {0}")]
pub struct EnvError(pub String);

impl SubnetEnv {
    /// The file for a lease: the subnet's `.1` address, as flannel writes it.
    pub fn for_lease(network: Ipv4Net, lease: Ipv4Net, mtu: u32, ipmasq: bool) -> Self {
        let first = Ipv4Addr::from(u32::from(lease.network()).wrapping_add(1));
        let subnet = Ipv4Net::new(first, lease.prefix_len()).unwrap_or(lease);
        Self { network, subnet, mtu, ipmasq }
    }

    /// The leased subnet itself (`10.1.74.1/24` → `10.1.74.0/24`).
    pub fn lease_subnet(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "FLANNEL_NETWORK={}", self.network);
        let _ = writeln!(s, "FLANNEL_SUBNET={}", self.subnet);
        let _ = writeln!(s, "FLANNEL_MTU={}", self.mtu);
        let _ = writeln!(s, "FLANNEL_IPMASQ={}", self.ipmasq);
        s
    }

    /// Parses the file; unknown keys and blank or `#` lines are ignored.
    pub fn parse(text: &str) -> Result<Self, EnvError> {
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, false);
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
                "FLANNEL_MTU" => mtu = Some(v.trim().parse::<u32>().map_err(|_| bad())?),
                "FLANNEL_IPMASQ" => ipmasq = v.trim().parse::<bool>().map_err(|_| bad())?,
                _ => {}
            }
        }
        Ok(Self {
            network: network.ok_or_else(|| EnvError("FLANNEL_NETWORK missing".into()))?,
            subnet: subnet.ok_or_else(|| EnvError("FLANNEL_SUBNET missing".into()))?,
            mtu: mtu.ok_or_else(|| EnvError("FLANNEL_MTU missing".into()))?,
            ipmasq,
        })
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
        assert_eq!(e.lease_subnet(), "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn parse_errors() {
        assert!(SubnetEnv::parse("FLANNEL_SUBNET=10.1.74.1/24\n").is_err());
        assert!(SubnetEnv::parse("garbage").is_err());
        assert!(SubnetEnv::parse(&FILE.replace("1450", "x")).is_err());
        let extra = format!("# comment\n\nFLANNEL_IPV6_NETWORK=fc00::/48\n{FILE}");
        assert!(SubnetEnv::parse(&extra).is_ok());
    }
}
