//! SIGINT and SIGTERM at any moment of `weft run` end it cleanly: they are blocked before
//! anything else happens, and unblocked only once the handler that turns them into a shutdown
//! request is in place, so a signal in the first milliseconds waits for it instead of killing
//! the process half-way through a write.

use nix::sys::signal::{SigSet, Signal};
use std::future::Future;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The signals that ask weft to stop.
fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGINT);
    s.add(Signal::SIGTERM);
    s
}

/// Blocks SIGINT and SIGTERM on the calling thread (and the threads it starts) until
/// [`Shutdown::install`] unblocks them. Call it first thing.
pub fn block() -> nix::Result<()> {
    stop_signals().thread_block()
}

/// Unblocks SIGINT and SIGTERM (for a command with handlers of its own, such as the lab).
pub fn unblock() -> nix::Result<()> {
    stop_signals().thread_unblock()
}

/// A shutdown was asked for (by this signal).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0}: shutting down")]
pub struct Interrupted(pub &'static str);

/// Tells whether, and by which signal, weft was asked to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<&'static str>>,
}

impl Shutdown {
    /// Installs the handlers, then unblocks the signals (a pending one is handled at once).
    /// Needs the tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let sig = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = tx.send(Some(sig));
        });
        unblock().map_err(std::io::Error::from)?;
        Ok(Self { rx })
    }

    /// The signal that asked weft to stop, if one has.
    pub fn requested(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Resolves once a stop is asked for, with the signal's name.
    pub async fn wait(&mut self) -> &'static str {
        loop {
            if let Some(sig) = *self.rx.borrow_and_update() {
                return sig;
            }
            if self.rx.changed().await.is_err() {
                // The handler task is gone with the runtime: nothing will ask any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `fut` unless a stop is asked for first.
    pub async fn unless<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Interrupted> {
        if let Some(sig) = self.requested() {
            return Err(Interrupted(sig));
        }
        tokio::select! {
            sig = self.wait() => Err(Interrupted(sig)),
            v = fut => Ok(v),
        }
    }

    /// Fails with [`Interrupted`] if a stop has been asked for.
    pub fn check(&self) -> Result<(), Interrupted> {
        self.requested().map_or(Ok(()), |s| Err(Interrupted(s)))
    }
}
