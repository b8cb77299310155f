//! The flannel CNI plugin's formats: its network configuration, the `subnet.env` it reads, the
//! delegate configuration it builds from them (for `bridge` with `host-local` IPAM, exactly as
//! flannel's plugin does), and CNI's error and version answers.

use super::json::GoObject;
use ipnet::IpNet;
use serde_json::{Map, Value, json};

/// flannel's default `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's default `dataDir`, where each container's delegate configuration is kept for DEL.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// The CNI versions this plugin speaks (it passes its delegate's result through unchanged).
pub const SUPPORTED_VERSIONS: [&str; 7] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error, printed as JSON on stdout with a non-zero exit (CNI spec, "Error").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The spec's code: 4 bad environment, 6 cannot decode, 7 invalid network config, 5 I/O,
    /// 999 anything else.
    pub code: u32,
    /// What went wrong.
    pub msg: String,
    /// More about it.
    pub details: String,
}

impl CniError {
    /// Invalid necessary environment variables (code 4).
    pub fn env(msg: impl Into<String>) -> Self {
        Self { code: 4, msg: msg.into(), details: String::new() }
    }
    /// Failed to decode content (code 6).
    pub fn decode(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code: 6, msg: msg.into(), details: details.into() }
    }
    /// Invalid network config (code 7).
    pub fn config(msg: impl Into<String>) -> Self {
        Self { code: 7, msg: msg.into(), details: String::new() }
    }
    /// I/O failure (code 5).
    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code: 5, msg: msg.into(), details: details.into() }
    }

    /// The error as CNI prints it.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v.to_string()
    }
}

/// The answer to `CNI_COMMAND=VERSION`.
pub fn version_json(cni_version: &str) -> String {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// A `type: "flannel"` network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `name`.
    pub name: String,
    /// `cniVersion` ("" when absent).
    pub cni_version: String,
    /// `subnetFile`.
    pub subnet_file: String,
    /// `dataDir`.
    pub data_dir: String,
    /// `delegate` (empty when absent).
    pub delegate: Map<String, Value>,
    /// `ipam`, if given.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`, if given (handed to the delegate).
    pub runtime_config: Option<Value>,
}

fn object(o: &GoObject<'_>, name: &str) -> Result<Option<Map<String, Value>>, CniError> {
    o.get::<Map<String, Value>>(name).map_err(|e| CniError::decode(format!("'{name}' must be an object"), e))
}

impl NetConf {
    /// Parses the configuration a runtime hands the plugin on stdin (field names matched as
    /// Go's encoding/json does).
    pub fn parse(text: &str) -> Result<Self, CniError> {
        let o = GoObject::parse(text).map_err(|e| CniError::decode("failed to load netconf", e.to_string()))?;
        let string = |name: &str| o.get::<String>(name).map_err(|e| CniError::decode("failed to load netconf", e));
        let delegate = object(&o, "delegate")?.unwrap_or_default();
        if delegate.get("type").is_some_and(|t| !t.is_string()) {
            return Err(CniError::config("'delegate' dictionary, if present, must have (string) 'type' field"));
        }
        for field in ["name", "ipam"] {
            if delegate.contains_key(field) {
                return Err(CniError::config(format!(
                    "'delegate' dictionary must not have '{field}' field, it'll be set by flannel"
                )));
            }
        }
        Ok(Self {
            name: string("name")?.unwrap_or_default(),
            cni_version: string("cniVersion")?.unwrap_or_default(),
            subnet_file: string("subnetFile")?.filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            data_dir: string("dataDir")?.filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            delegate,
            ipam: object(&o, "ipam")?,
            runtime_config: o.get::<Value>("runtimeConfig").map_err(|e| CniError::decode("runtimeConfig", e))?,
        })
    }

    /// The delegate configuration flannel's plugin builds: `name` and `cniVersion` set;
    /// unless the user set them, `type` bridge, `ipMasq` = !FLANNEL_IPMASQ, `mtu` = FLANNEL_MTU
    /// and, for bridge, `isGateway`; `ipam` from the user's (type host-local by default) with
    /// the lease's ranges and a route to each network; `runtimeConfig` handed on.
    pub fn delegate_for(&self, env: &FlannelEnv) -> Result<Value, CniError> {
        let mut d = self.delegate.clone();
        d.insert("name".into(), Value::String(self.name.clone()));
        d.entry("type").or_insert_with(|| "bridge".into());
        d.entry("ipMasq").or_insert(Value::Bool(!env.ipmasq));
        d.entry("mtu").or_insert(Value::from(env.mtu));
        if d.get("type").and_then(Value::as_str) == Some("bridge") {
            d.entry("isGateway").or_insert(Value::Bool(true));
        }
        if !self.cni_version.is_empty() {
            d.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }
        if let Some(rc) = &self.runtime_config {
            d.insert("runtimeConfig".into(), rc.clone());
        }
        let mut ipam = self.ipam.clone().unwrap_or_default();
        ipam.entry("type").or_insert_with(|| "host-local".into());
        let ranges: Vec<Value> = env.subnets.iter().map(|s| json!([{ "subnet": s.trunc().to_string() }])).collect();
        ipam.insert("ranges".into(), Value::Array(ranges));
        let mut routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(r)) => r.clone(),
            Some(_) => return Err(CniError::config("failed to read IPAM routes: 'ipam.routes' must be a list")),
        };
        routes.extend(env.networks.iter().map(|n| json!({ "dst": n.to_string() })));
        ipam.insert("routes".into(), Value::Array(routes));
        d.insert("ipam".into(), Value::Object(ipam));
        Ok(Value::Object(d))
    }
}

/// What the plugin reads from `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    /// `FLANNEL_NETWORK` and `FLANNEL_IPV6_NETWORK` (each may be a comma-separated list).
    pub networks: Vec<IpNet>,
    /// `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` as written (`10.244.1.1/24`: the range is the
    /// subnet, the gateway its first address).
    pub subnets: Vec<IpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ` is "true".
    pub ipmasq: bool,
}

impl FlannelEnv {
    /// Parses `subnet.env` as flannel's plugin does; a missing network, subnet, MTU or IPMASQ
    /// is an error naming what is missing.
    pub fn parse(text: &str, path: &str) -> Result<Self, CniError> {
        let (mut networks, mut subnets, mut mtu, mut ipmasq) = (Vec::new(), Vec::new(), None, None);
        let bad = |k: &str, v: &str| CniError::decode(format!("{path}: bad {k}"), format!("{v:?}"));
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            let v = v.trim();
            match k.trim() {
                "FLANNEL_NETWORK" | "FLANNEL_IPV6_NETWORK" => {
                    for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        networks.push(n.parse::<IpNet>().map_err(|_| bad(k, v))?.trunc());
                    }
                }
                "FLANNEL_SUBNET" | "FLANNEL_IPV6_SUBNET" => subnets.push(v.parse::<IpNet>().map_err(|_| bad(k, v))?),
                "FLANNEL_MTU" => mtu = Some(v.parse::<u32>().map_err(|_| bad(k, v))?),
                "FLANNEL_IPMASQ" => ipmasq = Some(v == "true"),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        if networks.is_empty() {
            missing.push("FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK");
        }
        if subnets.is_empty() {
            missing.push("FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET");
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        match (mtu, ipmasq) {
            (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(Self { networks, subnets, mtu, ipmasq }),
            _ => Err(CniError::config(format!("{path} is missing {}", missing.join(", ")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str =
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    fn env() -> FlannelEnv {
        FlannelEnv::parse(ENV, "subnet.env").unwrap()
    }

    #[test]
    fn the_readme_example_of_flannels_plugin() {
        let c = NetConf::parse(r#"{"name":"mynet","type":"flannel"}"#).unwrap();
        assert_eq!((c.subnet_file.as_str(), c.data_dir.as_str()), (DEFAULT_SUBNET_FILE, DEFAULT_DATA_DIR));
        let d = c.delegate_for(&env()).unwrap();
        assert_eq!(
            d,
            json!({"name":"mynet","type":"bridge","mtu":1472,"ipMasq":false,"isGateway":true,
                   "ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}]}})
        );
    }

    #[test]
    fn the_users_delegate_and_ipam_win_where_set() {
        let c = NetConf::parse(
            r#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","subnetFile":"/x.env","dataDir":"/d",
                "delegate":{"hairpinMode":true,"isDefaultGateway":true,"mtu":1400,"ipMasq":true},
                "ipam":{"dataDir":"/ipam","routes":[{"dst":"0.0.0.0/0"}]},
                "runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!((c.subnet_file.as_str(), c.data_dir.as_str()), ("/x.env", "/d"));
        let d = c.delegate_for(&env()).unwrap();
        assert_eq!(d["cniVersion"], "0.3.1");
        assert_eq!(
            (d["mtu"].clone(), d["ipMasq"].clone(), d["hairpinMode"].clone()),
            (json!(1400), json!(true), json!(true))
        );
        assert_eq!(d["isGateway"], true);
        assert_eq!(d["runtimeConfig"], json!({"portMappings":[]}));
        assert_eq!(d["ipam"]["dataDir"], "/ipam");
        assert_eq!(d["ipam"]["routes"], json!([{"dst":"0.0.0.0/0"},{"dst":"10.1.0.0/16"}]));
        // Another delegate type gets no isGateway.
        let c = NetConf::parse(r#"{"name":"n","delegate":{"type":"ipvlan","master":"eth0"}}"#).unwrap();
        assert!(c.delegate_for(&env()).unwrap().get("isGateway").is_none());
    }

    #[test]
    fn refused_configs() {
        for (conf, code) in [
            ("not json", 6),
            (r#"{"name":"n","delegate":{"name":"x"}}"#, 7),
            (r#"{"name":"n","delegate":{"ipam":{}}}"#, 7),
            (r#"{"name":"n","delegate":{"type":5}}"#, 7),
            (r#"{"name":"n","delegate":[]}"#, 6),
        ] {
            assert_eq!(NetConf::parse(conf).unwrap_err().code, code, "{conf}");
        }
        let c = NetConf::parse(r#"{"name":"n","ipam":{"routes":"x"}}"#).unwrap();
        assert_eq!(c.delegate_for(&env()).unwrap_err().code, 7);
    }

    #[test]
    fn subnet_env_as_flannels_plugin_reads_it() {
        let e = FlannelEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16,10.9.0.0/16\nFLANNEL_IPV6_NETWORK=2001:db8::/48\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_SUBNET=2001:db8:0:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            "e",
        )
        .unwrap();
        assert_eq!(e.networks.len(), 3);
        assert!(!e.ipmasq);
        let d = NetConf::parse(r#"{"name":"n"}"#).unwrap().delegate_for(&e).unwrap();
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet":"10.1.17.0/24"}],[{"subnet":"2001:db8:0:5::/64"}]]));
        assert_eq!(d["ipMasq"], true);
        let err = FlannelEnv::parse("FLANNEL_SUBNET=10.1.17.1/24\n", "/run/flannel/subnet.env").unwrap_err();
        assert_eq!(
            err.msg,
            "/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        assert!(FlannelEnv::parse(&ENV.replace("1472", "x"), "e").is_err());
    }

    #[test]
    fn errors_and_version_as_cni_prints_them() {
        let e = CniError::io("failed to delegate", "no bridge in CNI_PATH");
        let v: Value = serde_json::from_str(&e.to_json("0.3.1")).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion":"0.3.1","code":5,"msg":"failed to delegate","details":"no bridge in CNI_PATH"})
        );
        let v: Value = serde_json::from_str(&version_json("1.0.0")).unwrap();
        assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("0.3.1")));
    }
}
