//! Forwarding engines. One contract, several engines; the engine is a run-time choice (`--mode`)
//! so that the lab runs every engine on the same host and binary.

pub mod batched;
pub mod coalesce;
pub mod naive;
pub mod offload;
pub mod runs;
pub mod stage;
pub mod uring;

use super::counters::Counters;
use super::forward::Forwarder;
use super::offloads::Offloads;
use super::packet::{PacketBuf, TunRead};
use super::peers::PeerTable;
use super::sys::tun::Tun;
use super::sys::udp::TxPool;
use arc_swap::ArcSwap;
use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// How often an idle engine re-checks its stop flag.
pub const STOP_CHECK: Duration = Duration::from_millis(100);

/// Which engine moves the packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// flannel's proxy shape: poll, then one read and one send per packet for each readable
    /// side. The baseline every other engine is measured against.
    Naive,
    /// Drains the TUN into a batch and sends it with one sendmmsg; receives with recvmmsg.
    Batched,
    /// TUN TSO super-packets cut in user space and sent with UDP GSO; UDP GRO on receive,
    /// coalesced and written back as GSO packets.
    Offload,
    /// The offload engine's work with every crossing submitted through io_uring: one multishot
    /// TUN read of super-packets and one multishot GRO receive, GSO sends and coalesced TUN
    /// writes queued and submitted together (Linux ≥ 6.7).
    Uring,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Batched => "batched",
            Self::Offload => "offload",
            Self::Uring => "uring",
        }
    }
}

/// What an engine runs with. The control plane owns the peer table and swaps it; the engine
/// only loads it.
pub struct EngineContext {
    /// The TUN queue.
    pub tun: Tun,
    /// The underlay socket datagrams arrive on, bound to PublicIP:port.
    pub socket: UdpSocket,
    /// The sockets datagrams leave from: `socket` itself (a duplicate fd) for a lone worker with
    /// one source port, as flannel does; with several workers, each has its own source ports,
    /// and with `--flow-ports N` each inner flow keeps one of N, so that the peer's
    /// `SO_REUSEPORT` group (or RSS) spreads flows over its own workers.
    pub tx: TxPool,
    /// The forwarding decision.
    pub forwarder: Forwarder,
    /// The current peer table.
    pub peers: Arc<ArcSwap<PeerTable>>,
    /// Where the engine counts.
    pub counters: Arc<Counters>,
    /// Set to ask the engine to stop.
    pub stop: Arc<AtomicBool>,
    /// The offloads in use, shared by every worker (see [`Offloads`]).
    pub offloads: Arc<Offloads>,
}

/// Why an engine stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The TUN device failed in a way that is not a per-packet error.
    #[error("TUN device: {0}")]
    Tun(io::Error),
    /// The UDP socket failed in a way that is not a per-packet error.
    #[error("UDP socket: {0}")]
    Udp(io::Error),
    /// poll() failed.
    #[error("poll: {0}")]
    Poll(io::Error),
    /// Setting up or entering an io_uring failed.
    #[error("io_uring: {0}")]
    Ring(io::Error),
    /// An engine thread panicked (a bug: the message says where).
    #[error("engine thread panicked: {0}")]
    Panicked(String),
    /// An engine thread could not be started.
    #[error("starting an engine thread: {0}")]
    Spawn(io::Error),
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Waits for a scoped engine thread; its panic becomes [`EngineError::Panicked`].
fn join_scoped<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, EngineError>>) -> Result<T, EngineError> {
    h.join().unwrap_or_else(|p| Err(EngineError::Panicked(panic_message(&*p))))
}

/// Starts `mode` on a thread of its own named `name`; how it ended (a panic is an error too)
/// is sent on `done`.
pub fn spawn(
    mode: Mode,
    ctx: EngineContext,
    name: String,
    done: tokio::sync::mpsc::UnboundedSender<Result<(), EngineError>>,
) -> Result<std::thread::JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(mode, ctx)))
                .unwrap_or_else(|p| Err(EngineError::Panicked(panic_message(&*p))));
            let _ = done.send(r);
        })
        .map_err(EngineError::Spawn)
}

/// Runs `mode` on the calling thread until `ctx.stop` is set or a fatal error.
pub fn run(mode: Mode, ctx: EngineContext) -> Result<(), EngineError> {
    crate::dataplane::sys::simd::install_checksum();
    match mode {
        Mode::Naive => naive::run(ctx),
        Mode::Batched => batched::run(ctx),
        Mode::Offload => offload::run(ctx),
        Mode::Uring => uring::run(ctx),
    }
}

/// Runs `egress` on this thread and `ingress` on a thread named `rx_name`, each with its own
/// state. Each direction keeps its order and neither waits for the other; either one ending
/// stops both, and a panic in either is an error.
pub(crate) fn both_directions(
    ctx: &EngineContext,
    rx_name: &str,
    egress: impl FnOnce(&EngineContext) -> Result<(), EngineError>,
    ingress: impl FnOnce(&EngineContext) -> Result<(), EngineError> + Send,
) -> Result<(), EngineError> {
    /// Stops the other direction when this one returns or unwinds.
    struct StopOnExit<'a>(&'a AtomicBool);
    impl Drop for StopOnExit<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let ingress = std::thread::Builder::new().name(rx_name.into()).spawn_scoped(s, || {
            let _stop = StopOnExit(&ctx.stop);
            ingress(ctx)
        });
        let egress = {
            let _stop = StopOnExit(&ctx.stop);
            egress(ctx)
        };
        let ingress = match ingress {
            Ok(h) => join_scoped(h),
            Err(e) => Err(EngineError::Spawn(e)),
        };
        egress.and(ingress)
    })
}

pub(crate) fn u64_len(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whether an I/O error is about this one packet (count it, go on) or the device (stop).
pub(crate) fn per_packet(e: &io::Error) -> bool {
    !matches!(e.raw_os_error(), Some(libc::EBADF | libc::EFAULT | libc::ENOTSOCK | libc::EBADFD))
}

/// A read-side syscall returned `e`: nothing to read (EAGAIN, EINTR) or, on the UDP socket, an
/// ICMP error of an earlier send (ECONNREFUSED and friends: not a datagram, the socket is fine)
/// counts as an empty syscall on `crossing`; anything else stops the engine.
pub(crate) fn empty_read(
    c: &super::counters::Counters,
    crossing: super::counters::Crossing,
    e: io::Error,
    ns: u64,
) -> Result<(), EngineError> {
    let transient = matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted);
    let udp = matches!(crossing, super::counters::Crossing::UdpRecv);
    if transient || (udp && per_packet(&e)) {
        c.syscall(crossing, 0, 0, ns);
        return Ok(());
    }
    Err(if udp { EngineError::Udp(e) } else { EngineError::Tun(e) })
}

/// Serves both directions on the calling thread until `ctx.stop`: polls the TUN and the socket,
/// then calls the step of each readable side up to [`ROUNDS`] times in a row (a step returns
/// whether more may be queued).
///
/// One thread, not one per direction: at low load the thread that has just written a request
/// into the TUN is still awake when the reply comes back through it, so a round trip sleeps
/// and wakes fewer threads; under load, two threads per worker on a small machine compete with
/// the applications for the cores. Parallelism comes from workers (`--threads`), each serving
/// both directions of the flows its queue and socket get (docs/performance.md, "Latency").
pub(crate) fn serve_both(
    ctx: &EngineContext,
    mut egress: impl FnMut() -> Result<bool, EngineError>,
    mut ingress: impl FnMut() -> Result<bool, EngineError>,
) -> Result<(), EngineError> {
    fn rounds(step: &mut impl FnMut() -> Result<bool, EngineError>) -> Result<(), EngineError> {
        for _ in 0..ROUNDS {
            if !step()? {
                break;
            }
        }
        Ok(())
    }
    while !ctx.stop.load(std::sync::atomic::Ordering::Relaxed) {
        ctx.counters.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let [tun, udp] =
            super::sys::poll::wait_readable([&ctx.tun, &ctx.socket], STOP_CHECK).map_err(EngineError::Poll)?;
        if tun {
            rounds(&mut egress)?;
        }
        if udp {
            rounds(&mut ingress)?;
        }
    }
    Ok(())
}

/// Batches (or GRO receives) one direction takes in a row before it polls again.
const ROUNDS: usize = 8;

/// What one TUN read got.
pub(crate) enum Read {
    /// Nothing was queued (counted as an empty `tun_read`).
    Empty,
    /// Fewer bytes than a `virtio_net_hdr` (counted as a read and a `TooShort` drop).
    Short,
    /// A packet (see [`PacketBuf::tun_read`]) and the syscall's time. The caller counts it: a
    /// super-packet counts as its segments.
    Packet(TunRead, u64),
}

/// One TUN read into `buf`.
pub(crate) fn read_tun(ctx: &EngineContext, buf: &mut PacketBuf) -> Result<Read, EngineError> {
    let vnet = ctx.tun.has_vnet_hdr();
    let (r, ns) = super::counters::timed(|| ctx.tun.recv(buf.tun_read_area(vnet)));
    let bytes = match r {
        Ok(bytes) => bytes,
        Err(e) => return empty_read(&ctx.counters, super::counters::Crossing::TunRead, e, ns).map(|()| Read::Empty),
    };
    match buf.tun_read(vnet, bytes) {
        Ok(packet) => Ok(Read::Packet(packet, ns)),
        Err(_) => {
            ctx.counters.syscall(super::counters::Crossing::TunRead, 1, u64_len(bytes), ns);
            ctx.counters.count_drop(super::counters::DropReason::TooShort);
            Ok(Read::Short)
        }
    }
}

/// A packet read from the TUN that is not a super-packet, made ready to forward: its partial
/// checksum completed where the `virtio_net_hdr` asks (a TUN without offloads hands over nothing
/// else; anything else is a device someone else set up). `buf` holds the packet at
/// [`HEADROOM`](super::packet::HEADROOM). Returns the packet's length.
pub(crate) fn plain_packet(buf: &mut [u8], read: &TunRead) -> Result<usize, super::counters::DropReason> {
    if read.vnet.gso_kind() != crate::proto::virtio::GSO_NONE {
        return Err(super::counters::DropReason::BadIpHeader);
    }
    let inner = buf.get_mut(super::packet::HEADROOM..).and_then(|b| b.get_mut(..read.len)).unwrap_or(&mut []);
    read.vnet.complete_checksum(inner).map_err(|_| super::counters::DropReason::BadIpHeader)?;
    Ok(read.len)
}

/// What a packet read from a TUN with offloads is: plain, or a super-packet to cut.
pub(crate) enum Kind {
    /// One packet, its checksum completed.
    Plain,
    /// A TCP or UDP super-packet and how to cut it.
    Super(crate::proto::gso::Segmenter),
}

/// Classifies the packet `read` put at [`HEADROOM`](super::packet::HEADROOM) of `buf`. Returns
/// how many packets it counts as (a super-packet counts as its segments, so that every packet
/// read is accounted for, sent or dropped) and its kind, or why it is dropped.
pub(crate) fn classify(
    ctx: &EngineContext,
    buf: &mut [u8],
    read: &TunRead,
) -> (u64, Result<Kind, super::counters::DropReason>) {
    use crate::proto::gso::Segmenter;
    use crate::proto::virtio;
    let (len, size) = (read.len, usize::from(read.vnet.gso_size));
    let inner = buf.get(super::packet::HEADROOM..).and_then(|b| b.get(..len)).unwrap_or(&[]);
    let seg = match read.vnet.gso_kind() {
        virtio::GSO_TCPV4 => Segmenter::new(inner, size).ok(),
        virtio::GSO_TCPV6 => Segmenter::new_v6(inner, size).ok(),
        // USO comes for both IP versions under one type.
        virtio::GSO_UDP_L4 => Segmenter::for_packet(inner, false, size).ok(),
        _ => None,
    };
    let pkts = u64_len(seg.as_ref().map_or(1, |s| s.count()));
    let kind = match (read.vnet.gso_kind(), seg) {
        (virtio::GSO_TCPV4 | virtio::GSO_TCPV6 | virtio::GSO_UDP_L4, Some(seg)) => Ok(Kind::Super(seg)),
        (virtio::GSO_NONE, _) => plain_packet(buf, read).map(|_| Kind::Plain),
        // An IPv6 super-packet on a node without IPv6 (the TUN offers TSO6 only to a dual-stack
        // node, but USO covers both versions): an IPv6 drop like any other.
        (_, None) if ctx.forwarder.v6.is_none() && crate::proto::ip_version(inner) == Some(6) => {
            Err(super::counters::DropReason::Ipv6)
        }
        _ => Err(super::counters::DropReason::BadIpHeader),
    };
    (pkts, kind)
}

/// Writes one inner packet into the TUN (crossing: TUN write), counting it or its drop.
pub(crate) fn tun_write(ctx: &EngineContext, pkt: &[u8]) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    match super::counters::timed(|| ctx.tun.send(pkt)) {
        (Ok(w), ns) => c.syscall(super::counters::Crossing::TunWrite, 1, u64_len(w), ns),
        (Err(e), ns) if per_packet(&e) => {
            c.syscall(super::counters::Crossing::TunWrite, 0, 0, ns);
            c.count_drop(super::counters::DropReason::TunWriteFailed);
        }
        (Err(e), _) => return Err(EngineError::Tun(e)),
    }
    Ok(())
}

/// Writes an ICMP error back into the TUN for a packet dropped as `NoRoute`.
pub(crate) fn reply_icmp(ctx: &EngineContext, reply: &[u8]) {
    ctx.counters.count_drop(super::counters::DropReason::NoRoute);
    if ctx.tun.send(reply).is_ok() {
        ctx.counters.icmp_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
