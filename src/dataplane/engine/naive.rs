//! The naive engine: the shape of flannel's UDP proxy (`backend/udp/proxy_amd64.c`).
//!
//! poll() on the TUN and the socket; then one `read` from the TUN followed by one `sendto`, and
//! one `recvfrom` followed by one `write` to the TUN, for whichever side is readable. Every packet
//! crosses user/kernel once per hop, plus a share of a poll(). It is deliberately unoptimised: the
//! lab's baseline, the shape user space is measured from. (flannel's proxy skips poll() while busy
//! and alternates reads instead; that trades polls for EAGAIN reads, about one per packet of the
//! lighter direction, and makes per-crossing counts depend on the traffic mix.)

use super::runs::count_sent;
use super::{EngineContext, EngineError, Read, STOP_CHECK, empty_read, read_tun, reply_icmp, tun_write, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropLog, timed};
use crate::dataplane::forward::{Egress, Ingress, SCRATCH_LEN};
use crate::dataplane::packet::PacketBuf;
use crate::dataplane::sys::poll::wait_readable;

use std::sync::atomic::Ordering;

/// Runs until stopped: poll(), then one packet from each readable side, and poll() again.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    let mut tun_buf = PacketBuf::default();
    let mut udp_buf = PacketBuf::default();
    let mut scratch = [0u8; SCRATCH_LEN];
    let mut log = DropLog::default();
    let c = &*ctx.counters;
    while !ctx.stop.load(Ordering::Relaxed) {
        c.polls.fetch_add(1, Ordering::Relaxed);
        let [tun_ready, udp_ready] = wait_readable([&ctx.tun, &ctx.socket], STOP_CHECK).map_err(EngineError::Poll)?;
        if tun_ready {
            tun_to_udp(&ctx, c, &mut tun_buf, &mut scratch)?;
        }
        if udp_ready {
            udp_to_tun(&ctx, c, &mut udp_buf, &mut log)?;
        }
    }
    Ok(())
}

/// One TUN read and, for a packet, one send. Returns whether a packet was read.
fn tun_to_udp(ctx: &EngineContext, c: &Counters, buf: &mut PacketBuf, scratch: &mut [u8]) -> Result<bool, EngineError> {
    let (packet, ns) = match read_tun(ctx, buf)? {
        Read::Empty => return Ok(false),
        Read::Short => return Ok(true),
        Read::Packet(packet, ns) => (packet, ns),
    };
    c.syscall(Crossing::TunRead, 1, u64_len(packet.len), ns);
    let peers = ctx.peers.load();
    match ctx.forwarder.egress(&peers, buf.as_mut_slice(), packet.len, scratch) {
        Egress::Send { range, to, flow } => {
            let frame = &buf.as_slice()[range];
            let (r, ns) = timed(|| ctx.tx.for_flow(flow).send_to(frame, to));
            count_sent(c, r, ns, 1)?;
        }
        Egress::Reply { len } => reply_icmp(ctx, &scratch[..len]),
        Egress::Drop(r) => c.count_drop(r),
    }
    Ok(true)
}

/// One recvfrom and, for a datagram, one TUN write. Returns whether a datagram was received.
fn udp_to_tun(ctx: &EngineContext, c: &Counters, buf: &mut PacketBuf, log: &mut DropLog) -> Result<bool, EngineError> {
    let (r, ns) = timed(|| ctx.socket.recv_from(buf.as_mut_slice()));
    let (n, from) = match r {
        Ok(r) => r,
        Err(e) => {
            empty_read(c, Crossing::UdpRecv, e, ns)?;
            return Ok(false);
        }
    };
    c.syscall(Crossing::UdpRecv, 1, u64_len(n), ns);
    let peers = ctx.peers.load();
    match ctx.forwarder.ingress(&peers, from, buf.as_mut_slice(), n) {
        Ingress::Deliver(range) => tun_write(ctx, &buf.as_slice()[range])?,
        Ingress::Drop(r) => {
            c.count_drop(r);
            log.note(r, from);
        }
    }
    Ok(true)
}
