//! The directory registry: `DIR/config` and `DIR/subnets/<key>`, one JSON value per file.
//!
//! Writes go to a temporary file that is then renamed into place, so readers never see half a
//! value. Creation takes an exclusive `flock` on `DIR/subnets/.lock` around check-and-write, so
//! several weft processes can share one directory. A lease's expiry is its file's mtime plus the
//! TTL it was written with (24 h), which renewal pushes forward.
//!
//! A watch wakes on inotify events of `subnets/` and re-reads the directory then, and every
//! [`RESCAN_EVERY`] in any case: leases lapse by the clock, not by an event, and a network
//! filesystem sends no events for other hosts' writes. An idle weft thus reads a directory of
//! thousands of leases once per rescan, not five times a second.

use super::{LEASE_TTL, Lease, Registry, RegistryError};
use crate::control::said::SaidOnce;
use crate::dataplane::sys::poll::wait_readable;
use crate::proto::lease::{LeaseAttrs, SubnetKey};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// How often a watch re-reads the directory without an event.
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// How often it re-reads when inotify cannot be had (the instance limit reached, say).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A registry kept in a directory.
#[derive(Debug, Clone)]
pub struct DirRegistry {
    root: PathBuf,
    /// The inotify instance of the watch (made by the first watch; kept between calls, so that
    /// no event falls between two of them). None inside: inotify could not be had.
    events: std::sync::Arc<tokio::sync::Mutex<Option<Option<std::sync::Arc<Inotify>>>>>,
    /// Unreadable lease files, each said once (the directory is re-read five times a second).
    said: std::sync::Arc<SaidOnce>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |error| RegistryError::Io { op, path: path.to_path_buf(), error }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl DirRegistry {
    /// Opens (creating `subnets/` if needed) the registry at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(RegistryError::Io {
                op: "opening registry directory",
                path: root,
                error: std::io::ErrorKind::NotFound.into(),
            });
        }
        let subnets = root.join("subnets");
        fs::create_dir_all(&subnets).map_err(io_err("creating", &subnets))?;
        Ok(Self { root, events: Default::default(), said: Default::default() })
    }

    fn subnets(&self) -> PathBuf {
        self.root.join("subnets")
    }

    fn lock(&self) -> Result<Flock<File>, RegistryError> {
        let path = self.subnets().join(".lock");
        let f =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err("opening", &path))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| RegistryError::Io {
            op: "locking",
            path,
            error: e.into(),
        })
    }

    fn read_lease(&self, path: &Path, key: SubnetKey) -> Option<Lease> {
        let meta = fs::metadata(path).ok()?;
        let text = fs::read_to_string(path).ok()?;
        let attrs = match LeaseAttrs::parse(&text) {
            Ok(a) => a,
            Err(e) => {
                if self.said.first(&format!("{} {e}", path.display())) {
                    tracing::warn!(path = %path.display(), "skipping lease: {e}");
                }
                return None;
            }
        };
        let expires = meta.modified().ok().map(|m| m + LEASE_TTL);
        Some(Lease { key, attrs, expires })
    }

    fn list(&self) -> Result<Vec<Lease>, RegistryError> {
        let dir = self.subnets();
        let now = SystemTime::now();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(|n| n.parse::<SubnetKey>().ok()) else {
                continue; // flannel ignores keys that are not lease keys
            };
            if let Some(l) = self.read_lease(&entry.path(), key)
                && l.expires.is_none_or(|e| e > now)
            {
                out.push(l);
            }
        }
        out.sort_by_key(|l| l.key);
        Ok(out)
    }

    /// An inotify instance on `subnets/`, or None (with a warning) if the kernel will not give one.
    fn inotify(&self) -> Option<std::sync::Arc<Inotify>> {
        let dir = self.subnets();
        let made = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|i| {
            let what = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_ATTRIB;
            i.add_watch(&dir, what).map(|_| i)
        });
        match made {
            Ok(i) => Some(std::sync::Arc::new(i)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "no inotify on the registry ({e}); reading it every {POLL_INTERVAL:?}");
                None
            }
        }
    }

    fn write(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), RegistryError> {
        let path = self.subnets().join(key.to_string());
        write_atomic(&path, attrs.to_json().as_bytes()).map_err(io_err("writing", &path))
    }
}

impl Registry for DirRegistry {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    async fn config(&self) -> Result<String, RegistryError> {
        let path = self.root.join("config");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RegistryError::NoConfig(path.display().to_string()))
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    async fn leases(&self) -> Result<Vec<Lease>, RegistryError> {
        self.list()
    }

    async fn create_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, _ttl: Duration) -> Result<bool, RegistryError> {
        let _guard = self.lock()?;
        if self.list()?.iter().any(|l| l.key.v4 == key.v4) {
            return Ok(false);
        }
        self.write(key, attrs)?;
        Ok(true)
    }

    async fn renew_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, _ttl: Duration) -> Result<(), RegistryError> {
        let _guard = self.lock()?;
        self.write(key, attrs)
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let _guard = self.lock()?;
        let path = self.subnets().join(key.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    async fn watch_leases(&self, known: &[Lease]) -> Result<Vec<Lease>, RegistryError> {
        let mut events = self.events.lock().await;
        let events = events.get_or_insert_with(|| self.inotify());
        loop {
            // What is queued now is covered by the listing below.
            if let Some(fd) = events.as_ref() {
                while fd.read_events().is_ok() {}
            }
            let now = self.list()?;
            // Expiry moves on every renewal; a change is a change of keys or values.
            let same =
                now.len() == known.len() && now.iter().zip(known).all(|(a, b)| a.key == b.key && a.attrs == b.attrs);
            if !same {
                return Ok(now);
            }
            match events.as_ref() {
                Some(fd) => {
                    // A blocking wait on a pool thread: if this watch is dropped meanwhile, the
                    // thread returns by itself within RESCAN_EVERY.
                    let fd = fd.clone();
                    let _ = tokio::task::spawn_blocking(move || wait_readable([&*fd], RESCAN_EVERY)).await;
                }
                None => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(s: &str) -> SubnetKey {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn create_list_renew_and_ignore_junk() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("config"), r#"{"Network":"100.96.0.0/16"}"#).unwrap();
        let r = DirRegistry::open(d.path()).unwrap();
        assert!(r.config().await.unwrap().contains("100.96.0.0/16"));
        let a = LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 2));
        assert!(r.create_lease(&key("100.96.1.0-24"), &a, LEASE_TTL).await.unwrap());
        assert!(!r.create_lease(&key("100.96.1.0-24"), &a, LEASE_TTL).await.unwrap());
        fs::write(d.path().join("subnets/not-a-key"), "x").unwrap();
        fs::write(d.path().join("subnets/100.96.9.0-24"), "not json").unwrap();
        let l = r.leases().await.unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].attrs, a);
        assert_eq!(
            fs::read_to_string(d.path().join("subnets/100.96.1.0-24")).unwrap(),
            r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#
        );
        let b = LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 3));
        r.renew_lease(&key("100.96.1.0-24"), &b, LEASE_TTL).await.unwrap();
        assert_eq!(r.leases().await.unwrap()[0].attrs, b);
    }

    #[tokio::test]
    async fn expired_leases_are_free() {
        let d = tempfile::tempdir().unwrap();
        let r = DirRegistry::open(d.path()).unwrap();
        let k = key("100.96.1.0-24");
        r.create_lease(&k, &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 2)), LEASE_TTL).await.unwrap();
        let f = File::options().write(true).open(d.path().join("subnets").join(k.to_string())).unwrap();
        f.set_modified(SystemTime::now() - LEASE_TTL - Duration::from_secs(1)).unwrap();
        assert!(r.leases().await.unwrap().is_empty());
        assert!(r.create_lease(&k, &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 3)), LEASE_TTL).await.unwrap());
    }

    #[tokio::test]
    async fn missing_dir_and_config_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        assert!(DirRegistry::open(d.path().join("nope")).unwrap_err().to_string().contains("nope"));
        let r = DirRegistry::open(d.path()).unwrap();
        assert!(matches!(r.config().await, Err(RegistryError::NoConfig(_))));
    }

    #[tokio::test]
    async fn watch_sees_a_change() {
        let d = tempfile::tempdir().unwrap();
        let r = DirRegistry::open(d.path()).unwrap();
        let known = r.leases().await.unwrap();
        let p = d.path().join("subnets/100.96.4.0-24");
        let w = tokio::spawn({
            let r = r.clone();
            async move { r.watch_leases(&known).await }
        });
        write_atomic(&p, br#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), w).await.unwrap().unwrap().unwrap();
        assert_eq!(got.len(), 1);
    }
}
