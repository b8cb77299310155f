//! Sending what one batch read from the TUN: consecutive datagrams to one peer, all of one size
//! but the last (which may be shorter), go as one GSO message (`UDP_SEGMENT`), and all messages
//! of the batch go with one `sendmmsg`. A flow of small datagrams then crosses the sending and the
//! receiving stacks once per run instead of once per datagram, which is most of what a small
//! datagram costs. If the kernel refuses GSO (EIO/EINVAL), every message is one datagram from
//! then on, and nothing is lost.

use super::coalesce::offload_refused;
use super::{EngineContext, EngineError, per_packet, u64_len};
use crate::dataplane::counters::{Crossing, DropReason, timed};
use crate::dataplane::sys::mmsg::{Gathered, MmsgBatch};
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

/// Most datagrams per batch, and per GSO send.
pub const BATCH: usize = crate::dataplane::sys::udp::MAX_SEGMENTS;
/// Most bytes one UDP send may carry in all (65 535 − IPv4 − UDP headers).
pub const MAX_GSO_BYTES: usize = 65_507;

/// The kernel refused a GSO send (EIO, EINVAL: a route or device that cannot take it): the
/// refused call is counted as an empty send, and this sender sends one datagram per message
/// from now on, which loses nothing.
pub(crate) fn gso_refused(c: &crate::dataplane::counters::Counters, e: &std::io::Error, ns: u64, gso: &mut bool) {
    c.syscall(Crossing::UdpSend, 0, 0, ns);
    tracing::warn!("UDP GSO refused by the kernel ({e}); sending datagrams one by one from now on");
    *gso = false;
}

/// A datagram waiting in a read buffer: `bufs[buf][range]`, for `to`.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Which buffer of the batch.
    pub buf: usize,
    /// The datagram (outer header included) within it.
    pub range: Range<usize>,
    /// The peer.
    pub to: SocketAddrV4,
}

/// The sending side of a batch: reusable headers and whether GSO works.
pub struct RunSender {
    batch: MmsgBatch,
    /// The kernel takes `UDP_SEGMENT` sends (cleared for good when it refuses one).
    pub gso: bool,
}

impl RunSender {
    /// A sender that tries `UDP_SEGMENT` sends if `gso` (see `EngineContext::udp_gso`).
    pub fn new(gso: bool) -> Self {
        Self { batch: MmsgBatch::new(BATCH), gso }
    }

    /// Sends `pending` (at most [`BATCH`], datagrams in `bufs`), in order, counting each send and
    /// each drop.
    pub fn send(&mut self, ctx: &EngineContext, bufs: &[Vec<u8>], pending: &[Pending]) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let pending = &pending[..pending.len().min(BATCH)];
        let mut iov = [IoSlice::new(&[]); BATCH];
        for (slot, p) in iov.iter_mut().zip(pending) {
            *slot = IoSlice::new(&bufs[p.buf][p.range.clone()]);
        }
        let nowhere = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let mut msgs = [Gathered { parts: &[], to: nowhere, segment: None }; BATCH];
        // Where each message's datagrams start in `pending`.
        let mut starts = [0usize; BATCH + 1];
        let mut m = 0;
        let mut i = 0;
        while i < pending.len() {
            let first = &pending[i];
            let size = first.range.len();
            let (mut j, mut bytes) = (i + 1, size);
            while self.gso && j < pending.len() {
                let len = pending[j].range.len();
                if pending[j].to != first.to || len > size || bytes + len > MAX_GSO_BYTES {
                    break;
                }
                bytes += len;
                j += 1;
                if len < size {
                    break;
                }
            }
            let segment = if j - i > 1 { u16::try_from(size).ok() } else { None };
            msgs[m] = Gathered { parts: &iov[i..j], to: first.to, segment };
            starts[m] = i;
            m += 1;
            i = j;
        }
        starts[m] = pending.len();
        let mut sent = 0;
        while sent < m {
            let (r, ns) = timed(|| self.batch.send_gathered(&ctx.tx, &msgs[sent..m]));
            match r {
                Ok(k) if k > 0 => {
                    let (a, b) = (starts[sent], starts[sent + k]);
                    let bytes: usize = pending[a..b].iter().map(|p| p.range.len()).sum();
                    c.syscall(Crossing::UdpSend, u64_len(b - a), u64_len(bytes), ns);
                    sent += k;
                }
                Err(e) if msgs[sent].segment.is_some() && offload_refused(&e) => {
                    gso_refused(c, &e, ns, &mut self.gso);
                    return self.send(ctx, bufs, &pending[starts[sent]..]);
                }
                Err(e) if !per_packet(&e) => return Err(EngineError::Udp(e)),
                // The first message failed: count its datagrams and go on with the rest.
                _ => {
                    c.syscall(Crossing::UdpSend, 0, 0, ns);
                    c.count_drops(DropReason::SendFailed, u64_len(starts[sent + 1] - starts[sent]));
                    sent += 1;
                }
            }
        }
        Ok(())
    }
}
