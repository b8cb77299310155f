//! Where the network config and the leases live: etcd, or a directory that mirrors its keyspace.

pub mod dir;
pub mod etcd;

use crate::proto::lease::{LeaseAttrs, SubnetKey};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// flannel's lease TTL (`LeaseGrant(86400 s)`).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The TTL of a reservation: none. A lease an operator wrote without a TTL keeps none when
/// weft reuses or writes it back, as flanneld does.
pub const NO_TTL: Duration = Duration::ZERO;

/// One subnet lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key under `subnets/`.
    pub key: SubnetKey,
    /// The value.
    pub attrs: LeaseAttrs,
    /// When it lapses unless renewed.
    pub expires: Option<SystemTime>,
    /// Written without a TTL (an operator's reservation): it never lapses, and is not renewed.
    pub reserved: bool,
}

impl Lease {
    /// The TTL it is written back with: [`NO_TTL`] for a reservation, else [`LEASE_TTL`].
    pub fn ttl(&self) -> Duration {
        if self.reserved { NO_TTL } else { LEASE_TTL }
    }
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No network config is stored.
    #[error("no network config at {0}")]
    NoConfig(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The registry cannot be reached (retried).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused, or weft was told to reach it in a way that cannot work: a
    /// configuration mistake that retrying does not mend.
    #[error("{0}")]
    Refused(String),
}

/// The operations weft needs from a registry. Every implementation stores the same keys and
/// values (flannel's), so nothing above this trait knows which one it has.
pub trait Registry: Send + Sync + 'static {
    /// A human-readable name of where the data lives (for logs).
    fn describe(&self) -> String;

    /// The net-config JSON text.
    fn config(&self) -> impl Future<Output = Result<String, RegistryError>> + Send;

    /// Every live lease. Keys that are not lease keys and values that do not parse are skipped.
    fn leases(&self) -> impl Future<Output = Result<Vec<Lease>, RegistryError>> + Send;

    /// Creates `key` with `attrs` if no live lease holds it. `Ok(false)` means someone else
    /// holds it (a lost race, for the caller to move on from).
    fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// Writes `key` with `attrs` and a fresh TTL ([`NO_TTL`]: none), whether or not it exists
    /// (renewal, reuse).
    fn renew_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Deletes `key` (a lease this node created and gives back). A missing one is fine.
    fn delete_lease(&self, key: &SubnetKey) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Resolves with the new lease set once it differs from `known`.
    fn watch_leases(&self, known: &[Lease]) -> impl Future<Output = Result<Vec<Lease>, RegistryError>> + Send;
}
