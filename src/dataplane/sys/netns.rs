//! Entering a named network namespace (`/run/netns/NAME`, as `ip netns` makes them).

use nix::sched::CloneFlags;
use std::fs::File;
use std::io;

/// Moves the calling thread into the network namespace `name`. Sockets it then creates live
/// there; other threads are unaffected.
pub fn enter(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad netns name {name:?}")));
    }
    let f = File::open(format!("/run/netns/{name}"))?;
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}
