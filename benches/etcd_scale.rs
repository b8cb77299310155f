//! Control-plane scale against a real etcd (Debian's etcd-server, started here on free loopback
//! ports in a temp dir): 10 000 leases are loaded, then we time (1) list + peer table build, as
//! weft does at start, and (2) one lease change from `put` to a new peer table, as weft's watch
//! loop does. Run with `cargo bench --bench etcd_scale`.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft::control::lease::{Ipv6Carrier, peers_from_leases};
use weft::control::registry::Registry;
use weft::control::registry::etcd::{EtcdOptions, EtcdRegistry};
use weft::dataplane::peers::PeerTable;
use weft::proto::lease::{LeaseAttrs, SubnetKey};
use weft::proto::netconfig::NetConfig;

const LEASES: u32 = 10_000;
const PREFIX: &str = "/coreos.com/network";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn key(i: u32) -> SubnetKey {
    let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + ((i + 1) << 8));
    SubnetKey::v4(ipnet::Ipv4Net::new(net, 24).unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this bench has no criterion cases
    }
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{c}");
    let mut etcd = Command::new("etcd")
        .args([
            "--name=scale".to_string(),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-cluster=scale=http://127.0.0.1:{p}"),
            "--quota-backend-bytes=1073741824".into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd runs (apt-get install etcd-server)");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let reg = EtcdRegistry::connect(&EtcdOptions {
            endpoints: vec![url.clone()],
            prefix: PREFIX.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while reg.leases().await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cfg = NetConfig::parse(r#"{"Network":"100.64.0.0/10","Backend":{"Type":"udp"}}"#).unwrap();
        let load = Instant::now();
        let reg = std::sync::Arc::new(reg);
        let mut tasks = Vec::new();
        for chunk in 0..16u32 {
            let reg = reg.clone();
            tasks.push(tokio::spawn(async move {
                for i in (chunk..LEASES).step_by(16) {
                    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1);
                    reg.renew_lease(&key(i), &LeaseAttrs::udp(ip), Duration::from_secs(3600)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        println!("loaded {LEASES} leases into etcd in {:.2} s", load.elapsed().as_secs_f64());
        let own = key(LEASES + 1);
        let mut starts = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let leases = reg.leases().await.unwrap();
            let table = PeerTable::new(peers_from_leases(&cfg, &leases, &own, Ipv6Carrier::Ipv4Underlay).peers);
            assert_eq!(table.len(), LEASES as usize);
            starts.push(t.elapsed());
        }
        starts.sort();
        println!(
            "list + peer table of {LEASES} peers: median {:.1} ms (5 runs, min {:.1} ms)",
            starts[2].as_secs_f64() * 1e3,
            starts[0].as_secs_f64() * 1e3
        );
        let mut known = reg.leases().await.unwrap();
        let mut changes = Vec::new();
        for n in 0..20u32 {
            let i = LEASES + 10 + n;
            let reg2 = reg.clone();
            let t = Instant::now();
            let put = tokio::spawn(async move {
                reg2.renew_lease(&key(i), &LeaseAttrs::udp(Ipv4Addr::new(198, 19, 0, 1)), Duration::from_secs(3600))
                    .await
                    .unwrap()
            });
            let now = reg.watch_leases(&known).await.unwrap();
            let table = PeerTable::new(peers_from_leases(&cfg, &now, &own, Ipv6Carrier::Ipv4Underlay).peers);
            let took = t.elapsed();
            put.await.unwrap();
            assert!(
                key(i).v4.is_some_and(|n| table.lookup(n.network()).is_some()),
                "change {n}: {} leases, key present: {}",
                now.len(),
                now.iter().any(|l| l.key == key(i))
            );
            changes.push(took);
            known = now;
        }
        changes.sort();
        println!(
            "one lease change → new peer table with {}+ peers: median {:.1} ms, p95 {:.1} ms (20 changes)",
            LEASES,
            changes[10].as_secs_f64() * 1e3,
            changes[18].as_secs_f64() * 1e3
        );
    });
    let _ = etcd.kill();
    let _ = etcd.wait();
}
