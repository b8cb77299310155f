//! Writing decapsulated packets into a TUN opened with `IFF_VNET_HDR`, runs of one flow
//! coalesced: consecutive TCP segments of one flow (GRO rules) leave as one TCPv4 GSO packet,
//! consecutive UDP datagrams of one flow as one `GSO_UDP_L4` packet (USO), each with one
//! `writev` that gathers [virtio_net_hdr and merged headers, payloads] without copying a payload.
//! The kernel takes the packet through routing and forwarding once and cuts it back into the
//! same segments or datagrams only where it must (at the receiving socket, or a device without
//! the offload). This is what turns the per-packet cost of the receiving stacks — the largest
//! cost left for small datagrams — into a per-run cost.
//!
//! If the TUN refuses USO (Linux < 6.2 answers EINVAL), the run's datagrams are written one by
//! one, and every later one too: nothing is lost.

use super::{EngineContext, EngineError, per_packet, tun_write, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropReason, timed};
use crate::dataplane::forward::Encap;
use crate::dataplane::offloads::{Offload, refused};
use crate::proto::gro::{FlowRun, Rules};
use crate::proto::virtio::{self, VnetHdr};
use std::io::IoSlice;
use std::ops::Range;

/// Most packets one run merges (one `writev`): what one GRO receive can hold.
pub const MAX_PACKETS: usize = crate::dataplane::sys::udp::MAX_SEGMENTS;
/// Room for a `virtio_net_hdr` and a merged packet's IP and transport headers.
pub const HEAD_ROOM: usize = virtio::LEN + crate::proto::gso::MAX_HDR_LEN;

/// What covered a batch of decapsulated packets on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outer {
    /// What the backend promises: flannel's UDP backend always sends an outer UDP checksum,
    /// and the kernel verified it before weft received the datagram; VXLAN may carry none (a
    /// kernel VXLAN peer sends a zero outer checksum), so there nothing covered the inner
    /// packet since it left its sender's stack.
    AsTheBackend,
    /// Every packet arrived in one UDP GRO receive of two or more datagrams. The kernel builds
    /// such a bundle from datagrams with a non-zero checksum only, after validating it
    /// (`udp4_gro_receive`, `udp_gro_receive_segment`: "requires non zero csum, for symmetry
    /// with GSO"), and a local sender cannot make one without a checksum (`UDP_SEGMENT` with
    /// `SO_NO_CHECK` is EINVAL), so each packet's bytes were covered whatever the backend.
    Verified,
}

/// One TUN write a batch of packets becomes: `head` (a `virtio_net_hdr`, and a merged packet's
/// headers), then `parts[k]` of packet `first + k` for each `k`.
#[derive(Debug, Clone)]
pub struct Planned {
    head: [u8; HEAD_ROOM],
    head_len: usize,
    /// The first packet of the write (an index into the batch).
    pub first: usize,
    parts: [Range<usize>; MAX_PACKETS],
    n: usize,
    /// The `virtio_net_hdr` in `head`.
    pub vnet: VnetHdr,
}

impl Planned {
    /// The bytes in front of the payloads.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// What of each packet follows, from packet `first` on.
    pub fn parts(&self) -> &[Range<usize>] {
        &self.parts[..self.n]
    }

    /// Packets the write carries.
    pub fn packets(&self) -> usize {
        self.n
    }

    /// Its packets' indices in the batch.
    pub fn range(&self) -> Range<usize> {
        self.first..self.first + self.n
    }
}

impl Default for Planned {
    fn default() -> Self {
        Self {
            head: [0; HEAD_ROOM],
            head_len: 0,
            first: 0,
            parts: std::array::from_fn(|_| 0..0),
            n: 0,
            vnet: VnetHdr::default(),
        }
    }
}

/// The coalescing writer's state: the writes of one batch, reused.
pub struct TunWriter {
    planned: Vec<Planned>,
}

impl Default for TunWriter {
    fn default() -> Self {
        Self { planned: vec![Planned::default(); MAX_PACKETS] }
    }
}

/// How a batch that `outer` covered may be merged: UDP runs too where the TUN takes USO; each
/// packet's checksums verified first where nothing the kernel checked covered its bytes.
pub fn rules(ctx: &EngineContext, outer: Outer) -> Rules {
    let verify = match outer {
        Outer::Verified => false,
        Outer::AsTheBackend => matches!(ctx.forwarder.encap, Encap::Vxlan { .. }),
    };
    Rules { udp: ctx.offloads.has(Offload::TunUso), verify }
}

/// Counts a TUN write of `packets` packets, or their drop.
fn count_written(c: &Counters, r: std::io::Result<usize>, ns: u64, packets: usize) -> Result<(), EngineError> {
    match r {
        Ok(w) => c.syscall(Crossing::TunWrite, u64_len(packets), u64_len(w.saturating_sub(virtio::LEN)), ns),
        Err(e) if per_packet(&e) => {
            c.syscall(Crossing::TunWrite, 0, 0, ns);
            c.count_drops(DropReason::TunWriteFailed, u64_len(packets));
        }
        Err(e) => return Err(EngineError::Tun(e)),
    }
    Ok(())
}

impl TunWriter {
    /// Plans the TUN writes of `packets` (inner packets, in order, at most [`MAX_PACKETS`]):
    /// runs of one flow merged under `rules`, every other packet written as it is behind a
    /// `virtio_net_hdr` of zeros. A run whose merged headers cannot be written is counted as a
    /// `BadIpHeader` drop on `c` and planned as nothing.
    pub fn plan(&mut self, packets: &[&[u8]], rules: Rules, c: &Counters) -> &[Planned] {
        let mut w = 0;
        let mut i = 0;
        while i < packets.len().min(MAX_PACKETS) {
            let p = &mut self.planned[w];
            let first = packets[i];
            p.first = i;
            let Ok(mut run) = FlowRun::start(first, rules) else {
                p.vnet = VnetHdr::default();
                // A lone packet's head is a virtio_net_hdr of zeros; the rest of the room is unused.
                p.head[..virtio::LEN].fill(0);
                p.head_len = virtio::LEN;
                p.parts[0] = 0..first.len();
                p.n = 1;
                (w, i) = (w + 1, i + 1);
                continue;
            };
            p.parts[0] = first.len() - run.first_payload().len()..first.len();
            let mut j = i + 1;
            while j < packets.len() && j - i < MAX_PACKETS {
                match run.push(packets[j]) {
                    Ok(r) => p.parts[j - i] = r,
                    Err(_) => break,
                }
                j += 1;
            }
            let (vnet, hdrs) = p.head.split_at_mut(virtio::LEN);
            let Ok((hl, vh)) = run.finish(hdrs) else {
                c.count_drops(DropReason::BadIpHeader, u64_len(run.segments()));
                i = j;
                continue;
            };
            let _ = vh.write(vnet);
            p.vnet = vh;
            p.head_len = virtio::LEN + hl;
            p.n = j - i;
            (w, i) = (w + 1, j);
        }
        &self.planned[..w]
    }

    /// Writes `packets` (inner packets, in order) into the TUN, coalescing runs of at most
    /// [`MAX_PACKETS`]. `outer` says what vouched for their bytes on the way here: where it is
    /// not an outer checksum the kernel verified, each packet's own checksums are verified
    /// before it is merged (see [`gro::Rules`](crate::proto::gro::Rules)).
    pub fn write(&mut self, ctx: &EngineContext, packets: &[&[u8]], outer: Outer) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let rules = rules(ctx, outer);
        for chunk in packets.chunks(MAX_PACKETS) {
            for p in self.plan(chunk, rules, c) {
                let mut iov = [IoSlice::new(&[]); MAX_PACKETS + 1];
                iov[0] = IoSlice::new(p.head());
                for (v, (pkt, r)) in iov[1..].iter_mut().zip(chunk[p.range()].iter().zip(p.parts())) {
                    *v = IoSlice::new(&pkt[r.clone()]);
                }
                let (r, ns) = timed(|| ctx.tun.send_vectored(&iov[..=p.packets()]));
                match r {
                    Err(e) if p.vnet.gso_kind() == virtio::GSO_UDP_L4 && refused(&e) => {
                        c.syscall(Crossing::TunWrite, 0, 0, ns);
                        ctx.offloads.refuse(Offload::TunUso, &e);
                        for pkt in &chunk[p.range()] {
                            tun_write(ctx, pkt)?;
                        }
                    }
                    r => count_written(c, r, ns, p.packets())?,
                }
            }
        }
        Ok(())
    }
}
