//! Lease acquisition in flannel's order, and turning leases into a peer table.
//!
//! 1. A live lease whose PublicIP is ours and that fits the config: reuse it (re-put, new TTL).
//! 2. Else the subnet from `--subnet-file`, if free and fitting.
//! 3. Else the first ≤ 100 free subnets from SubnetMin to SubnetMax, in random order.
//!
//! A lost race on one candidate moves on to the next one.
//!
//! On a dual-stack network a lease key holds an IPv4 and an IPv6 subnet
//! (`10.244.1.0-24&fc00:0:0:1::-64`): each candidate pairs a free IPv4 subnet with a free IPv6
//! one, each picked as above, and our own lease is reused only when both halves fit. On an
//! IPv6-only network the key holds the IPv6 subnet alone (`0.0.0.0-0&fc00:0:0:1::-64`) and a
//! node knows its lease by its PublicIPv6.

use super::registry::{LEASE_TTL, Lease, Registry, RegistryError};
use crate::dataplane::peers::{Peer, PeerV6};
use crate::proto::lease::{LeaseAttrs, SubnetKey};
use crate::proto::mac::MacAddr;
use crate::proto::netconfig::{BackendType, Ipv6Config, NetConfig};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::seq::SliceRandom;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// How many free subnets flannel collects before picking one at random.
pub const RANDOM_POOL: usize = 100;

/// The outcome of planning: reuse a lease, or try these subnets in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Our own lease exists; re-put it.
    Reuse(Lease),
    /// Try to create leases with these keys, in this order.
    Create(Vec<SubnetKey>),
}

/// True when `key` is one `cfg` can hand out: each family of the network has a subnet in the
/// key that fits (an IPv4-only network ignores an IPv6 half; an IPv6-only network takes no
/// IPv4 half).
pub fn key_fits(cfg: &NetConfig, key: &SubnetKey) -> bool {
    let v4 = match &cfg.ipv4 {
        None => key.v4.is_none(),
        Some(c) => key.v4.is_some_and(|n| c.fits(&n)),
    };
    let v6 = match &cfg.ipv6 {
        None => true,
        Some(c) => key.v6.is_some_and(|n| c.fits(&n)),
    };
    v4 && v6
}

/// The address a node's lease is known by: its PublicIP, or on an IPv6-only network (whose
/// leases all have the empty PublicIP) its PublicIPv6.
pub fn identity(cfg: &NetConfig, attrs: &LeaseAttrs) -> Option<IpAddr> {
    match cfg.ipv4 {
        Some(_) => Some(attrs.public_ip.into()),
        None => attrs.public_ipv6.map(IpAddr::from),
    }
}

/// Up to [`RANDOM_POOL`] of `subnets` that are neither taken nor `previous`, in random order.
fn pool<N: Copy + Eq + std::hash::Hash>(
    subnets: impl Iterator<Item = N>,
    taken: &HashSet<N>,
    previous: Option<N>,
    rng: &mut impl rand::Rng,
) -> Vec<N> {
    let mut pool: Vec<N> = subnets.filter(|s| !taken.contains(s) && previous != Some(*s)).take(RANDOM_POOL).collect();
    pool.shuffle(rng);
    pool
}

/// Plans acquisition from the current leases (pure: the randomness comes from `rng`).
/// `ours` is the address our lease is known by ([`identity`]); `previous` is the lease the
/// subnet file names.
pub fn plan(
    cfg: &NetConfig,
    leases: &[Lease],
    ours: IpAddr,
    previous: Option<SubnetKey>,
    rng: &mut impl rand::Rng,
) -> Plan {
    if let Some(own) = leases.iter().find(|l| identity(cfg, &l.attrs) == Some(ours) && key_fits(cfg, &l.key)) {
        return Plan::Reuse(own.clone());
    }
    let taken: HashSet<Ipv4Net> = leases.iter().filter_map(|l| l.key.v4).collect();
    let taken_v6: HashSet<Ipv6Net> = leases.iter().filter_map(|l| l.key.v6).collect();
    let free = |k: &SubnetKey| k.v4.is_none_or(|n| !taken.contains(&n)) && k.v6.is_none_or(|n| !taken_v6.contains(&n));
    let previous = previous
        .map(|p| SubnetKey { v4: p.v4.filter(|_| cfg.ipv4.is_some()), v6: p.v6.filter(|_| cfg.ipv6.is_some()) });
    let mut order = Vec::new();
    if let Some(prev) = previous.filter(|p| key_fits(cfg, p) && free(p)) {
        order.push(prev);
    }
    let prev_v4 = previous.and_then(|p| p.v4);
    let prev_v6 = previous.and_then(|p| p.v6);
    let v4 = cfg.ipv4.as_ref().map(|c| pool(c.subnets(), &taken, prev_v4, rng));
    let v6 = cfg.ipv6.as_ref().map(|c| pool(c.subnets(), &taken_v6, prev_v6, rng));
    match (v4, v6) {
        (Some(v4), None) => order.extend(v4.into_iter().map(SubnetKey::v4)),
        (Some(v4), Some(v6)) => order.extend(v4.into_iter().zip(v6).map(|(a, b)| SubnetKey::dual(a, b))),
        (None, Some(v6)) => order.extend(v6.into_iter().map(SubnetKey::v6_only)),
        (None, None) => {}
    }
    Plan::Create(order)
}

/// Why no lease could be had.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Every subnet is taken.
    #[error("no free subnet in {0} (SubnetMin..SubnetMax all leased)")]
    Exhausted(String),
}

/// A lease this node holds, and whether this start created it (a start that fails after
/// acquiring gives back a lease it created, and keeps one it reused).
#[derive(Debug, Clone)]
pub struct Acquired {
    /// The lease.
    pub lease: Lease,
    /// True when this start created it; false when it reused our earlier lease.
    pub created: bool,
}

/// Acquires a lease. `attrs_for` makes our lease value, given our previous one if we had one
/// (so a vxlan node keeps its VtepMAC).
pub async fn acquire<R: Registry>(
    reg: &R,
    cfg: &NetConfig,
    ours: IpAddr,
    previous: Option<SubnetKey>,
    attrs_for: impl Fn(Option<&LeaseAttrs>) -> LeaseAttrs,
) -> Result<Acquired, AcquireError> {
    let leases = reg.leases().await?;
    let p = plan(cfg, &leases, ours, previous, &mut rand::rng());
    match p {
        Plan::Reuse(own) => {
            let attrs = attrs_for(Some(&own.attrs));
            reg.renew_lease(&own.key, &attrs, own.ttl()).await?;
            tracing::info!(subnet = %own.key, reserved = own.reserved, "reusing our lease");
            Ok(Acquired { lease: Lease { attrs, ..own }, created: false })
        }
        Plan::Create(order) => {
            let attrs = attrs_for(None);
            for key in order {
                if reg.create_lease(&key, &attrs, LEASE_TTL).await? {
                    tracing::info!(subnet = %key, "acquired a new lease");
                    let lease = Lease { key, attrs, expires: None, reserved: false };
                    return Ok(Acquired { lease, created: true });
                }
                tracing::debug!(subnet = %key, "lost the race for a subnet, trying the next");
            }
            Err(AcquireError::Exhausted(cfg.networks()))
        }
    }
}

/// Why a lease is not routed. Each is said once (the daemon keeps what it has said).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// The lease's key.
    pub key: SubnetKey,
    /// Why it is ignored.
    pub why: String,
}

/// The leases a node routes, and the ones it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// Every lease but our own, of our backend, that fits the config.
    pub peers: Vec<Peer>,
    /// Leases refused, with the reason.
    pub refused: Vec<Refusal>,
    /// Peers whose IPv4 subnet is routed but whose IPv6 subnet is not, with the reason.
    pub v6_unrouted: Vec<Refusal>,
}

/// Why `lease` cannot be a peer under `cfg` (None: it can). flanneld validates leases against
/// the config in the same way: a subnet of another size, or outside the network, would take
/// traffic that belongs to another host.
pub fn check_lease(cfg: &NetConfig, lease: &Lease) -> Option<String> {
    let Some(c) = &cfg.ipv4 else { return check_ipv6_only(cfg, lease) };
    let Some(subnet) = lease.key.v4 else {
        return Some("it has no IPv4 subnet (an IPv6-only lease on a network with IPv4)".into());
    };
    if !c.network.contains(&subnet) {
        return Some(format!("subnet {subnet} is outside Network {}", c.network));
    }
    if subnet.prefix_len() != c.subnet_len {
        return Some(format!("subnet {subnet} is not a /{} (SubnetLen)", c.subnet_len));
    }
    let ip = lease.attrs.public_ip;
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Some(format!("PublicIP {ip} is not an address a host can be reached at"));
    }
    None
}

/// [`check_lease`] on an IPv6-only network: an IPv6 subnet alone, and a PublicIPv6 to send to.
fn check_ipv6_only(cfg: &NetConfig, lease: &Lease) -> Option<String> {
    if let Some(v4) = lease.key.v4 {
        return Some(format!("it has an IPv4 subnet ({v4}) on an IPv6-only network"));
    }
    let (Some(c), Some(subnet)) = (&cfg.ipv6, lease.key.v6) else {
        return Some("it has no IPv6 subnet".into());
    };
    if let Some(why) = v6_misfit(c, subnet) {
        return Some(why);
    }
    match lease.attrs.public_ipv6 {
        None => Some("it has no PublicIPv6 to send its IPv6 pods' packets to".into()),
        Some(ip) if unreachable_v6(ip) => Some(format!("PublicIPv6 {ip} is not an address a host can be reached at")),
        Some(_) => None,
    }
}

/// Why a peer's IPv6 subnet cannot be routed under `c` (None: it can): one of another size, or
/// outside IPv6Network, would take traffic that belongs to another host.
fn v6_misfit(c: &Ipv6Config, subnet: Ipv6Net) -> Option<String> {
    let fits = c.network.contains(&subnet) && subnet.prefix_len() == c.subnet_len;
    (!fits).then(|| format!("IPv6 subnet {subnet} is not a /{} of IPv6Network {}", c.subnet_len, c.network))
}

/// True for an IPv6 address no peer can send to (unspecified, loopback, multicast).
pub fn unreachable_v6(ip: Ipv6Addr) -> bool {
    ip.is_unspecified() || ip.is_loopback() || ip.is_multicast()
}

/// How a node's IPv6 pods' packets travel between hosts. A node says which in its lease: a
/// kernel path (flanneld's, or weft's) announces the PublicIPv6 it receives them on; weft's
/// userspace path on a dual-stack network carries them over the IPv4 underlay and announces
/// none. On an IPv6-only network every node carries them over the IPv6 underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Carrier {
    /// Over the IPv4 underlay, to PublicIP (weft's userspace path).
    Ipv4Underlay,
    /// Over the IPv6 underlay, to PublicIPv6 (`flannel-v6.<VNI>`, host-gw's IPv6 routes).
    Ipv6Underlay,
}

impl Ipv6Carrier {
    /// The carrier a lease announces.
    pub fn of(attrs: &LeaseAttrs) -> Self {
        match attrs.public_ipv6 {
            Some(_) => Self::Ipv6Underlay,
            None => Self::Ipv4Underlay,
        }
    }
}

/// The IPv6 side of `lease` on a dual-stack network: its IPv6 subnet, with the VTEP MAC of its
/// `BackendV6Data` for vxlan (else of its `BackendData`). `Ok(None)`: it has none, or the
/// network is IPv4-only; `Err`: why its IPv6 subnet cannot be routed (its IPv4 side still is).
fn peer_v6(cfg: &NetConfig, lease: &Lease, ours: Ipv6Carrier) -> Result<Option<PeerV6>, String> {
    let (Some(v6), Some(subnet)) = (cfg.ipv6.as_ref(), lease.key.v6) else { return Ok(None) };
    if let Some(why) = v6_misfit(v6, subnet) {
        return Err(why);
    }
    let theirs = Ipv6Carrier::of(&lease.attrs);
    if theirs != ours {
        let why = match theirs {
            Ipv6Carrier::Ipv6Underlay => {
                "it carries IPv6 over the IPv6 underlay (a kernel path), this node over the IPv4 underlay (the userspace path)"
            }
            Ipv6Carrier::Ipv4Underlay => {
                "it carries IPv6 over the IPv4 underlay (weft's userspace path), this node over the IPv6 underlay (a kernel path)"
            }
        };
        return Err(format!("IPv6 subnet {subnet} is not routed: {why}"));
    }
    let data = lease.attrs.vxlan_v6_data().or_else(|| lease.attrs.vxlan_data());
    Ok(Some(PeerV6 { subnet, vtep_mac: data.map(|d| d.vtep_mac), public_ip: lease.attrs.public_ipv6 }))
}

/// The peers a node of backend `cfg.backend` can reach: every lease but its own, of the same
/// backend (flannel skips the others silently), that fits the config; the rest is refused.
/// On a dual-stack network a peer's IPv6 subnet is routed when it carries IPv6 as this node
/// does (`ours`).
pub fn peers_from_leases(cfg: &NetConfig, leases: &[Lease], own: &SubnetKey, ours: Ipv6Carrier) -> PeerSet {
    let mut set = PeerSet::default();
    for l in leases.iter().filter(|l| !l.key.overlaps(own)) {
        let vtep_mac = match vtep_mac_for(cfg, l) {
            Mac::Of(mac) => mac,
            Mac::OtherBackend => continue,
            Mac::Refused(why) => {
                set.refused.push(Refusal { key: l.key, why });
                continue;
            }
        };
        if let Some(why) = check_lease(cfg, l) {
            set.refused.push(Refusal { key: l.key, why });
            continue;
        }
        let v6 = match peer_v6(cfg, l, ours) {
            Ok(v6) => v6,
            // On an IPv6-only network the IPv6 subnet is the whole lease.
            Err(why) if cfg.ipv4.is_none() => {
                set.refused.push(Refusal { key: l.key, why });
                continue;
            }
            Err(why) => {
                set.v6_unrouted.push(Refusal { key: l.key, why });
                None
            }
        };
        // check_lease has made sure an IPv6-only lease has a PublicIPv6.
        let public: IpAddr = match (&cfg.ipv4, l.attrs.public_ipv6) {
            (None, Some(ip6)) => ip6.into(),
            _ => l.attrs.public_ip.into(),
        };
        let endpoint = SocketAddr::new(public, cfg.backend.port);
        set.peers.push(Peer { subnet: l.key.v4, endpoint, vtep_mac, v6 });
    }
    set
}

/// What a lease's backend fields give a peer of ours.
enum Mac {
    /// A lease of our backend: its VTEP MAC (vxlan), or none (udp, host-gw).
    Of(Option<MacAddr>),
    /// A lease of another backend: skipped silently, as flannel does.
    OtherBackend,
    /// A vxlan lease that cannot be used, and why.
    Refused(String),
}

fn vtep_mac_for(cfg: &NetConfig, l: &Lease) -> Mac {
    match (cfg.backend.kind, l.attrs.backend_name()) {
        (BackendType::Udp, "udp") | (BackendType::HostGw, "host-gw") => Mac::Of(None),
        (BackendType::Vxlan, "vxlan") => {
            // An IPv6-only vxlan lease has its VNI and VtepMAC in BackendV6Data only.
            let data = match cfg.ipv4 {
                Some(_) => l.attrs.vxlan_data(),
                None => l.attrs.vxlan_v6_data(),
            };
            match data {
                Some(d) if d.vni == cfg.backend.vni => Mac::Of(Some(d.vtep_mac)),
                Some(d) => Mac::Refused(format!("VNI {} is not ours ({})", d.vni, cfg.backend.vni)),
                None => Mac::Refused("its BackendData has no VNI and VtepMAC".into()),
            }
        }
        _ => Mac::OtherBackend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::lease::VxlanData;
    use crate::proto::mac::MacAddr;
    use rand::SeedableRng;
    use std::net::Ipv4Addr;

    fn cfg() -> NetConfig {
        NetConfig::parse(r#"{"Network":"100.96.0.0/16","SubnetMin":"100.96.1.0","SubnetMax":"100.96.10.0"}"#).unwrap()
    }

    fn lease(net: &str, ip: [u8; 4]) -> Lease {
        Lease {
            key: SubnetKey::v4(net.parse().unwrap()),
            attrs: LeaseAttrs::udp(ip.into()),
            expires: None,
            reserved: false,
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn reuses_own_fitting_lease() {
        let ls = [lease("100.96.3.0/24", [198, 18, 0, 2]), lease("100.96.4.0/24", [198, 18, 0, 1])];
        assert_eq!(
            plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()),
            Plan::Reuse(ls[1].clone())
        );
        // A lease of ours that no longer fits (outside SubnetMin..Max) is not reused.
        let ls = [lease("100.96.200.0/24", [198, 18, 0, 1])];
        assert!(matches!(plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()), Plan::Create(_)));
    }

    #[test]
    fn previous_subnet_first_when_free() {
        let ls = [lease("100.96.3.0/24", [198, 18, 0, 2])];
        let Plan::Create(o) =
            plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1).into(), Some(key("100.96.7.0/24")), &mut rng())
        else {
            panic!()
        };
        assert_eq!(o[0], SubnetKey::v4("100.96.7.0/24".parse().unwrap()));
        assert_eq!(o.len(), 9);
        assert!(!o.contains(&SubnetKey::v4("100.96.3.0/24".parse().unwrap())));
        let Plan::Create(o) =
            plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1).into(), Some(key("100.96.3.0/24")), &mut rng())
        else {
            panic!()
        };
        assert_eq!(o.len(), 9);
        assert!(!o.contains(&SubnetKey::v4("100.96.3.0/24".parse().unwrap())));
    }

    #[test]
    fn random_pool_is_capped_at_100() {
        let c = NetConfig::parse(r#"{"Network":"100.64.0.0/10"}"#).unwrap();
        let Plan::Create(o) = plan(&c, &[], Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()) else { panic!() };
        assert_eq!(o.len(), RANDOM_POOL);
        assert!(o.iter().all(|k| key_fits(&c, k) && k.v6.is_none()));
    }

    fn key(s: &str) -> SubnetKey {
        match s.split_once('&') {
            Some((v4, v6)) => SubnetKey::dual(v4.parse().unwrap(), v6.parse().unwrap()),
            None => SubnetKey::v4(s.parse().unwrap()),
        }
    }

    fn dual_cfg() -> NetConfig {
        NetConfig::parse(
            r#"{"Network":"100.96.0.0/16","SubnetMin":"100.96.1.0","SubnetMax":"100.96.10.0",
                "EnableIPv6":true,"IPv6Network":"2001:db8:1::/48","IPv6SubnetMax":"2001:db8:1:a::"}"#,
        )
        .unwrap()
    }

    fn dual_lease(k: &str, ip: [u8; 4]) -> Lease {
        Lease { key: key(k), ..lease("100.96.99.0/24", ip) }
    }

    #[test]
    fn dual_stack_keys_pair_free_subnets_of_both_families() {
        let c = dual_cfg();
        let ls = [dual_lease("100.96.3.0/24&2001:db8:1:4::/64", [198, 18, 0, 2])];
        let Plan::Create(o) = plan(&c, &ls, Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()) else { panic!() };
        assert_eq!(o.len(), 9, "nine free IPv4 subnets, nine free IPv6 ones: {o:?}");
        assert!(o.iter().all(|k| key_fits(&c, k)));
        assert!(o.iter().all(|k| k.v4 != key("100.96.3.0/24").v4 && k.v6 != key("100.96.3.0/24&2001:db8:1:4::/64").v6));
        let v6s: HashSet<_> = o.iter().map(|k| k.v6).collect();
        assert_eq!(v6s.len(), 9);
        // The subnet file's pair comes first when both halves are free, and not otherwise.
        let prev = key("100.96.7.0/24&2001:db8:1:7::/64");
        let Plan::Create(o) = plan(&c, &ls, Ipv4Addr::new(198, 18, 0, 1).into(), Some(prev), &mut rng()) else {
            panic!()
        };
        assert_eq!(o[0], prev);
        let taken = key("100.96.7.0/24&2001:db8:1:4::/64");
        let Plan::Create(o) = plan(&c, &ls, Ipv4Addr::new(198, 18, 0, 1).into(), Some(taken), &mut rng()) else {
            panic!()
        };
        assert!(!o.contains(&taken));
        // An IPv4 subnet file on a dual-stack network is not a whole key.
        let Plan::Create(o) =
            plan(&c, &ls, Ipv4Addr::new(198, 18, 0, 1).into(), Some(key("100.96.7.0/24")), &mut rng())
        else {
            panic!()
        };
        assert!(o.iter().all(|k| k.v6.is_some()));
    }

    #[test]
    fn dual_stack_reuse_needs_both_halves_to_fit() {
        let c = dual_cfg();
        let own = dual_lease("100.96.5.0/24&2001:db8:1:5::/64", [198, 18, 0, 1]);
        assert_eq!(
            plan(&c, std::slice::from_ref(&own), Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()),
            Plan::Reuse(own.clone())
        );
        // An IPv4-only lease of ours does not fit a dual-stack network; on an IPv4 network a
        // dual-stack one does.
        let v4_only = lease("100.96.5.0/24", [198, 18, 0, 1]);
        assert!(matches!(plan(&c, &[v4_only], Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()), Plan::Create(_)));
        assert_eq!(
            plan(&cfg(), std::slice::from_ref(&own), Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()),
            Plan::Reuse(own)
        );
        let outside = dual_lease("100.96.5.0/24&2001:db8:1:b::/64", [198, 18, 0, 1]);
        assert!(matches!(plan(&c, &[outside], Ipv4Addr::new(198, 18, 0, 1).into(), None, &mut rng()), Plan::Create(_)));
    }

    #[test]
    fn dual_stack_peers_carry_their_ipv6_subnet_and_mac() {
        let c = NetConfig::parse(
            r#"{"Network":"100.96.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:1::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let (mac, mac6) = (MacAddr([2, 0, 0, 0, 0, 9]), MacAddr([2, 0, 0, 0, 0, 6]));
        let attrs = LeaseAttrs::vxlan(Ipv4Addr::new(198, 18, 0, 9), VxlanData { vni: 1, vtep_mac: mac });
        let with_v6 = attrs.clone().dual_stack(None, Some(VxlanData { vni: 1, vtep_mac: mac6 }));
        let ls = [
            Lease { key: key("100.96.2.0/24&2001:db8:1:2::/64"), attrs: with_v6, expires: None, reserved: false },
            Lease { key: key("100.96.3.0/24&2001:db8:1:3::/64"), attrs: attrs.clone(), expires: None, reserved: false },
            Lease { key: key("100.96.4.0/24&2001:db8:9:4::/64"), attrs: attrs.clone(), expires: None, reserved: false },
            Lease { key: key("100.96.5.0/24"), attrs, expires: None, reserved: false },
        ];
        let set = peers_from_leases(&c, &ls, &key("100.96.1.0/24&2001:db8:1:1::/64"), Ipv6Carrier::Ipv4Underlay);
        let v6: Vec<_> = set.peers.iter().map(|p| p.v6.map(|v| (v.subnet.to_string(), v.vtep_mac))).collect();
        assert_eq!(
            v6,
            [
                Some(("2001:db8:1:2::/64".to_string(), Some(mac6))),
                Some(("2001:db8:1:3::/64".to_string(), Some(mac))),
                None,
                None
            ]
        );
        assert_eq!(set.v6_unrouted.len(), 1, "the IPv6 subnet outside IPv6Network is said");
        assert!(set.v6_unrouted[0].why.contains("2001:db8:9:4::/64"), "{:?}", set.v6_unrouted);
        // On an IPv4-only network the IPv6 halves are not routed.
        let set = peers_from_leases(
            &NetConfig::parse(r#"{"Network":"100.96.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap(),
            &ls,
            &key("100.96.1.0/24"),
            Ipv6Carrier::Ipv4Underlay,
        );
        assert!(set.peers.iter().all(|p| p.v6.is_none()) && set.v6_unrouted.is_empty());
    }

    /// A kernel-path node (PublicIPv6 set) and a userspace node (none) carry IPv6 on different
    /// underlays: each routes the other's IPv4 subnet only, and says why.
    #[test]
    fn ipv6_goes_only_to_peers_that_carry_it_the_same_way() {
        let c = dual_cfg();
        let user = Lease {
            key: key("100.96.2.0/24&2001:db8:1:2::/64"),
            attrs: LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 2)).dual_stack(None, None),
            expires: None,
            reserved: false,
        };
        let kernel = Lease {
            key: key("100.96.3.0/24&2001:db8:1:3::/64"),
            attrs: LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 3))
                .dual_stack(Some("2001:db8:18::3".parse().unwrap()), None),
            ..user.clone()
        };
        let own = key("100.96.1.0/24&2001:db8:1:1::/64");
        let leases = [user, kernel];
        for (ours, routed, unrouted) in [
            (Ipv6Carrier::Ipv4Underlay, "2001:db8:1:2::/64", "IPv6 underlay"),
            (Ipv6Carrier::Ipv6Underlay, "2001:db8:1:3::/64", "IPv4 underlay"),
        ] {
            let set = peers_from_leases(&c, &leases, &own, ours);
            assert_eq!(set.peers.len(), 2, "both IPv4 subnets are routed");
            let v6: Vec<String> = set.peers.iter().filter_map(|p| p.v6.map(|v| v.subnet.to_string())).collect();
            assert_eq!(v6, [routed]);
            assert!(set.v6_unrouted.len() == 1 && set.v6_unrouted[0].why.contains(unrouted), "{:?}", set.v6_unrouted);
        }
    }

    fn v6_only_cfg(backend: &str) -> NetConfig {
        NetConfig::parse(&format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:1::/48",
                "IPv6SubnetMax":"2001:db8:1:a::","Backend":{{"Type":"{backend}"}}}}"#
        ))
        .unwrap()
    }

    fn v6_lease(net6: &str, public6: &str) -> Lease {
        Lease {
            key: SubnetKey::v6_only(net6.parse().unwrap()),
            attrs: LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 9)).dual_stack(public6.parse().ok(), None).without_ipv4(),
            expires: None,
            reserved: false,
        }
    }

    /// An IPv6-only network: keys hold the IPv6 subnet alone, and a node knows its lease by
    /// its PublicIPv6 (every PublicIP is the empty one).
    #[test]
    fn ipv6_only_keys_and_reuse_by_public_ipv6() {
        let c = v6_only_cfg("udp");
        let ls = [v6_lease("2001:db8:1:3::/64", "2001:db8::2"), v6_lease("2001:db8:1:4::/64", "2001:db8::1")];
        let me: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(identity(&c, &ls[1].attrs), Some(me));
        assert_eq!(plan(&c, &ls, me, None, &mut rng()), Plan::Reuse(ls[1].clone()));
        let Plan::Create(o) = plan(&c, &ls[..1], me, None, &mut rng()) else { panic!() };
        assert_eq!(o.len(), 9, "{o:?}");
        assert!(o.iter().all(|k| k.v4.is_none() && key_fits(&c, k)));
        assert!(o.iter().all(|k| k.to_string().starts_with("0.0.0.0-0&2001:db8:1:")));
        assert!(!o.contains(&SubnetKey::v6_only("2001:db8:1:3::/64".parse().unwrap())));
        // The subnet file's IPv6 subnet comes first; a dual-stack key does not fit.
        let prev = SubnetKey::v6_only("2001:db8:1:7::/64".parse().unwrap());
        let Plan::Create(o) = plan(&c, &[], me, Some(prev), &mut rng()) else { panic!() };
        assert_eq!(o[0], prev);
        assert!(!key_fits(&c, &key("100.96.1.0/24&2001:db8:1:7::/64")));
    }

    #[test]
    fn ipv6_only_peers_are_reached_at_their_public_ipv6() {
        let c = v6_only_cfg("vxlan");
        let mac6 = MacAddr([2, 0, 0, 0, 0, 6]);
        let vx = |net6: &str, public6: &str| Lease {
            attrs: LeaseAttrs::vxlan(Ipv4Addr::new(198, 18, 0, 9), VxlanData { vni: 1, vtep_mac: mac6 })
                .dual_stack(public6.parse().ok(), Some(VxlanData { vni: 1, vtep_mac: mac6 }))
                .without_ipv4(),
            ..v6_lease(net6, public6)
        };
        let own = SubnetKey::v6_only("2001:db8:1:1::/64".parse().unwrap());
        let ls = [
            vx("2001:db8:1:1::/64", "2001:db8::1"),
            vx("2001:db8:1:2::/64", "2001:db8::2"),
            vx("2001:db8:1:3::/64", "x"),
            vx("2001:db8:2:4::/64", "2001:db8::4"),
            Lease { key: key("100.96.5.0/24&2001:db8:1:5::/64"), ..vx("2001:db8:1:5::/64", "2001:db8::5") },
        ];
        let set = peers_from_leases(&c, &ls, &own, Ipv6Carrier::Ipv6Underlay);
        assert_eq!(set.peers.len(), 1, "{set:?}");
        let p = &set.peers[0];
        assert_eq!(p.endpoint, "[2001:db8::2]:8472".parse::<SocketAddr>().unwrap());
        assert_eq!((p.subnet, p.vtep_mac), (None, Some(mac6)));
        assert_eq!(p.v6.unwrap().subnet, "2001:db8:1:2::/64".parse::<Ipv6Net>().unwrap());
        let why: Vec<&str> = set.refused.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].contains("no PublicIPv6"), "{why:?}");
        assert!(why[1].contains("not a /64 of IPv6Network"), "{why:?}");
        assert!(why[2].contains("IPv4 subnet"), "{why:?}");
    }

    #[test]
    fn peers_skip_self_and_other_backends() {
        let c = NetConfig::parse(r#"{"Network":"100.96.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let vx = |net: &str, vni| Lease {
            key: SubnetKey::v4(net.parse().unwrap()),
            attrs: LeaseAttrs::vxlan(Ipv4Addr::new(198, 18, 0, 9), VxlanData { vni, vtep_mac: mac }),
            expires: None,
            reserved: false,
        };
        let ls = [
            vx("100.96.1.0/24", 1),
            vx("100.96.2.0/24", 1),
            vx("100.96.3.0/24", 2),
            lease("100.96.4.0/24", [198, 18, 0, 4]),
        ];
        let set =
            peers_from_leases(&c, &ls, &SubnetKey::v4("100.96.1.0/24".parse().unwrap()), Ipv6Carrier::Ipv4Underlay);
        let p = set.peers;
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].vtep_mac, Some(mac));
        assert_eq!(p[0].endpoint.port(), 8472);
        assert_eq!(set.refused.len(), 1, "the other VNI is said");
        assert!(set.refused[0].why.contains("VNI 2"), "{:?}", set.refused);
    }

    #[test]
    fn nonsense_leases_are_refused() {
        let c = cfg();
        let own = SubnetKey::v4("100.96.1.0/24".parse().unwrap());
        for (net, ip, want) in [
            ("100.96.2.0/25", [198, 18, 0, 2], "not a /24"),
            ("100.96.0.0/16", [198, 18, 0, 2], "not a /24"),
            ("100.97.2.0/24", [198, 18, 0, 2], "outside Network"),
            ("100.96.2.0/24", [127, 0, 0, 1], "PublicIP 127.0.0.1"),
            ("100.96.2.0/24", [0, 0, 0, 0], "PublicIP 0.0.0.0"),
            ("100.96.2.0/24", [239, 1, 1, 1], "PublicIP 239.1.1.1"),
            ("100.96.2.0/24", [255, 255, 255, 255], "PublicIP 255.255.255.255"),
        ] {
            let set = peers_from_leases(&c, &[lease(net, ip)], &own, Ipv6Carrier::Ipv4Underlay);
            assert!(set.peers.is_empty(), "{net} via {ip:?} was routed");
            assert!(set.refused[0].why.contains(want), "{net}: {:?}", set.refused);
        }
        let ok = peers_from_leases(&c, &[lease("100.96.2.0/24", [198, 18, 0, 2])], &own, Ipv6Carrier::Ipv4Underlay);
        assert_eq!((ok.peers.len(), ok.refused.len()), (1, 0));
    }
}
