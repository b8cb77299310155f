//! The control plane: registries, leases, watch, and host network setup over netlink.
//! It never touches packets; it hands the data path immutable peer tables.

pub mod backoff;
pub mod cni;
pub mod daemon;
pub mod kernel;
pub mod lease;
pub mod metrics;
pub mod netlink;
pub mod nft;
pub mod registry;
pub mod said;
