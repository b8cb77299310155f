//! Counters a worker keeps: packets, bytes, syscalls per crossing, and a counter on every drop path.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// Why a packet was not forwarded. Every drop path in every engine counts under one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason { $($(#[doc = $doc])* $name,)* }
        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// The label used in logs and metrics.
            pub fn label(self) -> &'static str { match self { $(DropReason::$name => $label,)* } }
        }
    };
}

drop_reasons! {
    /// Fewer than 20 bytes where an IP packet was expected.
    TooShort => "too_short",
    /// Not a valid IPv4 header (version, header length).
    BadIpHeader => "bad_ip_header",
    /// IP Total Length exceeds the bytes received.
    Truncated => "truncated",
    /// TTL would reach zero.
    TtlExpired => "ttl_expired",
    /// No peer leases the destination (ICMP net-unreachable sent where allowed).
    NoRoute => "no_route",
    /// A packet from the TUN for our own subnet (a routing loop).
    OwnSubnet => "own_subnet",
    /// An inner IPv6 packet on an IPv4-only network.
    Ipv6 => "ipv6",
    /// An inner IPv4 packet on an IPv6-only network.
    Ipv4 => "ipv4",
    /// A datagram from an address that is no peer's PublicIP.
    UnknownSender => "unknown_sender",
    /// Inner source outside the sending peer's subnet (spoofed).
    ForeignSource => "foreign_source",
    /// Inner destination outside our subnet.
    NotForUs => "not_for_us",
    /// Inner packet larger than the overlay MTU.
    Oversize => "oversize",
    /// VXLAN header too short or without the I flag.
    BadVxlan => "bad_vxlan",
    /// VXLAN VNI is not ours.
    WrongVni => "wrong_vni",
    /// Inner Ethernet destination is not our VTEP MAC.
    WrongMac => "wrong_mac",
    /// Inner EtherType is not IPv4.
    NotIp => "not_ip",
    /// A peer of the wrong backend or without what it needs (e.g. a VTEP MAC).
    PeerUnusable => "peer_unusable",
    /// The UDP send failed (e.g. ENOBUFS, EHOSTUNREACH).
    SendFailed => "send_failed",
    /// The TUN write failed.
    TunWriteFailed => "tun_write_failed",
}

/// Number of drop reasons.
pub const DROP_REASONS: usize = DropReason::ALL.len();

/// The four crossings a forwarder makes itself (crossing 1, the container's send, is not ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Egress: kernel → forwarder through the TUN.
    TunRead,
    /// Egress: forwarder → kernel as UDP.
    UdpSend,
    /// Ingress: kernel → forwarder from the UDP socket.
    UdpRecv,
    /// Ingress: forwarder → kernel through the TUN.
    TunWrite,
}

impl Crossing {
    /// Every crossing.
    pub const ALL: [Crossing; 4] = [Crossing::TunRead, Crossing::UdpSend, Crossing::UdpRecv, Crossing::TunWrite];
    /// The label used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::TunRead => "tun_read",
            Self::UdpSend => "udp_send",
            Self::UdpRecv => "udp_recv",
            Self::TunWrite => "tun_write",
        }
    }
}

/// Per-crossing counters: syscalls made (including those that returned EAGAIN) and packets moved.
#[derive(Debug, Default)]
pub struct CrossingCounters {
    /// Syscalls made on this crossing.
    pub syscalls: AtomicU64,
    /// Packets (inner IP packets) moved by those syscalls.
    pub packets: AtomicU64,
    /// Bytes moved (as seen at this crossing: inner packet or outer datagram).
    pub bytes: AtomicU64,
    /// Nanoseconds spent inside those syscalls (wall clock around each call).
    pub nanos: AtomicU64,
    /// io_uring requests completed on this crossing (made inside enters counted as syscalls).
    pub requests: AtomicU64,
}

/// One worker's counters. Written by one thread with relaxed atomics, read by anyone.
#[derive(Debug, Default)]
pub struct Counters {
    crossings: [CachePadded<CrossingCounters>; 4],
    drops: [AtomicU64; DROP_REASONS],
    /// ICMP net-unreachable messages written back into the TUN.
    pub icmp_sent: AtomicU64,
    /// poll() calls (waiting, not moving data).
    pub polls: AtomicU64,
}

impl Counters {
    /// The counters of one crossing.
    pub fn crossing(&self, c: Crossing) -> &CrossingCounters {
        &self.crossings[c as usize]
    }

    /// Counts one syscall on `c` that took `nanos` and moved `packets` packets of `bytes` bytes.
    #[inline]
    pub fn syscall(&self, c: Crossing, packets: u64, bytes: u64, nanos: u64) {
        let cc = &self.crossings[c as usize];
        cc.syscalls.fetch_add(1, Ordering::Relaxed);
        cc.nanos.fetch_add(nanos, Ordering::Relaxed);
        if packets > 0 {
            cc.packets.fetch_add(packets, Ordering::Relaxed);
            cc.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts `packets` packets of `bytes` bytes moved on `c` by one io_uring request, submitted
    /// and completed within `io_uring_enter`s counted elsewhere.
    #[inline]
    pub fn moved(&self, c: Crossing, packets: u64, bytes: u64) {
        let cc = &self.crossings[c as usize];
        cc.requests.fetch_add(1, Ordering::Relaxed);
        cc.packets.fetch_add(packets, Ordering::Relaxed);
        cc.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one dropped packet.
    #[inline]
    pub fn count_drop(&self, r: DropReason) {
        self.drops[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` dropped packets (a super-packet's segments).
    #[inline]
    pub fn count_drops(&self, r: DropReason, n: u64) {
        self.drops[r as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Drops counted under `r`.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Ordering::Relaxed)
    }

    /// A plain copy for reports.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for c in Crossing::ALL {
            let cc = self.crossing(c);
            s.crossings[c as usize] = [
                cc.syscalls.load(Ordering::Relaxed),
                cc.packets.load(Ordering::Relaxed),
                cc.bytes.load(Ordering::Relaxed),
                cc.nanos.load(Ordering::Relaxed),
                cc.requests.load(Ordering::Relaxed),
            ];
        }
        for (i, d) in self.drops.iter().enumerate() {
            s.drops[i] = d.load(Ordering::Relaxed);
        }
        s.icmp_sent = self.icmp_sent.load(Ordering::Relaxed);
        s.polls = self.polls.load(Ordering::Relaxed);
        s
    }
}

/// Every worker's counters (one [`Counters`] per worker, so that workers never write one cache
/// line); reports sum them.
#[derive(Debug)]
pub struct CounterSet {
    workers: Vec<std::sync::Arc<Counters>>,
}

impl Default for CounterSet {
    fn default() -> Self {
        Self::new(1)
    }
}

impl CounterSet {
    /// Counters for `n` (at least one) workers.
    pub fn new(n: usize) -> Self {
        Self { workers: (0..n.max(1)).map(|_| std::sync::Arc::default()).collect() }
    }

    /// Worker `i`'s counters (the last worker's if `i` is out of range).
    pub fn worker(&self, i: usize) -> std::sync::Arc<Counters> {
        self.workers[i.min(self.workers.len() - 1)].clone()
    }

    /// Each worker's snapshot, in worker order.
    pub fn per_worker(&self) -> impl Iterator<Item = Snapshot> + '_ {
        self.workers.iter().map(|w| w.snapshot())
    }

    /// The sum over workers.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for w in &self.workers {
            s.add(&w.snapshot());
        }
        s
    }
}

/// Logs drops on the hot path without flooding the log: at most one line per second per engine
/// thread, saying the last reason and sender and how many were dropped since the last line.
#[derive(Debug)]
pub struct DropLog {
    last: std::time::Instant,
    since: u64,
}

impl Default for DropLog {
    fn default() -> Self {
        Self { last: std::time::Instant::now() - std::time::Duration::from_secs(2), since: 0 }
    }
}

impl DropLog {
    /// Notes one drop of a datagram from `from`.
    #[inline]
    pub fn note(&mut self, reason: DropReason, from: std::net::SocketAddr) {
        self.since += 1;
        if self.last.elapsed() >= std::time::Duration::from_secs(1) {
            tracing::warn!(reason = reason.label(), %from, dropped = self.since, "dropping datagrams (at most one such line per second; all are counted in /metrics)");
            self.last = std::time::Instant::now();
            self.since = 0;
        }
    }
}

/// Runs `f` and returns its result with the wall-clock nanoseconds it took.
#[inline]
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let t = std::time::Instant::now();
    let r = f();
    (r, u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per crossing: [syscalls, packets, bytes, nanoseconds, io_uring requests].
    pub crossings: [[u64; 5]; 4],
    /// Per drop reason.
    pub drops: [u64; DROP_REASONS],
    /// ICMP messages sent.
    pub icmp_sent: u64,
    /// poll() calls.
    pub polls: u64,
}

impl Snapshot {
    /// Syscalls on `c`.
    pub fn syscalls(&self, c: Crossing) -> u64 {
        self.crossings[c as usize][0]
    }
    /// Packets on `c`.
    pub fn packets(&self, c: Crossing) -> u64 {
        self.crossings[c as usize][1]
    }
    /// Bytes on `c`.
    pub fn bytes(&self, c: Crossing) -> u64 {
        self.crossings[c as usize][2]
    }
    /// Nanoseconds spent in syscalls on `c`.
    pub fn nanos(&self, c: Crossing) -> u64 {
        self.crossings[c as usize][3]
    }
    /// io_uring requests completed on `c`.
    pub fn requests(&self, c: Crossing) -> u64 {
        self.crossings[c as usize][4]
    }
    /// Drops under `r`.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Adds another snapshot (to sum workers).
    pub fn add(&mut self, o: &Snapshot) {
        for (a, b) in self.crossings.iter_mut().flatten().zip(o.crossings.iter().flatten()) {
            *a += b;
        }
        for (a, b) in self.drops.iter_mut().zip(&o.drops) {
            *a += b;
        }
        self.icmp_sent += o.icmp_sent;
        self.polls += o.polls;
    }
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut d = *self;
        for (a, b) in d.crossings.iter_mut().flatten().zip(earlier.crossings.iter().flatten()) {
            *a = a.saturating_sub(*b);
        }
        for (a, b) in d.drops.iter_mut().zip(&earlier.drops) {
            *a = a.saturating_sub(*b);
        }
        d.icmp_sent = d.icmp_sent.saturating_sub(earlier.icmp_sent);
        d.polls = d.polls.saturating_sub(earlier.polls);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_diffs() {
        let c = Counters::default();
        c.syscall(Crossing::TunRead, 1, 100, 500);
        c.syscall(Crossing::TunRead, 0, 0, 100);
        c.count_drop(DropReason::NoRoute);
        c.moved(Crossing::UdpSend, 44, 64_000);
        let a = c.snapshot();
        assert_eq!(
            (a.requests(Crossing::UdpSend), a.packets(Crossing::UdpSend), a.syscalls(Crossing::UdpSend)),
            (1, 44, 0)
        );
        assert_eq!(
            (a.syscalls(Crossing::TunRead), a.packets(Crossing::TunRead), a.bytes(Crossing::TunRead)),
            (2, 1, 100)
        );
        c.count_drop(DropReason::NoRoute);
        let d = c.snapshot().since(&a);
        assert_eq!(d.drops(DropReason::NoRoute), 1);
        assert_eq!(d.total_drops(), 1);
        let labels: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), DROP_REASONS);
    }
}
