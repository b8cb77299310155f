//! Traffic the integration tests need and the lab does not: ICMP error probes, a request stream
//! across a restart, UDP GSO bursts. Built on the lab's traffic building blocks.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use weft::lab::traffic::{
    Arrivals, ECHO_PORT, SMALL_PAYLOAD, SenderStats, UdpResult, echo_server, in_ns, join, small_payload,
    small_payload_ok,
};

/// Sends UDP datagrams from `client_ns` to `dst` and returns the first error the kernel reports
/// for them. `IP_RECVERR` is set because Linux treats ICMP net-unreachable as a soft error that a
/// UDP socket otherwise never hears about.
pub fn udp_probe_error(client_ns: &str, dst: SocketAddr, wait: Duration) -> io::Result<Option<io::Error>> {
    join(in_ns(client_ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvErr, &true).map_err(io::Error::from)?;
        s.connect(dst)?;
        s.set_read_timeout(Some(wait))?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            s.send(b"weft-probe")?;
            let mut b = [0u8; 64];
            match s.recv(&mut b) {
                Ok(_) => return Ok(None),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) => return Ok(Some(e)),
            }
        }
        Ok(None)
    }))
}

/// A steady request stream and what an interruption did to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutageResult {
    /// Requests sent.
    pub sent: u64,
    /// Distinct requests answered.
    pub answered: u64,
    /// Longest time without any answer, after the first one (ms).
    pub max_gap_ms: f64,
}

/// Sends a 64-byte request every `interval` from `client_ns` to an echo server on `server_ip`
/// for `duration`, while something else (a restart) happens; counts answers and the longest
/// silence. Replies are matched by sequence number; late ones still count.
pub fn udp_stream_outage(
    server_ns: &str,
    server_ip: Ipv4Addr,
    client_ns: &str,
    duration: Duration,
    interval: Duration,
) -> io::Result<OutageResult> {
    let server = echo_server(server_ns, Instant::now() + duration + Duration::from_secs(2))?;
    let client = in_ns(client_ns, move || {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.connect((server_ip, ECHO_PORT))?;
        sock.set_nonblocking(true)?;
        let mut seen = std::collections::HashSet::new();
        let (mut req, mut resp) = ([0u8; SMALL_PAYLOAD], [0u8; 256]);
        let start = Instant::now();
        let mut last_answer: Option<Instant> = None;
        let mut max_gap = Duration::ZERO;
        let mut seq = 0u64;
        let mut next = start;
        while start.elapsed() < duration + Duration::from_millis(500) {
            if start.elapsed() < duration && Instant::now() >= next {
                small_payload(seq, &mut req);
                // Errors while the path is down (ICMP unreachable, ENOBUFS) are part of the outage.
                let _ = sock.send(&req);
                seq += 1;
                next += interval;
            }
            loop {
                match sock.recv(&mut resp) {
                    Ok(n) => {
                        if let Some(s) = small_payload_ok(&resp[..n])
                            && seen.insert(s)
                        {
                            let now = Instant::now();
                            if let Some(l) = last_answer {
                                max_gap = max_gap.max(now - l);
                            }
                            last_answer = Some(now);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
            thread::sleep(Duration::from_micros(200));
        }
        Ok(OutageResult { sent: seq, answered: seen.len() as u64, max_gap_ms: max_gap.as_secs_f64() * 1e3 })
    });
    let r = join(client);
    let _ = join(server);
    r
}

/// Port of [`udp_gso_burst`]'s receiver.
pub const GSO_PORT: u16 = 5204;

/// Fills datagram `seq` of [`udp_gso_burst`]: its sequence number, then a pattern of it.
fn gso_payload(seq: u64, out: &mut [u8]) {
    let (head, rest) = out.split_at_mut(8.min(out.len()));
    head.copy_from_slice(&seq.to_be_bytes()[..head.len()]);
    for (i, b) in rest.iter_mut().enumerate() {
        *b = seq.wrapping_add(u64::try_from(i).unwrap_or(0)).to_le_bytes()[0];
    }
}

/// `sends` UDP GSO sends (`UDP_SEGMENT`) of `per_send` datagrams of `size` bytes each, from
/// `client_ns` to `server_ip`, in bursts of five 5 ms apart (so that no queue overflows); the
/// receiver checks every datagram's size and bytes, counts distinct sequence numbers and those
/// that came out of order. This is how QUIC
/// stacks send; with USO the TUN hands such a send to the forwarder as one super-packet.
pub fn udp_gso_burst(
    server_ns: &str,
    server_ip: impl Into<std::net::IpAddr>,
    client_ns: &str,
    sends: usize,
    per_send: usize,
    size: usize,
) -> io::Result<UdpResult> {
    let server_ip = server_ip.into();
    let any = weft::lab::traffic::unspecified(server_ip);
    let total = u64::try_from(sends * per_send).map_err(io::Error::other)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(server_ns, move || {
        // Large buffers: a burst of five sends is 240 KB.
        let sock = weft::dataplane::sys::udp::bind(SocketAddr::from((any, GSO_PORT)))?;
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let _ = ready_tx.send(());
        let mut arrivals = Arrivals::default();
        let mut buf = vec![0u8; 65536];
        let mut want = vec![0u8; size];
        let mut idle_since = Instant::now();
        while arrivals.received + arrivals.bad < total && idle_since.elapsed() < Duration::from_secs(2) {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    idle_since = Instant::now();
                    let seq = buf.get(..8).map(|s| u64::from_be_bytes(s.try_into().unwrap_or_default()));
                    let intact = seq.filter(|&s| {
                        gso_payload(s, &mut want);
                        s < total && n == size && buf[..n] == want[..]
                    });
                    arrivals.note(intact);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(arrivals)
    });
    let server = weft::lab::traffic::listening(server, &ready_rx, "UDP GSO receiver")?;
    let client = in_ns(client_ns, move || {
        let sock = UdpSocket::bind((any, 0))?;
        let to = SocketAddr::new(server_ip, GSO_PORT);
        // UDP_SEGMENT on the socket: every send of it is cut into `size`-byte datagrams.
        let seg = i32::try_from(size).map_err(io::Error::other)?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::UdpGsoSegment, &seg)?;
        let mut data = vec![0u8; per_send * size];
        let start = Instant::now();
        for k in 0..sends {
            for (i, d) in data.chunks_mut(size).enumerate() {
                gso_payload(u64::try_from(k * per_send + i).unwrap_or(u64::MAX), d);
            }
            sock.send_to(&data, to)?;
            if k % 5 == 4 {
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(start.elapsed().as_secs_f64())
    });
    let seconds = join(client);
    let received = join(server);
    let a = received?;
    Ok(UdpResult {
        sent: total,
        received: a.received,
        bad: a.bad,
        reordered: a.reordered,
        seconds: seconds?,
        sender: SenderStats::default(),
    })
}
