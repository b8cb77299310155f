//! The flags of `weft run`. Names follow flanneld's where flanneld has one.

use crate::dataplane::engine::Mode;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Options of `weft run`.
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
    /// etcd password. A flag's value is visible to every user in `ps`: prefer the
    /// environment variable.
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
    /// subnet.env to write, and to read a previous subnet from (its directory is created).
    #[arg(long, default_value = "/run/flannel/subnet.env", value_name = "PATH")]
    pub subnet_file: PathBuf,
    /// Who moves the packets: weft in user space, or the kernel (a VXLAN device weft programs,
    /// as flanneld does). host-gw is always a kernel data path.
    #[arg(long, value_enum, default_value = "userspace")]
    pub dataplane: Dataplane,
    /// Forwarding engine of the userspace data path. auto: offload where the TUN device
    /// accepts TSO, else batched (the log says which, and why).
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: EngineChoice,
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
    /// Serve /healthz and /readyz on this port, as flanneld's flag (0: off).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub healthz_port: u16,
    /// Address for --healthz-port.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub healthz_ip: IpAddr,
    /// Keep the TUN device, its address and its route when weft exits (IFF_PERSIST), so that a
    /// restart loses no configuration and packets queue in the TUN meanwhile.
    #[arg(long)]
    pub persist_tun: bool,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    pub subnet_lease_renew_margin: u64,
}

/// The TUN queue weft asks for. On a busy host it, not the forwarding rate, decides the loss
/// of small datagrams (docs/performance.md, "Small datagrams").
pub const DEFAULT_TUN_QUEUE_LEN: u32 = 2048;

/// Where packets are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataplane {
    /// weft reads the TUN and sends UDP itself (the engine is --mode).
    Userspace,
    /// The kernel forwards; weft programs it over netlink.
    Kernel,
}

/// The engine asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// The fastest engine this kernel supports: offload where the TUN accepts TSO, else batched.
    Auto,
    /// flannel's proxy shape: poll, then one read and one send per packet (the baseline).
    Naive,
    /// The TUN drained into a batch sent with one sendmmsg; recvmmsg on receive; coalesced writes.
    Batched,
    /// TUN TSO super-packets cut in user space and sent with UDP GSO; UDP GRO on receive.
    Offload,
    /// The batched engine's forwarding with every crossing submitted through io_uring (Linux ≥ 6.7).
    Uring,
}

impl From<Mode> for EngineChoice {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Naive => Self::Naive,
            Mode::Batched => Self::Batched,
            Mode::Offload => Self::Offload,
            Mode::Uring => Self::Uring,
        }
    }
}

impl EngineChoice {
    /// The engine named, or None for `auto` (decided once the TUN is open).
    pub fn fixed(self) -> Option<Mode> {
        match self {
            Self::Auto => None,
            Self::Naive => Some(Mode::Naive),
            Self::Batched => Some(Mode::Batched),
            Self::Offload => Some(Mode::Offload),
            Self::Uring => Some(Mode::Uring),
        }
    }
}
