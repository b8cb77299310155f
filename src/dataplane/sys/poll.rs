//! Waiting for readiness on a few fds.

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Waits until one of `fds` is readable or `timeout` passes. Returns which are readable.
/// EINTR counts as a timeout (the caller re-checks its stop flag).
pub fn wait_readable<const N: usize>(fds: [&dyn AsFd; N], timeout: Duration) -> io::Result<[bool; N]> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    // On the stack: a forwarder polls once per batch, and allocates nothing per batch.
    let mut pfds: [PollFd<'_>; N] = std::array::from_fn(|i| PollFd::new(fds[i].as_fd(), PollFlags::POLLIN));
    match nix::poll::poll(&mut pfds, PollTimeout::from(ms)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok([false; N]),
        Err(e) => return Err(e.into()),
    }
    let mut out = [false; N];
    for (o, p) in out.iter_mut().zip(&pfds) {
        *o = p.revents().is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP));
    }
    Ok(out)
}
