//! The etcd v3 registry: flannel's keyspace (`<prefix>/config`, `<prefix>/subnets/<key>`).
//!
//! Creation is `LeaseGrant(ttl)` then `Txn(If Version(key) == 0, Then Put(key, value, lease))`,
//! as flanneld does; renewal puts the value again with a fresh lease. The watch lists the prefix
//! at revision R, then watches from R + 1; on compaction or a broken stream it lists again, with
//! a backoff of 100 ms doubling to 5 s. Its state lives in the registry, so a watch call that is
//! dropped half-way (the daemon selects over several futures) loses nothing.

use super::{Lease, Registry, RegistryError};
use crate::proto::lease::{LeaseAttrs, SubnetKey};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, WatchOptions, WatchStream,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// First retry delay after an etcd failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to reach etcd (flanneld's flags).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/coreos.com/network`.
    pub prefix: String,
    /// CA certificate (PEM) to verify the server.
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM).
    pub certfile: Option<PathBuf>,
    /// Client key (PEM).
    pub keyfile: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
}

struct WatchState {
    /// The revision `leases` reflects (list revision or last event's mod_revision); 0 = list.
    revision: i64,
    leases: BTreeMap<SubnetKey, Lease>,
    stream: Option<WatchStream>,
    backoff: Duration,
}

/// A registry in etcd.
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    watch: tokio::sync::Mutex<WatchState>,
    held: std::sync::Mutex<HashMap<String, i64>>,
}

fn unavailable(what: &str, e: etcd_client::Error) -> RegistryError {
    RegistryError::Unavailable(format!("{what}: {e}"))
}

impl EtcdRegistry {
    /// Builds the client. The connection itself is made lazily: an unreachable etcd shows up
    /// as an error of the first request, which the caller retries.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, RegistryError> {
        if opts.endpoints.is_empty() {
            return Err(RegistryError::Unavailable("no etcd endpoints".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            co = co.with_user(u.clone(), p.clone());
        }
        if opts.cafile.is_some() || opts.certfile.is_some() {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| RegistryError::Io { op: "reading", path: p.clone(), source })
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (&opts.certfile, &opts.keyfile) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => return Err(RegistryError::Unavailable("--etcd-certfile and --etcd-keyfile go together".into())),
            }
            co = co.with_tls(tls);
        }
        let client =
            Client::connect(&opts.endpoints, Some(co)).await.map_err(|e| unavailable("connecting to etcd", e))?;
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        Ok(Self {
            client,
            prefix,
            watch: tokio::sync::Mutex::new(WatchState {
                revision: 0,
                leases: BTreeMap::new(),
                stream: None,
                backoff: BACKOFF_MIN,
            }),
            held: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    fn parse_kv(&self, key: &str, value: &str) -> Option<Lease> {
        let k: SubnetKey = key.strip_prefix(&self.subnets_prefix())?.parse().ok()?;
        match LeaseAttrs::parse(value) {
            Ok(attrs) => Some(Lease { key: k, attrs, expires: None }),
            Err(e) => {
                tracing::warn!(key, "skipping lease: {e}");
                None
            }
        }
    }

    /// Lists the leases and the revision they were read at.
    async fn list(&self) -> Result<(Vec<Lease>, i64), RegistryError> {
        let resp = self
            .client
            .clone()
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| unavailable("listing leases", e))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases =
            resp.kvs().iter().filter_map(|kv| self.parse_kv(kv.key_str().ok()?, kv.value_str().ok()?)).collect();
        Ok((leases, rev))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, RegistryError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        Ok(self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(|e| unavailable("granting an etcd lease", e))?
            .id())
    }

    fn hold(&self, key: String, id: i64) -> Option<i64> {
        self.held.lock().ok()?.insert(key, id)
    }
}

/// True when `a` and `known` hold different keys or values (order does not matter).
fn differs(a: &BTreeMap<SubnetKey, Lease>, known: &[Lease]) -> bool {
    a.len() != known.len() || known.iter().any(|l| a.get(&l.key).is_none_or(|x| x.attrs != l.attrs))
}

impl Registry for EtcdRegistry {
    fn describe(&self) -> String {
        format!("etcd prefix {}", self.prefix)
    }

    async fn config(&self) -> Result<String, RegistryError> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(|e| unavailable("reading the network config", e))?;
        let kv = resp.kvs().first().ok_or_else(|| RegistryError::NoConfig(format!("etcd key {key}")))?;
        kv.value_str().map(str::to_string).map_err(|e| unavailable("reading the network config", e))
    }

    async fn leases(&self) -> Result<Vec<Lease>, RegistryError> {
        Ok(self.list().await?.0)
    }

    async fn create_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Duration) -> Result<bool, RegistryError> {
        let k = self.lease_key(key);
        let id = self.grant(ttl).await?;
        let txn = Txn::new().when([Compare::version(k.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            k.clone(),
            attrs.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )]);
        let won = self.client.clone().txn(txn).await.map_err(|e| unavailable("creating a lease", e))?.succeeded();
        if won {
            self.hold(k, id);
        } else {
            let _ = self.client.clone().lease_revoke(id).await;
        }
        Ok(won)
    }

    async fn renew_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Duration) -> Result<(), RegistryError> {
        let k = self.lease_key(key);
        let id = self.grant(ttl).await?;
        self.client
            .clone()
            .put(k.clone(), attrs.to_json(), Some(PutOptions::new().with_lease(id)))
            .await
            .map_err(|e| unavailable("renewing the lease", e))?;
        if let Some(old) = self.hold(k, id)
            && old != id
        {
            let _ = self.client.clone().lease_revoke(old).await;
        }
        Ok(())
    }

    async fn watch_leases(&self, known: &[Lease]) -> Result<Vec<Lease>, RegistryError> {
        let mut st = self.watch.lock().await;
        loop {
            if st.stream.is_none() {
                // After a broken stream, resume from the last revision seen; list only at the
                // start and after a compaction.
                let resume = st.revision;
                let started = async {
                    let (listed, rev) = if resume > 0 {
                        (None, resume)
                    } else {
                        let (l, r) = self.list().await?;
                        (Some(l), r)
                    };
                    let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
                    let stream = self
                        .client
                        .clone()
                        .watch(self.subnets_prefix(), Some(opts))
                        .await
                        .map_err(|e| unavailable("watching leases", e))?;
                    Ok::<_, RegistryError>((listed, rev, stream))
                }
                .await;
                match started {
                    Ok((listed, rev, stream)) => {
                        if let Some(leases) = listed {
                            st.leases = leases.into_iter().map(|l| (l.key, l)).collect();
                        }
                        st.revision = rev;
                        st.stream = Some(stream);
                        st.backoff = BACKOFF_MIN;
                        if differs(&st.leases, known) {
                            return Ok(st.leases.values().cloned().collect());
                        }
                    }
                    Err(e) => {
                        let wait = st.backoff;
                        st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                        tracing::warn!(
                            "etcd: {e}; retrying in {wait:?} (forwarding goes on with the last known peers)"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            let Some(stream) = st.stream.as_mut() else { continue };
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() || resp.compact_revision() > 0 {
                        tracing::info!(
                            compact_revision = resp.compact_revision(),
                            "etcd watch cancelled (compacted); listing again"
                        );
                        st.stream = None;
                        st.revision = 0;
                        continue;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        st.revision = st.revision.max(kv.mod_revision());
                        let Ok(key) = kv.key_str() else { continue };
                        let Some(k) =
                            key.strip_prefix(&self.subnets_prefix()).and_then(|k| k.parse::<SubnetKey>().ok())
                        else {
                            continue;
                        };
                        match ev.event_type() {
                            EventType::Put => match kv.value_str().ok().and_then(|v| self.parse_kv(key, v)) {
                                Some(l) => {
                                    st.leases.insert(k, l);
                                }
                                None => {
                                    st.leases.remove(&k);
                                }
                            },
                            EventType::Delete => {
                                st.leases.remove(&k);
                            }
                        }
                    }
                    if differs(&st.leases, known) {
                        return Ok(st.leases.values().cloned().collect());
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(revision = st.revision, "etcd watch stream broke; resuming after {:?}", st.backoff);
                    st.stream = None;
                    let wait = st.backoff;
                    st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lease(k: &str, ip: u8) -> Lease {
        Lease { key: k.parse().unwrap(), attrs: LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, ip)), expires: None }
    }

    #[test]
    fn differs_ignores_order() {
        // "100.96.10.0" sorts before "100.96.9.0" as a string, after it as a subnet.
        let known = vec![lease("100.96.10.0-24", 1), lease("100.96.9.0-24", 2)];
        let map: BTreeMap<SubnetKey, Lease> = known.iter().map(|l| (l.key, l.clone())).collect();
        assert!(!differs(&map, &known));
        assert!(differs(&map, &known[..1]));
        assert!(differs(&map, &[lease("100.96.10.0-24", 1), lease("100.96.9.0-24", 3)]));
    }
}
