//! Writing decapsulated packets into a TUN opened with `IFF_VNET_HDR`, runs of one flow
//! coalesced: consecutive TCP segments of one flow (GRO rules) leave as one TCPv4 GSO packet,
//! consecutive UDP datagrams of one flow as one `GSO_UDP_L4` packet (USO), each with one
//! `writev` that gathers [virtio_net_hdr, merged header, payloads] without copying a payload.
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
use crate::proto::virtio;
use std::io::IoSlice;

/// Most packets one run merges (one `writev`): what one GRO receive can hold.
pub const MAX_PACKETS: usize = crate::dataplane::sys::udp::MAX_SEGMENTS;
/// Room for a merged packet's IPv4 + transport headers.
const HDR_ROOM: usize = crate::proto::gso::MAX_HDR_LEN;

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

/// The coalescing writer's state: a header scratch area.
pub struct TunWriter {
    merged_hdr: [u8; HDR_ROOM],
}

impl Default for TunWriter {
    fn default() -> Self {
        Self { merged_hdr: [0; HDR_ROOM] }
    }
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
    /// Writes `packets` (inner IPv4 packets, in order) into the TUN, coalescing runs of at most
    /// [`MAX_PACKETS`]. `outer` says what vouched for their bytes on the way here: where it is
    /// not an outer checksum the kernel verified, each packet's own checksums are verified
    /// before it is merged (see [`gro::Rules`](crate::proto::gro::Rules)).
    pub fn write(&mut self, ctx: &EngineContext, packets: &[&[u8]], outer: Outer) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let verify = match outer {
            Outer::Verified => false,
            Outer::AsTheBackend => matches!(ctx.forwarder.encap, Encap::Vxlan { .. }),
        };
        let rules = Rules { udp: ctx.offloads.has(Offload::TunUso), verify };
        let mut i = 0;
        while i < packets.len() {
            let first = packets[i];
            let Ok(mut run) = FlowRun::start(first, rules) else {
                tun_write(ctx, first)?;
                i += 1;
                continue;
            };
            let mut iov = [IoSlice::new(&[]); MAX_PACKETS + 2];
            iov[2] = IoSlice::new(run.first_payload());
            let mut j = i + 1;
            while j < packets.len() && j - i < MAX_PACKETS {
                match run.push(packets[j]) {
                    Ok(p) => iov[j - i + 2] = IoSlice::new(&packets[j][p]),
                    Err(_) => break,
                }
                j += 1;
            }
            let Ok((hl, vh)) = run.finish(&mut self.merged_hdr) else {
                c.count_drops(DropReason::BadIpHeader, u64_len(run.segments()));
                i = j;
                continue;
            };
            let mut vnet = [0u8; virtio::LEN];
            let _ = vh.write(&mut vnet);
            iov[0] = IoSlice::new(&vnet);
            iov[1] = IoSlice::new(&self.merged_hdr[..hl]);
            let (r, ns) = timed(|| ctx.tun.send_vectored(&iov[..j - i + 2]));
            match r {
                Err(e) if vh.gso_kind() == virtio::GSO_UDP_L4 && refused(&e) => {
                    c.syscall(Crossing::TunWrite, 0, 0, ns);
                    ctx.offloads.refuse(Offload::TunUso, &e);
                    for p in &packets[i..j] {
                        tun_write(ctx, p)?;
                    }
                }
                r => count_written(c, r, ns, run.segments())?,
            }
            i = j;
        }
        Ok(())
    }
}
