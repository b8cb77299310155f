//! `weft run`: join the network, hold a lease, set up the host, and keep the data path's peer
//! table in step with the registry until SIGINT/SIGTERM.
//!
//! The stages, in order, each in its own module with its own error type:
//! 1. open the registry and read the net-config (retried while the registry is unreachable;
//!    a configuration mistake fails at once);
//! 2. [`prepare`]: check and claim what this host needs without a lease (underlay, MTU,
//!    subnet.env directory, listeners, UDP port, TUN, engine);
//! 3. acquire a lease ([`crate::control::lease`]);
//! 4. [`datapath`]: set the host up for the lease and start forwarding;
//! 5. write subnet.env and report ready;
//! 6. [`follow`]: renew, watch, defend our lease, heal;
//! 7. stop the data path and remove what weft made.
//!
//! A start that fails after stage 3 gives back a lease it created (a reused one is kept, and
//! the log says why) and removes what stage 4 made. A signal at any stage ends weft with exit
//! status 0 after the same clean-up.

pub mod datapath;
pub mod follow;
pub mod options;
pub mod prepare;
pub mod signals;

use super::backoff::Backoff;
use super::lease::{AcquireError, Acquired, acquire};
use super::registry::dir::{DirRegistry, write_atomic};
use super::registry::etcd::{EtcdOptions, EtcdRegistry};
use super::registry::{Registry, RegistryError};
use crate::dataplane::counters::{CounterSet, Crossing, DropReason};
use crate::proto::lease::{LeaseAttrs, SubnetKey, VxlanData};
use crate::proto::mac::MacAddr;
use crate::proto::netconfig::{BackendType, NetConfig};
use crate::proto::subnet_env::{SubnetEnv, SubnetEnvV4, SubnetEnvV6};
use anyhow::{Context, Result};
use datapath::DataPath;
use follow::{Ended, Follower};
pub use options::{DEFAULT_TUN_QUEUE_LEN, Dataplane, EngineChoice, RunOptions};
use signals::{Interrupted, Shutdown};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Runs the daemon to completion. Returns after a clean shutdown (a signal is a clean
/// shutdown at any stage).
pub fn run(opts: RunOptions) -> Result<()> {
    signals::block().context("blocking SIGINT and SIGTERM until their handler is in place")?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the control runtime")?;
    let outcome = rt.block_on(async {
        let mut shutdown = Shutdown::install().context("installing the SIGINT/SIGTERM handler")?;
        match run_async(opts, &mut shutdown).await {
            Err(e) => match e.downcast_ref::<Interrupted>() {
                Some(i) => {
                    tracing::info!("{i}");
                    Ok(())
                }
                None => Err(e),
            },
            ok => ok,
        }
    });
    // Everything weft made is removed by now; a registry watch still waiting on a pool thread
    // has nothing left to wait for.
    rt.shutdown_background();
    outcome
}

/// Whether a signal may cut an attempt short. An attempt that writes to the registry may not:
/// a lease created half-way would be left behind (the registry's own timeouts bound it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Cancellable,
    RunsToEnd,
}

/// An error that may say the registry could not be reached (retried) rather than refused.
trait Transient {
    fn unavailable(&self) -> Option<&str>;
}

impl Transient for RegistryError {
    fn unavailable(&self) -> Option<&str> {
        match self {
            Self::Unavailable(why) => Some(why),
            _ => None,
        }
    }
}

impl Transient for AcquireError {
    fn unavailable(&self) -> Option<&str> {
        match self {
            Self::Registry(e) => e.unavailable(),
            Self::Exhausted(_) => None,
        }
    }
}

/// The control plane's one retry loop: runs `op` until it succeeds or fails with something
/// other than an unreachable registry, which is retried with [`Backoff::registry`], saying why.
/// A signal ends the wait between attempts, and the attempt itself if `attempt` allows.
async fn retrying<T, E, F>(
    what: &str,
    shutdown: &mut Shutdown,
    attempt: Attempt,
    mut op: impl FnMut() -> F,
) -> Result<T>
where
    F: Future<Output = Result<T, E>>,
    E: Transient + std::error::Error + Send + Sync + 'static,
{
    let mut backoff = Backoff::registry();
    loop {
        shutdown.check()?;
        let got = match attempt {
            Attempt::Cancellable => shutdown.unless(op()).await?,
            Attempt::RunsToEnd => op().await,
        };
        let e = match got {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(why) = e.unavailable() else { return Err(e).with_context(|| what.to_string()) };
        let wait = backoff.next_delay();
        tracing::warn!("{what}: {why}; retrying in {wait:?}");
        shutdown.unless(tokio::time::sleep(wait)).await?;
    }
}

async fn run_async(opts: RunOptions, shutdown: &mut Shutdown) -> Result<()> {
    if let Some(dir) = &opts.registry_dir {
        let reg = DirRegistry::open(dir)?;
        return serve(reg, opts, shutdown).await;
    }
    let eo = EtcdOptions {
        endpoints: opts.etcd_endpoints.clone().unwrap_or_default(),
        prefix: opts.etcd_prefix.clone(),
        cafile: opts.etcd_cafile.clone(),
        certfile: opts.etcd_certfile.clone(),
        keyfile: opts.etcd_keyfile.clone(),
        username: opts.etcd_username.clone(),
        password: opts.etcd_password.clone(),
    };
    let reg = retrying("connecting to etcd", shutdown, Attempt::Cancellable, || EtcdRegistry::connect(&eo)).await?;
    serve(reg, opts, shutdown).await
}

/// The lease the subnet file names (its IPv6 subnet too, on a dual-stack node).
fn read_previous_subnet(path: &std::path::Path) -> Option<SubnetKey> {
    let text = std::fs::read_to_string(path).ok()?;
    match SubnetEnv::parse(&text) {
        Ok(e) => Some(SubnetKey { v4: e.lease_subnet(), v6: e.lease_subnet_v6() }),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unreadable subnet file: {e}");
            None
        }
    }
}

/// The lease value for our backend. A vxlan node's VtepMAC is that of the device it adopts,
/// else its previous lease's, else a new one. A dual-stack node adds `--public-ipv6` and, for
/// vxlan, `BackendV6Data` with the same VtepMAC: its one TUN takes both families' frames.
fn attrs_for(
    cfg: &NetConfig,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    device: Option<MacAddr>,
    previous: Option<&LeaseAttrs>,
) -> LeaseAttrs {
    let public_ip = public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let (attrs, vxlan) = match cfg.backend.kind {
        BackendType::Udp => (LeaseAttrs::udp(public_ip), None),
        BackendType::HostGw => (LeaseAttrs::host_gw(public_ip), None),
        BackendType::Vxlan => {
            let vtep_mac = device
                .or_else(|| previous.and_then(|p| p.vxlan_data().or(p.vxlan_v6_data())).map(|d| d.vtep_mac))
                .unwrap_or_else(|| MacAddr::random_local(&mut rand::rng()));
            let data = VxlanData { vni: cfg.backend.vni, vtep_mac };
            (LeaseAttrs::vxlan(public_ip, data), Some(data))
        }
    };
    match (&cfg.ipv4, &cfg.ipv6) {
        (None, _) => attrs.dual_stack(public_ipv6, vxlan).without_ipv4(),
        (Some(_), Some(_)) => attrs.dual_stack(public_ipv6, vxlan),
        (Some(_), None) => attrs,
    }
}

/// The PublicIPv6 a dual-stack node announces. A kernel path receives IPv6 pods' traffic on
/// the IPv6 underlay, as flanneld's: `--public-ipv6`, else the underlay's first global IPv6
/// address, and it cannot do without one. The userspace path carries it over the IPv4
/// underlay and announces none, which tells kernel-path peers not to send it IPv6.
fn public_ipv6(opts: &RunOptions, cfg: &NetConfig, prepared: &prepare::Prepared) -> Result<Option<Ipv6Addr>> {
    if cfg.ipv6.is_none() {
        return Ok(None);
    }
    // An IPv6-only network: every data path sends from it; prepare found it.
    if let (None, IpAddr::V6(ip)) = (&cfg.ipv4, prepared.public) {
        return Ok(Some(ip));
    }
    if !prepared.kernel_path() {
        if let Some(ip) = opts.public_ipv6 {
            tracing::warn!(%ip, "--public-ipv6 is not announced: the userspace data path carries IPv6 pods' packets over the IPv4 underlay");
        }
        return Ok(None);
    }
    match opts.public_ipv6.or(prepared.underlay.addr6) {
        Some(ip) => Ok(Some(ip)),
        None => anyhow::bail!(
            "a dual-stack kernel data path sends IPv6 pods' packets over the IPv6 underlay, and {} has no global IPv6 address: add one, or pass --public-ipv6",
            prepared.underlay.name
        ),
    }
}

/// What this node announces in its lease: the address its lease is known by (PublicIP, or an
/// IPv6-only network's PublicIPv6: see [`crate::control::lease::identity`]), PublicIPv6, and
/// the VTEP MAC of an adopted device.
struct Announce {
    public: IpAddr,
    public_ipv6: Option<Ipv6Addr>,
    device_mac: Option<MacAddr>,
}

impl Announce {
    /// PublicIP; None on an IPv6-only network.
    fn public_ip(&self) -> Option<Ipv4Addr> {
        match self.public {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

/// Stage 3: a lease, retried while the registry is unreachable.
async fn acquire_lease<R: Registry>(
    reg: &R,
    cfg: &NetConfig,
    ours: &Announce,
    opts: &RunOptions,
    shutdown: &mut Shutdown,
) -> Result<Acquired> {
    let previous = read_previous_subnet(&opts.subnet_file);
    let attrs = |prev: Option<&LeaseAttrs>| attrs_for(cfg, ours.public_ip(), ours.public_ipv6, ours.device_mac, prev);
    let acquired =
        retrying("acquiring a lease", shutdown, Attempt::RunsToEnd, || acquire(reg, cfg, ours.public, previous, attrs))
            .await?;
    if shutdown.check().is_err() {
        give_back(reg, &acquired).await;
        shutdown.check()?;
    }
    Ok(acquired)
}

/// After a start failed with a lease in hand: gives back a lease this start created, keeps one
/// it reused (it was ours before, and a restart takes it again).
async fn give_back<R: Registry>(reg: &R, acquired: &Acquired) {
    let subnet = acquired.lease.key;
    if !acquired.created {
        tracing::info!(%subnet, "keeping our lease: it was ours before this start, and a restart reuses it");
        return;
    }
    match reg.delete_lease(&acquired.lease.key).await {
        Ok(()) => tracing::info!(%subnet, "gave back the lease this start took"),
        Err(e) => tracing::warn!(%subnet, "giving back the lease this start took: {e}; it lapses in 24 h"),
    }
}

async fn serve<R: Registry>(reg: R, opts: RunOptions, shutdown: &mut Shutdown) -> Result<()> {
    let cfg_text = retrying("reading the network config", shutdown, Attempt::Cancellable, || reg.config()).await?;
    let cfg = NetConfig::parse(&cfg_text)?;
    let prepared = prepare::prepare(&opts, &cfg).await?;
    let (public, mtu) = (prepared.public, prepared.mtu);
    let public_ipv6 = public_ipv6(&opts, &cfg, &prepared)?;
    tracing::info!(network = %cfg.networks(), backend = %cfg.backend.kind, iface = %prepared.underlay.name, public_ip = %public, registry = %reg.describe(), dataplane = %prepared.metrics.dataplane, "starting");
    let metrics = prepared.metrics.clone();

    let ours = Announce { public, public_ipv6, device_mac: prepared.vtep_mac };
    let acquired = acquire_lease(&reg, &cfg, &ours, &opts, shutdown).await?;
    let lease = acquired.lease.clone();
    let started = async {
        let known = retrying("listing leases", shutdown, Attempt::Cancellable, || reg.leases()).await?;
        shutdown.check()?;
        let margin = Duration::from_secs(opts.subnet_lease_renew_margin.saturating_mul(60));
        let follower = Follower::new(&reg, &cfg, lease.clone(), metrics.clone(), margin, known);
        let dp = DataPath::start(prepared, &opts, &cfg, &lease, follower.peers()).await?;
        Ok::<_, anyhow::Error>((follower, dp))
    }
    .await;
    let (follower, mut dp) = match started {
        Ok(s) => s,
        Err(e) => {
            give_back(&reg, &acquired).await;
            return Err(e);
        }
    };

    let env = SubnetEnv {
        ipv4: cfg.ipv4.as_ref().zip(lease.key.v4).map(|(v4, subnet)| SubnetEnvV4::for_lease(v4.network, subnet)),
        ipv6: cfg.ipv6.as_ref().zip(lease.key.v6).map(|(v6, subnet)| SubnetEnvV6::for_lease(v6.network, subnet)),
        mtu,
        ipmasq: opts.ip_masq,
    };
    let written = write_atomic(&opts.subnet_file, env.render().as_bytes())
        .with_context(|| format!("writing {}", opts.subnet_file.display()));
    let ended = match written {
        Ok(()) => {
            metrics.ready.store(true, Ordering::Relaxed);
            sd_notify("READY=1");
            tracing::info!(subnet = %lease.key, mtu, peers = follower.peers().len(), dataplane = %metrics.dataplane, "ready");
            follower.run(&mut dp, shutdown, Duration::from_secs(opts.iptables_resync)).await
        }
        Err(e) => {
            dp.stop().await;
            give_back(&reg, &acquired).await;
            return Err(e);
        }
    };
    if let Ended::Signal(sig) = ended {
        tracing::info!("{}", Interrupted(sig));
        sd_notify("STOPPING=1");
    }
    dp.stop().await;
    log_summary(&metrics.counters);
    match ended {
        Ended::Signal(_) => Ok(()),
        Ended::Engine(e) => Err(anyhow::Error::new(e).context("the engine stopped")),
    }
}

/// Tells systemd how weft is doing (`Type=notify` units), as flanneld does: `READY=1` once
/// subnet.env is written, `STOPPING=1` at a signal. Nothing without `NOTIFY_SOCKET`.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state}: {e}");
    }
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
