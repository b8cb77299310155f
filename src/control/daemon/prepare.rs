//! Before a lease is taken: everything on this host that can be checked or claimed without one.
//! The underlay and PublicIP, the MTU, the subnet.env directory, the health and metrics
//! listeners, and for the userspace data path the UDP sockets, the TUN queues and the engine.
//! Whatever fails here fails before anything is written to the registry, and what was claimed
//! is released when the [`Prepared`] value is dropped (sockets and TUN fds close; a
//! non-persistent TUN goes with its last fd).

use super::options::{Dataplane, EngineChoice, RunOptions};
use crate::control::metrics::{self, Endpoint, MetricsState};
use crate::control::netlink::{IfaceChoice, Netlink, NetlinkError, Underlay, VxlanDevice};
use crate::dataplane::counters::CounterSet;
use crate::dataplane::engine::{Mode, offload::set_tun_offloads};
use crate::dataplane::offloads::Capabilities;
use crate::dataplane::peers::PeerTable;
use crate::dataplane::sys::udp::TxPool;
use crate::dataplane::sys::{tun::Tun, udp};
use crate::proto::mac::MacAddr;
use crate::proto::netconfig::{BackendType, NetConfig};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes the UDP backend adds: outer IPv4 20 + UDP 8.
pub const UDP_OVERHEAD: u32 = 28;
/// Bytes VXLAN adds: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// What an outer IPv6 header costs beyond an outer IPv4 one (40 bytes against 20): an
/// IPv6-only network's packets travel over the IPv6 underlay.
pub const IPV6_UNDERLAY_EXTRA: u32 = 20;
/// The smallest overlay MTU weft accepts (IPv4's minimum datagram every host must take).
const MIN_MTU: u32 = 576;
/// The smallest overlay MTU of an IPv6-only network (IPv6's minimum link MTU).
const MIN_MTU_V6: u32 = 1280;

/// Why this host cannot join: each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Netlink failed, or the underlay could not be found.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The PublicIP is one no peer can send to.
    #[error("{0}")]
    PublicIp(String),
    /// A flag's value cannot be used.
    #[error("{0}")]
    Flag(String),
    /// The overlay MTU would be too small.
    #[error("{from} {underlay} leaves {overlay} for the overlay (< {min}); raise it")]
    Mtu {
        /// Where the underlay MTU came from (the interface, or Backend.MTU).
        from: String,
        /// The underlay MTU.
        underlay: u32,
        /// What would be left.
        overlay: u32,
        /// The least the overlay needs.
        min: u32,
    },
    /// The subnet.env directory cannot be created or written.
    #[error("subnet file directory {}: {error} (choose another --subnet-file)", path.display())]
    SubnetFile {
        /// The directory.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A health or metrics address cannot be bound.
    #[error("binding the health/metrics endpoint {addr}: {error} (is another process using it?)")]
    Endpoint {
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// The backend's UDP port cannot be bound.
    #[error("binding UDP {addr}{hint}: {error}")]
    Udp {
        /// The address.
        addr: SocketAddr,
        /// What to do.
        hint: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// The TUN device cannot be created or set up.
    #[error("{what} {name}{hint}: {error}")]
    Tun {
        /// What was being done.
        what: &'static str,
        /// The device name.
        name: String,
        /// What to do.
        hint: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// The configuration asks for something this host's data path cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// One userspace worker's sockets: `rx` bound to PublicIP:port (the receiving socket), `tx`
/// the one datagrams leave from.
pub struct WorkerSockets {
    /// Bound to PublicIP:port.
    pub rx: UdpSocket,
    /// `rx` itself for a lone worker with one source port (as flannel); otherwise sockets
    /// of their own (see `--flow-ports`).
    pub tx: TxPool,
}

/// The userspace data path's I/O, opened and ready for the engines.
pub struct UserspaceIo {
    /// The engine to run.
    pub mode: Mode,
    /// The TUN's queues, one per worker.
    pub queues: Vec<Tun>,
    /// The sockets, one pair per worker.
    pub sockets: Vec<WorkerSockets>,
    /// How it was opened (with `auto` resolved), to open it again if the TUN is deleted.
    pub spec: UserspaceSpec,
    /// What the kernel takes, found out while opening.
    pub offloads: Capabilities,
}

/// How the userspace data path's I/O is opened.
#[derive(Debug, Clone)]
pub struct UserspaceSpec {
    /// The TUN device's name.
    pub name: String,
    /// PublicIP (PublicIPv6 on an IPv6-only network) and the backend's port.
    pub local: SocketAddr,
    /// Workers (TUN queues, socket pairs).
    pub workers: usize,
    /// Source ports per worker.
    pub flow_ports: usize,
    /// The engine asked for.
    pub choice: EngineChoice,
    /// IPv6 pods too: the TUN then hands over IPv6 TCP super-packets as well (TSO6).
    pub dual_stack: bool,
}

impl UserspaceSpec {
    /// The spec `weft run`'s flags and the config ask for.
    pub fn new(opts: &RunOptions, cfg: &NetConfig, public_ip: IpAddr) -> Self {
        let name = opts.tun_name.clone().unwrap_or_else(|| match cfg.backend.kind {
            BackendType::Vxlan => format!("weft.{}", cfg.backend.vni),
            _ => "flannel0".to_string(),
        });
        Self {
            name,
            local: SocketAddr::new(public_ip, cfg.backend.port),
            workers: usize::from(opts.threads),
            flow_ports: usize::from(opts.flow_ports),
            choice: opts.mode,
            dual_stack: cfg.ipv6.is_some(),
        }
    }

    /// Binds the backend's port, opens the TUN queues, and picks the engine.
    pub fn open(&self) -> Result<UserspaceIo, HostError> {
        let (name, local, workers) = (&self.name, self.local, self.workers);
        // The port first: it is what a second weft on this host collides on.
        let sockets = bind_sockets(local, workers, self.flow_ports)?;
        let (first, mode, tun_uso) = open_first_queue(self.choice, name, workers > 1, self.dual_stack)?;
        if matches!(mode, Mode::Offload | Mode::Uring) {
            for s in &sockets {
                udp::enable_gro(&s.rx).map_err(|error| HostError::Udp {
                    addr: local,
                    hint: " (enabling UDP_GRO)",
                    error,
                })?;
            }
        }
        let vnet_hdr = matches!(mode, Mode::Batched | Mode::Offload | Mode::Uring);
        let mut queues = vec![first];
        for _ in 1..workers {
            queues.push(Tun::open_with(name, vnet_hdr, true).map_err(|e| tun_error("adding a queue to TUN", name, e))?);
        }
        let spec = Self { choice: EngineChoice::from(mode), ..self.clone() };
        let udp_gso = sockets.first().is_some_and(|s| udp::has_gso(s.tx.get(0)));
        if !udp_gso {
            tracing::info!("this kernel has no UDP GSO (Linux < 4.18): datagrams are sent one per message");
        }
        let offloads = Capabilities { udp_gso, tun_uso };
        Ok(UserspaceIo { mode, queues, sockets, spec, offloads })
    }
}

impl UserspaceIo {
    /// The TUN device's name.
    pub fn tun_name(&self) -> &str {
        self.queues.first().map_or("", |t| t.name())
    }
}

/// What this host brings to the network, claimed before the lease.
pub struct Prepared {
    /// The netlink handle.
    pub nl: Netlink,
    /// The underlay interface and PublicIP.
    pub underlay: Underlay,
    /// The overlay MTU (TUN or VXLAN device, `FLANNEL_MTU`).
    pub mtu: u32,
    /// The userspace data path's I/O (None on a kernel path).
    pub userspace: Option<UserspaceIo>,
    /// What /metrics and /readyz report; the endpoints are already serving.
    pub metrics: Arc<MetricsState>,
    /// The MAC of a `flannel.<VNI>` that a kernel-path start will adopt: it stays the VtepMAC,
    /// so that peers' entries for this host stay valid.
    pub vtep_mac: Option<MacAddr>,
    /// The address peers send this node's packets to, and the lease is known by: PublicIP, or
    /// on an IPv6-only network PublicIPv6 (`--public-ipv6`, else the address `--iface` names,
    /// else the underlay's first global IPv6 address).
    pub public: IpAddr,
}

impl Prepared {
    /// True when the kernel moves the packets (host-gw, or `--dataplane kernel`).
    pub fn kernel_path(&self) -> bool {
        self.userspace.is_none()
    }
}

/// The overlay MTU: the underlay's minus the backend's overhead. `Backend.MTU`, where set,
/// is the underlay MTU to count from, as in flanneld (`{"Type":"vxlan","MTU":1400}` gives a
/// 1350 device and `FLANNEL_MTU=1350`).
pub fn mtu_for(cfg: &NetConfig, underlay: &Underlay) -> Result<u32, HostError> {
    let v6_underlay = cfg.ipv4.is_none();
    let overhead = match cfg.backend.kind {
        BackendType::Udp => UDP_OVERHEAD,
        BackendType::Vxlan => VXLAN_OVERHEAD,
        BackendType::HostGw => 0,
    };
    let overhead = match (v6_underlay, overhead) {
        (true, o) if o > 0 => o + IPV6_UNDERLAY_EXTRA,
        (_, o) => o,
    };
    let (from, base) = match cfg.backend.mtu {
        Some(m) => ("Backend.MTU".to_string(), m),
        None => (format!("underlay {} MTU", underlay.name), underlay.mtu),
    };
    let overlay = base.saturating_sub(overhead);
    let min = if v6_underlay { MIN_MTU_V6 } else { MIN_MTU };
    if overlay < min {
        return Err(HostError::Mtu { from, underlay: base, overlay, min });
    }
    Ok(overlay)
}

/// Where an IPv6-only network's packets are sent from: `--public-ipv6`, else the underlay's
/// first global IPv6 address. None for a network with IPv4 (see the daemon's `public_ipv6`).
fn ipv6_only_public(opts: &RunOptions, cfg: &NetConfig, underlay: &Underlay) -> Result<Option<Ipv6Addr>, HostError> {
    if cfg.ipv4.is_some() {
        return Ok(None);
    }
    let Some(ip) = opts.public_ipv6.or(underlay.addr6) else {
        return Err(HostError::PublicIp(format!(
            "an IPv6-only network sends its packets over the IPv6 underlay, and {} has no global IPv6 address: add one, or pass --public-ipv6",
            underlay.name
        )));
    };
    if crate::control::lease::unreachable_v6(ip) {
        return Err(HostError::PublicIp(format!(
            "PublicIPv6 {ip} (interface {}) is not an address other hosts can send to; pass --public-ipv6",
            underlay.name
        )));
    }
    Ok(Some(ip))
}

/// Refuses a PublicIP that no peer can send to.
pub fn check_public_ip(ip: Ipv4Addr, iface: &str) -> Result<(), HostError> {
    let what = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(HostError::PublicIp(format!(
        "PublicIP {ip} (interface {iface}) is {what}: other hosts cannot send to it; choose the underlay with --iface or --public-ip"
    )))
}

/// Creates the directory of `--subnet-file` (flanneld does) and checks that it takes a file.
fn prepare_subnet_dir(file: &Path) -> Result<(), HostError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let err = |error| HostError::SubnetFile { path: dir.clone(), error };
    std::fs::create_dir_all(&dir).map_err(err)?;
    tempfile::Builder::new().prefix(".weft-check").tempfile_in(&dir).map(drop).map_err(err)
}

/// The health and metrics listeners: `--metrics-addr` serves everything, `--healthz-port`
/// only /healthz and /readyz (as flanneld), unless both name the same address.
async fn bind_endpoints(opts: &RunOptions) -> Result<Vec<Endpoint>, HostError> {
    let mut want: BTreeMap<SocketAddr, bool> = BTreeMap::new();
    if opts.healthz_port != 0 {
        want.insert(SocketAddr::new(opts.healthz_ip, opts.healthz_port), false);
    }
    if let Some(a) = opts.metrics_addr {
        want.insert(a, true);
    }
    let mut out = Vec::new();
    for (addr, with_metrics) in want {
        let listener = metrics::bind(addr).await.map_err(|error| HostError::Endpoint { addr, error })?;
        out.push(Endpoint { listener, with_metrics });
    }
    Ok(out)
}

fn tun_error(what: &'static str, name: &str, error: std::io::Error) -> HostError {
    let hint = match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs CAP_NET_ADMIN: run weft as root)",
        Some(libc::EINVAL | libc::EBUSY) => {
            " (a device of that name exists with other flags or is in use, e.g. a persistent TUN of another --mode or --threads, or another weft: delete it or choose --tun-name)"
        }
        Some(libc::ENOENT | libc::ENODEV) => " (/dev/net/tun is missing: modprobe tun)",
        _ if error.kind() == std::io::ErrorKind::InvalidInput => " (at most 15 characters, no '/', ':' or spaces)",
        _ => "",
    };
    HostError::Tun { what, name: name.to_string(), hint, error }
}

/// How long a start waits for the backend's port to come free: a weft killed a moment ago
/// holds it until its last thread has exited, a few milliseconds after the process looks gone.
const PORT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits up to [`PORT_GRACE`] for `local` to be free (a plain bind, released at once). Called
/// before the sockets are bound: with several workers they join a `SO_REUSEPORT` group, which
/// would quietly take in a second weft's sockets; a plain bind fails instead.
pub async fn port_free(local: SocketAddr) -> Result<(), HostError> {
    let since = std::time::Instant::now();
    loop {
        match udp::bind(local) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && since.elapsed() < PORT_GRACE => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => return Err(HostError::Udp { addr: local, hint: " (is another weft running?)", error }),
        }
    }
}

/// Binds each worker's sockets, after [`port_free`] has checked the port: the receiving one
/// (one `SO_REUSEPORT` group with several workers) and the sending pool.
fn bind_sockets(local: SocketAddr, workers: usize, flow_ports: usize) -> Result<Vec<WorkerSockets>, HostError> {
    let udp_err = |hint, error| HostError::Udp { addr: local, hint, error };
    let multi = workers > 1;
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let rx = udp::bind_with(local, multi).map_err(|e| udp_err(" (is another weft running?)", e))?;
        let tx = if multi || flow_ports > 1 {
            TxPool::bind(local.ip(), flow_ports).map_err(|e| udp_err(" (a worker's sending socket)", e))?
        } else {
            TxPool::one(rx.try_clone().map_err(|e| udp_err(" (duplicating the socket)", e))?)
        };
        out.push(WorkerSockets { rx, tx });
    }
    Ok(out)
}

/// Opens the TUN's first queue and decides the engine: `auto` takes offload where the device
/// accepts TSO, else batched. Also says whether the TUN takes USO: known where offloads were
/// set; elsewhere assumed, and found out at the first coalesced UDP write.
fn open_first_queue(choice: EngineChoice, name: &str, multi: bool, ipv6: bool) -> Result<(Tun, Mode, bool), HostError> {
    if choice == EngineChoice::Uring {
        crate::dataplane::sys::uring::probe().map_err(|e| {
            HostError::Flag(format!(
                "--mode uring: this process cannot use io_uring ({e}); it needs Linux ≥ 6.7 with io_uring \
                 allowed (sysctl kernel.io_uring_disabled = 0, no seccomp profile that blocks it): use --mode offload"
            ))
        })?;
    }
    // batched writes coalesced runs, so its TUN carries a virtio_net_hdr too (but no offloads).
    let vnet_hdr = !matches!(choice, EngineChoice::Naive);
    let tun = Tun::open_with(name, vnet_hdr, multi).map_err(|e| tun_error("creating TUN device", name, e))?;
    let (mode, tun_uso) = match choice.fixed() {
        Some(mode @ (Mode::Offload | Mode::Uring)) => {
            let uso = set_tun_offloads(&tun, ipv6).map_err(|e| HostError::Tun {
                what: "enabling TSO (TUNSETOFFLOAD) on",
                name: name.to_string(),
                hint: " (use --mode batched or auto on this kernel)",
                error: e,
            })?;
            tracing::info!(engine = mode.name(), "engine: {} (--mode)", mode.name());
            log_uso(name, uso);
            (mode, uso)
        }
        Some(mode) => {
            tracing::info!(engine = mode.name(), "engine: {} (--mode)", mode.name());
            (mode, true)
        }
        None => match set_tun_offloads(&tun, ipv6) {
            Ok(uso) => {
                tracing::info!(engine = "offload", "engine: offload (--mode auto: the TUN device accepts TSO)");
                log_uso(name, uso);
                (Mode::Offload, uso)
            }
            Err(e) => {
                tracing::info!(engine = "batched", "engine: batched (--mode auto: the TUN device refused TSO: {e})");
                (Mode::Batched, true)
            }
        },
    };
    Ok((tun, mode, tun_uso))
}

fn log_uso(name: &str, uso: bool) {
    if !uso {
        tracing::info!(
            "{name}: this kernel has no USO on TUN devices (Linux < 6.2); it cuts UDP GSO packets before weft reads them"
        );
    }
}

/// Checks and claims what this host needs, before any lease is taken.
pub async fn prepare(opts: &RunOptions, cfg: &NetConfig) -> Result<Prepared, HostError> {
    let nl = Netlink::connect()?;
    let regexes = opts
        .iface_regex
        .iter()
        .map(|r| regex_lite::Regex::new(r).map_err(|e| HostError::Flag(format!("--iface-regex {r:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = IfaceChoice {
        ifaces: &opts.iface,
        regexes: &regexes,
        can_reach: opts.iface_can_reach,
        public_ip: opts.public_ip,
        ipv4: cfg.ipv4.is_some(),
    };
    let underlay = nl.underlay(&choice).await?;
    let public_ipv6 = ipv6_only_public(opts, cfg, &underlay)?;
    if let (None, Some(ip)) = (&cfg.ipv4, opts.public_ip) {
        tracing::warn!(%ip, "--public-ip is not announced: on an IPv6-only network a lease's PublicIP is the empty 0.0.0.0, as flanneld writes it");
    }
    let public: IpAddr = match (public_ipv6, underlay.addr) {
        (Some(ip6), _) => ip6.into(),
        (None, Some(ip)) => {
            check_public_ip(ip, &underlay.name)?;
            ip.into()
        }
        (None, None) => return Err(HostError::PublicIp(format!("interface {} has no IPv4 address", underlay.name))),
    };
    let mtu = mtu_for(cfg, &underlay)?;
    prepare_subnet_dir(&opts.subnet_file)?;
    let kernel = cfg.backend.kind == BackendType::HostGw || opts.dataplane == Dataplane::Kernel;
    if kernel && cfg.backend.kind == BackendType::Udp {
        return Err(HostError::Unsupported("the udp backend has no kernel data path (use --dataplane userspace)"));
    }
    let endpoints = bind_endpoints(opts).await?;
    let vtep_mac = match cfg.backend.kind {
        BackendType::Vxlan => vxlan_leftover(&nl, cfg, &underlay, public_ipv6, mtu, kernel).await?,
        _ => None,
    };
    let userspace = match kernel {
        true => None,
        false => {
            let spec = UserspaceSpec::new(opts, cfg, public);
            port_free(spec.local).await?;
            Some(spec.open()?)
        }
    };
    let dataplane = match &userspace {
        Some(u) => format!("userspace/{}", u.mode.name()),
        None => "kernel".to_string(),
    };
    let workers = userspace.as_ref().map_or(1, |u| u.queues.len());
    let metrics = Arc::new(MetricsState {
        counters: Arc::new(CounterSet::new(workers)),
        peers: Arc::new(ArcSwap::from_pointee(PeerTable::default())),
        ready: Default::default(),
        lease_expiry: Default::default(),
        dataplane,
        tun: userspace.as_ref().map(|u| u.tun_name().to_string()),
    });
    for e in endpoints {
        tokio::spawn(metrics::serve(e, metrics.clone()));
    }
    Ok(Prepared { nl, underlay, mtu, userspace, metrics, vtep_mac, public })
}

/// A `flannel.<VNI>` (`flannel-v6.<VNI>` on an IPv6-only network) left by an earlier
/// kernel-path weft (or flanneld): the kernel path adopts it when it matches (its MAC is
/// returned, to stay the VtepMAC); the userspace path removes one that holds the backend's
/// port, which it needs.
async fn vxlan_leftover(
    nl: &Netlink,
    cfg: &NetConfig,
    underlay: &Underlay,
    public_ipv6: Option<Ipv6Addr>,
    mtu: u32,
    kernel: bool,
) -> Result<Option<MacAddr>, HostError> {
    let want = match public_ipv6 {
        Some(local) => VxlanDevice::flannel_v6(cfg, underlay, local, mtu, MacAddr([0; 6])),
        None => VxlanDevice::flannel(cfg, underlay, mtu, MacAddr([0; 6])),
    };
    let Some(found) = nl.existing_link(&want.name).await? else { return Ok(None) };
    if kernel {
        return Ok(found.mac.filter(|_| found.mismatch(&want).is_none()));
    }
    if found.vxlan.is_some_and(|(_, port, _, _)| port == cfg.backend.port) {
        tracing::warn!(device = %want.name, port = cfg.backend.port, "removing the kernel VXLAN device of an earlier kernel-path run: it holds the port the userspace path needs");
        nl.delete_link(found.index).await?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ips_no_peer_can_reach_are_refused() {
        for ip in ["127.0.0.1", "0.0.0.0", "224.0.0.5", "255.255.255.255"] {
            let e = check_public_ip(ip.parse().unwrap(), "x").unwrap_err().to_string();
            assert!(e.contains(ip) && e.contains("--iface"), "{e}");
        }
        assert!(check_public_ip(Ipv4Addr::new(198, 18, 0, 1), "x").is_ok());
    }

    #[test]
    fn backend_mtu_is_the_underlay_mtu_as_in_flanneld() {
        let underlay = Underlay {
            index: 2,
            name: "eth0".into(),
            mtu: 9000,
            addr: Some(Ipv4Addr::new(198, 18, 0, 1)),
            subnet: None,
            addr6: None,
        };
        let cfg = |b: &str| NetConfig::parse(&format!(r#"{{"Network":"100.96.0.0/16","Backend":{b}}}"#)).unwrap();
        assert_eq!(mtu_for(&cfg(r#"{"Type":"vxlan","MTU":1400}"#), &underlay).unwrap(), 1350);
        assert_eq!(mtu_for(&cfg(r#"{"Type":"udp","MTU":1400}"#), &underlay).unwrap(), 1372);
        assert_eq!(mtu_for(&cfg(r#"{"Type":"host-gw","MTU":1400}"#), &underlay).unwrap(), 1400);
        assert_eq!(mtu_for(&cfg(r#"{"Type":"vxlan"}"#), &underlay).unwrap(), 8950);
        let e = mtu_for(&cfg(r#"{"Type":"vxlan","MTU":600}"#), &underlay).unwrap_err().to_string();
        assert!(e.contains("Backend.MTU 600 leaves 550"), "{e}");
        // An IPv6-only network pays the outer IPv6 header, and needs IPv6's 1280.
        let v6 = |b: &str| {
            NetConfig::parse(&format!(
                r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:1::/48","Backend":{b}}}"#
            ))
            .unwrap()
        };
        assert_eq!(mtu_for(&v6(r#"{"Type":"vxlan"}"#), &underlay).unwrap(), 8930);
        assert_eq!(mtu_for(&v6(r#"{"Type":"udp","MTU":1500}"#), &underlay).unwrap(), 1452);
        assert_eq!(mtu_for(&v6(r#"{"Type":"host-gw","MTU":1500}"#), &underlay).unwrap(), 1500);
        let e = mtu_for(&v6(r#"{"Type":"vxlan","MTU":1300}"#), &underlay).unwrap_err().to_string();
        assert!(e.contains("leaves 1230 for the overlay (< 1280)"), "{e}");
    }

    #[test]
    fn subnet_dir_is_created() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a/b/subnet.env");
        prepare_subnet_dir(&f).unwrap();
        assert!(d.path().join("a/b").is_dir());
        assert_eq!(std::fs::read_dir(d.path().join("a/b")).unwrap().count(), 0, "the check leaves nothing");
        std::fs::write(d.path().join("file"), "").unwrap();
        let e = prepare_subnet_dir(&d.path().join("file/subnet.env")).unwrap_err().to_string();
        assert!(e.contains("--subnet-file"), "{e}");
    }
}
