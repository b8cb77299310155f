//! `weft lab`: builds hosts in network namespaces, runs each data path in turn with the same
//! workload, and reports the figures side by side.

pub mod cluster;
pub mod topology;
pub mod traffic;

use anyhow::{Context, Result, bail};
use cluster::{Cluster, ClusterSpec};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use traffic::{Amount, tcp_bulk};

/// Options of `weft lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabOptions {
    /// Seconds of traffic per data path and workload.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// A short run (1 s per workload), for CI.
    #[arg(long)]
    pub quick: bool,
}

/// One data path the lab measures.
#[derive(Debug, Clone)]
struct DataPath {
    name: &'static str,
    backend: &'static str,
    extra: Vec<String>,
}

fn data_paths() -> Vec<DataPath> {
    vec![
        DataPath { name: "host-gw (kernel)", backend: r#"{"Type":"host-gw"}"#, extra: vec![] },
        DataPath {
            name: "vxlan (kernel)",
            backend: r#"{"Type":"vxlan"}"#,
            extra: vec!["--dataplane".into(), "kernel".into()],
        },
        DataPath { name: "weft udp naive", backend: r#"{"Type":"udp"}"#, extra: vec!["--mode".into(), "naive".into()] },
        DataPath {
            name: "weft vxlan naive",
            backend: r#"{"Type":"vxlan"}"#,
            extra: vec!["--mode".into(), "naive".into()],
        },
    ]
}

fn preflight() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("weft lab needs root (it creates network namespaces); run it with sudo");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing (modprobe tun)");
    }
    topology::ip(&["-V"]).context("weft lab needs iproute2's `ip` command (apt-get install iproute2)")?;
    Ok(())
}

struct Row {
    name: &'static str,
    gbps: f64,
}

/// Runs the lab.
pub fn run(opts: LabOptions) -> Result<()> {
    preflight()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone()).context("installing signal handlers")?;
    }
    let bin = std::env::current_exe().context("locating the weft binary")?;
    let secs = if opts.quick { 1 } else { opts.seconds.max(1) };
    let mut rows = Vec::new();
    for dp in data_paths() {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted; everything the lab created has been removed");
        }
        eprintln!("lab: {} — TCP bulk, 1 stream, {secs} s ...", dp.name);
        let spec = ClusterSpec {
            tag: "lab".into(),
            hosts: 2,
            backend: dp.backend.into(),
            preseed: true,
            extra_args: dp.extra.clone(),
            skip_hosts: vec![],
        };
        let cluster =
            Cluster::start(&bin, &spec, Duration::from_secs(10)).with_context(|| format!("starting {}", dp.name))?;
        let (h1, h2) = (&cluster.topo.hosts[0], &cluster.topo.hosts[1]);
        let r = tcp_bulk(
            &h2.container_ns,
            h2.container_ip,
            &h1.container_ns,
            Amount::Duration(Duration::from_secs(secs)),
            Duration::from_secs(secs + 20),
        )
        .with_context(|| format!("TCP bulk over {}\n{}", dp.name, cluster.logs()))?;
        rows.push(Row { name: dp.name, gbps: r.gbit_per_s() });
        drop(cluster);
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    let base = rows.iter().find(|r| r.name == "vxlan (kernel)").map(|r| r.gbps).filter(|g| *g > 0.0);
    println!("{:<22} {:>12} {:>22}", "data path", "TCP Gbit/s", "ratio to kernel VXLAN");
    for r in rows {
        let ratio = base.map(|b| format!("{:.3}", r.gbps / b)).unwrap_or_else(|| "-".into());
        println!("{:<22} {:>12.3} {:>22}", r.name, r.gbps, ratio);
    }
}
