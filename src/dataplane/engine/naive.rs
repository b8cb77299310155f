//! The naive engine: the shape of flannel's UDP proxy (`backend/udp/proxy_amd64.c`).
//!
//! poll() on the TUN and the socket; then, while either is readable, one `read` from the TUN
//! followed by one `sendto`, and one `recvfrom` followed by one `write` to the TUN. Every packet
//! crosses user/kernel once per hop. It is deliberately unoptimised: the lab's baseline.

use super::{EngineContext, EngineError, STOP_CHECK};
use crate::dataplane::counters::{Counters, Crossing, DropReason};
use crate::dataplane::forward::{BUF_LEN, Egress, HEADROOM, Ingress};
use crate::dataplane::sys::poll::wait_readable;
use crate::proto::icmp;
use std::io::{self, ErrorKind};
use std::sync::atomic::Ordering;

/// How many busy rounds may pass before the stop flag is checked again.
const ROUNDS_PER_STOP_CHECK: u32 = 4096;

fn u64_len(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whether an I/O error is about this one packet (count it, go on) or the device (stop).
fn per_packet(e: &io::Error) -> bool {
    !matches!(e.raw_os_error(), Some(libc::EBADF | libc::EFAULT | libc::ENOTSOCK | libc::EBADFD))
}

/// Runs until stopped.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    let mut tun_buf = vec![0u8; BUF_LEN];
    let mut udp_buf = vec![0u8; BUF_LEN];
    let mut scratch = [0u8; icmp::MAX_LEN];
    let c = &*ctx.counters;
    while !ctx.stop.load(Ordering::Relaxed) {
        c.polls.fetch_add(1, Ordering::Relaxed);
        let [tun_ready, udp_ready] = wait_readable([&ctx.tun, &ctx.socket], STOP_CHECK).map_err(EngineError::Poll)?;
        if !tun_ready && !udp_ready {
            continue;
        }
        // As flannel's proxy: while either side is readable, bypass poll(); an occasional
        // EAGAIN is cheaper than a poll() per packet.
        let mut rounds = 0u32;
        loop {
            let moved = tun_to_udp(&ctx, c, &mut tun_buf, &mut scratch)? | udp_to_tun(&ctx, c, &mut udp_buf)?;
            rounds += 1;
            if !moved || (rounds.is_multiple_of(ROUNDS_PER_STOP_CHECK) && ctx.stop.load(Ordering::Relaxed)) {
                break;
            }
        }
    }
    Ok(())
}

/// One TUN read and, for a packet, one send. Returns whether a packet was read.
fn tun_to_udp(ctx: &EngineContext, c: &Counters, buf: &mut [u8], scratch: &mut [u8]) -> Result<bool, EngineError> {
    let n = match ctx.tun.recv(&mut buf[HEADROOM..]) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
            c.syscall(Crossing::TunRead, 0, 0);
            return Ok(false);
        }
        Err(e) => return Err(EngineError::Tun(e)),
    };
    c.syscall(Crossing::TunRead, 1, u64_len(n));
    let peers = ctx.peers.load();
    match ctx.forwarder.egress(&peers, buf, n, scratch) {
        Egress::Send { range, to } => {
            let frame = &buf[range];
            match ctx.socket.send_to(frame, to) {
                Ok(sent) => c.syscall(Crossing::UdpSend, 1, u64_len(sent)),
                Err(e) if per_packet(&e) => {
                    c.syscall(Crossing::UdpSend, 0, 0);
                    c.drop(DropReason::SendFailed);
                }
                Err(e) => return Err(EngineError::Udp(e)),
            }
        }
        Egress::Reply { len } => {
            c.drop(DropReason::NoRoute);
            if ctx.tun.send(&scratch[..len]).is_ok() {
                c.icmp_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Egress::Drop(r) => c.drop(r),
    }
    Ok(true)
}

/// One recvfrom and, for a datagram, one TUN write. Returns whether a datagram was received.
fn udp_to_tun(ctx: &EngineContext, c: &Counters, buf: &mut [u8]) -> Result<bool, EngineError> {
    let (n, from) = match ctx.socket.recv_from(buf) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
            c.syscall(Crossing::UdpRecv, 0, 0);
            return Ok(false);
        }
        // An ICMP error for an earlier send surfaces here (ECONNREFUSED and friends): it is
        // not a datagram, and the socket is fine.
        Err(e) if per_packet(&e) => {
            c.syscall(Crossing::UdpRecv, 0, 0);
            return Ok(true);
        }
        Err(e) => return Err(EngineError::Udp(e)),
    };
    c.syscall(Crossing::UdpRecv, 1, u64_len(n));
    let peers = ctx.peers.load();
    match ctx.forwarder.ingress(&peers, from, buf, n) {
        Ingress::Deliver(range) => match ctx.tun.send(&buf[range]) {
            Ok(w) => c.syscall(Crossing::TunWrite, 1, u64_len(w)),
            Err(e) if per_packet(&e) => {
                c.syscall(Crossing::TunWrite, 0, 0);
                c.drop(DropReason::TunWriteFailed);
            }
            Err(e) => return Err(EngineError::Tun(e)),
        },
        Ingress::Drop(r) => c.drop(r),
    }
    Ok(true)
}
