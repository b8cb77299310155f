//! A real etcd server (Debian's `etcd-server`) started by a test, in a temp dir, on free loopback
//! ports (or inside a test's network namespace). Killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
}

impl Etcd {
    fn new(name: &str, ns: Option<&str>, client: String, peer: String, cluster: &str, extra: &[String]) -> Self {
        let dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir().unwrap();
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
        let url = client.split(',').next().unwrap().to_string();
        let mut e = Self { child: None, args, ns: ns.map(str::to_string), dir, url };
        e.spawn();
        e
    }

    /// A single member on free 127.0.0.1 ports of the test's namespace.
    pub fn single() -> Self {
        let (c, p) = (free_port(), free_port());
        let peer = format!("http://127.0.0.1:{p}");
        Self::new("solo", None, format!("http://127.0.0.1:{c}"), peer.clone(), &format!("solo={peer}"), &[])
    }

    /// A single member inside namespace `ns`, serving clients on `ip:2379` (and its loopback).
    pub fn in_netns(ns: &str, ip: &str) -> Self {
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
    pub fn single_tls(cert: &str, key: &str, ca: &str) -> Self {
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
    pub fn cluster3() -> Vec<Self> {
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

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        self.child = Some(child);
    }

    /// Kills the member (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the member again on its data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Runs etcdctl against this member (inside its namespace if it has one).
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with(&[], args)
    }

    /// Runs etcdctl with extra global flags.
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
            .args(flags)
            .args(args)
            .output()
            .expect("etcdctl runs (apt-get install etcd-client)")
    }

    /// Waits until the member answers (etcdctl endpoint health).
    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait_healthy_with(&[], timeout)
    }

    /// As `wait_healthy`, with extra etcdctl flags (TLS).
    pub fn wait_healthy_with(&self, flags: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ctl_with(flags, &["endpoint", "health"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl put` that must succeed.
    pub fn put(&self, key: &str, value: &str) {
        let o = self.ctl(&["put", key, value]);
        assert!(o.status.success(), "etcdctl put {key}: {}", String::from_utf8_lossy(&o.stderr));
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
