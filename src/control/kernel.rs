//! Kernel data paths driven by weft's control plane: the kernel moves the packets, weft keeps
//! its tables equal to the leases (host-gw routes; VXLAN neighbour, fdb and route entries).

use super::netlink::{Netlink, NetlinkError, OwnedRoute, VxlanDevice};
use crate::dataplane::peers::Peer;
use crate::proto::mac::MacAddr;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which of a peer's subnets a kernel path carries: a dual-stack node runs one path per family
/// (`flannel.<VNI>` and `flannel-v6.<VNI>`, or host-gw routes of each family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The IPv4 subnet, to the peer's PublicIP.
    V4,
    /// The IPv6 subnet, to the peer's PublicIPv6.
    V6,
}

/// A peer's subnet of one family and the public address of that family its traffic goes to.
#[derive(Debug, Clone, Copy)]
enum Dest {
    V4 { subnet: Ipv4Net, public: Ipv4Addr },
    V6 { subnet: Ipv6Net, public: Ipv6Addr },
}

impl Dest {
    fn subnet(self) -> IpNet {
        match self {
            Self::V4 { subnet, .. } => subnet.into(),
            Self::V6 { subnet, .. } => subnet.into(),
        }
    }

    fn public(self) -> IpAddr {
        match self {
            Self::V4 { public, .. } => public.into(),
            Self::V6 { public, .. } => public.into(),
        }
    }
}

/// What one kernel path programs for one peer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The peer's subnet of the path's family and where its traffic goes.
    dest: Dest,
    /// Its VTEP MAC for this family (vxlan).
    mac: Option<MacAddr>,
}

impl Family {
    /// The peer's entry for this family; None when it has no subnet or no public address of it.
    fn entry(self, p: &Peer) -> Option<Entry> {
        match self {
            Self::V4 => {
                let IpAddr::V4(public) = p.endpoint.ip() else { return None };
                Some(Entry { dest: Dest::V4 { subnet: p.subnet?, public }, mac: p.vtep_mac })
            }
            Self::V6 => {
                let v6 = p.v6?;
                Some(Entry { dest: Dest::V6 { subnet: v6.subnet, public: v6.public_ip? }, mac: v6.vtep_mac })
            }
        }
    }
}

/// What the kernel is programmed with, per peer.
#[derive(Debug, Clone)]
pub enum KernelBackend {
    /// A route `subnet via PublicIP` per peer; the PublicIP must be on the underlay's segment.
    HostGw {
        /// The underlay's connected subnet (its L2 segment), if known.
        segment: Option<Ipv4Net>,
    },
    /// Per peer, on the VXLAN device: neighbour `subnet.0 lladdr VtepMAC`, fdb `VtepMAC dst
    /// PublicIP`, route `subnet via subnet.0 onlink` (flannel's order; removal reverses it).
    Vxlan {
        /// The device as created (to re-create it if someone deletes it).
        device: VxlanDevice,
        /// Its index.
        index: u32,
        /// Its address (lease subnet's network address, /32 or /128).
        addr: IpAddr,
        /// This weft made it (rather than adopting one that was there): a start that fails
        /// removes only what it made.
        created: bool,
    },
}

/// Keeps the kernel's per-peer entries equal to the peer set.
pub struct KernelDataplane {
    nl: Netlink,
    backend: KernelBackend,
    family: Family,
    installed: Vec<Peer>,
}

impl KernelDataplane {
    /// Starts with nothing installed; carries the peers' IPv4 subnets.
    pub fn new(nl: Netlink, backend: KernelBackend) -> Self {
        Self { nl, backend, family: Family::V4, installed: Vec::new() }
    }

    /// Starts with nothing installed; carries the peers' IPv6 subnets.
    pub fn new_v6(nl: Netlink, backend: KernelBackend) -> Self {
        Self { family: Family::V6, ..Self::new(nl, backend) }
    }

    /// The VXLAN device with its address: an existing one of that name with our VNI, port
    /// and local address is adopted as it is (a restarted weft, or flanneld before it, left it
    /// forwarding), any other is replaced, saying why.
    pub async fn vxlan(nl: &Netlink, device: VxlanDevice, addr: IpAddr) -> Result<KernelBackend, NetlinkError> {
        let existing = nl.existing_link(&device.name).await?;
        let adopt = match existing.as_ref().map(|l| (l, l.mismatch(&device))) {
            Some((l, None)) => Some((l.index, l.mac)),
            Some((_, Some(why))) => {
                tracing::warn!(device = %device.name, "replacing the existing device: {why}");
                None
            }
            None => None,
        };
        let (index, created) = match adopt {
            Some((index, mac)) => {
                tracing::info!(device = %device.name, index, "adopting the existing VXLAN device (same VNI, port and local address)");
                nl.set_vxlan_up(index, &device, mac).await?;
                (index, false)
            }
            None => (nl.create_vxlan(&device).await?, true),
        };
        nl.add_address(index, addr, if addr.is_ipv4() { 32 } else { 128 }).await?;
        Ok(KernelBackend::Vxlan { device, index, addr, created })
    }

    /// The VXLAN device's index, if this is a VXLAN path.
    pub fn device_index(&self) -> Option<u32> {
        match &self.backend {
            KernelBackend::Vxlan { index, .. } => Some(*index),
            KernelBackend::HostGw { .. } => None,
        }
    }

    /// The routes the installed peers should have (to tell stale routes from ours).
    pub fn expected_routes(&self) -> Vec<OwnedRoute> {
        self.installed
            .iter()
            .filter_map(|p| self.family.entry(p))
            .map(|e| {
                let dst = e.dest.subnet();
                match &self.backend {
                    KernelBackend::HostGw { .. } => OwnedRoute { dst, gateway: Some(e.dest.public()), oif: None },
                    KernelBackend::Vxlan { index, .. } => {
                        OwnedRoute { dst, gateway: Some(dst.network()), oif: Some(*index) }
                    }
                }
            })
            .collect()
    }

    async fn add(&self, p: &Peer) -> Result<(), NetlinkError> {
        let Some(Entry { dest, mac }) = self.family.entry(p) else { return Ok(()) };
        match &self.backend {
            KernelBackend::HostGw { segment } => {
                if let (Some(seg), Dest::V4 { subnet, public }) = (segment, dest)
                    && !seg.contains(&public)
                {
                    return Err(NetlinkError::Refused(format!(
                        "refusing host-gw peer {subnet}: its PublicIP {public} is not on this host's L2 segment {seg} (host-gw needs all hosts on one segment; use vxlan)",
                    )));
                }
                match dest {
                    Dest::V4 { subnet, public } => self.nl.add_via_route(subnet, public).await,
                    Dest::V6 { subnet, public } => self.nl.add_via_route_v6(subnet, public).await,
                }
            }
            KernelBackend::Vxlan { index, .. } => {
                let Some(mac) = mac else { return Ok(()) };
                self.nl.set_neighbour(*index, dest.subnet().network(), mac).await?;
                self.nl.set_fdb(*index, mac, dest.public()).await?;
                match dest {
                    Dest::V4 { subnet, .. } => self.nl.add_onlink_route(subnet, subnet.network(), *index).await,
                    Dest::V6 { subnet, .. } => self.nl.add_onlink_route_v6(subnet, subnet.network(), *index).await,
                }
            }
        }
    }

    async fn remove(&self, p: &Peer) -> Result<(), NetlinkError> {
        let Some(Entry { dest, mac }) = self.family.entry(p) else { return Ok(()) };
        match &self.backend {
            KernelBackend::HostGw { .. } => match dest {
                Dest::V4 { subnet, public } => self.nl.del_via_route(subnet, public).await,
                Dest::V6 { subnet, public } => self.nl.del_via_route_v6(subnet, public).await,
            },
            KernelBackend::Vxlan { index, .. } => {
                match dest {
                    Dest::V4 { subnet, .. } => self.nl.del_onlink_route(subnet, subnet.network(), *index).await?,
                    Dest::V6 { subnet, .. } => self.nl.del_onlink_route_v6(subnet, subnet.network(), *index).await?,
                }
                if let Some(mac) = mac {
                    self.nl.del_fdb(*index, mac, dest.public()).await?;
                }
                self.nl.del_neighbour(*index, dest.subnet().network()).await
            }
        }
    }

    /// Removes entries of peers that are gone or changed, then adds the new ones. Failures are
    /// logged and the entry retried at the next sync.
    pub async fn sync(&mut self, peers: &[Peer]) {
        let mut kept = Vec::new();
        for p in std::mem::take(&mut self.installed) {
            if peers.contains(&p) {
                kept.push(p);
            } else if let Err(e) = self.remove(&p).await {
                tracing::warn!("{e}");
            }
        }
        let new: Vec<Peer> = peers.iter().filter(|p| !kept.contains(p)).cloned().collect();
        for p in new {
            match self.add(&p).await {
                Ok(()) => kept.push(p),
                Err(NetlinkError::Refused(why)) => tracing::error!("{why}"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        self.installed = kept;
    }

    /// Re-creates the VXLAN device if it was deleted (by hand, say) and re-installs every peer.
    /// Returns whether the device was re-created.
    pub async fn heal(&mut self, peers: &[Peer]) -> Result<bool, NetlinkError> {
        let mut recreated = false;
        if let KernelBackend::Vxlan { device, index, addr, .. } = &self.backend
            && self.nl.link_index(&device.name).await? != Some(*index)
        {
            tracing::warn!(device = %device.name, "VXLAN device is gone; re-creating it");
            let (device, addr) = (device.clone(), *addr);
            self.backend = Self::vxlan(&self.nl, device, addr).await?;
            self.installed.clear();
            recreated = true;
        }
        if recreated {
            self.sync(peers).await;
        }
        Ok(recreated)
    }

    /// Removes everything this path installed, and the VXLAN device if this weft made it:
    /// what a start that fails does. A clean exit leaves the kernel forwarding, as flanneld.
    pub async fn teardown(&mut self) {
        self.sync(&[]).await;
        if let KernelBackend::Vxlan { index, created: true, .. } = &self.backend {
            let _ = self.nl.delete_link(*index).await;
        }
    }
}

/// Deletes every weft-marked route into `networks` (the network's IPv4 and IPv6 pod
/// networks) that is not in `expected` (compared by destination and gateway): what a crashed
/// or killed weft of this network left behind. Routes into other networks belong to other
/// weft processes on this host, and are left alone.
pub async fn remove_stale_routes(
    nl: &Netlink,
    networks: &[IpNet],
    expected: &[OwnedRoute],
) -> Result<usize, NetlinkError> {
    let mut removed = 0;
    let ours = |r: &OwnedRoute| networks.iter().any(|n| n.contains(&r.dst));
    for r in nl.owned_routes().await?.into_iter().filter(ours) {
        if !expected.iter().any(|e| e.dst == r.dst && e.gateway == r.gateway) {
            tracing::info!(dst = %r.dst, gateway = ?r.gateway, "removing a stale route of an earlier weft");
            nl.del_owned_route(&r).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
