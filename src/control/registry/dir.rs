//! The directory registry: `DIR/config` and `DIR/subnets/<key>`, one JSON value per file.
//!
//! Writes go to a temporary file that is then renamed into place, so readers never see half a
//! value. Creation takes an exclusive `flock` on `DIR/subnets/.lock` around check-and-write, so
//! several weft processes can share one directory. A lease's expiry is its file's mtime plus the
//! TTL it was written with (24 h), which renewal pushes forward.
//!
//! A watch re-reads the directory when inotify reports a change in `subnets/`; when the
//! directory's own mtime moved (checked every [`RESCAN_EVERY`]: a network filesystem sends no
//! events for other hosts' writes, but its renames move the mtime); when a listed lease lapses
//! (leases lapse by the clock, not by an event); and every [`FULL_RESCAN`] in any case. An idle
//! weft with thousands of leases thus stats one directory every few seconds.

use super::{LEASE_TTL, Lease, Registry, RegistryError};
use crate::control::said::SaidOnce;
use crate::dataplane::sys::poll::wait_readable;
use crate::proto::lease::{LeaseAttrs, SubnetKey};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// How often a watch checks the directory's mtime.
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// How often a watch re-reads every lease without a reason to.
pub const FULL_RESCAN: Duration = Duration::from_secs(60);
/// How often it re-reads when inotify cannot be had (the instance limit reached, say).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A registry kept in a directory.
#[derive(Debug, Clone)]
pub struct DirRegistry {
    root: PathBuf,
    /// What a watch keeps between calls (the daemon drops a waiting watch whenever another
    /// of its timers fires, and calls again).
    watch: std::sync::Arc<tokio::sync::Mutex<Option<WatchState>>>,
    /// Unreadable lease files, each said once.
    said: std::sync::Arc<SaidOnce>,
    /// Each lease file as last read, so that an unchanged one is not read and parsed again.
    parsed: std::sync::Arc<std::sync::Mutex<HashMap<SubnetKey, Parsed>>>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |error| RegistryError::Io { op, path: path.to_path_buf(), error }
}

/// A watch's state: the inotify instance (kept, so that no event falls between two calls), and
/// the last listing with its time (reused while no event came and it is younger than
/// [`RESCAN_EVERY`]).
#[derive(Debug)]
struct WatchState {
    /// None: inotify could not be had, and the directory is read every [`POLL_INTERVAL`].
    inotify: Option<std::sync::Arc<Inotify>>,
    listed: Option<Listing>,
}

/// One reading of the directory.
#[derive(Debug)]
struct Listing {
    at: std::time::Instant,
    /// `subnets/`'s mtime when it was read.
    dir_mtime: Option<SystemTime>,
    leases: Vec<Lease>,
}

impl Listing {
    /// Whether the directory must be read again (no events came since this reading).
    fn stale(&self, dir_mtime: Option<SystemTime>) -> bool {
        let now = SystemTime::now();
        self.at.elapsed() >= FULL_RESCAN
            || dir_mtime != self.dir_mtime
            || self.leases.iter().any(|l| l.expires.is_some_and(|e| e <= now))
    }
}

/// A lease file as last read: what identifies its contents (inode, size, mtime), and its value
/// (None: it did not parse).
#[derive(Debug, Clone)]
struct Parsed {
    stamp: (u64, u64, SystemTime),
    attrs: Option<LeaseAttrs>,
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
        Ok(Self { root, watch: Default::default(), said: Default::default(), parsed: Default::default() })
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

    /// The lease in file `path`; a file unchanged since it was last read (same inode, size and
    /// mtime: every write replaces the file or changes its mtime) is not read again.
    fn read_lease(&self, path: &Path, key: SubnetKey, seen: &mut HashMap<SubnetKey, Parsed>) -> Option<Lease> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?;
        let stamp = (meta.ino(), meta.len(), modified);
        let attrs = match self.parsed.lock().ok().and_then(|p| p.get(&key).cloned()) {
            Some(p) if p.stamp == stamp => p.attrs,
            _ => {
                let text = fs::read_to_string(path).ok()?;
                LeaseAttrs::parse(&text)
                    .map_err(|e| {
                        if self.said.first(&format!("{} {e}", path.display())) {
                            tracing::warn!(path = %path.display(), "skipping lease: {e}");
                        }
                    })
                    .ok()
            }
        };
        seen.insert(key, Parsed { stamp, attrs: attrs.clone() });
        Some(Lease { key, attrs: attrs?, expires: Some(modified + LEASE_TTL), reserved: false })
    }

    fn list(&self) -> Result<Vec<Lease>, RegistryError> {
        let dir = self.subnets();
        let now = SystemTime::now();
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(|n| n.parse::<SubnetKey>().ok()) else {
                continue; // flannel ignores keys that are not lease keys
            };
            if let Some(l) = self.read_lease(&entry.path(), key, &mut seen)
                && l.expires.is_none_or(|e| e > now)
            {
                out.push(l);
            }
        }
        // What is no longer in the directory is forgotten.
        if let Ok(mut p) = self.parsed.lock() {
            *p = seen;
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
                | AddWatchFlags::IN_MODIFY
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
        if self.list()?.iter().any(|l| l.key.overlaps(key)) {
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
        let mut guard = self.watch.lock().await;
        let st = guard.get_or_insert_with(|| WatchState { inotify: self.inotify(), listed: None });
        loop {
            // Events queued now are covered by the listing below.
            let mut events = false;
            if let Some(fd) = st.inotify.as_ref() {
                while fd.read_events().is_ok() {
                    events = true;
                }
            }
            let dir_mtime = fs::metadata(self.subnets()).and_then(|m| m.modified()).ok();
            let rescan = match (&st.inotify, &st.listed) {
                (Some(_), Some(l)) => events || l.stale(dir_mtime),
                _ => true,
            };
            if rescan {
                let leases = self.list()?;
                st.listed = Some(Listing { at: std::time::Instant::now(), dir_mtime, leases });
            }
            let Some(listed) = st.listed.as_ref() else { continue };
            let now = &listed.leases;
            // Expiry moves on every renewal; a change is a change of keys or values.
            let same =
                now.len() == known.len() && now.iter().zip(known).all(|(a, b)| a.key == b.key && a.attrs == b.attrs);
            if !same {
                return Ok(now.clone());
            }
            match st.inotify.as_ref() {
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

    #[tokio::test]
    async fn watch_sees_a_write_in_place_and_a_lapse_without_polling() {
        let d = tempfile::tempdir().unwrap();
        let r = DirRegistry::open(d.path()).unwrap();
        let p = d.path().join("subnets/100.96.4.0-24");
        write_atomic(&p, br#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#).unwrap();
        let known = r.leases().await.unwrap();
        // The same length, written in place: a value read before must not be reused.
        let w = tokio::spawn({
            let (r, known) = (r.clone(), known.clone());
            async move { r.watch_leases(&known).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        fs::write(&p, br#"{"PublicIP":"198.18.0.5","PublicIPv6":null}"#).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), w).await.unwrap().unwrap().unwrap();
        assert_eq!(got[0].attrs.public_ip, Ipv4Addr::new(198, 18, 0, 5));
        // A lease that lapses while nothing happens (written 24 h less a second ago) goes at
        // the next mtime check, with no event.
        let f = File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - LEASE_TTL + Duration::from_secs(1)).unwrap();
        drop(f);
        let known = r.leases().await.unwrap();
        assert_eq!(known.len(), 1);
        let got = tokio::time::timeout(RESCAN_EVERY * 2, r.watch_leases(&known)).await.unwrap().unwrap();
        assert!(got.is_empty(), "{got:?}");
    }
}
