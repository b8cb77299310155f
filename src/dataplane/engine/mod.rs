//! Forwarding engines. One contract, several engines; the engine is a run-time choice (`--mode`)
//! so that the lab runs every engine on the same host and binary.

pub mod naive;

use super::counters::Counters;
use super::forward::Forwarder;
use super::peers::PeerTable;
use super::sys::tun::Tun;
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
    /// flannel's proxy shape: poll, then one read and one send per packet, both directions
    /// alternating. The baseline every other engine is measured against.
    Naive,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Naive => "naive",
        }
    }
}

/// What an engine runs with. The control plane owns the peer table and swaps it; the engine
/// only loads it.
pub struct EngineContext {
    /// The TUN queue.
    pub tun: Tun,
    /// The underlay socket, bound to PublicIP:port.
    pub socket: UdpSocket,
    /// The forwarding decision.
    pub forwarder: Forwarder,
    /// The current peer table.
    pub peers: Arc<ArcSwap<PeerTable>>,
    /// Where the engine counts.
    pub counters: Arc<Counters>,
    /// Set to ask the engine to stop.
    pub stop: Arc<AtomicBool>,
}

/// Why an engine stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The TUN device failed in a way that is not a per-packet error.
    #[error("TUN device: {0}")]
    Tun(#[source] io::Error),
    /// The UDP socket failed in a way that is not a per-packet error.
    #[error("UDP socket: {0}")]
    Udp(#[source] io::Error),
    /// poll() failed.
    #[error("poll: {0}")]
    Poll(#[source] io::Error),
}

/// Runs `mode` on the calling thread until `ctx.stop` is set or a fatal error.
pub fn run(mode: Mode, ctx: EngineContext) -> Result<(), EngineError> {
    match mode {
        Mode::Naive => naive::run(ctx),
    }
}
