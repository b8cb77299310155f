//! A real etcd server (Debian's `etcd-server`) started by the lab or a test, in a temp dir, on free loopback
//! ports (or inside a network namespace of the lab's). Killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    args: Vec<String>,
    ns: Option<String>,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// Its client URL.
    pub url: String,
    /// Global flags of every `etcdctl` this member runs (credentials once auth is on).
    ctl_flags: Vec<String>,
}

impl Etcd {
    fn new(
        name: &str,
        ns: Option<&str>,
        client: String,
        peer: String,
        cluster: &str,
        extra: &[String],
    ) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir()?;
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-token=weft-test".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ];
        args.extend_from_slice(extra);
        let url = client.split(',').next().unwrap_or(&client).to_string();
        let mut e = Self { child: None, args, ns: ns.map(str::to_string), dir, url, ctl_flags: Vec::new() };
        e.spawn()?;
        Ok(e)
    }

    /// A single member on free 127.0.0.1 ports of the test's namespace.
    pub fn single() -> std::io::Result<Self> {
        let (c, p) = (free_port(), free_port());
        let peer = format!("http://127.0.0.1:{p}");
        Self::new("solo", None, format!("http://127.0.0.1:{c}"), peer.clone(), &format!("solo={peer}"), &[])
    }

    /// A single member inside namespace `ns`, serving clients on `ip:2379` (and its loopback).
    pub fn in_netns(ns: &str, ip: &str) -> std::io::Result<Self> {
        let peer = "http://127.0.0.1:2380".to_string();
        Self::new(
            "solo",
            Some(ns),
            format!("http://{ip}:2379,http://127.0.0.1:2379"),
            peer.clone(),
            &format!("solo={peer}"),
            &[],
        )
    }

    /// A single member with TLS (server certificate, client certificates required).
    pub fn single_tls(cert: &str, key: &str, ca: &str) -> std::io::Result<Self> {
        let (c, p) = (free_port(), free_port());
        let peer = format!("http://127.0.0.1:{p}");
        let extra = vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth".into(),
        ];
        Self::new("solo", None, format!("https://127.0.0.1:{c}"), peer.clone(), &format!("solo={peer}"), &extra)
    }

    /// Three members on loopback.
    pub fn cluster3() -> std::io::Result<Vec<Self>> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
        let cluster = cluster.join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| {
                Self::new(
                    &format!("m{i}"),
                    None,
                    format!("http://127.0.0.1:{c}"),
                    format!("http://127.0.0.1:{p}"),
                    &cluster,
                    &[],
                )
            })
            .collect()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child =
            cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().map_err(|e| {
                std::io::Error::new(e.kind(), format!("starting etcd (apt-get install etcd-server): {e}"))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the member (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the member again on its data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kills the member, deletes its data, and starts it empty (an etcd restored from nothing).
    pub fn wipe(&mut self) -> std::io::Result<()> {
        self.kill();
        std::fs::remove_dir_all(self.dir.path().join("data"))?;
        self.ctl_flags.clear();
        self.spawn()
    }

    /// Adds user `root` with `password` and turns authentication on; later `etcdctl` calls of
    /// this member authenticate as root.
    pub fn enable_auth(&mut self, password: &str) -> std::io::Result<()> {
        for args in [&["user", "add", &format!("root:{password}")][..], &["auth", "enable"][..]] {
            let o = self.ctl(args);
            if !o.status.success() {
                return Err(std::io::Error::other(format!(
                    "etcdctl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr)
                )));
            }
        }
        self.ctl_flags = vec![format!("--user=root:{password}")];
        Ok(())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Runs etcdctl against this member (inside its namespace if it has one).
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with(&[], args)
    }

    /// Runs etcdctl with extra global flags (and the credentials, once auth is on).
    pub fn ctl_with(&self, flags: &[String], args: &[&str]) -> Output {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
            None => Command::new("etcdctl"),
        };
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url))
            .args(&self.ctl_flags)
            .args(flags)
            .args(args)
            .output()
            .unwrap_or_else(|e| Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("etcdctl: {e} (apt-get install etcd-client)").into_bytes(),
            })
    }

    /// Waits until the member answers (etcdctl endpoint health).
    pub fn wait_healthy(&self, timeout: Duration) {
        if let Err(e) = self.try_wait_healthy(&[], timeout) {
            panic!("{e}");
        }
    }

    /// As `wait_healthy`, with extra etcdctl flags (TLS).
    pub fn wait_healthy_with(&self, flags: &[String], timeout: Duration) {
        if let Err(e) = self.try_wait_healthy(flags, timeout) {
            panic!("{e}");
        }
    }

    /// Waits until the member answers, or says why not.
    pub fn try_wait_healthy(&self, flags: &[String], timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ctl_with(flags, &["endpoint", "health"]).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("etcd did not become healthy:\n{}", self.log())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl put` that must succeed.
    pub fn put(&self, key: &str, value: &str) {
        if let Err(e) = self.try_put(key, value) {
            panic!("{e}");
        }
    }

    /// `etcdctl put`, or why it failed.
    pub fn try_put(&self, key: &str, value: &str) -> std::io::Result<()> {
        let o = self.ctl(&["put", key, value]);
        if !o.status.success() {
            return Err(std::io::Error::other(format!("etcdctl put {key}: {}", String::from_utf8_lossy(&o.stderr))));
        }
        Ok(())
    }

    /// `etcdctl del` that must succeed.
    pub fn del(&self, key: &str) {
        let o = self.ctl(&["del", key]);
        assert!(o.status.success(), "etcdctl del {key}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
