//! Kernel data paths driven by weft's control plane: the kernel moves the packets, weft keeps
//! its tables equal to the leases (host-gw routes; VXLAN neighbour, fdb and route entries).

use super::netlink::{Netlink, NetlinkError, OwnedRoute, VxlanDevice};
use crate::dataplane::peers::Peer;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

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
        /// Its address (lease subnet's network address, /32).
        addr: Ipv4Addr,
        /// This weft made it (rather than adopting one that was there): a start that fails
        /// removes only what it made.
        created: bool,
    },
}

/// Keeps the kernel's per-peer entries equal to the peer set.
pub struct KernelDataplane {
    nl: Netlink,
    backend: KernelBackend,
    installed: Vec<Peer>,
}

impl KernelDataplane {
    /// Starts with nothing installed.
    pub fn new(nl: Netlink, backend: KernelBackend) -> Self {
        Self { nl, backend, installed: Vec::new() }
    }

    /// The VXLAN device with its address: an existing one of that name with our VNI, port
    /// and local address is adopted as it is (a restarted weft, or flanneld before it, left it
    /// forwarding), any other is replaced, saying why.
    pub async fn vxlan(nl: &Netlink, device: VxlanDevice, addr: Ipv4Addr) -> Result<KernelBackend, NetlinkError> {
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
        nl.add_address(index, addr, 32).await?;
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
            .map(|p| match &self.backend {
                KernelBackend::HostGw { .. } => {
                    OwnedRoute { dst: p.subnet, gateway: Some(*p.endpoint.ip()), oif: None }
                }
                KernelBackend::Vxlan { index, .. } => {
                    OwnedRoute { dst: p.subnet, gateway: Some(p.subnet.network()), oif: Some(*index) }
                }
            })
            .collect()
    }

    async fn add(&self, p: &Peer) -> Result<(), NetlinkError> {
        let public = *p.endpoint.ip();
        match &self.backend {
            KernelBackend::HostGw { segment } => {
                if let Some(seg) = segment
                    && !seg.contains(&public)
                {
                    return Err(NetlinkError::Refused(format!(
                        "refusing host-gw peer {}: its PublicIP {public} is not on this host's L2 segment {seg} (host-gw needs all hosts on one segment; use vxlan)",
                        p.subnet
                    )));
                }
                self.nl.add_via_route(p.subnet, public).await
            }
            KernelBackend::Vxlan { index, .. } => {
                let Some(mac) = p.vtep_mac else { return Ok(()) };
                let gw = p.subnet.network();
                self.nl.set_neighbour(*index, gw, mac).await?;
                self.nl.set_fdb(*index, mac, public).await?;
                self.nl.add_onlink_route(p.subnet, gw, *index).await
            }
        }
    }

    async fn remove(&self, p: &Peer) -> Result<(), NetlinkError> {
        let public = *p.endpoint.ip();
        match &self.backend {
            KernelBackend::HostGw { .. } => self.nl.del_via_route(p.subnet, public).await,
            KernelBackend::Vxlan { index, .. } => {
                let gw = p.subnet.network();
                self.nl.del_onlink_route(p.subnet, gw, *index).await?;
                if let Some(mac) = p.vtep_mac {
                    self.nl.del_fdb(*index, mac, public).await?;
                }
                self.nl.del_neighbour(*index, gw).await
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

/// Deletes every weft-marked route into `network` that is not in `expected` (compared by
/// destination and gateway): what a crashed or killed weft of this network left behind. Routes
/// into other networks belong to other weft processes on this host, and are left alone.
pub async fn remove_stale_routes(
    nl: &Netlink,
    network: Ipv4Net,
    expected: &[OwnedRoute],
) -> Result<usize, NetlinkError> {
    let mut removed = 0;
    for r in nl.owned_routes().await?.into_iter().filter(|r| network.contains(&r.dst)) {
        if !expected.iter().any(|e| e.dst == r.dst && e.gateway == r.gateway) {
            tracing::info!(dst = %r.dst, gateway = ?r.gateway, "removing a stale route of an earlier weft");
            nl.del_owned_route(&r).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
