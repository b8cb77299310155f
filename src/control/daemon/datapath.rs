//! With a lease: the host set up for it (TUN address and route, or the kernel's VXLAN device or
//! host-gw routes), the engines started, and the peers kept in step with the leases. A start
//! that fails half-way removes what it made; a clean stop removes what weft made, but for a
//! TUN kept with `--persist-tun`.

use super::options::RunOptions;
use super::prepare::{HostError, Prepared, UserspaceIo, UserspaceSpec, port_free};
use crate::control::kernel::{KernelBackend, KernelDataplane, remove_stale_routes};
use crate::control::metrics::MetricsState;
use crate::control::netlink::{Netlink, NetlinkError, OwnedRoute, Underlay, VxlanDevice, sysctl};
use crate::control::nft::{Firewall, FirewallSpec, NftError};
use crate::control::registry::Lease;
use crate::dataplane::engine::{self, EngineContext, EngineError};
use crate::dataplane::forward::{Encap, Forwarder, ForwarderV4, ForwarderV6};
use crate::dataplane::offloads::{Capabilities, Offloads};
use crate::dataplane::peers::{Peer, PeerTable};
use crate::proto::netconfig::{BackendType, NetConfig};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// Why the host could not be set up for the lease.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The TUN device could not be made persistent.
    #[error("setting IFF_PERSIST on {name}: {error}")]
    Persist {
        /// The device.
        name: String,
        /// The error.
        error: std::io::Error,
    },
    /// Our own vxlan lease has no VtepMAC (it was written by weft a moment ago).
    #[error("our vxlan lease has no VtepMAC")]
    NoVtepMac,
    /// A dual-stack kernel VXLAN path has no IPv6 underlay address to send from.
    #[error("a dual-stack vxlan kernel path needs an IPv6 address on the underlay interface, or --public-ipv6")]
    NoPublicIpv6,
    /// An engine could not be started.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The TUN could not be made again after it was deleted.
    #[error(transparent)]
    Reopen(HostError),
    /// The masquerade or forward rules could not be installed.
    #[error(transparent)]
    Firewall(#[from] NftError),
}

/// What the engines run with, from the flags, the config and the lease.
fn engine_params(
    spec: &UserspaceSpec,
    opts: &RunOptions,
    cfg: &NetConfig,
    lease: &Lease,
    mtu: u32,
) -> Result<EngineParams, SetupError> {
    let encap = match cfg.backend.kind {
        BackendType::Vxlan => {
            let data = lease.attrs.vxlan_data().or(lease.attrs.vxlan_v6_data());
            let mac = data.map(|d| d.vtep_mac).ok_or(SetupError::NoVtepMac)?;
            Encap::Vxlan { vni: cfg.backend.vni, mac }
        }
        _ => Encap::Udp,
    };
    // The TUN's addresses are its subnets' network addresses, as flanneld gives its devices.
    let v4 = match (&cfg.ipv4, lease.key.v4) {
        (Some(_), Some(subnet)) => Some(ForwarderV4 { subnet, tun_addr: subnet.network() }),
        _ => None,
    };
    let v6 = match (&cfg.ipv6, lease.key.v6) {
        (Some(_), Some(subnet)) => Some(ForwarderV6 { subnet, tun_addr: subnet.network() }),
        _ => None,
    };
    let forwarder = Forwarder {
        encap,
        v4,
        check_inner_src: !opts.allow_foreign_src,
        mtu: usize::try_from(mtu).unwrap_or(usize::MAX),
        v6,
    };
    Ok(EngineParams {
        spec: spec.clone(),
        forwarder,
        mtu,
        tun_queue_len: opts.tun_queue_len,
        persist: opts.persist_tun,
        udp_gso: !opts.no_udp_gso,
    })
}

/// The MTU of `flannel-v6.<VNI>`: VXLAN over IPv6 costs 20 bytes more than over IPv4 (the
/// outer IPv6 header is 40 bytes, not 20), as flanneld counts it.
fn mtu_v6(mtu_v4: u32) -> u32 {
    mtu_v4.saturating_sub(20)
}

/// The kernel-side state kept in step with the peers: the main kernel path (host-gw or kernel
/// VXLAN), and DirectRouting's routes for peers on our segment.
#[derive(Default)]
struct KernelPaths {
    main: Option<KernelDataplane>,
    direct: Option<(KernelDataplane, Ipv4Net)>,
    /// The IPv6 side of a dual-stack network's kernel path (`flannel-v6.<VNI>`, or host-gw's
    /// IPv6 routes). DirectRouting applies to IPv4 only, as in flanneld.
    main_v6: Option<KernelDataplane>,
}

/// True when the peer's PublicIP is on the underlay segment `seg` (DirectRouting's test).
fn on_segment(seg: &Ipv4Net, p: &Peer) -> bool {
    matches!(p.endpoint.ip(), std::net::IpAddr::V4(ip) if seg.contains(&ip))
}

impl KernelPaths {
    /// The peers the main path carries: all but DirectRouting's.
    fn main_peers(&self, peers: &[Peer]) -> Vec<Peer> {
        match &self.direct {
            Some((_, seg)) => peers.iter().filter(|p| !on_segment(seg, p)).cloned().collect(),
            None => peers.to_vec(),
        }
    }

    /// Programs the kernel for `peers`; returns the peers left to the userspace engine (all but
    /// the direct-routed ones).
    async fn sync(&mut self, peers: &[Peer]) -> Vec<Peer> {
        let rest = self.main_peers(peers);
        if let Some((d, seg)) = self.direct.as_mut() {
            let direct: Vec<Peer> = peers.iter().filter(|p| on_segment(seg, p)).cloned().collect();
            d.sync(&direct).await;
        }
        if let Some(k) = self.main.as_mut() {
            k.sync(&rest).await;
        }
        if let Some(k) = self.main_v6.as_mut() {
            k.sync(peers).await;
        }
        rest
    }

    async fn heal(&mut self, peers: &[Peer]) {
        let rest = self.main_peers(peers);
        if let Some(k) = self.main.as_mut()
            && let Err(e) = k.heal(&rest).await
        {
            tracing::warn!("checking the kernel data path: {e}");
        }
        if let Some(k) = self.main_v6.as_mut()
            && let Err(e) = k.heal(peers).await
        {
            tracing::warn!("checking the kernel data path for IPv6: {e}");
        }
    }

    fn expected(&self) -> Vec<OwnedRoute> {
        let mut v: Vec<OwnedRoute> = self.main.iter().flat_map(|k| k.expected_routes()).collect();
        v.extend(self.direct.iter().flat_map(|(d, _)| d.expected_routes()));
        v.extend(self.main_v6.iter().flat_map(|k| k.expected_routes()));
        v
    }

    async fn teardown(&mut self) {
        if let Some((d, _)) = self.direct.as_mut() {
            d.teardown().await;
        }
        if let Some(k) = self.main.as_mut() {
            k.teardown().await;
        }
        if let Some(k) = self.main_v6.as_mut() {
            k.teardown().await;
        }
    }
}

/// The TUN device of the userspace path, as set up.
struct TunDevice {
    index: u32,
    name: String,
    persist: bool,
}

/// The running engine threads.
struct Engines {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: mpsc::UnboundedReceiver<Result<(), EngineError>>,
}

impl Engines {
    /// Asks every worker to stop and waits for them.
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// What the userspace engines run with, kept to start them again on a new TUN.
struct EngineParams {
    spec: UserspaceSpec,
    forwarder: Forwarder,
    mtu: u32,
    tun_queue_len: u32,
    persist: bool,
    udp_gso: bool,
}

/// The data path of a node holding a lease.
pub struct DataPath {
    nl: Netlink,
    /// `Network`, routed through the TUN (None on an IPv6-only network).
    network: Option<Ipv4Net>,
    /// `IPv6Network` of a dual-stack or IPv6-only network, routed through the TUN.
    network_v6: Option<Ipv6Net>,
    kernel: KernelPaths,
    params: Option<EngineParams>,
    tun: Option<TunDevice>,
    engines: Option<Engines>,
    metrics: Arc<MetricsState>,
    /// The masquerade and forward rules (None: neither asked for).
    firewall: Option<Firewall>,
}

impl DataPath {
    /// Sets the host up for `lease` and starts forwarding to `peers`. On failure, what was set
    /// up is removed again.
    pub async fn start(
        prepared: Prepared,
        opts: &RunOptions,
        cfg: &NetConfig,
        lease: &Lease,
        peers: &[Peer],
    ) -> Result<Self, SetupError> {
        let Prepared { nl, underlay, mtu, userspace, metrics, vtep_mac: _, public: _ } = prepared;
        let mut dp = Self {
            nl,
            network: cfg.ipv4.as_ref().map(|v4| v4.network),
            network_v6: cfg.ipv6.as_ref().map(|v6| v6.network),
            kernel: KernelPaths::default(),
            params: None,
            tun: None,
            engines: None,
            metrics,
            firewall: Firewall::new(FirewallSpec {
                network4: cfg.ipv4.as_ref().zip(lease.key.v4).map(|(v4, lease4)| (v4.network, lease4)),
                masquerade: opts.ip_masq,
                forward: opts.iptables_forward_rules,
                network6: cfg.ipv6.as_ref().zip(lease.key.v6).map(|(v6, lease6)| (v6.network, lease6)),
            }),
        };
        let set_up = match userspace {
            Some(io) => match engine_params(&io.spec, opts, cfg, lease, mtu) {
                Ok(params) => {
                    dp.params = Some(params);
                    dp.set_up_userspace(io).await
                }
                Err(e) => Err(e),
            },
            None => dp.set_up_kernel(cfg, lease, &underlay, mtu).await,
        };
        let set_up = match set_up {
            Ok(()) => dp.set_up_direct_routing(cfg, &underlay),
            Err(e) => Err(e),
        };
        let set_up = match set_up {
            Ok(()) => dp.apply_firewall().await,
            Err(e) => Err(e),
        };
        if let Err(e) = set_up {
            dp.remove(true).await;
            return Err(e);
        }
        dp.sync(peers).await;
        let networks: Vec<IpNet> = dp.networks().collect();
        match remove_stale_routes(&dp.nl, &networks, &dp.expected_routes()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} stale routes of an earlier weft"),
            Err(e) => tracing::warn!("looking for stale routes: {e}"),
        }
        Ok(dp)
    }

    fn set_up_direct_routing(&mut self, cfg: &NetConfig, underlay: &Underlay) -> Result<(), SetupError> {
        if cfg.backend.kind != BackendType::Vxlan || !cfg.backend.direct_routing {
            return Ok(());
        }
        if cfg.ipv4.is_none() {
            tracing::warn!(
                "DirectRouting applies to IPv4 peers only (as in flanneld); on this IPv6-only network every peer goes through VXLAN"
            );
            return Ok(());
        }
        match underlay.subnet {
            Some(seg) => {
                let backend = KernelBackend::HostGw { segment: Some(seg) };
                self.kernel.direct = Some((KernelDataplane::new(self.nl.clone(), backend), seg));
            }
            None => tracing::warn!("DirectRouting: the underlay's segment is unknown; every peer goes through VXLAN"),
        }
        Ok(())
    }

    async fn set_up_kernel(
        &mut self,
        cfg: &NetConfig,
        lease: &Lease,
        underlay: &Underlay,
        mtu: u32,
    ) -> Result<(), SetupError> {
        if let (Some(_), Some(subnet)) = (&cfg.ipv4, lease.key.v4) {
            let backend = match cfg.backend.kind {
                BackendType::Vxlan => {
                    let mac = lease.attrs.vxlan_data().map(|d| d.vtep_mac).ok_or(SetupError::NoVtepMac)?;
                    let dev = VxlanDevice::flannel(cfg, underlay, mtu, mac);
                    KernelDataplane::vxlan(&self.nl, dev, subnet.network().into()).await?
                }
                _ => KernelBackend::HostGw { segment: underlay.subnet },
            };
            self.kernel.main = Some(KernelDataplane::new(self.nl.clone(), backend));
        }
        let (Some(_), Some(subnet6)) = (&cfg.ipv6, lease.key.v6) else { return Ok(()) };
        // On an IPv6-only network `mtu` already counts the outer IPv6 header.
        let mtu6 = if cfg.ipv4.is_some() { mtu_v6(mtu) } else { mtu };
        let backend = match cfg.backend.kind {
            BackendType::Vxlan => {
                let mac = lease.attrs.vxlan_v6_data().map(|d| d.vtep_mac).ok_or(SetupError::NoVtepMac)?;
                let local = lease.attrs.public_ipv6.ok_or(SetupError::NoPublicIpv6)?;
                let dev = VxlanDevice::flannel_v6(cfg, underlay, local, mtu6, mac);
                KernelDataplane::vxlan(&self.nl, dev, subnet6.network().into()).await?
            }
            _ => KernelBackend::HostGw { segment: None },
        };
        self.kernel.main_v6 = Some(KernelDataplane::new_v6(self.nl.clone(), backend));
        Ok(())
    }

    /// Sets up the TUN of `io` (persistence, address, MTU, queue, route) and starts one engine
    /// per queue.
    async fn set_up_userspace(&mut self, io: UserspaceIo) -> Result<(), SetupError> {
        let Some(p) = self.params.as_ref() else { return Ok(()) };
        let UserspaceIo { mode, queues, sockets, spec: _, offloads } = io;
        // --no-udp-gso turns off what the kernel has; one value for every worker.
        let offloads = Arc::new(Offloads::new(Capabilities { udp_gso: offloads.udp_gso && p.udp_gso, ..offloads }));
        let first = &queues[0];
        let name = first.name().to_string();
        let index = self
            .nl
            .link_index(&name)
            .await?
            .ok_or_else(|| SetupError::Netlink(NetlinkError::NotFound(format!("TUN {name} has no link index"))))?;
        self.tun = Some(TunDevice { index, name: name.clone(), persist: false });
        first.set_persist(p.persist).map_err(|error| SetupError::Persist { name: name.clone(), error })?;
        if let Some(t) = self.tun.as_mut() {
            t.persist = p.persist;
        }
        match self.network_v6 {
            // A link-local address would only send router solicitations and MLD reports into
            // the TUN (counted drops); the subnet's address needs no duplicate detection.
            Some(_) => {
                let _ = sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0");
                let _ = sysctl(&format!("net/ipv6/conf/{name}/addr_gen_mode"), "1");
                let _ = sysctl(&format!("net/ipv6/conf/{name}/accept_dad"), "0");
            }
            // An IPv4-only overlay: router solicitations would only be counted drops.
            None => {
                let _ = sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
            }
        }
        // Our ICMP errors come from the TUN's own address; let the kernel accept them.
        let _ = sysctl(&format!("net/ipv4/conf/{name}/accept_local"), "1");
        self.nl.set_up(index, p.mtu, p.tun_queue_len).await?;
        if let (Some(network), Some(v4)) = (self.network, p.forwarder.v4) {
            self.nl.add_address(index, v4.tun_addr, 32).await?;
            self.nl.add_dev_route(network, index).await?;
        }
        if let (Some(network), Some(v6)) = (self.network_v6, p.forwarder.v6) {
            self.nl.add_address(index, v6.tun_addr, 128).await?;
            self.nl.add_dev_route_v6(network, index).await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::unbounded_channel();
        let mut engines = Engines { stop: stop.clone(), threads: Vec::new(), done };
        let mut spawned = Ok(());
        for (i, (tun, s)) in queues.into_iter().zip(sockets).enumerate() {
            let ctx = EngineContext {
                tun,
                socket: s.rx,
                tx: s.tx,
                forwarder: p.forwarder.clone(),
                peers: self.metrics.peers.clone(),
                counters: self.metrics.counters.worker(i),
                stop: stop.clone(),
                offloads: offloads.clone(),
            };
            match engine::spawn(mode, ctx, format!("weft-{}-{i}", mode.name()), done_tx.clone()) {
                Ok(t) => engines.threads.push(t),
                Err(e) => {
                    spawned = Err(e.into());
                    break;
                }
            }
        }
        self.engines = Some(engines);
        spawned
    }

    /// True when the userspace path's TUN device is gone (deleted from outside).
    async fn tun_gone(&self) -> bool {
        match &self.tun {
            Some(t) => matches!(self.nl.link_index(&t.name).await, Ok(i) if i != Some(t.index)),
            None => false,
        }
    }

    /// After an engine stopped: if the TUN was deleted from outside, every engine is stopped,
    /// the TUN made again and the engines started on it. Returns whether that was the cause.
    pub async fn revive_if_tun_gone(&mut self) -> Result<bool, SetupError> {
        if !self.tun_gone().await {
            return Ok(false);
        }
        let Some(spec) = self.params.as_ref().map(|p| p.spec.clone()) else { return Ok(false) };
        tracing::warn!(tun = %spec.name, "the TUN device was deleted; making it again");
        if let Some(e) = self.engines.take() {
            e.stop().await;
        }
        self.tun = None;
        port_free(spec.local).await.map_err(SetupError::Reopen)?;
        let io = spec.open().map_err(SetupError::Reopen)?;
        self.set_up_userspace(io).await?;
        tracing::info!(tun = %spec.name, "the TUN device is back and forwarding");
        Ok(true)
    }

    /// The routes weft should have for the current peers (to tell stale routes from ours).
    fn expected_routes(&self) -> Vec<OwnedRoute> {
        let mut v = self.kernel.expected();
        // The TUN's routes to the whole network, of each family.
        for dst in self.networks() {
            v.extend(self.tun.iter().map(|t| OwnedRoute { dst, gateway: None, oif: Some(t.index) }));
        }
        v
    }

    /// The network's pod networks: `Network` and `IPv6Network`, whichever it has.
    fn networks(&self) -> impl Iterator<Item = IpNet> {
        self.network.map(IpNet::from).into_iter().chain(self.network_v6.map(IpNet::from))
    }

    /// Brings the kernel's entries and the engines' peer table in step with `peers`.
    pub async fn sync(&mut self, peers: &[Peer]) {
        let userspace = self.kernel.sync(peers).await;
        self.metrics.peers.store(Arc::new(PeerTable::new(userspace)));
    }

    /// Puts back what someone else removed: the TUN device, the kernel VXLAN device and its
    /// entries, and weft's routes.
    pub async fn heal(&mut self, peers: &[Peer]) -> Result<(), SetupError> {
        self.revive_if_tun_gone().await?;
        self.kernel.heal(peers).await;
        let expected = self.expected_routes();
        match self.nl.owned_routes().await {
            Ok(present) => {
                for r in expected.iter().filter(|r| !present.iter().any(|p| p.dst == r.dst && p.gateway == r.gateway)) {
                    tracing::warn!(dst = %r.dst, "a route of weft's was removed from outside; restoring it");
                    if let Err(e) = self.nl.add_owned_route(r).await {
                        tracing::warn!("restoring route {}: {e}", r.dst);
                    }
                }
            }
            Err(e) => tracing::warn!("checking weft's routes: {e}"),
        }
        Ok(())
    }

    /// Resolves when an engine stops by itself (never for a kernel path).
    pub async fn engine_stopped(&mut self) -> Result<(), EngineError> {
        match self.engines.as_mut() {
            Some(e) => {
                e.done.recv().await.unwrap_or_else(|| Err(EngineError::Panicked("engine channel closed".into())))
            }
            None => std::future::pending().await,
        }
    }

    /// Runs `f` on the firewall on a blocking thread (it runs `nft`); None without one.
    async fn with_firewall<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Firewall) -> T + Send + 'static,
    ) -> Option<T> {
        let mut fw = self.firewall.take()?;
        let (fw, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut fw);
            (fw, out)
        })
        .await
        .ok()?;
        self.firewall = Some(fw);
        Some(out)
    }

    /// Installs the masquerade and forward rules. Without the `nft` tool, the forward rules
    /// that are on by default are left out with a warning (a host without nft has no nftables
    /// drop policy of its own to meet); `--ip-masq` cannot do without it.
    async fn apply_firewall(&mut self) -> Result<(), SetupError> {
        match self.with_firewall(Firewall::apply).await {
            Some(Err(e)) if e.tool_missing() && !self.firewall.as_ref().is_some_and(Firewall::masquerades) => {
                tracing::warn!("{e}; the forward rules are not installed");
                self.firewall = None;
                Ok(())
            }
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Puts back masquerade and forward rules that were removed from outside.
    pub async fn resync_firewall(&mut self) {
        if let Some(Err(e)) = self.with_firewall(Firewall::check).await {
            tracing::warn!("checking the masquerade and forward rules: {e}");
        }
    }

    /// Stops the engines and removes what weft set up (a failed start removes the TUN even when
    /// it was to persist).
    async fn remove(&mut self, failed_start: bool) {
        let kernel_keeps_forwarding = !failed_start && (self.kernel.main.is_some() || self.kernel.main_v6.is_some());
        self.with_firewall(move |f| f.release(kernel_keeps_forwarding)).await;
        if let Some(e) = self.engines.take() {
            e.stop().await;
        }
        // The kernel keeps forwarding after a clean exit (flanneld leaves flannel.<VNI>, its
        // entries and the host-gw routes in place), so that a restart or an upgrade of the
        // daemon costs no traffic; a start that failed removes what it made.
        if failed_start {
            self.kernel.teardown().await;
        }
        if let Some(t) = self.tun.take().filter(|t| failed_start || !t.persist) {
            // A non-persistent TUN vanishes with its last fd (closed when the engines returned);
            // delete it explicitly in case something else still holds it open. With
            // --persist-tun it stays, with its address and route, for the next weft.
            if let Some(network) = self.network {
                self.nl.del_dev_route(network, t.index).await.ok();
            }
            self.nl.delete_link(t.index).await.ok();
            tracing::debug!(tun = %t.name, "removed the TUN device");
        }
    }

    /// Stops the userspace engines and removes what weft set up for them; a kernel path is left
    /// forwarding.
    pub async fn stop(mut self) {
        self.remove(false).await;
    }
}
