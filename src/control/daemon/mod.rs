//! `weft run`: join the network, hold a lease, set up the host, and keep the data path's peer
//! table in step with the registry until SIGINT/SIGTERM.

use super::kernel::{KernelBackend, KernelDataplane, remove_stale_routes};
use super::lease::{AcquireError, acquire, peers_from_leases};
use super::metrics::MetricsState;
use super::netlink::{Netlink, OwnedRoute, Underlay, VxlanDevice, sysctl};
use super::registry::dir::{DirRegistry, write_atomic};
use super::registry::etcd::{EtcdOptions, EtcdRegistry};
use super::registry::{LEASE_TTL, Lease, Registry, RegistryError};
use crate::dataplane::counters::{CounterSet, Crossing, DropReason};
use crate::dataplane::engine::{self, EngineContext, Mode};
use crate::dataplane::forward::{Encap, Forwarder};
use crate::dataplane::peers::{Peer, PeerTable};
use crate::dataplane::sys::{tun::Tun, udp};
use crate::proto::lease::{LeaseAttrs, VxlanData};
use crate::proto::mac::MacAddr;
use crate::proto::netconfig::{BackendType, NetConfig};
use crate::proto::subnet_env::SubnetEnv;
use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Bytes the UDP backend adds: outer IPv4 20 + UDP 8.
pub const UDP_OVERHEAD: u32 = 28;
/// Bytes VXLAN adds: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Options of `weft run`. Flag names follow flanneld's where flanneld has one.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Directory registry: DIR/config holds the net-config JSON, DIR/subnets/<key> the leases
    /// (the layout of flannel's etcd keyspace under --etcd-prefix).
    #[arg(long, value_name = "DIR", required_unless_present = "etcd_endpoints", conflicts_with = "etcd_endpoints")]
    pub registry_dir: Option<PathBuf>,
    /// etcd v3 client URLs, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[arg(long, value_name = "PATH")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, value_name = "PATH", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "PATH", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, value_name = "NAME", requires = "etcd_password")]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(
        long,
        value_name = "PASSWORD",
        requires = "etcd_username",
        env = "WEFT_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// Key prefix of the flannel keyspace (used with etcd; a registry directory is the prefix).
    #[arg(long, default_value = "/coreos.com/network", value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// IP other hosts send to (default: the --iface interface's first IPv4 address).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Underlay interface (default: the one holding --public-ip, else the default route's).
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,
    /// subnet.env to write, and to read a previous subnet from.
    #[arg(long, default_value = "/run/flannel/subnet.env", value_name = "PATH")]
    pub subnet_file: PathBuf,
    /// Who moves the packets: weft in user space, or the kernel (a VXLAN device weft programs,
    /// as flanneld does). host-gw is always a kernel data path.
    #[arg(long, value_enum, default_value = "userspace")]
    pub dataplane: Dataplane,
    /// Forwarding engine of the userspace data path.
    #[arg(long, value_enum, default_value = "naive")]
    pub mode: Mode,
    /// Forwarding workers of the userspace data path. With more than one, the TUN has one queue
    /// per worker (IFF_MULTI_QUEUE) and each worker its own SO_REUSEPORT socket; the kernel keeps
    /// each flow on one queue and each sender on one socket, so no flow is reordered.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Packets the TUN holds for weft to read: the device's txqueuelen (the kernel's default for
    /// a TUN is 500). The kernel queues here whenever weft is off the CPU and drops what does not
    /// fit (the device's TX dropped count), so on a busy host this queue, not the forwarding
    /// rate, decides the loss of small datagrams. It costs no latency unless a queue builds.
    #[arg(long, default_value_t = DEFAULT_TUN_QUEUE_LEN, value_name = "PACKETS",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub tun_queue_len: u32,
    /// Send every datagram with its own sendmsg (batched and offload engines), never one
    /// UDP_SEGMENT (GSO) send for many. They fall back to this by themselves when the kernel
    /// refuses GSO (EIO or EINVAL, e.g. on a route through IPsec); this flag starts there,
    /// to rule GSO out when looking for a fault, or to compare.
    #[arg(long)]
    pub no_udp_gso: bool,
    /// TUN device name (default: flannel0 for udp, weft.<VNI> for vxlan).
    #[arg(long, value_name = "NAME")]
    pub tun_name: Option<String>,
    /// Accept inner packets whose source lies outside the sending peer's subnet.
    #[arg(long)]
    pub allow_foreign_src: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve /healthz and /readyz (and /metrics) on this port, as flanneld's flag (0: off).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub healthz_port: u16,
    /// Address for --healthz-port.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub healthz_ip: std::net::IpAddr,
    /// Keep the TUN device, its address and its route when weft exits (IFF_PERSIST), so that a
    /// restart loses no configuration and packets queue in the TUN meanwhile.
    #[arg(long)]
    pub persist_tun: bool,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    pub subnet_lease_renew_margin: u64,
}

/// The TUN queue weft asks for. At 200 000 datagrams/s it covers 10 ms off the CPU; on the
/// lab's 2 cores the kernel's 500 lost > 1 % of a 64-byte flood from 160 000–185 000/s, this
/// from about 260 000/s (README, "Small datagrams, at < 1 % loss").
pub const DEFAULT_TUN_QUEUE_LEN: u32 = 2048;

/// Where packets are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataplane {
    /// weft reads the TUN and sends UDP itself (the engine is --mode).
    Userspace,
    /// The kernel forwards; weft programs it over netlink.
    Kernel,
}

/// Runs the daemon to completion. Returns after a clean shutdown.
pub fn run(opts: RunOptions) -> Result<()> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the control runtime")?;
    rt.block_on(run_async(opts))
}

fn mtu_for(cfg: &NetConfig, underlay: &Underlay) -> Result<u32> {
    if let Some(m) = cfg.backend.mtu {
        return Ok(m);
    }
    let overhead = match cfg.backend.kind {
        BackendType::Udp => UDP_OVERHEAD,
        BackendType::Vxlan => VXLAN_OVERHEAD,
        BackendType::HostGw => 0,
    };
    let mtu = underlay.mtu.saturating_sub(overhead);
    if mtu < 576 {
        bail!("underlay {} MTU {} leaves {mtu} for the overlay (< 576)", underlay.name, underlay.mtu);
    }
    Ok(mtu)
}

fn read_previous_subnet(path: &std::path::Path) -> Option<ipnet::Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    match SubnetEnv::parse(&text) {
        Ok(e) => Some(e.lease_subnet()),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unreadable subnet file: {e}");
            None
        }
    }
}

/// The lease value for our backend; a vxlan node keeps its previous VtepMAC.
fn attrs_for(cfg: &NetConfig, public_ip: Ipv4Addr, previous: Option<&LeaseAttrs>) -> LeaseAttrs {
    match cfg.backend.kind {
        BackendType::Udp => LeaseAttrs::udp(public_ip),
        BackendType::HostGw => LeaseAttrs::host_gw(public_ip),
        BackendType::Vxlan => {
            let vtep_mac = previous
                .and_then(|p| p.vxlan_data())
                .map(|d| d.vtep_mac)
                .unwrap_or_else(|| MacAddr::random_local(&mut rand::rng()));
            LeaseAttrs::vxlan(public_ip, VxlanData { vni: cfg.backend.vni, vtep_mac })
        }
    }
}

fn log_peer_changes(old: &PeerTable, new: &[Peer]) {
    let before: BTreeSet<String> = old.iter().map(|p| format!("{} via {}", p.subnet, p.endpoint)).collect();
    let after: BTreeSet<String> = new.iter().map(|p| format!("{} via {}", p.subnet, p.endpoint)).collect();
    for added in after.difference(&before) {
        tracing::info!("peer added: {added}");
    }
    for removed in before.difference(&after) {
        tracing::info!("peer removed: {removed}");
    }
}

/// How often the kernel paths are checked (a VXLAN device deleted by hand comes back).
const HEAL_EVERY: Duration = Duration::from_secs(2);

/// The kernel-side state kept in step with the peers: the main kernel path (host-gw or kernel
/// VXLAN), DirectRouting's routes for peers on our segment, and routes weft made for itself.
#[derive(Default)]
struct KernelPaths {
    main: Option<KernelDataplane>,
    direct: Option<(KernelDataplane, ipnet::Ipv4Net)>,
    extra: Vec<OwnedRoute>,
}

impl KernelPaths {
    /// Programs the kernel for `peers`; returns the peers left to the userspace engine (all but
    /// the direct-routed ones).
    async fn sync(&mut self, peers: &[Peer]) -> Vec<Peer> {
        let (direct, rest): (Vec<Peer>, Vec<Peer>) = match &self.direct {
            Some((_, seg)) => peers.iter().cloned().partition(|p| seg.contains(p.endpoint.ip())),
            None => (Vec::new(), peers.to_vec()),
        };
        if let Some((d, _)) = self.direct.as_mut() {
            d.sync(&direct).await;
        }
        if let Some(k) = self.main.as_mut() {
            k.sync(&rest).await;
        }
        rest
    }

    async fn heal(&mut self, peers: &[Peer]) {
        let rest: Vec<Peer> = match &self.direct {
            Some((_, seg)) => peers.iter().filter(|p| !seg.contains(p.endpoint.ip())).cloned().collect(),
            None => peers.to_vec(),
        };
        if let Some(k) = self.main.as_mut()
            && let Err(e) = k.heal(&rest).await
        {
            tracing::warn!("checking the kernel data path: {e}");
        }
    }

    fn expected(&self) -> Vec<OwnedRoute> {
        let mut v = self.extra.clone();
        v.extend(self.main.iter().flat_map(|k| k.expected_routes()));
        v.extend(self.direct.iter().flat_map(|(d, _)| d.expected_routes()));
        v
    }

    async fn teardown(&mut self) {
        if let Some((d, _)) = self.direct.as_mut() {
            d.teardown().await;
        }
        if let Some(k) = self.main.as_mut() {
            k.teardown().await;
        }
    }
}

async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn run_async(opts: RunOptions) -> Result<()> {
    match (&opts.registry_dir, &opts.etcd_endpoints) {
        (Some(dir), None) => {
            let reg = DirRegistry::open(dir).context("opening the registry")?;
            serve(reg, opts).await
        }
        (None, Some(endpoints)) => {
            let eo = EtcdOptions {
                endpoints: endpoints.clone(),
                prefix: opts.etcd_prefix.clone(),
                cafile: opts.etcd_cafile.clone(),
                certfile: opts.etcd_certfile.clone(),
                keyfile: opts.etcd_keyfile.clone(),
                username: opts.etcd_username.clone(),
                password: opts.etcd_password.clone(),
            };
            let reg = EtcdRegistry::connect(&eo).await.context("setting up the etcd client")?;
            serve(reg, opts).await
        }
        _ => bail!("give exactly one of --registry-dir and --etcd-endpoints"),
    }
}

/// Runs `op` until it succeeds or fails with something other than an unreachable registry;
/// an unreachable registry is retried with backoff (100 ms doubling to 5 s), saying why.
async fn retrying<T, F: std::future::Future<Output = Result<T, RegistryError>>>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> Result<T, RegistryError> {
    let mut wait = Duration::from_millis(100);
    loop {
        match op().await {
            Err(RegistryError::Unavailable(why)) => {
                tracing::warn!("{what}: {why}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn serve<R: Registry>(reg: R, opts: RunOptions) -> Result<()> {
    let cfg_text =
        retrying("reading the network config", || reg.config()).await.context("reading the network config")?;
    let cfg = NetConfig::parse(&cfg_text)?;
    let nl = Netlink::connect()?;
    let underlay = nl.underlay(opts.iface.as_deref(), opts.public_ip).await?;
    let public_ip = underlay.addr;
    let mtu = mtu_for(&cfg, &underlay)?;
    tracing::info!(network = %cfg.network, backend = %cfg.backend.kind, iface = %underlay.name, %public_ip, registry = %reg.describe(), "starting");

    let previous = read_previous_subnet(&opts.subnet_file);
    let lease = loop {
        match acquire(&reg, &cfg, public_ip, previous, |prev| attrs_for(&cfg, public_ip, prev)).await {
            Err(AcquireError::Registry(RegistryError::Unavailable(why))) => {
                tracing::warn!("acquiring a lease: {why}; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other?,
        }
    };
    let subnet = lease.key.v4;
    let tun_addr = subnet.network();

    let env = SubnetEnv::for_lease(cfg.network, subnet, mtu, false);
    let leases = reg.leases().await?;
    let peers = peers_from_leases(&cfg, &leases, &lease.key);

    // Backend-specific data path.
    let stop = Arc::new(AtomicBool::new(false));
    let kernel_path = cfg.backend.kind == BackendType::HostGw || opts.dataplane == Dataplane::Kernel;
    let workers = if kernel_path { 1 } else { usize::from(opts.threads) };
    let counters = Arc::new(CounterSet::new(workers));
    let table = Arc::new(ArcSwap::from_pointee(PeerTable::new(peers.clone())));
    let (engine_done_tx, mut engine_done) = tokio::sync::mpsc::unbounded_channel::<Result<(), engine::EngineError>>();
    let mut engine_threads = Vec::new();
    let mut tun_index = None;
    let mut tun_device = None;
    let mut kernel = KernelPaths::default();
    if cfg.backend.kind == BackendType::Vxlan && cfg.backend.direct_routing {
        match underlay.subnet {
            Some(seg) => {
                let backend = KernelBackend::HostGw { segment: Some(seg) };
                kernel.direct = Some((KernelDataplane::new(nl.clone(), backend), seg));
            }
            None => tracing::warn!("DirectRouting: the underlay's segment is unknown; every peer goes through VXLAN"),
        }
    }
    match cfg.backend.kind {
        BackendType::HostGw => {
            kernel.main = Some(KernelDataplane::new(nl.clone(), KernelBackend::HostGw { segment: underlay.subnet }));
            drop(engine_done_tx);
        }
        BackendType::Udp if kernel_path => bail!("the udp backend has no kernel data path (use --dataplane userspace)"),
        BackendType::Vxlan if kernel_path => {
            let mac = lease.attrs.vxlan_data().map(|d| d.vtep_mac).context("our vxlan lease has no VtepMAC")?;
            let dev = VxlanDevice {
                name: format!("flannel.{}", cfg.backend.vni),
                vni: cfg.backend.vni,
                port: cfg.backend.port,
                local: public_ip,
                underlay: underlay.index,
                mac,
                mtu,
            };
            let backend = KernelDataplane::vxlan(&nl, dev, tun_addr).await?;
            kernel.main = Some(KernelDataplane::new(nl.clone(), backend));
            drop(engine_done_tx);
        }
        BackendType::Udp | BackendType::Vxlan => {
            let encap = match cfg.backend.kind {
                BackendType::Vxlan => {
                    let mac = lease.attrs.vxlan_data().map(|d| d.vtep_mac).context("our vxlan lease has no VtepMAC")?;
                    Encap::Vxlan { vni: cfg.backend.vni, mac }
                }
                _ => Encap::Udp,
            };
            let tun_name = opts.tun_name.clone().unwrap_or_else(|| match cfg.backend.kind {
                BackendType::Vxlan => format!("weft.{}", cfg.backend.vni),
                _ => "flannel0".to_string(),
            });
            let offload = opts.mode == Mode::Offload;
            // The batched engine writes coalesced runs too, so its TUN carries a virtio_net_hdr
            // (but no offloads: it reads plain packets).
            let vnet_hdr = matches!(opts.mode, Mode::Offload | Mode::Batched);
            let multi_queue = workers > 1;
            let local = SocketAddr::new(public_ip.into(), cfg.backend.port);
            if multi_queue {
                // A SO_REUSEPORT group (and a multi-queue TUN) would quietly take in a second
                // weft; a plain bind of the port, before anything is created, fails instead.
                drop(udp::bind(local).with_context(|| format!("binding UDP {local} (is another weft running?)"))?);
            }
            let mut queues = Vec::with_capacity(workers);
            for _ in 0..workers {
                let tun = Tun::open_with(&tun_name, vnet_hdr, multi_queue).map_err(|e| {
                    let hint = match e.raw_os_error() {
                        Some(libc::EPERM | libc::EACCES) => " (needs CAP_NET_ADMIN: run weft as root)",
                        Some(libc::EINVAL | libc::EBUSY) => {
                            " (a device of that name exists with other flags, e.g. a persistent TUN of another --mode or --threads: delete it first)"
                        }
                        Some(libc::ENOENT | libc::ENODEV) => " (/dev/net/tun is missing: modprobe tun)",
                        _ => "",
                    };
                    anyhow::Error::new(e).context(format!("creating TUN device {tun_name}{hint}"))
                })?;
                queues.push(tun);
            }
            // Persistence and offloads belong to the device, not to a queue: set them once.
            let first = &queues[0];
            first.set_persist(opts.persist_tun).with_context(|| format!("setting IFF_PERSIST on {tun_name}"))?;
            if offload {
                let uso = engine::offload::set_tun_offloads(first).with_context(|| {
                    format!("enabling TSO on {tun_name} (TUNSETOFFLOAD); use --mode batched on this kernel")
                })?;
                if !uso {
                    tracing::info!(
                        "{tun_name}: this kernel has no USO on TUN devices (Linux < 6.2); it cuts UDP GSO packets before weft reads them"
                    );
                }
            }
            let idx = nl
                .link_index(first.name())
                .await?
                .with_context(|| format!("TUN {} has no link index", first.name()))?;
            tun_index = Some(idx);
            tun_device = Some(first.name().to_string());
            // The overlay is IPv4; router solicitations would only be counted drops.
            let _ = sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", first.name()), "1");
            // Our ICMP errors come from the TUN's own address; let the kernel accept them.
            let _ = sysctl(&format!("net/ipv4/conf/{}/accept_local", first.name()), "1");
            nl.set_up(idx, mtu, opts.tun_queue_len).await?;
            nl.add_address(idx, tun_addr, 32).await?;
            nl.add_dev_route(cfg.network, idx).await?;
            kernel.extra.push(OwnedRoute { dst: cfg.network, gateway: None, oif: Some(idx) });
            let forwarder = Forwarder {
                encap,
                subnet,
                tun_addr,
                check_inner_src: !opts.allow_foreign_src,
                mtu: usize::try_from(mtu).unwrap_or(usize::MAX),
            };
            for (i, tun) in queues.into_iter().enumerate() {
                let socket =
                    udp::bind_with(local, multi_queue).with_context(|| format!("binding UDP {local} (worker {i})"))?;
                if offload {
                    udp::enable_gro(&socket).context("enabling UDP_GRO on the socket")?;
                }
                let tx = if multi_queue {
                    udp::bind(SocketAddr::new(public_ip.into(), 0))
                        .with_context(|| format!("binding a sending socket on {public_ip} (worker {i})"))?
                } else {
                    socket.try_clone().context("duplicating the UDP socket")?
                };
                let ctx = EngineContext {
                    tun,
                    socket,
                    tx,
                    forwarder: forwarder.clone(),
                    peers: table.clone(),
                    counters: counters.worker(i),
                    stop: stop.clone(),
                    udp_gso: !opts.no_udp_gso,
                };
                let mode = opts.mode;
                let done = engine_done_tx.clone();
                engine_threads.push(
                    std::thread::Builder::new()
                        .name(format!("weft-{}-{i}", mode.name()))
                        .spawn(move || {
                            let r = engine::run(mode, ctx);
                            let _ = done.send(r);
                        })
                        .context("spawning an engine thread")?,
                );
            }
            drop(engine_done_tx);
        }
    }
    let userspace = kernel.sync(&peers).await;
    table.store(Arc::new(PeerTable::new(userspace)));
    match remove_stale_routes(&nl, &kernel.expected()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} stale routes of an earlier weft"),
        Err(e) => tracing::warn!("looking for stale routes: {e}"),
    }
    let path_name = if kernel_path { "kernel".to_string() } else { format!("userspace/{}", opts.mode.name()) };
    let metrics = Arc::new(MetricsState {
        counters: counters.clone(),
        peers: table.clone(),
        ready: AtomicBool::new(false),
        lease_expiry: AtomicU64::new(unix_now() + LEASE_TTL.as_secs()),
        dataplane: path_name.clone(),
        tun: tun_device,
    });
    let healthz = (opts.healthz_port != 0).then(|| SocketAddr::new(opts.healthz_ip, opts.healthz_port));
    for addr in opts.metrics_addr.into_iter().chain(healthz).collect::<BTreeSet<_>>() {
        let l =
            super::metrics::bind(addr).await.with_context(|| format!("binding the metrics/health endpoint {addr}"))?;
        tokio::spawn(super::metrics::serve(l, metrics.clone()));
    }
    write_atomic(&opts.subnet_file, env.render().as_bytes())
        .with_context(|| format!("writing {}", opts.subnet_file.display()))?;
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(%subnet, mtu, peers = peers.len(), dataplane = %path_name, "ready");

    let renew_every = LEASE_TTL
        .saturating_sub(Duration::from_secs(opts.subnet_lease_renew_margin.saturating_mul(60)))
        .max(Duration::from_secs(60));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let mut known: Vec<Lease> = leases;
    let mut current = peers.clone();
    let mut heal = tokio::time::interval(HEAL_EVERY);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let outcome: Result<()> = loop {
        tokio::select! {
            sig = &mut shutdown => {
                tracing::info!("{}: shutting down", sig?);
                break Ok(());
            }
            r = engine_done.recv(), if !engine_threads.is_empty() => {
                break match r {
                    Some(Err(e)) => Err(anyhow::Error::new(e).context("engine stopped")),
                    _ => Err(anyhow::anyhow!("engine stopped unexpectedly")),
                };
            }
            _ = renew.tick() => {
                match reg.renew_lease(&lease.key, &lease.attrs, LEASE_TTL).await {
                    Ok(()) => {
                        metrics.lease_expiry.store(unix_now() + LEASE_TTL.as_secs(), Ordering::Relaxed);
                        tracing::info!(%subnet, "lease renewed");
                    }
                    Err(e) => tracing::warn!("lease renewal failed (will retry): {e}"),
                }
            }
            _ = heal.tick() => {
                kernel.heal(&current).await;
            }
            changed = reg.watch_leases(&known) => {
                match changed {
                    Ok(now) => {
                        if !now.iter().any(|l| l.key.v4 == subnet) {
                            tracing::warn!(%subnet, "our lease disappeared; taking it again");
                            if let Err(e) = reg.create_lease(&lease.key, &lease.attrs, LEASE_TTL).await {
                                tracing::warn!("re-creating our lease failed: {e}");
                            }
                        }
                        let peers = peers_from_leases(&cfg, &now, &lease.key);
                        log_peer_changes(&table.load(), &peers);
                        let userspace = kernel.sync(&peers).await;
                        table.store(Arc::new(PeerTable::new(userspace)));
                        current = peers;
                        known = now;
                    }
                    Err(e) => {
                        tracing::warn!("watching leases: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    };

    // Shutdown: stop the engine, then remove what we created.
    stop.store(true, Ordering::Relaxed);
    for t in engine_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    kernel.teardown().await;
    if let Some(idx) = tun_index.filter(|_| !opts.persist_tun) {
        // The non-persistent TUN vanishes with its fd (closed when the engine returned); delete it
        // explicitly in case something else still holds it open. With --persist-tun it stays, with
        // its address and route, for the next weft.
        nl.del_dev_route(cfg.network, idx).await.ok();
        nl.delete_link(idx).await.ok();
    }
    log_summary(&counters);
    outcome
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn log_summary(c: &CounterSet) {
    let s = c.snapshot();
    let drops: Vec<String> =
        DropReason::ALL.iter().filter(|r| s.drops(**r) > 0).map(|r| format!("{}={}", r.label(), s.drops(*r))).collect();
    tracing::info!(
        egress_packets = s.packets(Crossing::UdpSend),
        ingress_packets = s.packets(Crossing::TunWrite),
        icmp_sent = s.icmp_sent,
        drops = %drops.join(","),
        "stopped"
    );
}
