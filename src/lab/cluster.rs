//! weft processes running on the hosts of a [`Topology`], sharing a directory registry.
//! Used by `weft lab` and by the integration tests.

use super::topology::{POD_NETWORK, POD_NETWORK_V6, Topology, UNDERLAY_IF};
use crate::control::registry::dir::write_atomic;
use crate::proto::lease::{LeaseAttrs, VxlanData};
use crate::proto::mac::MacAddr;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `weft run` process inside a host namespace. Dropping it sends SIGTERM, then SIGKILL.
#[derive(Debug)]
pub struct WeftProcess {
    child: Option<Child>,
    /// Its subnet.env (written when it is ready).
    pub subnet_file: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl WeftProcess {
    /// Sends SIGTERM and waits up to `timeout` for exit; SIGKILL after that.
    pub fn stop(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait()? {
                return Ok(Some(st));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait()?;
        Ok(None)
    }

    /// Kills the process with SIGKILL (no cleanup: what a crash leaves behind) and waits.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(3));
    }
}

/// Starts `weft run` in namespace `ns` with `args` after `run`, logging to `log`.
pub fn spawn_weft(
    bin: &Path,
    ns: &str,
    args: &[String],
    subnet_file: PathBuf,
    log: PathBuf,
) -> io::Result<WeftProcess> {
    let logf = std::fs::File::create(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .arg("run")
        .args(args)
        .env("RUST_LOG", std::env::var("WEFT_CHILD_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()?;
    Ok(WeftProcess { child: Some(child), subnet_file, log })
}

/// A deterministic VTEP MAC for host `i` of a lab (locally administered unicast).
pub fn lab_vtep_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0x77, 0x65, 0x66, 0x74, u8::try_from(i % 256).unwrap_or(0)])
}

/// The lease every host of `topo` should hold under net-config `config`, in flannel's JSON:
/// (key under `subnets/`, value). vxlan hosts get [`lab_vtep_mac`]s; on a dual-stack network
/// the key holds the host's IPv6 subnet too, and a vxlan value `BackendV6Data`.
pub fn seed_leases(topo: &Topology, config: &str) -> io::Result<Vec<(String, String)>> {
    use crate::proto::lease::SubnetKey;
    use crate::proto::netconfig::{BackendType, NetConfig};
    let cfg = NetConfig::parse(config).map_err(io::Error::other)?;
    let backend = cfg.backend;
    let (dual, v6_only) = (cfg.ipv6.is_some(), cfg.ipv4.is_none());
    Ok(topo
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let data = VxlanData { vni: backend.vni, vtep_mac: lab_vtep_mac(i + 1) };
            let attrs = match backend.kind {
                BackendType::Udp => LeaseAttrs::udp(h.underlay_ip),
                BackendType::HostGw => LeaseAttrs::host_gw(h.underlay_ip),
                BackendType::Vxlan => LeaseAttrs::vxlan(h.underlay_ip, data),
            };
            let vxlan = (backend.kind == BackendType::Vxlan).then_some(data);
            let (key, attrs) = match (dual, v6_only) {
                (_, true) => {
                    (SubnetKey::v6_only(h.subnet6), attrs.dual_stack(Some(h.underlay_ip6), vxlan).without_ipv4())
                }
                (true, false) => (SubnetKey::dual(h.subnet, h.subnet6), attrs.dual_stack(None, vxlan)),
                (false, false) => (SubnetKey::v4(h.subnet), attrs),
            };
            (key.to_string(), attrs.to_json())
        })
        .collect())
}

/// The net-config JSON of a lab cluster with `backend` (a `Backend` object).
pub fn lab_config(backend: &str) -> String {
    format!(r#"{{"Network":"{POD_NETWORK}","Backend":{backend}}}"#)
}

/// The net-config JSON `spec` asks for: IPv4-only, dual-stack or IPv6-only.
pub fn config_for(spec: &ClusterSpec) -> String {
    match (spec.dual_stack, spec.ipv6_only) {
        (_, true) => lab_config_v6_only(&spec.backend),
        (true, false) => lab_config_dual(&spec.backend),
        (false, false) => lab_config(&spec.backend),
    }
}

/// The net-config JSON of an IPv6-only lab cluster with `backend`.
pub fn lab_config_v6_only(backend: &str) -> String {
    format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{POD_NETWORK_V6}","Backend":{backend}}}"#)
}

/// The net-config JSON of a dual-stack lab cluster with `backend`.
pub fn lab_config_dual(backend: &str) -> String {
    format!(r#"{{"Network":"{POD_NETWORK}","EnableIPv6":true,"IPv6Network":"{POD_NETWORK_V6}","Backend":{backend}}}"#)
}

/// Hosts running weft against one registry directory.
pub struct Cluster {
    /// The weft processes, index 0 = host 1 (dropped before the topology).
    pub procs: Vec<WeftProcess>,
    /// The registry directory.
    pub registry: tempfile::TempDir,
    /// The namespaces.
    pub topo: Topology,
    /// etcd client URLs, when the hosts use etcd.
    pub etcd_endpoints: Option<String>,
    /// An IPv6-only network: each host is started with `--public-ipv6`.
    pub ipv6_only: bool,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Tag for namespace names.
    pub tag: String,
    /// Number of hosts.
    pub hosts: usize,
    /// The `Backend` object of the net-config, e.g. `{"Type":"udp"}`.
    pub backend: String,
    /// Seed each host's lease (flannel's JSON) so it gets the subnet its container is in.
    pub preseed: bool,
    /// Extra `weft run` arguments for every host.
    pub extra_args: Vec<String>,
    /// Hosts (0-based) where weft is not started (e.g. a kernel-VXLAN peer set up by the caller).
    pub skip_hosts: Vec<usize>,
    /// Use etcd at these client URLs instead of the registry directory (the caller writes the
    /// config and any leases; the directory then only holds logs and subnet files).
    pub etcd_endpoints: Option<String>,
    /// A dual-stack network: IPv6 pod addresses, and `EnableIPv6` in the config.
    pub dual_stack: bool,
    /// An IPv6-only network (`EnableIPv4: false`): IPv6 pod addresses, and every host announces
    /// its underlay IPv6 address as PublicIPv6 (pods keep their IPv4 addresses, unrouted).
    pub ipv6_only: bool,
}

impl ClusterSpec {
    /// Two hosts, pre-seeded leases, a directory registry, weft on every host: the base every
    /// other spec is written from (`ClusterSpec { hosts: 3, ..two_hosts(tag, backend) }`).
    pub fn two_hosts(tag: &str, backend: &str) -> Self {
        Self {
            tag: tag.into(),
            hosts: 2,
            backend: backend.into(),
            preseed: true,
            extra_args: vec![],
            skip_hosts: vec![],
            etcd_endpoints: None,
            dual_stack: false,
            ipv6_only: false,
        }
    }
}

impl Cluster {
    /// Builds the topology, writes the registry, starts weft on every host and waits until each
    /// has written its subnet.env (its "ready" signal).
    pub fn start(bin: &Path, spec: &ClusterSpec, ready_timeout: Duration) -> io::Result<Self> {
        let mut c = Self::build(spec)?;
        c.start_all(bin, spec, ready_timeout)?;
        Ok(c)
    }

    /// Starts weft on every host but `spec.skip_hosts` and waits until they are ready.
    pub fn start_all(&mut self, bin: &Path, spec: &ClusterSpec, ready_timeout: Duration) -> io::Result<()> {
        for i in 0..self.topo.hosts.len() {
            if spec.skip_hosts.contains(&i) {
                let p = WeftProcess {
                    child: None,
                    subnet_file: self.subnet_file(i),
                    log: self.registry.path().join("none.log"),
                };
                self.set_proc(i, p);
            } else {
                self.start_host(bin, i, &spec.extra_args)?;
            }
        }
        self.wait_ready(ready_timeout)
    }

    fn set_proc(&mut self, i: usize, p: WeftProcess) {
        while self.procs.len() < i {
            self.procs.push(WeftProcess { child: None, subnet_file: PathBuf::new(), log: PathBuf::new() });
        }
        if i < self.procs.len() {
            self.procs[i] = p;
        } else {
            self.procs.push(p);
        }
    }

    /// Builds the topology and the registry directory; starts nothing.
    pub fn build(spec: &ClusterSpec) -> io::Result<Self> {
        let topo = Topology::build_with(&spec.tag, spec.hosts, spec.dual_stack || spec.ipv6_only)?;
        let registry = tempfile::Builder::new().prefix("weft-registry-").tempdir()?;
        let config = config_for(spec);
        write_atomic(&registry.path().join("config"), config.as_bytes())?;
        std::fs::create_dir_all(registry.path().join("subnets"))?;
        if spec.preseed && spec.etcd_endpoints.is_none() {
            for (key, value) in seed_leases(&topo, &config)? {
                write_atomic(&registry.path().join("subnets").join(key), value.as_bytes())?;
            }
        }
        let ipv6_only = spec.ipv6_only;
        Ok(Cluster { procs: Vec::new(), registry, topo, etcd_endpoints: spec.etcd_endpoints.clone(), ipv6_only })
    }

    /// The standard arguments for host `i` (0-based).
    pub fn host_args(&self, i: usize) -> Vec<String> {
        let h = &self.topo.hosts[i];
        let registry = match &self.etcd_endpoints {
            Some(e) => ["--etcd-endpoints".to_string(), e.clone()],
            None => ["--registry-dir".to_string(), self.registry.path().display().to_string()],
        };
        let mut args = vec![
            registry[0].clone(),
            registry[1].clone(),
            "--public-ip".into(),
            h.underlay_ip.to_string(),
            "--iface".into(),
            UNDERLAY_IF.into(),
            "--subnet-file".into(),
            self.subnet_file(i).display().to_string(),
        ];
        if self.ipv6_only {
            args.extend(["--public-ipv6".into(), h.underlay_ip6.to_string()]);
        }
        args
    }

    /// Host `i`'s subnet.env path.
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.registry.path().join(format!("h{}.env", i + 1))
    }

    /// (Re)starts weft on host `i` (0-based) with the standard and `extra` arguments.
    pub fn start_host(&mut self, bin: &Path, i: usize, extra: &[String]) -> io::Result<()> {
        let mut args = self.host_args(i);
        args.extend_from_slice(extra);
        let sf = self.subnet_file(i);
        let _ = std::fs::remove_file(&sf);
        let log = self.registry.path().join(format!("h{}.log", i + 1));
        let p = spawn_weft(bin, &self.topo.hosts[i].ns, &args, sf, log)?;
        self.set_proc(i, p);
        Ok(())
    }

    /// Waits until every running weft has written its subnet.env.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        for (i, p) in self.procs.iter_mut().enumerate().filter(|(_, p)| p.child.is_some()) {
            while !p.subnet_file.exists() {
                if !p.running() {
                    return Err(io::Error::other(format!("weft on host {} exited:\n{}", i + 1, p.log_text())));
                }
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("weft on host {} not ready:\n{}", i + 1, p.log_text()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        self.procs.iter().enumerate().map(|(i, p)| format!("--- host {} ---\n{}", i + 1, p.log_text())).collect()
    }
}
