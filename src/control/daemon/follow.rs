//! While weft runs: the lease renewed (a failed renewal again after a minute, as flanneld),
//! the peers followed, our own lease defended (re-taken when deleted or lost with the
//! registry's data, written back when someone overwrote it), and the data path healed.

use super::datapath::DataPath;
use super::signals::Shutdown;
use crate::control::backoff::Backoff;
use crate::control::lease::{Ipv6Carrier, peers_from_leases};
use crate::control::metrics::MetricsState;
use crate::control::registry::{LEASE_TTL, Lease, Registry};
use crate::control::said::SaidOnce;
use crate::dataplane::engine::EngineError;
use crate::dataplane::peers::Peer;
use crate::proto::netconfig::NetConfig;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How often the data path is checked (a VXLAN device or a route deleted by hand comes back),
/// and a lease that needs writing back is tried again.
const HEAL_EVERY: Duration = Duration::from_secs(2);

/// How weft ended while following.
#[derive(Debug)]
pub enum Ended {
    /// A signal asked it to stop.
    Signal(&'static str),
    /// An engine stopped by itself.
    Engine(EngineError),
}

/// What the follow loop keeps.
pub struct Follower<'a, R: Registry> {
    reg: &'a R,
    cfg: &'a NetConfig,
    own: Lease,
    metrics: Arc<MetricsState>,
    renew_every: Duration,
    known: Vec<Lease>,
    peers: Vec<Peer>,
    /// Our lease must be written back (it was deleted or overwritten, and the last try failed).
    reclaim: bool,
    said: SaidOnce,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn log_peer_changes(old: &[Peer], new: &[Peer]) {
    let show = |ps: &[Peer]| -> BTreeSet<String> {
        ps.iter().map(|p| format!("{} via {}", p.subnets(), p.endpoint)).collect()
    };
    let (before, after) = (show(old), show(new));
    for added in after.difference(&before) {
        tracing::info!("peer added: {added}");
    }
    for removed in before.difference(&after) {
        tracing::info!("peer removed: {removed}");
    }
}

impl<'a, R: Registry> Follower<'a, R> {
    /// Starts from the leases listed at start (`known`) and the peers made of them.
    pub fn new(
        reg: &'a R,
        cfg: &'a NetConfig,
        own: Lease,
        metrics: Arc<MetricsState>,
        renew_margin: Duration,
        known: Vec<Lease>,
    ) -> Self {
        let renew_every = LEASE_TTL.saturating_sub(renew_margin).max(Duration::from_secs(60));
        metrics.lease_expiry.store(unix_now() + LEASE_TTL.as_secs(), Ordering::Relaxed);
        let mut f = Self {
            reg,
            cfg,
            own,
            metrics,
            renew_every,
            known,
            peers: Vec::new(),
            reclaim: false,
            said: SaidOnce::default(),
        };
        f.peers = f.peers_of(&f.known.clone());
        f
    }

    /// The peers to route now.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peers in `leases`; a refused lease is said once.
    fn peers_of(&self, leases: &[Lease]) -> Vec<Peer> {
        let set = peers_from_leases(self.cfg, leases, &self.own.key, Ipv6Carrier::of(&self.own.attrs));
        for r in &set.refused {
            if self.said.first(&format!("{} {}", r.key, r.why)) {
                tracing::warn!(lease = %r.key, "ignoring lease: {}", r.why);
            }
        }
        for r in &set.v6_unrouted {
            if self.said.first(&format!("{} {}", r.key, r.why)) {
                tracing::warn!(lease = %r.key, "routing its IPv4 subnet only: {}", r.why);
            }
        }
        set.peers
    }

    /// Notes whether our own lease is still ours in `now`.
    fn check_own(&mut self, now: &[Lease]) {
        let subnet = self.own.key;
        match now.iter().find(|l| l.key.overlaps(&subnet)) {
            None => tracing::warn!(
                %subnet,
                "our lease is gone (deleted, expired, or lost with the registry's data); taking it again"
            ),
            Some(l) if l.attrs != self.own.attrs => tracing::warn!(
                %subnet,
                public_ip = %l.attrs.public_ip,
                "our lease was overwritten; writing ours back"
            ),
            Some(_) => return,
        }
        self.reclaim = true;
    }

    /// Writes our lease back: created where it is gone, overwritten where someone else's value
    /// stands. Left to the next heal tick if the registry fails.
    async fn reclaim_lease(&mut self) {
        let (key, attrs) = (&self.own.key, &self.own.attrs);
        let gone = !self.known.iter().any(|l| l.key.overlaps(key));
        let written = if gone {
            match self.reg.create_lease(key, attrs, LEASE_TTL).await {
                Ok(true) => Ok(()),
                // Someone wrote it between the listing and now: overwrite it as below.
                Ok(false) => self.reg.renew_lease(key, attrs, self.own.ttl()).await,
                Err(e) => Err(e),
            }
        } else {
            self.reg.renew_lease(key, attrs, self.own.ttl()).await
        };
        match written {
            Ok(()) => {
                self.reclaim = false;
                self.metrics.lease_expiry.store(unix_now() + LEASE_TTL.as_secs(), Ordering::Relaxed);
                tracing::info!(subnet = %key, "our lease is written back");
            }
            Err(e) => tracing::warn!("writing our lease back: {e}; trying again in {HEAL_EVERY:?}"),
        }
    }

    /// Follows a new lease set: our own lease checked, the peers re-made and handed to the
    /// data path.
    async fn apply(&mut self, now: Vec<Lease>, dp: &mut DataPath) {
        self.check_own(&now);
        let peers = self.peers_of(&now);
        log_peer_changes(&self.peers, &peers);
        dp.sync(&peers).await;
        self.said.retain(|w| now.iter().any(|l| w.starts_with(&format!("{} ", l.key))));
        self.peers = peers;
        self.known = now;
        if self.reclaim {
            self.reclaim_lease().await;
        }
    }

    /// Renews our lease; returns when to renew next (after a failure: in a minute). A
    /// reservation has no TTL to renew.
    async fn renew(&mut self, backoff: &mut Backoff) -> Instant {
        if self.own.reserved {
            return Instant::now() + LEASE_TTL;
        }
        match self.reg.renew_lease(&self.own.key, &self.own.attrs, LEASE_TTL).await {
            Ok(()) => {
                backoff.reset();
                self.metrics.lease_expiry.store(unix_now() + LEASE_TTL.as_secs(), Ordering::Relaxed);
                tracing::info!(subnet = %self.own.key, "lease renewed");
                Instant::now() + self.renew_every
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!("lease renewal failed: {e}; retrying in {wait:?}");
                Instant::now() + wait
            }
        }
    }

    /// Runs until a signal or an engine stops it; the firewall is checked every `resync`.
    pub async fn run(mut self, dp: &mut DataPath, shutdown: &mut Shutdown, resync: Duration) -> Ended {
        let mut firewall = tokio::time::interval_at(Instant::now() + resync, resync);
        firewall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_at = Instant::now() + self.renew_every;
        let mut renew_backoff = Backoff::new(Backoff::RENEWAL);
        let mut heal = tokio::time::interval(HEAL_EVERY);
        heal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch_backoff = Backoff::registry();
        // While set, the watch failed and waits until then before it is tried again.
        let mut watch_paused: Option<Instant> = None;
        loop {
            let paused_until = watch_paused.unwrap_or_else(Instant::now);
            tokio::select! {
                sig = shutdown.wait() => return Ended::Signal(sig),
                r = dp.engine_stopped() => {
                    let e = r.err().unwrap_or(EngineError::Panicked("an engine returned".into()));
                    // A TUN deleted by hand stops the engines: make it again, as the kernel
                    // path makes a deleted VXLAN device again.
                    match dp.revive_if_tun_gone().await {
                        Ok(true) => continue,
                        Ok(false) => return Ended::Engine(e),
                        Err(again) => tracing::warn!("{again}; trying again in {HEAL_EVERY:?}"),
                    }
                }
                _ = tokio::time::sleep_until(renew_at) => renew_at = self.renew(&mut renew_backoff).await,
                _ = firewall.tick() => dp.resync_firewall().await,
                _ = heal.tick() => {
                    if let Err(e) = dp.heal(&self.peers).await {
                        tracing::warn!("{e}; trying again in {HEAL_EVERY:?}");
                    }
                    if self.reclaim {
                        self.reclaim_lease().await;
                    }
                }
                _ = tokio::time::sleep_until(paused_until), if watch_paused.is_some() => watch_paused = None,
                changed = self.reg.watch_leases(&self.known), if watch_paused.is_none() => match changed {
                    Ok(now) => {
                        watch_backoff.reset();
                        self.apply(now, dp).await;
                    }
                    Err(e) => {
                        let wait = watch_backoff.next_delay();
                        tracing::warn!("watching leases: {e}; retrying in {wait:?} (forwarding goes on with the last known peers)");
                        watch_paused = Some(Instant::now() + wait);
                    }
                },
            }
        }
    }
}
