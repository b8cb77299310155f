//! Kernel data paths driven by weft's control plane: the kernel moves the packets, weft keeps
//! its tables equal to the leases (host-gw routes; VXLAN neighbour, fdb and route entries).

use super::netlink::{Netlink, NetlinkError};
use crate::dataplane::peers::Peer;

/// What the kernel is programmed with, per peer.
#[derive(Debug, Clone, Copy)]
pub enum KernelBackend {
    /// A route `subnet via PublicIP` per peer.
    HostGw,
    /// Per peer, on the VXLAN device: neighbour `subnet.0 lladdr VtepMAC`, fdb `VtepMAC dst
    /// PublicIP`, route `subnet via subnet.0 onlink` (flannel's order; removal reverses it).
    Vxlan {
        /// The VXLAN device's index.
        index: u32,
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

    async fn add(&self, p: &Peer) -> Result<(), NetlinkError> {
        let public = *p.endpoint.ip();
        match self.backend {
            KernelBackend::HostGw => self.nl.add_via_route(p.subnet, public).await,
            KernelBackend::Vxlan { index } => {
                let Some(mac) = p.vtep_mac else { return Ok(()) };
                let gw = p.subnet.network();
                self.nl.set_neighbour(index, gw, mac).await?;
                self.nl.set_fdb(index, mac, public).await?;
                self.nl.add_onlink_route(p.subnet, gw, index).await
            }
        }
    }

    async fn remove(&self, p: &Peer) -> Result<(), NetlinkError> {
        let public = *p.endpoint.ip();
        match self.backend {
            KernelBackend::HostGw => self.nl.del_via_route(p.subnet, public).await,
            KernelBackend::Vxlan { index } => {
                let gw = p.subnet.network();
                self.nl.del_onlink_route(p.subnet, gw, index).await?;
                if let Some(mac) = p.vtep_mac {
                    self.nl.del_fdb(index, mac, public).await?;
                }
                self.nl.del_neighbour(index, gw).await
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
                Err(e) => tracing::warn!("{e}"),
            }
        }
        self.installed = kept;
    }
}
