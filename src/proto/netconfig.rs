//! flannel's network configuration JSON (`<prefix>/config`), with flanneld's defaults and checks.

use super::json::GoObject;
use ipnet::{Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Default UDP port of the UDP backend.
pub const UDP_DEFAULT_PORT: u16 = 8285;
/// flannel's VXLAN port when `Port` is 0 or absent (the Linux kernel's historical default).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;
/// flannel's default VNI.
pub const VXLAN_DEFAULT_VNI: u32 = 1;

/// Address blocks a pod network must not overlap: a subnet there would route this-network,
/// loopback, multicast or broadcast addresses into the overlay (or nothing at all).
const RESERVED: [(Ipv4Net, &str); 4] = [
    (Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8), "this network"),
    (Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8), "loopback"),
    (Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4), "multicast"),
    (Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4), "reserved, and broadcast"),
];

/// IPv6 blocks a pod network must not overlap, for the same reasons.
const RESERVED_V6: [(Ipv6Net, &str); 4] = [
    (Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128), "unspecified"),
    (Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128), "loopback"),
    (Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), "link-local"),
    (Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), "multicast"),
];

/// The backend types weft knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    /// Raw IP in UDP (flannel `udp`).
    Udp,
    /// VXLAN (flannel `vxlan`).
    Vxlan,
    /// A route per peer via its PublicIP (flannel `host-gw`).
    HostGw,
}

impl BackendType {
    /// The lower-case name flannel uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
        }
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `Backend` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `Type`, lower-cased.
    pub kind: BackendType,
    /// `Port` with flannel's per-backend default applied.
    pub port: u16,
    /// `VNI` (vxlan), default 1.
    pub vni: u32,
    /// `MTU`, when set: the underlay MTU the overlay MTU is counted from (flanneld's meaning).
    pub mtu: Option<u32>,
    /// `DirectRouting` (vxlan).
    pub direct_routing: bool,
}

/// A validated network configuration: an IPv4 pod network, an IPv6 one, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The IPv4 pod network (`EnableIPv4`, the default), None for an IPv6-only network.
    pub ipv4: Option<Ipv4Config>,
    /// The IPv6 pod network (`EnableIPv6`), None for an IPv4-only network.
    pub ipv6: Option<Ipv6Config>,
    /// The backend.
    pub backend: BackendConfig,
}

/// The IPv4 pod network, with flanneld's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    /// `Network`.
    pub network: Ipv4Net,
    /// `SubnetLen` with defaults applied.
    pub subnet_len: u8,
    /// `SubnetMin` with defaults applied (a subnet's network address).
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax` with defaults applied.
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 half of a dual-stack network, with flanneld's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`.
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`: 64 for a network of /62 or larger, else the prefix + 2.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`: by default the second subnet (the first is skipped, as for IPv4).
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`: by default the last subnet.
    pub subnet_max: Ipv6Addr,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network config: {0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

impl NetConfig {
    /// Parses and validates the JSON text as flanneld would.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let obj = GoObject::parse(text).map_err(|e| ConfigError(format!("not a JSON object: {e}")))?;
        let get_err = ConfigError;
        let enable_v4: bool = obj.get("EnableIPv4").map_err(get_err)?.unwrap_or(true);
        let enable_v6: bool = obj.get("EnableIPv6").map_err(get_err)?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return err("EnableIPv4 and EnableIPv6 are both false: the network has no pods' addresses");
        }
        let ipv4 = if enable_v4 { Some(parse_ipv4(&obj)?) } else { None };
        let ipv6 = if enable_v6 { Some(parse_ipv6(&obj)?) } else { None };
        let backend = parse_backend(&obj)?;
        Ok(Self { ipv4, ipv6, backend })
    }
    /// True when `subnet` is an IPv4 subnet this configuration can hand out.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        self.ipv4.as_ref().is_some_and(|c| c.fits(subnet))
    }

    /// True when `subnet` is an IPv6 subnet this configuration can hand out.
    pub fn fits_v6(&self, subnet: &Ipv6Net) -> bool {
        self.ipv6.as_ref().is_some_and(|c| c.fits(subnet))
    }

    /// The pod networks, for logs: `100.96.0.0/16`, `2001:db8::/48`, or both joined by `,`.
    pub fn networks(&self) -> String {
        let v4 = self.ipv4.as_ref().map(|c| c.network.to_string());
        let v6 = self.ipv6.as_ref().map(|c| c.network.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(",")
    }
}

impl Ipv4Config {
    /// True when `subnet` is one this configuration can hand out.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && self.network.contains(subnet)
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }

    /// Every subnet from SubnetMin to SubnetMax, in order (lazily).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        let (lo, hi) = (u64::from(u32::from(self.subnet_min)), u64::from(u32::from(self.subnet_max)));
        (0..).map(move |i: u64| lo + i * step).take_while(move |a| *a <= hi).filter_map(move |a| {
            let addr = Ipv4Addr::from(u32::try_from(a).ok()?);
            Ipv4Net::new(addr, self.subnet_len).ok()
        })
    }
}

impl Ipv6Config {
    /// True when `subnet` is one this configuration can hand out.
    pub fn fits(&self, subnet: &Ipv6Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && self.network.contains(subnet)
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }

    /// Every subnet from IPv6SubnetMin to IPv6SubnetMax, in order (lazily: a /48 holds 65 536
    /// /64s, a /32 four billion).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let step = subnet_size_v6(self.subnet_len);
        let (lo, hi) = (u128::from(self.subnet_min), u128::from(self.subnet_max));
        (0..)
            .map_while(move |i: u128| i.checked_mul(step).and_then(|o| lo.checked_add(o)))
            .take_while(move |a| *a <= hi)
            .filter_map(move |a| Ipv6Net::new(Ipv6Addr::from(a), self.subnet_len).ok())
    }
}

/// Addresses in one IPv6 subnet of prefix `len` (≥ 1: a /0 subnet is never valid here).
fn subnet_size_v6(len: u8) -> u128 {
    1u128.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// The IPv4 half, checked as flanneld's `CheckNetworkConfig` does, plus the reserved blocks.
fn parse_ipv4(obj: &GoObject<'_>) -> Result<Ipv4Config, ConfigError> {
    let network: Ipv4Net = match obj.get::<String>("Network").map_err(ConfigError)? {
        None => return err("Network is missing"),
        Some(s) => s.parse().map_err(|_| ConfigError(format!("Network {s:?} is not an IPv4 CIDR")))?,
    };
    if network.network() != network.addr() {
        return err(format!("Network {network} has host bits set"));
    }
    if let Some((block, what)) = RESERVED.iter().find(|(b, _)| b.contains(&network.network()) || network.contains(b)) {
        return err(format!(
            "Network {network} overlaps {block} ({what}): pods cannot have such addresses; choose a private range"
        ));
    }
    let prefix = network.prefix_len();
    let subnet_len = match obj.get::<u8>("SubnetLen").map_err(ConfigError)? {
        None | Some(0) => match prefix {
            0..=22 => 24,
            23..=28 => prefix + 2,
            _ => return err(format!("Network {network} is too small (prefix > 28)")),
        },
        Some(n) if n > 30 => return err(format!("SubnetLen {n} is larger than 30")),
        Some(n) if n < prefix + 2 => {
            return err(format!("SubnetLen {n} must be at least the network prefix + 2 ({})", prefix + 2));
        }
        Some(n) => n,
    };
    let net_start = u32::from(network.network());
    let subnet_size = 1u64 << (32 - u32::from(subnet_len));
    let net_size = 1u64 << (32 - u32::from(prefix));
    let to_addr = |v: u64| Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX));
    let default_min = to_addr(u64::from(net_start) + subnet_size);
    let default_max = to_addr(u64::from(net_start) + net_size - subnet_size);
    let bound = |name: &str, default: Ipv4Addr| -> Result<Ipv4Addr, ConfigError> {
        let Some(s) = obj.get::<String>(name).map_err(ConfigError)? else {
            return Ok(default);
        };
        let a: Ipv4Addr = s.parse().map_err(|_| ConfigError(format!("{name} {s:?} is not an IPv4 address")))?;
        if !network.contains(&a) {
            return Err(ConfigError(format!("{name} {a} is not inside Network {network}")));
        }
        if u64::from(u32::from(a)) % subnet_size != 0 {
            return Err(ConfigError(format!("{name} {a} is not aligned to SubnetLen {subnet_len}")));
        }
        Ok(a)
    };
    let subnet_min = bound("SubnetMin", default_min)?;
    let subnet_max = bound("SubnetMax", default_max)?;
    if subnet_min > subnet_max {
        return err(format!("SubnetMin {subnet_min} is above SubnetMax {subnet_max}"));
    }
    Ok(Ipv4Config { network, subnet_len, subnet_min, subnet_max })
}

/// The IPv6 half, checked as flanneld's `CheckNetworkConfig` does, plus the reserved blocks.
fn parse_ipv6(obj: &GoObject<'_>) -> Result<Ipv6Config, ConfigError> {
    let network: Ipv6Net = match obj.get::<String>("IPv6Network").map_err(ConfigError)? {
        None => return err("EnableIPv6 is set but IPv6Network is missing"),
        Some(s) => s.parse().map_err(|_| ConfigError(format!("IPv6Network {s:?} is not an IPv6 CIDR")))?,
    };
    if network.network() != network.addr() {
        return err(format!("IPv6Network {network} has host bits set"));
    }
    if let Some((block, what)) = RESERVED_V6.iter().find(|(b, _)| b.contains(&network.network()) || network.contains(b))
    {
        return err(format!("IPv6Network {network} overlaps {block} ({what}): choose a unique local or global range"));
    }
    let prefix = network.prefix_len();
    let subnet_len = match obj.get::<u8>("IPv6SubnetLen").map_err(ConfigError)? {
        None | Some(0) => match prefix {
            0..=62 => 64,
            63..=124 => prefix + 2,
            _ => return err(format!("IPv6Network {network} is too small (prefix > 124)")),
        },
        Some(n) if n > 126 => return err(format!("IPv6SubnetLen {n} is larger than 126")),
        Some(n) if n < prefix + 2 => {
            return err(format!("IPv6SubnetLen {n} must be at least the network prefix + 2 ({})", prefix + 2));
        }
        Some(n) => n,
    };
    let size = subnet_size_v6(subnet_len);
    let start = u128::from(network.network());
    // prefix ≤ subnet_len - 2, so the network holds at least four subnets and `last` is exact.
    let last = u128::from(network.broadcast()) - (size - 1);
    let bound = |name: &str, default: u128| -> Result<Ipv6Addr, ConfigError> {
        let Some(s) = obj.get::<String>(name).map_err(ConfigError)? else {
            return Ok(Ipv6Addr::from(default));
        };
        let a: Ipv6Addr = s.parse().map_err(|_| ConfigError(format!("{name} {s:?} is not an IPv6 address")))?;
        if !network.contains(&a) {
            return Err(ConfigError(format!("{name} {a} is not inside IPv6Network {network}")));
        }
        if u128::from(a) % size != 0 {
            return Err(ConfigError(format!("{name} {a} is not aligned to IPv6SubnetLen {subnet_len}")));
        }
        Ok(a)
    };
    let subnet_min = bound("IPv6SubnetMin", start + size)?;
    let subnet_max = bound("IPv6SubnetMax", last)?;
    if subnet_min > subnet_max {
        return err(format!("IPv6SubnetMin {subnet_min} is above IPv6SubnetMax {subnet_max}"));
    }
    Ok(Ipv6Config { network, subnet_len, subnet_min, subnet_max })
}

fn parse_backend(obj: &GoObject<'_>) -> Result<BackendConfig, ConfigError> {
    let Some(raw) = obj.raw("Backend").filter(|r| r.get() != "null") else {
        // flanneld with no Backend runs the udp backend.
        return Ok(BackendConfig {
            kind: BackendType::Udp,
            port: UDP_DEFAULT_PORT,
            vni: 0,
            mtu: None,
            direct_routing: false,
        });
    };
    let b = GoObject::parse(raw.get()).map_err(|e| ConfigError(format!("Backend is not an object: {e}")))?;
    let kind_name = b.get::<String>("Type").map_err(ConfigError)?.unwrap_or_else(|| "udp".into()).to_ascii_lowercase();
    let kind = match kind_name.as_str() {
        "udp" => BackendType::Udp,
        "vxlan" => BackendType::Vxlan,
        "host-gw" => BackendType::HostGw,
        other => {
            return err(format!("Backend.Type {other:?} is not supported (udp, vxlan, host-gw)"));
        }
    };
    let port: u16 = b.get("Port").map_err(ConfigError)?.unwrap_or(0);
    let port = match (kind, port) {
        (BackendType::Udp, 0) => UDP_DEFAULT_PORT,
        (BackendType::Vxlan, 0) => VXLAN_DEFAULT_PORT,
        (_, p) => p,
    };
    let vni: u32 = b.get("VNI").map_err(ConfigError)?.unwrap_or(VXLAN_DEFAULT_VNI);
    if kind == BackendType::Vxlan && (vni == 0 || vni > 0x00ff_ffff) {
        return err(format!("Backend.VNI {vni} is outside 1..=16777215"));
    }
    let mtu: Option<u32> = b.get("MTU").map_err(ConfigError)?.filter(|m| *m != 0);
    if let Some(m) = mtu
        && !(576..=65_535).contains(&m)
    {
        return err(format!("Backend.MTU {m} is outside 576..=65535"));
    }
    let direct_routing = b.get("DirectRouting").map_err(ConfigError)?.unwrap_or(false);
    Ok(BackendConfig { kind, port, vni, mtu, direct_routing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        NetConfig::parse(s)
    }

    /// The IPv4 half of a config that has one.
    fn v4(s: &str) -> Ipv4Config {
        parse(s).unwrap().ipv4.unwrap()
    }

    #[test]
    fn flannel_example_defaults() {
        let c = parse(r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        assert_eq!(c.backend.kind, BackendType::Udp);
        assert_eq!(c.backend.port, 8285);
        let c = c.ipv4.unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(100, 96, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(100, 96, 255, 0));
        assert_eq!(c.subnets().count(), 255);
    }

    #[test]
    fn backend_absent_is_udp_and_names_are_case_insensitive() {
        let c = parse(r#"{"network":"10.1.0.0/16","SUBNETLEN":26}"#).unwrap();
        assert_eq!(c.backend.kind, BackendType::Udp);
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        let c = parse(r#"{"Network":"10.1.0.0/16","backend":{"type":"VXLAN"}}"#).unwrap();
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.backend.vni, 1);
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","Port":4789,"VNI":7}}"#).unwrap();
        assert_eq!((c.backend.port, c.backend.vni), (4789, 7));
    }

    #[test]
    fn subnet_len_defaults_by_prefix() {
        for (net, want) in [("10.0.0.0/8", 24), ("10.0.0.0/22", 24), ("10.0.0.0/23", 25), ("10.0.0.0/28", 30)] {
            assert_eq!(v4(&format!(r#"{{"Network":"{net}"}}"#)).subnet_len, want, "{net}");
        }
        assert!(parse(r#"{"Network":"10.0.0.0/29"}"#).is_err());
    }

    #[test]
    fn min_max_defaults_and_checks() {
        let c = v4(r#"{"Network":"10.0.0.0/23"}"#);
        assert_eq!(c.subnet_len, 25);
        assert_eq!((c.subnet_min, c.subnet_max), (Ipv4Addr::new(10, 0, 0, 128), Ipv4Addr::new(10, 0, 1, 128)));
        let c = parse(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.10.0","SubnetMax":"10.0.20.0"}"#).unwrap();
        assert_eq!(c.ipv4.as_ref().unwrap().subnets().count(), 11);
        assert!(c.fits(&"10.0.10.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.0.9.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.0.10.0/25".parse().unwrap()));
        for bad in [
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.0.5"}"#,
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.8.0"}"#,
            r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
            r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
            r#"{"Network":"10.0.0.1/16"}"#,
            r#"{"Network":"fc00::/64"}"#,
            r#"{"Backend":{"Type":"udp"}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"gre"}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp","Port":"x"}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":[]}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
            r#"{"Network":"0.0.0.0/0"}"#,
            r#"{"Network":"0.0.0.0/1"}"#,
            r#"{"Network":"127.0.0.0/8"}"#,
            r#"{"Network":"127.1.0.0/16"}"#,
            r#"{"Network":"224.0.0.0/8"}"#,
            r#"{"Network":"240.0.0.0/4"}"#,
            r#"{"Network":"128.0.0.0/1"}"#,
            r#"{"Network":"#,
            "",
            "[]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_defaults_as_flanneld() {
        let c = parse(r#"{"Network":"100.96.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:1::/48"}"#).unwrap();
        let v6 = c.ipv6.clone().unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "2001:db8:1:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "2001:db8:1:ffff::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnets().count(), 65_535);
        assert!(c.fits_v6(&"2001:db8:1:7::/64".parse().unwrap()));
        assert!(!c.fits_v6(&"2001:db8:1::/64".parse().unwrap()));
        assert!(!c.fits_v6(&"2001:db8:1:7::/80".parse().unwrap()));
        assert!(!c.fits_v6(&"2001:db8:2:7::/64".parse().unwrap()));
        // Without EnableIPv6 the IPv6 fields are ignored, as flanneld ignores them.
        let c = parse(r#"{"Network":"100.96.0.0/16","IPv6Network":"2001:db8:1::/48"}"#).unwrap();
        assert_eq!(c.ipv6, None);
        assert!(!c.fits_v6(&"2001:db8:1:7::/64".parse().unwrap()));
        // Small networks: prefix + 2, as for IPv4.
        let c = parse(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/120"}"#).unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 122);
        assert_eq!(
            v6.subnets().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["2001:db8::40/122", "2001:db8::80/122", "2001:db8::c0/122"]
        );
        let c = parse(
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/32","IPv6SubnetLen":56,
                "IPv6SubnetMin":"2001:db8:0:100::","IPv6SubnetMax":"2001:db8:0:300::"}"#,
        )
        .unwrap();
        assert_eq!(c.ipv6.unwrap().subnets().count(), 3);
    }

    #[test]
    fn ipv6_only_as_flanneld() {
        // flanneld checks no IPv4 field of an IPv6-only network: Network may be absent or stale.
        for text in [
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:1::/48"}"#,
            r#"{"Network":"not a CIDR","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:1::/48"}"#,
        ] {
            let c = parse(text).unwrap();
            assert_eq!(c.ipv4, None, "{text}");
            assert_eq!(c.ipv6.as_ref().unwrap().subnet_len, 64);
            assert!(!c.fits(&"100.96.1.0/24".parse().unwrap()));
            assert!(c.fits_v6(&"2001:db8:1:7::/64".parse().unwrap()));
            assert_eq!(c.networks(), "2001:db8:1::/48");
        }
        let dual = parse(r#"{"Network":"100.96.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:1::/48"}"#).unwrap();
        assert_eq!(dual.networks(), "100.96.0.0/16,2001:db8:1::/48");
    }

    #[test]
    fn ipv6_checks() {
        for bad in [
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"10.1.0.0/16"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::1/64"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/125"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetLen":127}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetLen":49}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db9::"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db8:0:1::1"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db8:0:9::","IPv6SubnetMax":"2001:db8:0:8::"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fe80::/16"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"ff00::/16"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"::/64"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes","IPv6Network":"2001:db8::/48"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
