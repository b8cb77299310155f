//! Starts that fail, and signals during a start: each exits with one line that says what to
//! do, and leaves no TUN, VXLAN device, route or temp file of weft's behind, and no lease it
//! created (a reused lease is kept, and the log says why). Also: `--mode auto` takes offload
//! on this kernel and says so.

mod common;

use common::*;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft::dataplane::sys::netns;
use weft::lab::cluster::{Cluster, ClusterSpec};
use weft::lab::topology::ns_exec;

/// How a `weft run` ended.
struct Exit {
    code: Option<i32>,
    stderr: String,
}

impl Exit {
    /// The one `weft: error:` line. It says each cause once, and a log that is not a
    /// terminal carries no colour codes.
    fn error_line(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("weft: error:")).collect();
        assert_eq!(lines.len(), 1, "want one error line:\n{}", self.stderr);
        let parts: Vec<&str> = lines[0].split(": ").collect();
        assert!(parts.windows(2).all(|w| w[0] != w[1]), "a cause said twice: {}", lines[0]);
        assert!(!self.stderr.contains('\x1b'), "colour codes in a log file:\n{}", self.stderr);
        lines[0].to_string()
    }
}

/// A host namespace and a registry directory, with nothing running.
fn bare(tag: &str, backend: &str) -> Cluster {
    require_privileges();
    Cluster::build(&ClusterSpec { preseed: false, ..ClusterSpec::two_hosts(tag, backend) }).unwrap()
}

/// Host 1's standard arguments, with those `extra` gives again replaced by its values.
fn args(c: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut std = c.host_args(0).into_iter();
    let mut out = Vec::new();
    while let Some(flag) = std.next() {
        let value = std.next().unwrap_or_default();
        if !extra.contains(&flag.as_str()) {
            out.extend([flag, value]);
        }
    }
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

/// Starts `prefix... weft run ARGS` in host 1's namespace, from a thread that has entered it
/// (not through `ip netns exec`, so that a signal right after the start reaches weft itself).
fn spawn_weft(c: &Cluster, prefix: &[&str], extra: &[&str]) -> std::process::Child {
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    argv.push(bin().display().to_string());
    argv.push("run".into());
    argv.extend(args(c, extra));
    spawn_in(&c.topo.hosts[0].ns, argv)
}

fn spawn_in(ns: &str, argv: Vec<String>) -> std::process::Child {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    })
    .join()
    .unwrap()
}

/// Runs weft on host 1 to its end (at most 20 s).
fn run_weft(c: &Cluster, prefix: &[&str], extra: &[&str]) -> Exit {
    let mut child = spawn_weft(c, prefix, extra);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weft did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Exit { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn lines_of(ns: &str, cmd: &[&str]) -> Vec<String> {
    let o = ns_exec(ns, cmd).unwrap();
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(tmp_files(&p));
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".tmp")) {
            out.push(p);
        }
    }
    out
}

fn leases(c: &Cluster) -> Vec<String> {
    std::fs::read_dir(c.registry.path().join("subnets"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// What weft made on host 1 and left there: TUN and VXLAN devices, routes of its protocol,
/// temp files, and leases.
fn leftovers(c: &Cluster) -> Vec<String> {
    let ns = &c.topo.hosts[0].ns;
    let mut v = Vec::new();
    v.extend(lines_of(ns, &["ip", "-o", "link", "show", "type", "tun"]).into_iter().map(|l| format!("TUN: {l}")));
    v.extend(lines_of(ns, &["ip", "-o", "link", "show", "type", "vxlan"]).into_iter().map(|l| format!("VXLAN: {l}")));
    v.extend(lines_of(ns, &["ip", "route", "show", "proto", "87"]).into_iter().map(|l| format!("route: {l}")));
    v.extend(tmp_files(c.registry.path()).into_iter().map(|p| format!("temp file: {}", p.display())));
    v.extend(leases(c).into_iter().map(|l| format!("lease: {l}")));
    v
}

/// Asserts a failed start: exit 1, one error line containing `want`, nothing left behind.
fn assert_failed_clean(c: &Cluster, e: &Exit, want: &str) {
    assert_eq!(e.code, Some(1), "{}", e.stderr);
    let line = e.error_line();
    assert!(line.contains(want), "want {want:?} in: {line}");
    let left = leftovers(c);
    assert!(left.is_empty(), "left behind: {left:?}\n{}", e.stderr);
}

fn write_config(c: &Cluster, config: &str) {
    std::fs::write(c.registry.path().join("config"), config).unwrap();
}

#[test]
fn nonsense_config_fails_before_anything_is_written() {
    let c = bare("badcfg", r#"{"Type":"udp"}"#);
    for (config, want) in [
        (r#"{"Network":"0.0.0.0/0"}"#, "overlaps 0.0.0.0/8"),
        (r#"{"Network":"0.0.0.0/1"}"#, "overlaps"),
        (r#"{"Network":"127.0.0.0/8"}"#, "loopback"),
        (r#"{"Network":"224.0.0.0/8"}"#, "multicast"),
        (r#"{"Network":"100.96.0.0/16","Backend":{"Type":"gre"}}"#, "gre"),
        (r#"{"Network":"100.96.0.0/16","Backend":{"Type":"vxlan","MTU":70000}}"#, "MTU"),
        (r#"{"Network":"100.96.0.0/16","EnableIPv6":true}"#, "IPv6Network is missing"),
        (r#"{"Network":"100.96.0.0/16","EnableIPv6":true,"IPv6Network":"ff00::/16"}"#, "multicast"),
        (r#"{"EnableIPv4":false}"#, "both false"),
        // An IPv6-only network sends over the IPv6 underlay, which has no address here.
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:96::/48"}"#,
            "an IPv6-only network sends its packets over the IPv6 underlay",
        ),
        // A dual-stack kernel path sends IPv6 over the IPv6 underlay, which has no address here.
        (
            r#"{"Network":"100.96.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:96::/48","Backend":{"Type":"host-gw"}}"#,
            "has no global IPv6 address",
        ),
    ] {
        write_config(&c, config);
        let e = run_weft(&c, &[], &[]);
        assert_failed_clean(&c, &e, want);
    }
}

#[test]
fn the_subnet_file_directory_is_created_as_flanneld_does() {
    let c = bare("envdir", r#"{"Type":"udp"}"#);
    let env = c.registry.path().join("run/flannel/subnet.env");
    let mut child = spawn_weft(&c, &[], &["--subnet-file", env.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(10), || env.exists()), "not ready");
    assert!(std::fs::read_to_string(&env).unwrap().contains("FLANNEL_SUBNET=100.96."));
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_missing_registry_directory_is_an_error() {
    let c = bare("nodir", r#"{"Type":"udp"}"#);
    let missing = c.registry.path().join("missing");
    let e = run_weft(&c, &[], &["--registry-dir", missing.to_str().unwrap()]);
    assert_failed_clean(&c, &e, "missing");
}

#[test]
fn host_problems_fail_before_the_lease() {
    let c = bare("hostfail", r#"{"Type":"udp"}"#);
    let h1 = c.topo.hosts[0].clone();
    // A missing interface; the loopback one; a TUN name the kernel cannot take.
    let e = run_weft(&c, &[], &["--iface", "nope0"]);
    assert_failed_clean(&c, &e, "no interface matches --iface nope0");
    let e = run_weft(&c, &[], &["--iface", "lo", "--public-ip", "127.0.0.1"]);
    assert_failed_clean(&c, &e, "loopback");
    let e = run_weft(&c, &[], &["--tun-name", "a-name-far-too-long-for-linux"]);
    assert_failed_clean(&c, &e, "at most 15 characters");
    // The backend's port held by someone else: flanneld's "another instance" case.
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let ns = h1.ns.clone();
    let ip = h1.underlay_ip;
    let holder = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let s = UdpSocket::bind((ip, 8285)).unwrap();
        tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(s);
    });
    rx.recv().unwrap();
    let e = run_weft(&c, &[], &[]);
    assert_failed_clean(&c, &e, "is another weft running?");
    // The metrics address taken.
    stop_tx.send(()).unwrap();
    holder.join().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let ns = h1.ns.clone();
    let holder = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:9100").unwrap();
        tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(l);
    });
    rx.recv().unwrap();
    let e = run_weft(&c, &[], &["--metrics-addr", "127.0.0.1:9100"]);
    assert_failed_clean(&c, &e, "127.0.0.1:9100");
    stop_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn without_cap_net_admin_nothing_is_left() {
    let c = bare("nocap", r#"{"Type":"vxlan"}"#);
    let no_admin = ["setpriv", "--inh-caps", "-net_admin", "--bounding-set", "-net_admin", "--"];
    // Userspace: the TUN is refused before any lease is taken.
    let e = run_weft(&c, &no_admin, &[]);
    assert_failed_clean(&c, &e, "needs CAP_NET_ADMIN");
    // Kernel VXLAN: the device is refused after the lease; the lease this start took goes back.
    let e = run_weft(&c, &no_admin, &["--dataplane", "kernel"]);
    assert_failed_clean(&c, &e, "VXLAN");
    assert!(e.stderr.contains("gave back the lease this start took"), "{}", e.stderr);
}

#[test]
fn a_late_failure_gives_back_a_new_lease_and_keeps_a_reused_one() {
    let c = bare("late", r#"{"Type":"udp"}"#);
    // A directory where subnet.env should go: everything else is set up when writing it fails.
    let env_dir = c.registry.path().join("env-is-a-dir");
    std::fs::create_dir_all(&env_dir).unwrap();
    let late = ["--subnet-file", env_dir.to_str().unwrap()];
    let e = run_weft(&c, &[], &late);
    assert_failed_clean(&c, &e, "env-is-a-dir");
    assert!(e.stderr.contains("gave back the lease this start took"), "{}", e.stderr);
    // With our lease already there (a restart), the lease stays and the log says why.
    let key = "100.96.1.0-24";
    std::fs::write(c.registry.path().join("subnets").join(key), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#)
        .unwrap();
    let e = run_weft(&c, &[], &late);
    assert_eq!(e.code, Some(1), "{}", e.stderr);
    assert!(e.stderr.contains("keeping our lease: it was ours before this start"), "{}", e.stderr);
    assert_eq!(leftovers(&c), [format!("lease: {key}")], "{}", e.stderr);
}

/// Waits until process `pid` blocks or handles SIGTERM: it has reached weft's main().
fn in_main(pid: u32) {
    let term = 1u64 << (libc::SIGTERM - 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mask = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        if (mask("SigBlk:") | mask("SigCgt:")) & term != 0 {
            return;
        }
        assert!(Instant::now() < deadline, "weft did not reach main() within 5 s");
        std::thread::yield_now();
    }
}

#[test]
fn sigterm_at_any_moment_of_a_start_exits_zero_and_leaves_no_temp_files() {
    let c = bare("sigterm", r#"{"Type":"udp"}"#);
    let env = c.subnet_file(0);
    for delay_ms in [0, 1, 2, 3, 5, 8, 12, 20, 40, 80] {
        let child = spawn_weft(&c, &[], &[]);
        // Before its first instruction no process can handle a signal (the dynamic loader
        // runs first); from main() on, weft blocks SIGTERM until its handler is in place.
        in_main(child.id());
        std::thread::sleep(Duration::from_millis(delay_ms));
        sigterm(child.id());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "SIGTERM after {delay_ms} ms: {:?}\n{stderr}", out.status);
        // A ready weft keeps its lease on exit (as flanneld); one stopped before it was ready
        // gives back a lease it took.
        let left = leftovers(&c);
        let kept_lease = left.len() == 1 && left[0].starts_with("lease: ");
        let clean = if env.exists() { kept_lease } else { left.is_empty() };
        assert!(clean, "SIGTERM after {delay_ms} ms left {left:?}\n{stderr}");
        // Start the next round from nothing.
        let _ = std::fs::remove_file(&env);
        for l in leases(&c) {
            std::fs::remove_file(c.registry.path().join("subnets").join(l)).unwrap();
        }
    }
}

#[test]
fn unreachable_etcd_is_waited_for_and_a_signal_ends_the_wait() {
    let c = bare("noetcd", r#"{"Type":"udp"}"#);
    // Nothing listens there: weft retries with backoff, saying why, until SIGTERM.
    let url = format!("http://127.0.0.1:{}", weft::lab::etcd::free_port());
    let mut argv = vec![bin().display().to_string(), "run".into(), "--etcd-endpoints".into(), url];
    argv.extend(["--iface", "eth0", "--subnet-file"].map(String::from));
    argv.push(c.subnet_file(0).display().to_string());
    let child = spawn_in(&c.topo.hosts[0].ns, argv);
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert!(leftovers(&c).is_empty(), "{:?}", leftovers(&c));
    assert!(!c.subnet_file(0).exists());
}

#[test]
fn auto_mode_takes_offload_here_and_says_why() {
    let c = cluster("auto", r#"{"Type":"vxlan"}"#, &[]);
    let log = c.procs[0].log_text();
    assert!(log.contains("engine: offload (--mode auto: the TUN device accepts TSO)"), "{log}");
    assert!(ping(&c.topo.hosts[0].container_ns, c.topo.hosts[1].container_ip, 1), "{}", c.logs());
}

#[test]
fn without_nft_masquerading_fails_cleanly_and_the_default_forward_rules_are_left_out() {
    let c = bare("nonft", r#"{"Type":"udp"}"#);
    let no_nft = ["env", "PATH=/nonexistent"];
    let e = run_weft(&c, &no_nft, &["--ip-masq"]);
    assert_failed_clean(&c, &e, "apt-get install nftables");
    // The forward rules are on by default: without nft, weft says so and runs.
    let env = c.subnet_file(0);
    let child = spawn_weft(&c, &no_nft, &[]);
    assert!(eventually(Duration::from_secs(10), || env.exists()), "not ready without nft");
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the forward rules are not installed"), "{stderr}");
}
