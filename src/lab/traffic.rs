//! Traffic generators run inside container namespaces, in threads that enter the namespace.
//! Every workload checks that what arrived is what was sent.

use crate::dataplane::sys::netns;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
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

/// What a bulk TCP transfer achieved.
#[derive(Debug, Clone, Copy)]
pub struct TcpResult {
    /// Bytes received and verified.
    pub bytes: u64,
    /// Seconds from connect to the last byte received.
    pub seconds: f64,
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
    /// Exactly this many bytes.
    Bytes(u64),
    /// As much as fits in this time.
    Duration(Duration),
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> thread::JoinHandle<io::Result<T>> {
    let ns = ns.to_string();
    thread::spawn(move || {
        netns::enter(&ns)?;
        f()
    })
}

fn join<T>(h: thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    h.join().map_err(|_| io::Error::other("traffic thread panicked"))?
}

/// One TCP stream from `client_ns` to `server_ip` (a listener started in `server_ns`), sending
/// the pattern; the receiver checks every byte. `timeout` bounds the whole run.
pub fn tcp_bulk(
    server_ns: &str,
    server_ip: Ipv4Addr,
    client_ns: &str,
    amount: Amount,
    timeout: Duration,
) -> io::Result<TcpResult> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(server_ns, move || {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT))?;
        let _ = ready_tx.send(());
        l.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let (mut s, _) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(timeout))?;
        let pat = pattern_block();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        let start = Instant::now();
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
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
        Ok((got, start.elapsed()))
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).map_err(|_| io::Error::other("TCP server did not start"))?;
    let client = in_ns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((server_ip, TCP_PORT)), Duration::from_secs(5))?;
        s.set_write_timeout(Some(timeout))?;
        let pat = pattern_block();
        let start = Instant::now();
        let mut sent = 0u64;
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
            sent += n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    });
    let sent = join(client);
    let received = join(server);
    let sent = sent?;
    let (got, elapsed) = received?;
    if got != sent {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("sent {sent} bytes, received {got}")));
    }
    Ok(TcpResult { bytes: got, seconds: elapsed.as_secs_f64() })
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
