//! Traffic generators run inside container namespaces, in threads that enter the namespace.
//! Every workload checks that what arrived is what was sent.

use super::measure;
use crate::dataplane::sys::mmsg::MmsgBatch;
use crate::dataplane::sys::netns;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The TCP port the bulk workload uses.
pub const TCP_PORT: u16 = 5201;
/// Period of the byte pattern: a prime, so that it never lines up with buffer sizes.
const PATTERN_PERIOD: usize = 251;
const CHUNK: usize = 128 * 1024;

/// The pattern byte at stream offset `i`.
fn pattern_at(i: u64) -> u8 {
    // The remainder is < 251, so it fits in a u8.
    u8::try_from(i % PATTERN_PERIOD as u64).unwrap_or(0)
}

/// A pattern block long enough to slice `CHUNK` bytes from any phase.
fn pattern_block() -> Vec<u8> {
    (0..(CHUNK + PATTERN_PERIOD) as u64).map(pattern_at).collect()
}

fn phase(offset: u64) -> usize {
    usize::try_from(offset % PATTERN_PERIOD as u64).unwrap_or(0)
}

/// The sender's own costs (crossing 1: the container's process handing packets to the kernel).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SenderStats {
    /// send/write syscalls made.
    pub syscalls: u64,
    /// CPU time in user mode, ns (all sender threads).
    pub user_ns: u64,
    /// CPU time in the kernel, ns (all sender threads).
    pub system_ns: u64,
    /// Packets the sender's namespace put on the wire (TCP OutSegs or UDP OutDatagrams).
    pub wire_packets: u64,
}

/// What a bulk TCP transfer achieved.
#[derive(Debug, Clone, Copy)]
pub struct TcpResult {
    /// Bytes received and verified (all streams).
    pub bytes: u64,
    /// Seconds from the first connect to the last byte received.
    pub seconds: f64,
    /// The sender's costs.
    pub sender: SenderStats,
}

impl TcpResult {
    /// Throughput in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        if self.seconds <= 0.0 { 0.0 } else { self.bytes as f64 * 8.0 / self.seconds / 1e9 }
    }
}

/// How long the bulk sender runs.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// Exactly this many bytes (per stream).
    Bytes(u64),
    /// As much as fits in this time.
    Duration(Duration),
}

/// Runs `f` on a new thread that has entered the network namespace `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> thread::JoinHandle<io::Result<T>> {
    let ns = ns.to_string();
    thread::spawn(move || {
        netns::enter(&ns)?;
        f()
    })
}

/// Waits until the server thread `server` says on `ready` that it listens, and hands it back.
/// A server that failed first (a port in use, a socket option refused) has dropped its sender:
/// its own error is returned at once, not a timeout that hides it.
pub fn listening<T>(
    server: thread::JoinHandle<io::Result<T>>,
    ready: &mpsc::Receiver<()>,
    what: &str,
) -> io::Result<thread::JoinHandle<io::Result<T>>> {
    let not_started = |why: String| io::Error::other(format!("{what} did not start{why}"));
    match ready.recv_timeout(Duration::from_secs(5)) {
        Ok(()) => Ok(server),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(join(server).err().map_or_else(|| not_started(String::new()), |e| not_started(format!(": {e}"))))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(not_started(" within 5 s".into())),
    }
}

/// Waits for a traffic thread; its panic becomes an error.
pub fn join<T>(h: thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    h.join().map_err(|_| io::Error::other("traffic thread panicked"))?
}

/// Receives one stream and checks every byte against the pattern.
fn tcp_receive(mut s: TcpStream, timeout: Duration) -> io::Result<u64> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    let pat = pattern_block();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let start = Instant::now();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        let p = phase(got);
        if buf[..n] != pat[p..p + n] {
            let bad = buf[..n].iter().zip(&pat[p..p + n]).position(|(a, b)| a != b).unwrap_or(0);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TCP stream corrupted at byte {}", got + bad as u64),
            ));
        }
        got += n as u64;
        if start.elapsed() > timeout {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TCP receive exceeded its time bound"));
        }
    }
}

/// Sends the pattern on one stream; returns (bytes, write syscalls, user ns, system ns).
fn tcp_send(mut s: TcpStream, amount: Amount, timeout: Duration) -> io::Result<(u64, u64, u64, u64)> {
    s.set_write_timeout(Some(timeout))?;
    let pat = pattern_block();
    let (u0, s0) = measure::thread_cpu();
    let start = Instant::now();
    let (mut sent, mut calls) = (0u64, 0u64);
    loop {
        let want = match amount {
            Amount::Bytes(total) if sent >= total => break,
            Amount::Bytes(total) => usize::try_from(total - sent).unwrap_or(CHUNK).min(CHUNK),
            Amount::Duration(d) if start.elapsed() >= d => break,
            Amount::Duration(_) => CHUNK,
        };
        if start.elapsed() > timeout {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TCP send exceeded its time bound"));
        }
        let p = phase(sent);
        let n = s.write(&pat[p..p + want])?;
        calls += 1;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let (u1, s1) = measure::thread_cpu();
    Ok((sent, calls, u1 - u0, s1 - s0))
}

/// Sets the TCP congestion control `name` (e.g. `cubic`) on `s`. An algorithm the kernel does
/// not have is `ENOENT`, said in words.
pub fn set_congestion_control(s: &impl std::os::fd::AsFd, name: &str) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(s, sockopt::TcpCongestion, &std::ffi::OsString::from(name)).map_err(|e| {
        let why = if e == nix::errno::Errno::ENOENT { "the kernel has no such algorithm" } else { e.desc() };
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "TCP congestion control {name:?}: {why} (net.ipv4.tcp_available_congestion_control lists those loaded)"
            ),
        )
    })
}

/// Connects to `to` with the congestion control `congestion` (`None`: the namespace's default).
/// It is set before the connect: the algorithm the connection starts with initialises it, and
/// BBR leaves the socket paced (`sk_pacing_status`) even after a switch to another.
fn connect_with(to: SocketAddr, congestion: Option<&str>) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    if let Some(name) = congestion {
        set_congestion_control(&s, name)?;
    }
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// `streams` TCP streams from `client_ns` to `server_ip` (listener in `server_ns`), each sending
/// the pattern; the receiver checks every byte. `timeout` bounds the whole run. Both ends use the
/// congestion control `congestion` (`None`: the namespace's default).
pub fn tcp_bulk(
    server_ns: &str,
    server_ip: impl Into<IpAddr>,
    client_ns: &str,
    streams: usize,
    amount: Amount,
    timeout: Duration,
    congestion: Option<&str>,
) -> io::Result<TcpResult> {
    let server_ip = server_ip.into();
    let congestion = congestion.map(str::to_string);
    let streams = streams.clamp(1, 64);
    let (ready_tx, ready_rx) = mpsc::channel();
    let any = unspecified(server_ip);
    let server_congestion = congestion.clone();
    let server = in_ns(server_ns, move || {
        let l = TcpListener::bind((any, TCP_PORT))?;
        // The receivers only acknowledge, but take the same algorithm (accepted sockets inherit
        // the listener's), so that neither end runs the namespace's default.
        if let Some(name) = &server_congestion {
            set_congestion_control(&l, name)?;
        }
        let _ = ready_tx.send(());
        l.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let mut handlers = Vec::new();
        let start = Instant::now();
        while handlers.len() < streams {
            match l.accept() {
                Ok((c, _)) => handlers.push(thread::spawn(move || tcp_receive(c, timeout))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(e),
            }
        }
        let mut got = 0;
        for h in handlers {
            got += join(h)?;
        }
        Ok((got, start.elapsed()))
    });
    let server = listening(server, &ready_rx, "TCP server")?;
    let client = in_ns(client_ns, move || {
        let segs0 = measure::snmp("Tcp", "OutSegs")?;
        let mut senders = Vec::new();
        for _ in 0..streams {
            let s = connect_with(SocketAddr::from((server_ip, TCP_PORT)), congestion.as_deref())?;
            senders.push(thread::spawn(move || tcp_send(s, amount, timeout)));
        }
        let mut st = SenderStats::default();
        let mut sent = 0;
        for h in senders {
            let (b, calls, u, s) = join(h)?;
            sent += b;
            st.syscalls += calls;
            st.user_ns += u;
            st.system_ns += s;
        }
        st.wire_packets = measure::snmp("Tcp", "OutSegs")?.saturating_sub(segs0);
        Ok((sent, st))
    });
    let sent = join(client);
    let received = join(server);
    let (sent, sender) = sent?;
    let (got, elapsed) = received?;
    if got != sent {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("sent {sent} bytes, received {got}")));
    }
    Ok(TcpResult { bytes: got, seconds: elapsed.as_secs_f64(), sender })
}

/// The wildcard address of `ip`'s family (what a socket that talks to `ip` binds).
pub fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The UDP port of the small-datagram workload.
pub const UDP_PORT: u16 = 5202;
/// The UDP port of the request/response workload.
pub const ECHO_PORT: u16 = 5203;
/// Payload size of the small-datagram and request/response workloads.
pub const SMALL_PAYLOAD: usize = 64;
const FLOOD_BATCH: usize = 64;

/// The payload of small datagram `seq`: the sequence number, then bytes derived from it.
pub fn small_payload(seq: u64, out: &mut [u8; SMALL_PAYLOAD]) {
    out[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in out[8..].iter_mut().enumerate() {
        *b = pattern_at(seq.wrapping_add(i as u64));
    }
}

/// The sequence number of an intact [`small_payload`], or `None` for anything else.
pub fn small_payload_ok(d: &[u8]) -> Option<u64> {
    if d.len() != SMALL_PAYLOAD {
        return None;
    }
    let seq = u64::from_be_bytes(d[..8].try_into().ok()?);
    let mut want = [0u8; SMALL_PAYLOAD];
    small_payload(seq, &mut want);
    (want[..] == d[..]).then_some(seq)
}

/// The highest rate at which a paced [`udp_flood_at`] loses less than `max_loss`, found by
/// bisecting `[0, ceiling]` over `trials` runs of `trial` each. Returns the best passing run
/// (None if none passed).
pub fn udp_lossless_rate(
    server_ns: &str,
    server_ip: IpAddr,
    client_ns: &str,
    ceiling: f64,
    max_loss: f64,
    trial: Duration,
    trials: usize,
) -> io::Result<Option<UdpResult>> {
    let (mut lo, mut hi) = (0.0f64, ceiling.max(1000.0));
    let mut best: Option<UdpResult> = None;
    for _ in 0..trials {
        let rate = (lo + hi) / 2.0;
        let r = udp_flood_at(server_ns, server_ip, client_ns, trial, Some(rate))?;
        if r.loss() < max_loss && r.bad == 0 {
            lo = rate;
            if best.is_none_or(|b| r.delivered_pps() > b.delivered_pps()) {
                best = Some(r);
            }
        } else {
            hi = rate;
        }
    }
    Ok(best)
}

/// A receiver's tally of sequence-numbered datagrams: distinct intact ones, damaged or repeated
/// ones, and intact ones that came after a higher sequence number.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// One bit per sequence number seen.
    seen: Vec<u64>,
    /// Distinct intact datagrams.
    pub received: u64,
    /// Damaged or repeated datagrams.
    pub bad: u64,
    /// Intact datagrams that came after a higher sequence number.
    pub reordered: u64,
    highest: Option<u64>,
}

impl Arrivals {
    /// Counts one datagram: `Some(seq)` if it is intact, `None` if it is damaged.
    pub fn note(&mut self, seq: Option<u64>) {
        let Some(seq) = seq else {
            self.bad += 1;
            return;
        };
        let (w, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), seq % 64);
        if w >= self.seen.len() {
            self.seen.resize(w.saturating_add(1).max(self.seen.len() * 2), 0);
        }
        if self.seen[w] & (1 << bit) != 0 {
            self.bad += 1;
            return;
        }
        self.seen[w] |= 1 << bit;
        self.received += 1;
        self.reordered += u64::from(self.highest.is_some_and(|h| seq < h));
        self.highest = self.highest.max(Some(seq));
    }
}

/// What the small-datagram workload achieved.
#[derive(Debug, Clone, Copy)]
pub struct UdpResult {
    /// Datagrams sent.
    pub sent: u64,
    /// Distinct datagrams received intact.
    pub received: u64,
    /// Datagrams received damaged or twice.
    pub bad: u64,
    /// Intact datagrams that arrived after one with a higher sequence number (one flow on one
    /// path: a forwarder should reorder none).
    pub reordered: u64,
    /// Seconds the sender ran.
    pub seconds: f64,
    /// The sender's costs.
    pub sender: SenderStats,
}

impl UdpResult {
    /// Offered rate, datagrams/s.
    pub fn offered_pps(&self) -> f64 {
        if self.seconds > 0.0 { self.sent as f64 / self.seconds } else { 0.0 }
    }
    /// Delivered rate, datagrams/s.
    pub fn delivered_pps(&self) -> f64 {
        if self.seconds > 0.0 { self.received as f64 / self.seconds } else { 0.0 }
    }
    /// Fraction lost.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { 1.0 - self.received as f64 / self.sent as f64 }
    }
}

/// 64-byte UDP datagrams from `client_ns` to `server_ip` as fast as `sendmmsg` (batches of 64)
/// takes them, for `duration`; the receiver checks each and counts distinct sequence numbers.
pub fn udp_flood(
    server_ns: &str,
    server_ip: impl Into<IpAddr>,
    client_ns: &str,
    duration: Duration,
) -> io::Result<UdpResult> {
    udp_flood_at(server_ns, server_ip.into(), client_ns, duration, None)
}

/// Datagrams per paced batch: small, so that pacing adds no burst a queue would notice.
const PACED_BATCH: usize = 16;

/// [`udp_flood`] at `rate` datagrams/s (paced in batches of [`PACED_BATCH`]), or as fast as
/// possible with `None`.
pub fn udp_flood_at(
    server_ns: &str,
    server_ip: IpAddr,
    client_ns: &str,
    duration: Duration,
    rate: Option<f64>,
) -> io::Result<UdpResult> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = in_ns(server_ns, move || {
        let sock = crate::dataplane::sys::udp::bind(SocketAddr::from((unspecified(server_ip), UDP_PORT)))?;
        let _ = ready_tx.send(());
        let mut batch = MmsgBatch::new(FLOOD_BATCH);
        let mut store = vec![[0u8; 128]; FLOOD_BATCH];
        let mut meta = vec![crate::dataplane::sys::udp::RecvMeta::EMPTY; FLOOD_BATCH];
        let mut arrivals = Arrivals::default();
        let mut drain_until: Option<Instant> = None;
        loop {
            if drain_until.is_none() && done_rx.try_recv().is_ok() {
                drain_until = Some(Instant::now() + Duration::from_millis(300));
            }
            if drain_until.is_some_and(|d| Instant::now() > d) {
                break;
            }
            let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| &mut b[..]).collect();
            match batch.recv(&sock, &mut bufs, &mut meta) {
                Ok(n) => {
                    for i in 0..n {
                        arrivals.note(small_payload_ok(&bufs[i][..meta[i].len]));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = crate::dataplane::sys::poll::wait_readable([&sock], Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(arrivals)
    });
    let server = listening(server, &ready_rx, "UDP server")?;
    let client = in_ns(client_ns, move || {
        let sock = UdpSocket::bind((unspecified(server_ip), 0))?;
        sock.connect((server_ip, UDP_PORT))?;
        let out0 = measure::udp_out_datagrams()?;
        let mut batch = MmsgBatch::new(FLOOD_BATCH);
        let mut payloads = vec![[0u8; SMALL_PAYLOAD]; FLOOD_BATCH];
        let (u0, s0) = measure::thread_cpu();
        let start = Instant::now();
        let (mut seq, mut calls) = (0u64, 0u64);
        let batch_len = if rate.is_some() { PACED_BATCH } else { FLOOD_BATCH };
        while start.elapsed() < duration {
            if let Some(rate) = rate {
                // Wait until the schedule reaches the end of the next batch.
                let due = Duration::from_secs_f64((seq + batch_len as u64) as f64 / rate.max(1.0));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait.min(duration));
                }
            }
            for (i, p) in payloads.iter_mut().take(batch_len).enumerate() {
                small_payload(seq + i as u64, p);
            }
            let msgs: Vec<(&[u8], Option<std::net::SocketAddr>)> =
                payloads.iter().take(batch_len).map(|p| (&p[..], None)).collect();
            calls += 1;
            match batch.send(&sock, &msgs) {
                Ok(n) => seq += n as u64,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED)) => {}
                Err(e) => return Err(e),
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let (u1, s1) = measure::thread_cpu();
        let wire = measure::udp_out_datagrams()?.saturating_sub(out0);
        Ok((seq, seconds, SenderStats { syscalls: calls, user_ns: u1 - u0, system_ns: s1 - s0, wire_packets: wire }))
    });
    let sent = join(client);
    let _ = done_tx.send(());
    let received = join(server);
    let (sent, seconds, sender) = sent?;
    let a = received?;
    Ok(UdpResult { sent, received: a.received, bad: a.bad, reordered: a.reordered, seconds, sender })
}

/// Request/response latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyResult {
    /// Round trips completed and verified.
    pub samples: u64,
    /// Requests without a reply within 200 ms.
    pub lost: u64,
    /// Median round-trip time, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// The client's costs (its requests are the wire packets it sent).
    pub sender: SenderStats,
}

/// Starts a UDP echo server on [`ECHO_PORT`] in `server_ns` that runs until `stop_at`, and waits
/// until it listens. It binds the IPv6 wildcard, which (Linux's default, `bindv6only` 0) takes
/// IPv4 requests too. Send errors (the path may be down during a restart) are ignored.
pub fn echo_server(server_ns: &str, stop_at: Instant) -> io::Result<thread::JoinHandle<io::Result<()>>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(server_ns, move || {
        let sock = UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, ECHO_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 256];
        while Instant::now() < stop_at {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = sock.send_to(&buf[..n], from);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    listening(server, &ready_rx, "echo server")
}

/// UDP ping-pong with 64-byte payloads, one request in flight, for `duration` (at most 50 000
/// round trips). The echo must match the request.
pub fn udp_ping_pong(
    server_ns: &str,
    server_ip: impl Into<IpAddr>,
    client_ns: &str,
    duration: Duration,
) -> io::Result<LatencyResult> {
    let server_ip = server_ip.into();
    let server = echo_server(server_ns, Instant::now() + duration + Duration::from_secs(2))?;
    let client = in_ns(client_ns, move || {
        let sock = UdpSocket::bind((unspecified(server_ip), 0))?;
        sock.connect((server_ip, ECHO_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut rtts = Vec::with_capacity(50_000);
        let mut lost = 0u64;
        let (u0, s0) = measure::thread_cpu();
        let mut calls = 0u64;
        let (mut req, mut resp) = ([0u8; SMALL_PAYLOAD], [0u8; 256]);
        let start = Instant::now();
        let mut seq = 0u64;
        while start.elapsed() < duration && rtts.len() < 50_000 {
            small_payload(seq, &mut req);
            let t = Instant::now();
            sock.send(&req)?;
            calls += 1;
            loop {
                calls += 1;
                match sock.recv(&mut resp) {
                    Ok(n) if small_payload_ok(&resp[..n]) == Some(seq) => {
                        rtts.push(t.elapsed().as_nanos() as f64 / 1e3);
                        break;
                    }
                    Ok(_) => continue, // a late reply to an earlier request
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        lost += 1;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            seq += 1;
        }
        let (u1, s1) = measure::thread_cpu();
        Ok((rtts, lost, SenderStats { syscalls: calls, user_ns: u1 - u0, system_ns: s1 - s0, wire_packets: seq }))
    });
    let r = join(client);
    let _ = join(server);
    let (mut rtts, lost, sender) = r?;
    if rtts.is_empty() {
        return Err(io::Error::other("no request/response round trip completed"));
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    Ok(LatencyResult { samples: rtts.len() as u64, lost, p50_us: pct(0.50), p99_us: pct(0.99), sender })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_count_distinct_damaged_repeated_and_late() {
        let mut a = Arrivals::default();
        for seq in [Some(0), Some(2), Some(200), Some(1), Some(2), None, Some(201)] {
            a.note(seq);
        }
        assert_eq!((a.received, a.bad, a.reordered), (5, 2, 1), "{a:?}");
    }

    #[test]
    fn pattern_slices_line_up() {
        let b = pattern_block();
        for off in [0u64, 1, 250, 251, 252, 1_000_003] {
            let p = phase(off);
            assert_eq!(b[p], pattern_at(off));
            assert_eq!(b[p + CHUNK - 1], pattern_at(off + CHUNK as u64 - 1));
        }
    }
}
