//! The etcd registry against a real etcd: flannel's lease protocol, concurrency, watch recovery,
//! a 3-member cluster losing a member, and TLS.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;
use weft::control::lease::acquire;
use weft::control::registry::Registry;
use weft::control::registry::etcd::{EtcdOptions, EtcdRegistry};
use weft::lab::etcd::Etcd;
use weft::proto::lease::{LeaseAttrs, SubnetKey};
use weft::proto::netconfig::NetConfig;

const PREFIX: &str = "/coreos.com/network";

async fn registry(url: &str) -> EtcdRegistry {
    EtcdRegistry::connect(&EtcdOptions { endpoints: vec![url.into()], prefix: PREFIX.into(), ..Default::default() })
        .await
        .unwrap()
}

/// Creates lease `key` for PublicIP 198.18.0.`ip` (10-minute TTL) and asserts it was won.
async fn create(r: &EtcdRegistry, key: &str, ip: u8) {
    let won = r
        .create_lease(&key.parse().unwrap(), &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, ip)), Duration::from_secs(600))
        .await
        .unwrap();
    assert!(won, "lease {key} was taken");
}

fn udp(ip: [u8; 4]) -> impl Fn(Option<&LeaseAttrs>) -> LeaseAttrs {
    move |_| LeaseAttrs::udp(ip.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn create_reuse_previous_and_flannel_json_with_ttl() {
    let e = Etcd::single().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.put(&format!("{PREFIX}/config"), r#"{"Network":"100.96.0.0/16","Backend":{"Type":"udp"}}"#);
    let r = registry(&e.url).await;
    let cfg = NetConfig::parse(&r.config().await.unwrap()).unwrap();
    let a = acquire(&r, &cfg, Ipv4Addr::new(198, 18, 0, 1).into(), None, udp([198, 18, 0, 1])).await.unwrap().lease;
    assert!(a.key.v4.is_some_and(|n| cfg.fits(&n)));
    // The value is flannel's LeaseAttrs, byte for byte, and the key carries an etcd lease.
    let key = format!("{PREFIX}/subnets/{}", a.key);
    let got = e.ctl(&["get", &key, "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
    let json = String::from_utf8(e.ctl(&["get", &key, "-w", "json"]).stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let lease_id = v["kvs"][0]["lease"].as_i64().expect("key has an etcd lease");
    let ttl = String::from_utf8(e.ctl(&["lease", "timetolive", &format!("{lease_id:x}")]).stdout).unwrap();
    assert!(ttl.contains("granted with TTL(86400s)"), "{ttl}");
    // Same PublicIP again: the same subnet (reuse).
    let b = acquire(&r, &cfg, Ipv4Addr::new(198, 18, 0, 1).into(), None, udp([198, 18, 0, 1])).await.unwrap().lease;
    assert_eq!(a.key, b.key);
    // Another node asking for a free previous subnet gets it.
    let prev = SubnetKey::v4("100.96.77.0/24".parse().unwrap());
    let c =
        acquire(&r, &cfg, Ipv4Addr::new(198, 18, 0, 2).into(), Some(prev), udp([198, 18, 0, 2])).await.unwrap().lease;
    assert_eq!(c.key, prev);
    // ... but not one that is taken.
    let d =
        acquire(&r, &cfg, Ipv4Addr::new(198, 18, 0, 3).into(), Some(prev), udp([198, 18, 0, 3])).await.unwrap().lease;
    assert_ne!(d.key.v4, prev.v4);
    assert_eq!(r.leases().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_reclaimed() {
    let e = Etcd::single().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    let r = registry(&e.url).await;
    let k: SubnetKey = "100.96.5.0-24".parse().unwrap();
    assert!(r.create_lease(&k, &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 5)), Duration::from_secs(2)).await.unwrap());
    assert!(
        !r.create_lease(&k, &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 6)), Duration::from_secs(60)).await.unwrap()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !r.leases().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "lease did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(r.create_lease(&k, &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 6)), Duration::from_secs(60)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_nodes_at_once_get_twenty_distinct_subnets() {
    let e = Etcd::single().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    // 31 subnets for 20 nodes: random picks collide, and lost races must move on.
    let cfg = NetConfig::parse(r#"{"Network":"100.96.0.0/19"}"#).unwrap();
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let url = e.url.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let r = registry(&url).await;
            acquire(&r, &cfg, Ipv4Addr::new(198, 18, 1, i + 1).into(), None, udp([198, 18, 1, i + 1]))
                .await
                .unwrap()
                .lease
                .key
                .v4
        }));
    }
    let mut got = HashSet::new();
    for t in tasks {
        assert!(got.insert(t.await.unwrap()), "two nodes got one subnet");
    }
    assert_eq!(got.len(), 20);
    assert_eq!(registry(&e.url).await.leases().await.unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sees_changes_and_recovers_from_restart_and_compaction() {
    let mut e = Etcd::single().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    let r = registry(&e.url).await;
    let known = r.leases().await.unwrap();
    // A put is seen.
    let w = async { r.watch_leases(&known).await.unwrap() };
    let put = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        e.put(&format!("{PREFIX}/subnets/100.96.1.0-24"), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
    };
    let (seen, ()) = tokio::join!(w, put);
    assert_eq!(seen.len(), 1);
    // The stream is established; etcd restarts while nobody is watching, and meanwhile the
    // keyspace changes and is compacted past the watch's revision.
    e.restart().unwrap();
    e.wait_healthy(Duration::from_secs(20));
    e.put(&format!("{PREFIX}/subnets/100.96.2.0-24"), r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#);
    e.del(&format!("{PREFIX}/subnets/100.96.1.0-24"));
    e.put(&format!("{PREFIX}/unrelated"), "x");
    let status = String::from_utf8(e.ctl(&["endpoint", "status", "-w", "json"]).stdout).unwrap();
    let rev = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]["header"]["revision"]
        .as_i64()
        .unwrap();
    assert!(e.ctl(&["compact", &rev.to_string()]).status.success());
    let now =
        tokio::time::timeout(Duration::from_secs(20), r.watch_leases(&seen)).await.expect("watch recovered").unwrap();
    let keys: Vec<String> = now.iter().map(|l| l.key.to_string()).collect();
    assert_eq!(keys, vec!["100.96.2.0-24"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_member_cluster_losing_one_member_keeps_working() {
    let mut members = Etcd::cluster3().unwrap();
    for m in &members {
        m.wait_healthy(Duration::from_secs(30));
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    let r =
        EtcdRegistry::connect(&EtcdOptions { endpoints, prefix: PREFIX.into(), ..Default::default() }).await.unwrap();
    create(&r, "100.96.1.0-24", 1).await;
    let known = r.leases().await.unwrap();
    members[0].kill();
    // Requests may need a retry while the client moves to another member or a leader is elected.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match r
            .create_lease(
                &"100.96.2.0-24".parse().unwrap(),
                &LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 2)),
                Duration::from_secs(600),
            )
            .await
        {
            Ok(true) => break,
            Ok(false) => panic!("lease unexpectedly taken"),
            Err(err) => {
                assert!(std::time::Instant::now() < deadline, "cluster unusable after losing one member: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let now =
        tokio::time::timeout(Duration::from_secs(20), r.watch_leases(&known)).await.expect("watch answers").unwrap();
    assert_eq!(now.len(), 2);
}

fn openssl(args: &[&str]) {
    let o = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_certificates_made_here() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=weft-test-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    std::fs::write(p("san.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n").unwrap();
    for who in ["server", "client"] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN=weft-{who}"),
            "-keyout",
            &p(&format!("{who}.key")),
            "-out",
            &p(&format!("{who}.csr")),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&format!("{who}.csr")),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p("san.cnf"),
            "-out",
            &p(&format!("{who}.pem")),
        ]);
    }
    let e = Etcd::single_tls(&p("server.pem"), &p("server.key"), &p("ca.pem")).unwrap();
    let flags = vec![
        format!("--cacert={}", p("ca.pem")),
        format!("--cert={}", p("client.pem")),
        format!("--key={}", p("client.key")),
    ];
    e.wait_healthy_with(&flags, Duration::from_secs(20));
    let opts = EtcdOptions {
        endpoints: vec![e.url.clone()],
        prefix: PREFIX.into(),
        cafile: Some(p("ca.pem").into()),
        certfile: Some(p("client.pem").into()),
        keyfile: Some(p("client.key").into()),
        ..Default::default()
    };
    let r = EtcdRegistry::connect(&opts).await.unwrap();
    create(&r, "100.96.1.0-24", 1).await;
    assert_eq!(r.leases().await.unwrap().len(), 1);
    // Without a client certificate the server refuses.
    let plain = EtcdRegistry::connect(&EtcdOptions { certfile: None, keyfile: None, ..opts }).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), plain.leases()).await.map(|r| r.is_err()).unwrap_or(true));
}
