//! The flags of `weft run`. Names follow flanneld's where flanneld has one.

use crate::dataplane::engine::Mode;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Options of `weft run`. Every flag can also come from `FLANNELD_<FLAG>` in the environment
/// (`--iface` from `FLANNELD_IFACE`), as flanneld's DaemonSet manifests set them.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Directory registry: DIR/config holds the net-config JSON, DIR/subnets/<key> the leases
    /// (the layout of flannel's etcd keyspace under --etcd-prefix).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "etcd_endpoints",
        conflicts_with = "etcd_endpoints",
        env = "FLANNELD_REGISTRY_DIR"
    )]
    pub registry_dir: Option<PathBuf>,
    /// etcd v3 client URLs, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_name = "URLS", value_delimiter = ',', env = "FLANNELD_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<Vec<String>>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[arg(long, value_name = "PATH", env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, value_name = "PATH", requires = "etcd_keyfile", env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "PATH", requires = "etcd_certfile", env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, value_name = "NAME", requires = "etcd_password", env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password. A flag's value is visible to every user in `ps`: prefer the
    /// environment variable.
    #[arg(
        long,
        value_name = "PASSWORD",
        requires = "etcd_username",
        hide_env_values = true,
        env = "FLANNELD_ETCD_PASSWORD"
    )]
    pub etcd_password: Option<String>,
    /// Key prefix of the flannel keyspace (used with etcd; a registry directory is the prefix).
    #[arg(long, default_value = "/coreos.com/network", value_name = "PREFIX", env = "FLANNELD_ETCD_PREFIX")]
    pub etcd_prefix: String,
    /// IP other hosts send to (default: the chosen interface's first IPv4 address).
    #[arg(long, value_name = "IP", env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other hosts send IPv6 pods' traffic to, written as the lease's PublicIPv6:
    /// on an IPv6-only network, and on a dual-stack one with a kernel data path (default: the
    /// IPv6 address --iface names, else the interface's first global IPv6 address). On a
    /// dual-stack network the userspace path carries IPv6 over the IPv4 underlay and announces
    /// none.
    #[arg(long, value_name = "IPV6", env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Underlay interface, by name or by one of its addresses (IPv4, or IPv6); several (repeated or
    /// comma-separated) are tried in order and the first that exists is taken. Default: the
    /// one holding --public-ip, else the default route's.
    #[arg(long, value_name = "NAME|IP", value_delimiter = ',', env = "FLANNELD_IFACE")]
    pub iface: Vec<String>,
    /// When no --iface matches: the first interface whose IPv4 address or name matches one of
    /// these regular expressions, tried in order (flanneld's flag).
    #[arg(long, value_name = "REGEX", env = "FLANNELD_IFACE_REGEX")]
    pub iface_regex: Vec<String>,
    /// When no --iface or --iface-regex matches: the interface the kernel would send to this
    /// address through (flanneld's flag).
    #[arg(long, value_name = "IP", env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,
    /// subnet.env to write, and to read a previous subnet from (its directory is created).
    #[arg(long, default_value = "/run/flannel/subnet.env", value_name = "PATH", env = "FLANNELD_SUBNET_FILE")]
    pub subnet_file: PathBuf,
    /// Who moves the packets: weft in user space, or the kernel (a VXLAN device weft programs,
    /// as flanneld does). host-gw is always a kernel data path.
    #[arg(long, value_enum, default_value = "userspace", env = "FLANNELD_DATAPLANE")]
    pub dataplane: Dataplane,
    /// Forwarding engine of the userspace data path. auto: offload where the TUN device
    /// accepts TSO, else batched (the log says which, and why).
    #[arg(long, value_enum, default_value = "auto", env = "FLANNELD_MODE")]
    pub mode: EngineChoice,
    /// Forwarding workers of the userspace data path. With more than one, the TUN has one queue
    /// per worker (IFF_MULTI_QUEUE) and each worker its own SO_REUSEPORT socket; the kernel keeps
    /// each flow on one queue and each sender on one socket, so no flow is reordered.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64), env = "FLANNELD_THREADS")]
    pub threads: u16,
    /// Outer UDP source ports per worker. With more than one, each inner flow keeps one of
    /// them, picked by a hash of its addresses and ports (kernel VXLAN picks its source port
    /// the same way), so that a peer's SO_REUSEPORT group and RSS spread flows over its
    /// workers and cores; each flow stays on one port, so none is reordered. 1 sends everything
    /// from one port per worker, as flannel's udp backend does.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64), env = "FLANNELD_FLOW_PORTS")]
    pub flow_ports: u16,
    /// Packets the TUN holds for weft to read: the device's txqueuelen (the kernel's default for
    /// a TUN is 500). The kernel queues here whenever weft is off the CPU and drops what does not
    /// fit (the device's TX dropped count), so on a busy host this queue, not the forwarding
    /// rate, decides the loss of small datagrams. It costs no latency unless a queue builds.
    #[arg(long, default_value_t = DEFAULT_TUN_QUEUE_LEN, value_name = "PACKETS",
          value_parser = clap::value_parser!(u32).range(1..=65536), env = "FLANNELD_TUN_QUEUE_LEN")]
    pub tun_queue_len: u32,
    /// Send every datagram with its own sendmsg (batched and offload engines), never one
    /// UDP_SEGMENT (GSO) send for many. They fall back to this by themselves when the kernel
    /// refuses GSO (EIO or EINVAL, e.g. on a route through IPsec); this flag starts there,
    /// to rule GSO out when looking for a fault, or to compare.
    #[arg(long, env = "FLANNELD_NO_UDP_GSO")]
    pub no_udp_gso: bool,
    /// TUN device name (default: flannel0 for udp, weft.<VNI> for vxlan).
    #[arg(long, value_name = "NAME", env = "FLANNELD_TUN_NAME")]
    pub tun_name: Option<String>,
    /// Accept inner packets whose source lies outside the sending peer's subnet.
    #[arg(long, env = "FLANNELD_ALLOW_FOREIGN_SRC")]
    pub allow_foreign_src: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR:PORT", env = "FLANNELD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve /healthz and /readyz on this port, as flanneld's flag (0: off).
    #[arg(long, default_value_t = 0, value_name = "PORT", env = "FLANNELD_HEALTHZ_PORT")]
    pub healthz_port: u16,
    /// Address for --healthz-port.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP", env = "FLANNELD_HEALTHZ_IP")]
    pub healthz_ip: IpAddr,
    /// Keep the TUN device, its address and its route when weft exits (IFF_PERSIST), so that a
    /// restart loses no configuration and packets queue in the TUN meanwhile.
    #[arg(long, env = "FLANNELD_PERSIST_TUN")]
    pub persist_tun: bool,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, default_value_t = 60, value_name = "MINUTES", env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN")]
    pub subnet_lease_renew_margin: u64,
    /// Masquerade pod traffic that leaves the network (flanneld's rules, in an nftables table
    /// of weft's own); pod-to-pod traffic keeps pod addresses. Writes FLANNEL_IPMASQ=true.
    #[arg(long, env = "FLANNELD_IP_MASQ")]
    pub ip_masq: bool,
    /// Accept the network's traffic in the forward path, also in other tables' forward chains
    /// whose policy is drop (Docker, ufw), as flanneld does.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", require_equals = true, env = "FLANNELD_IPTABLES_FORWARD_RULES")]
    pub iptables_forward_rules: bool,
    /// Check the masquerade and forward rules this often, and put back what was removed.
    #[arg(long, default_value_t = 5, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..), env = "FLANNELD_IPTABLES_RESYNC")]
    pub iptables_resync: u64,
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
    /// The offload engine's work with every crossing submitted through io_uring (Linux ≥ 6.7).
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
