//! The etcd v3 registry: flannel's keyspace (`<prefix>/config`, `<prefix>/subnets/<key>`).
//!
//! Creation is `LeaseGrant(ttl)` then `Txn(If Version(key) == 0, Then Put(key, value, lease))`,
//! as flanneld does; renewal puts the value again with a fresh lease. The watch lists the prefix
//! at revision R, then watches from R + 1; on compaction or a broken stream it lists again (etcd
//! may have come back from a backup or empty), with [`Backoff::registry`] between tries. Its
//! state lives in the registry, so a watch call that is dropped half-way (the daemon selects over
//! several futures) loses nothing.

use super::{Lease, Registry, RegistryError};
use crate::control::backoff::Backoff;
use crate::control::said::SaidOnce;
use crate::proto::lease::{LeaseAttrs, SubnetKey};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

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
    /// The revision `leases` reflects (list revision or last event's mod_revision), for the log:
    /// every (re)start lists anew.
    revision: i64,
    leases: BTreeMap<SubnetKey, Lease>,
    stream: Option<WatchStream>,
    backoff: Backoff,
    /// Not before then: the next try after a failure. Kept here because the daemon drops a
    /// waiting watch whenever another of its timers fires, and calls it again.
    retry_at: Option<tokio::time::Instant>,
}

/// A registry in etcd.
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    watch: tokio::sync::Mutex<WatchState>,
    held: std::sync::Mutex<HashMap<String, i64>>,
    /// Unreadable lease values, each said once.
    said: SaidOnce,
}

/// An etcd failure: refused for a reason retrying cannot change (bad credentials, no
/// permission, a malformed request), or unavailable (anything else: down, unreachable, no
/// leader, timed out), which the caller retries.
fn classify(what: &str, e: etcd_client::Error) -> RegistryError {
    use etcd_client::Error as E;
    match &e {
        E::GRpcStatus(s) if matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::PermissionDenied) => {
            RegistryError::Refused(format!("{what}: etcd says {}", s.message()))
        }
        E::InvalidArgs(m) => RegistryError::Refused(format!("{what}: {m}")),
        E::InvalidUri(m) => RegistryError::Refused(format!("{what}: {m} (--etcd-endpoints)")),
        // The status's own words, not the whole transport error chain.
        E::GRpcStatus(s) => RegistryError::Unavailable(format!("{what}: {} ({})", s.code().description(), s.message())),
        _ => RegistryError::Unavailable(format!("{what}: {e}")),
    }
}

impl EtcdRegistry {
    /// Builds the client. The connection itself is made lazily: an unreachable etcd shows up
    /// as an error of the first request, which the caller retries.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, RegistryError> {
        if opts.endpoints.is_empty() {
            return Err(RegistryError::Refused("no etcd endpoints (--etcd-endpoints)".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            // A restarted etcd forgets the tokens it gave out: the client authenticates again
            // when one is refused, instead of failing every request from then on.
            co = co.with_user(u.clone(), p.clone()).with_auto_token_refresh(true);
        }
        if opts.cafile.is_some() || opts.certfile.is_some() {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|error| RegistryError::Io { op: "reading", path: p.clone(), error })
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (&opts.certfile, &opts.keyfile) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => return Err(RegistryError::Refused("--etcd-certfile and --etcd-keyfile go together".into())),
            }
            co = co.with_tls(tls);
        }
        let client = Client::connect(&opts.endpoints, Some(co)).await.map_err(|e| classify("connecting to etcd", e))?;
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        Ok(Self {
            client,
            prefix,
            watch: tokio::sync::Mutex::new(WatchState {
                revision: 0,
                leases: BTreeMap::new(),
                stream: None,
                backoff: Backoff::registry(),
                retry_at: None,
            }),
            held: std::sync::Mutex::new(HashMap::new()),
            said: SaidOnce::default(),
        })
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    fn parse_kv(&self, kv: &KeyValue) -> Option<Lease> {
        let (key, value) = (kv.key_str().ok()?, kv.value_str().ok()?);
        let k: SubnetKey = key.strip_prefix(&self.subnets_prefix())?.parse().ok()?;
        match LeaseAttrs::parse(value) {
            // A key with no etcd lease was written without a TTL: a reservation.
            Ok(attrs) => Some(Lease { key: k, attrs, expires: None, reserved: kv.lease() == 0 }),
            Err(e) => {
                if self.said.first(&format!("{key} {e}")) {
                    tracing::warn!(key, "skipping lease: {e}");
                }
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
            .map_err(|e| classify("listing leases", e))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases = resp.kvs().iter().filter_map(|kv| self.parse_kv(kv)).collect();
        Ok((leases, rev))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, RegistryError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        Ok(self.client.clone().lease_grant(secs, None).await.map_err(|e| classify("granting an etcd lease", e))?.id())
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
        let resp =
            self.client.clone().get(key.clone(), None).await.map_err(|e| classify("reading the network config", e))?;
        let kv = resp.kvs().first().ok_or_else(|| RegistryError::NoConfig(format!("etcd key {key}")))?;
        kv.value_str().map(str::to_string).map_err(|e| classify("reading the network config", e))
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
        let won = self.client.clone().txn(txn).await.map_err(|e| classify("creating a lease", e))?.succeeded();
        if won {
            self.hold(k, id);
        } else {
            let _ = self.client.clone().lease_revoke(id).await;
        }
        Ok(won)
    }

    async fn renew_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Duration) -> Result<(), RegistryError> {
        let k = self.lease_key(key);
        // A reservation is written without an etcd lease, so that it keeps no TTL.
        let id = if ttl.is_zero() { None } else { Some(self.grant(ttl).await?) };
        let opts = id.map(|id| PutOptions::new().with_lease(id));
        self.client
            .clone()
            .put(k.clone(), attrs.to_json(), opts)
            .await
            .map_err(|e| classify("renewing the lease", e))?;
        let old = match id {
            Some(id) => self.hold(k, id).filter(|old| *old != id),
            None => self.held.lock().ok().and_then(|mut h| h.remove(&k)),
        };
        if let Some(old) = old {
            let _ = self.client.clone().lease_revoke(old).await;
        }
        Ok(())
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let k = self.lease_key(key);
        self.client.clone().delete(k.clone(), None).await.map_err(|e| classify("deleting a lease", e))?;
        let held = self.held.lock().ok().and_then(|mut h| h.remove(&k));
        if let Some(id) = held {
            let _ = self.client.clone().lease_revoke(id).await;
        }
        Ok(())
    }

    async fn watch_leases(&self, known: &[Lease]) -> Result<Vec<Lease>, RegistryError> {
        let mut st = self.watch.lock().await;
        loop {
            if let Some(at) = st.retry_at {
                tokio::time::sleep_until(at).await;
                st.retry_at = None;
            }
            if st.stream.is_none() {
                // Every (re)start lists first: after a broken stream etcd may have restarted
                // from a backup or empty (its revisions start again lower, so a watch from our
                // last revision would wait in silence for ever), or compacted what we missed.
                let started = async {
                    let (listed, rev) = self.list().await?;
                    let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
                    let stream = self
                        .client
                        .clone()
                        .watch(self.subnets_prefix(), Some(opts))
                        .await
                        .map_err(|e| classify("watching leases", e))?;
                    Ok::<_, RegistryError>((listed, rev, stream))
                }
                .await;
                match started {
                    Ok((listed, rev, stream)) => {
                        st.leases = listed.into_iter().map(|l| (l.key, l)).collect();
                        st.revision = rev;
                        st.stream = Some(stream);
                        st.backoff.reset();
                        if differs(&st.leases, known) {
                            return Ok(st.leases.values().cloned().collect());
                        }
                    }
                    Err(e) => {
                        let wait = st.backoff.next_delay();
                        tracing::warn!(
                            "etcd: {e}; retrying in {wait:?} (forwarding goes on with the last known peers)"
                        );
                        st.retry_at = Some(tokio::time::Instant::now() + wait);
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
                            EventType::Put => match self.parse_kv(kv) {
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
                    let wait = st.backoff.next_delay();
                    tracing::warn!(revision = st.revision, "etcd watch stream broke; listing again in {wait:?}");
                    st.stream = None;
                    st.retry_at = Some(tokio::time::Instant::now() + wait);
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
        Lease {
            key: k.parse().unwrap(),
            attrs: LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, ip)),
            expires: None,
            reserved: false,
        }
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
