//! Lease acquisition in flannel's order, and turning leases into a peer table.
//!
//! 1. A live lease whose PublicIP is ours and that fits the config: reuse it (re-put, new TTL).
//! 2. Else the subnet from `--subnet-file`, if free and fitting.
//! 3. Else the first ≤ 100 free subnets from SubnetMin to SubnetMax, in random order.
//!
//! A lost race on one candidate moves on to the next one.

use super::registry::{LEASE_TTL, Lease, Registry, RegistryError};
use crate::dataplane::peers::Peer;
use crate::proto::lease::{LeaseAttrs, SubnetKey};
use crate::proto::netconfig::{BackendType, NetConfig};
use ipnet::Ipv4Net;
use rand::seq::SliceRandom;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

/// How many free subnets flannel collects before picking one at random.
pub const RANDOM_POOL: usize = 100;

/// The outcome of planning: reuse a lease, or try these subnets in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Our own lease exists; re-put it.
    Reuse(Lease),
    /// Try to create leases for these subnets, in this order.
    Create(Vec<Ipv4Net>),
}

/// Plans acquisition from the current leases (pure: the randomness comes from `rng`).
pub fn plan(
    cfg: &NetConfig,
    leases: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    rng: &mut impl rand::Rng,
) -> Plan {
    if let Some(own) = leases.iter().find(|l| l.attrs.public_ip == public_ip && cfg.fits(&l.key.v4)) {
        return Plan::Reuse(own.clone());
    }
    let taken: HashSet<Ipv4Net> = leases.iter().map(|l| l.key.v4).collect();
    let mut order = Vec::new();
    if let Some(prev) = previous.filter(|p| cfg.fits(p) && !taken.contains(p)) {
        order.push(prev);
    }
    let mut pool: Vec<Ipv4Net> =
        cfg.subnets().filter(|s| !taken.contains(s) && Some(*s) != previous).take(RANDOM_POOL).collect();
    pool.shuffle(rng);
    order.extend(pool);
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
    Exhausted(Ipv4Net),
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
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    attrs_for: impl Fn(Option<&LeaseAttrs>) -> LeaseAttrs,
) -> Result<Acquired, AcquireError> {
    let leases = reg.leases().await?;
    let p = plan(cfg, &leases, public_ip, previous, &mut rand::rng());
    match p {
        Plan::Reuse(own) => {
            let attrs = attrs_for(Some(&own.attrs));
            reg.renew_lease(&own.key, &attrs, own.ttl()).await?;
            tracing::info!(subnet = %own.key.v4, reserved = own.reserved, "reusing our lease");
            Ok(Acquired { lease: Lease { attrs, ..own }, created: false })
        }
        Plan::Create(order) => {
            let attrs = attrs_for(None);
            for subnet in order {
                let key = SubnetKey::v4(subnet);
                if reg.create_lease(&key, &attrs, LEASE_TTL).await? {
                    tracing::info!(%subnet, "acquired a new lease");
                    let lease = Lease { key, attrs, expires: None, reserved: false };
                    return Ok(Acquired { lease, created: true });
                }
                tracing::debug!(%subnet, "lost the race for a subnet, trying the next");
            }
            Err(AcquireError::Exhausted(cfg.network))
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
}

/// Why `lease` cannot be a peer under `cfg` (None: it can). flanneld validates leases against
/// the config in the same way: a subnet of another size, or outside the network, would take
/// traffic that belongs to another host.
pub fn check_lease(cfg: &NetConfig, lease: &Lease) -> Option<String> {
    let subnet = lease.key.v4;
    if !cfg.network.contains(&subnet) {
        return Some(format!("subnet {subnet} is outside Network {}", cfg.network));
    }
    if subnet.prefix_len() != cfg.subnet_len {
        return Some(format!("subnet {subnet} is not a /{} (SubnetLen)", cfg.subnet_len));
    }
    let ip = lease.attrs.public_ip;
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Some(format!("PublicIP {ip} is not an address a host can be reached at"));
    }
    None
}

/// The peers a node of backend `cfg.backend` can reach: every lease but its own, of the same
/// backend (flannel skips the others silently), that fits the config; the rest is refused.
pub fn peers_from_leases(cfg: &NetConfig, leases: &[Lease], own: &SubnetKey) -> PeerSet {
    let mut set = PeerSet::default();
    for l in leases.iter().filter(|l| l.key.v4 != own.v4) {
        let subnet = l.key.v4;
        let endpoint = SocketAddrV4::new(l.attrs.public_ip, cfg.backend.port);
        let peer = match (cfg.backend.kind, l.attrs.backend_name()) {
            (BackendType::Udp, "udp") | (BackendType::HostGw, "host-gw") => Peer { subnet, endpoint, vtep_mac: None },
            (BackendType::Vxlan, "vxlan") => match l.attrs.vxlan_data() {
                Some(d) if d.vni == cfg.backend.vni => Peer { subnet, endpoint, vtep_mac: Some(d.vtep_mac) },
                Some(d) => {
                    set.refused
                        .push(Refusal { key: l.key, why: format!("VNI {} is not ours ({})", d.vni, cfg.backend.vni) });
                    continue;
                }
                None => {
                    set.refused.push(Refusal { key: l.key, why: "its BackendData has no VNI and VtepMAC".into() });
                    continue;
                }
            },
            _ => continue,
        };
        match check_lease(cfg, l) {
            None => set.peers.push(peer),
            Some(why) => set.refused.push(Refusal { key: l.key, why }),
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::lease::VxlanData;
    use crate::proto::mac::MacAddr;
    use rand::SeedableRng;

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
        assert_eq!(plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1), None, &mut rng()), Plan::Reuse(ls[1].clone()));
        // A lease of ours that no longer fits (outside SubnetMin..Max) is not reused.
        let ls = [lease("100.96.200.0/24", [198, 18, 0, 1])];
        assert!(matches!(plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1), None, &mut rng()), Plan::Create(_)));
    }

    #[test]
    fn previous_subnet_first_when_free() {
        let ls = [lease("100.96.3.0/24", [198, 18, 0, 2])];
        let Plan::Create(o) =
            plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1), Some("100.96.7.0/24".parse().unwrap()), &mut rng())
        else {
            panic!()
        };
        assert_eq!(o[0], "100.96.7.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(o.len(), 9);
        assert!(!o.contains(&"100.96.3.0/24".parse().unwrap()));
        let Plan::Create(o) =
            plan(&cfg(), &ls, Ipv4Addr::new(198, 18, 0, 1), Some("100.96.3.0/24".parse().unwrap()), &mut rng())
        else {
            panic!()
        };
        assert_eq!(o.len(), 9);
        assert!(!o.contains(&"100.96.3.0/24".parse().unwrap()));
    }

    #[test]
    fn random_pool_is_capped_at_100() {
        let c = NetConfig::parse(r#"{"Network":"100.64.0.0/10"}"#).unwrap();
        let Plan::Create(o) = plan(&c, &[], Ipv4Addr::new(198, 18, 0, 1), None, &mut rng()) else { panic!() };
        assert_eq!(o.len(), RANDOM_POOL);
        assert!(o.iter().all(|s| c.fits(s)));
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
        let set = peers_from_leases(&c, &ls, &SubnetKey::v4("100.96.1.0/24".parse().unwrap()));
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
            let set = peers_from_leases(&c, &[lease(net, ip)], &own);
            assert!(set.peers.is_empty(), "{net} via {ip:?} was routed");
            assert!(set.refused[0].why.contains(want), "{net}: {:?}", set.refused);
        }
        let ok = peers_from_leases(&c, &[lease("100.96.2.0/24", [198, 18, 0, 2])], &own);
        assert_eq!((ok.peers.len(), ok.refused.len()), (1, 0));
    }
}
