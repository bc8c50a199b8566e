//! The CNI plugin, a drop-in for flannel's: the twill binary acts as it when invoked as
//! `flannel` (kube-flannel's `cni-conf.json` names `"type": "flannel"`). It reads
//! subnet.env and delegates to `bridge` (with `host-local` IPAM on the node's subnet)
//! found on `CNI_PATH`, as flannel's plugin does; the delegate config is saved per
//! container under `dataDir`, so DEL works after subnet.env changed.
//!
//! Protocol: `CNI_COMMAND` (ADD, DEL, CHECK, VERSION) and the other `CNI_*` variables,
//! the network config on stdin, the result (or a CNI error object) on stdout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use serde_json::{Map, Value, json};
use twill_core::subnet_env::SubnetEnv;

/// The CNI versions this plugin speaks (it passes the runtime's version on to the
/// delegate, whose result is returned as it comes).
const SUPPORTED: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// How long ADD waits for subnet.env (twill writes it once it holds its lease).
const SUBNET_ENV_WAIT: Duration = Duration::from_secs(10);

/// A CNI error: its code (from the spec) and message, printed as the error object.
#[derive(Debug)]
pub struct CniError {
    code: u32,
    msg: String,
    details: String,
}

/// The spec's well-known codes.
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

/// The CNI environment.
#[derive(Debug, Clone)]
struct Env {
    command: String,
    container_id: String,
    path: Vec<PathBuf>,
}

impl Env {
    fn from_process() -> Result<Env, CniError> {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let command = var("CNI_COMMAND");
        if command.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"));
        }
        let container_id = var("CNI_CONTAINERID");
        if command != "VERSION" && container_id.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_CONTAINERID is not set",
            ));
        }
        let path = std::env::split_paths(&var("CNI_PATH")).collect();
        Ok(Env {
            command,
            container_id,
            path,
        })
    }
}

/// flannel's plugin config (`type: flannel`): the keys it reads; the rest is ignored.
#[derive(Debug, Clone)]
struct NetConf {
    name: String,
    cni_version: String,
    subnet_file: PathBuf,
    data_dir: PathBuf,
    delegate: Map<String, Value>,
    ipam: Map<String, Value>,
    runtime_config: Option<Value>,
    prev_result: Option<Value>,
}

impl NetConf {
    fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration is not JSON")
                .details(e.to_string())
        })?;
        let Value::Object(o) = v else {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
            ));
        };
        let text = |key: &str| -> Result<Option<String>, CniError> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("{key} must be a string, not {other}"),
                )),
            }
        };
        let object = |key: &str| -> Result<Map<String, Value>, CniError> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(other) => Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("{key} must be an object, not {other}"),
                )),
            }
        };
        let cni_version = text("cniVersion")?.unwrap_or_else(|| "0.1.0".to_owned());
        if !SUPPORTED.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version:?} is not supported (supported: {})",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        Ok(NetConf {
            name: text("name")?.unwrap_or_default(),
            cni_version,
            subnet_file: text("subnetFile")?
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.to_owned())
                .into(),
            data_dir: text("dataDir")?
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned())
                .into(),
            delegate: object("delegate")?,
            ipam: object("ipam")?,
            runtime_config: o.get("runtimeConfig").cloned(),
            prev_result: o.get("prevResult").cloned(),
        })
    }
}

/// The delegate's config, as flannel's plugin builds it from `conf` and subnet.env.
fn delegate_config(conf: &NetConf, env: &SubnetEnv) -> Value {
    let mut d = conf.delegate.clone();
    d.insert("name".into(), json!(conf.name));
    d.entry("type").or_insert(json!("bridge"));
    // The bridge masquerades only when twill does not.
    d.entry("ipMasq").or_insert(json!(!env.ip_masq));
    d.entry("mtu").or_insert(json!(env.mtu));
    if d.get("type") == Some(&json!("bridge")) {
        d.entry("isGateway").or_insert(json!(true));
    }
    d.insert("cniVersion".into(), json!(conf.cni_version));
    let mut ipam = conf.ipam.clone();
    ipam.entry("type").or_insert(json!("host-local"));
    ipam.insert(
        "ranges".into(),
        json!([[{"subnet": env.subnet.to_string()}]]),
    );
    let mut routes = match ipam.get("routes") {
        Some(Value::Array(r)) => r.clone(),
        _ => Vec::new(),
    };
    // flannel's route has no gateway; the bridge's ADD installs it via the bridge's
    // address anyway, and its CHECK then looks for a route without one and fails. With
    // the gateway written out, the route is the same and CHECK passes.
    let via_bridge =
        d.get("type") == Some(&json!("bridge")) && d.get("isGateway") == Some(&json!(true));
    if via_bridge {
        routes.push(
            json!({"dst": env.network.to_string(), "gw": env.subnet.first_host().to_string()}),
        );
    } else {
        routes.push(json!({"dst": env.network.to_string()}));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    Value::Object(d)
}

/// subnet.env, waiting up to [`SUBNET_ENV_WAIT`] for it to appear.
fn load_subnet_env(path: &Path, wait: Duration) -> Result<SubnetEnv, CniError> {
    let text = match crate::files::read_waiting(path, wait) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "{} does not exist after {}s: twill is not running on this node, or \
                     has not leased a subnet yet (see its log: twill run, or its pod's)",
                    path.display(),
                    wait.as_secs()
                ),
            ));
        }
        Err(e) => {
            return Err(
                CniError::new(code::IO, format!("read {}", path.display())).details(e.to_string())
            );
        }
    };
    SubnetEnv::parse(&text).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{} is not a usable subnet.env: {e}", path.display()),
        )
    })
}

/// Where the delegate config of `container_id` is saved.
fn saved_path(data_dir: &Path, container_id: &str) -> Result<PathBuf, CniError> {
    if container_id.contains('/') || container_id.starts_with('.') {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {container_id:?} is not a container id"),
        ));
    }
    Ok(data_dir.join(container_id))
}

fn save(path: &Path, conf: &Value) -> Result<(), CniError> {
    let io = |e: std::io::Error| {
        CniError::new(
            code::IO,
            format!("save the delegate config to {}", path.display()),
        )
        .details(e.to_string())
    };
    crate::files::write_atomically(path, conf.to_string().as_bytes()).map_err(io)
}

/// Run the delegate plugin `kind` from `CNI_PATH` with our environment (its
/// `CNI_COMMAND` set to `command`) and `conf` on stdin; its stdout.
fn delegate(env: &Env, command: &str, conf: &Value) -> Result<Vec<u8>, CniError> {
    let kind = conf
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "delegate.type must be a string"))?;
    if kind.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("delegate.type {kind:?} is not a plugin name"),
        ));
    }
    let binary = env
        .path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::IO,
                format!("failed to find plugin {kind:?} in CNI_PATH {:?}", env.path),
            )
        })?;
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(code::IO, format!("run {}", binary.display())).details(e.to_string())
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(code::IO, format!("wait for {}", binary.display())).details(e.to_string())
    })?;
    if !out.status.success() {
        // The delegate printed its own error object: pass it on as ours.
        if let Ok(Value::Object(e)) = serde_json::from_slice::<Value>(&out.stdout) {
            let code = e.get("code").and_then(Value::as_u64).unwrap_or(999);
            let msg = e.get("msg").and_then(Value::as_str).unwrap_or("failed");
            let details = e.get("details").and_then(Value::as_str).unwrap_or("");
            return Err(CniError::new(
                u32::try_from(code).unwrap_or(999),
                format!("delegate {kind} {command}: {msg}"),
            )
            .details(details));
        }
        return Err(CniError::new(
            999,
            format!("delegate {kind} {command} failed ({})", out.status),
        )
        .details(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    Ok(out.stdout)
}

/// One invocation: the output for stdout.
fn handle(env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    if env.command == "VERSION" {
        return Ok(
            json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED})
                .to_string()
                .into_bytes(),
        );
    }
    let conf = NetConf::parse(stdin)?;
    let saved = saved_path(&conf.data_dir, &env.container_id)?;
    match env.command.as_str() {
        "ADD" => {
            let subnet_env = load_subnet_env(&conf.subnet_file, SUBNET_ENV_WAIT)?;
            let d = delegate_config(&conf, &subnet_env);
            save(&saved, &d)?;
            delegate(env, "ADD", &d)
        }
        "DEL" => {
            // The config of the ADD, whatever subnet.env says now; none: nothing was
            // added (or DEL already ran), which DEL must accept.
            let d: Value = match std::fs::read(&saved) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                    CniError::new(code::DECODE, format!("{} is not JSON", saved.display()))
                        .details(e.to_string())
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(CniError::new(code::IO, format!("read {}", saved.display()))
                        .details(e.to_string()));
                }
            };
            delegate(env, "DEL", &d)?;
            let _ = std::fs::remove_file(&saved);
            Ok(Vec::new())
        }
        "CHECK" => {
            if matches!(
                conf.cni_version.as_str(),
                "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1"
            ) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {} does not allow CHECK (0.4.0 and later do)",
                        conf.cni_version
                    ),
                ));
            }
            let mut d: Value = std::fs::read(&saved)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    CniError::new(
                        3,
                        format!(
                            "no ADD recorded for container {} ({})",
                            env.container_id,
                            saved.display()
                        ),
                    )
                })?;
            if let (Value::Object(m), Some(prev)) = (&mut d, &conf.prev_result) {
                m.insert("prevResult".into(), prev.clone());
            }
            delegate(env, "CHECK", &d).map(|_| Vec::new())
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION"),
        )),
    }
}

/// Run as the CNI plugin: read stdin, handle `CNI_COMMAND`, print the result or the
/// error object.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "1.0.0".to_owned());
    let result = Env::from_process().and_then(|env| handle(&env, &stdin));
    let mut stdout = std::io::stdout();
    match result {
        Ok(out) => {
            let _ = stdout.write_all(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut error = BTreeMap::new();
            error.insert("cniVersion", json!(version));
            error.insert("code", json!(e.code));
            error.insert("msg", json!(e.msg));
            if !e.details.is_empty() {
                error.insert("details", json!(e.details));
            }
            let _ = writeln!(stdout, "{}", json!(error));
            ExitCode::FAILURE
        }
    }
}

/// Whether this process was started under the CNI plugin's name.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "flannel"))
        .unwrap_or(false)
}

/// kube-flannel's CNI config list (`cni-conf.json`), as `twill install-cni` writes it.
pub const KUBE_FLANNEL_CONFLIST: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

/// This binary as `<bin_dir>/flannel` (atomically).
pub fn install_plugin(bin_dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let me = std::env::current_exe().context("find this binary")?;
    std::fs::create_dir_all(bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let target = bin_dir.join("flannel");
    let tmp = bin_dir.join(".flannel.twill-install.tmp");
    std::fs::copy(&me, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &target))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("install {} as {}", me.display(), target.display()))?;
    Ok(target)
}

/// `twill install-cni`: this binary as `<bin-dir>/flannel`, and with `--conf-dir` the
/// conflist as `<conf-dir>/10-flannel.conflist`, each written atomically.
pub fn install(bin_dir: &Path, conf_dir: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let target = install_plugin(bin_dir)?;
    println!("installed {}", target.display());
    if let Some(dir) = conf_dir {
        let conf = dir.join("10-flannel.conflist");
        crate::files::write_atomically(&conf, KUBE_FLANNEL_CONFLIST.as_bytes())
            .with_context(|| format!("write {}", conf.display()))?;
        println!("installed {}", conf.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ip_masq: bool) -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().expect("network"),
            subnet: "10.244.1.0/24".parse().expect("subnet"),
            mtu: 1450,
            ip_masq,
        }
    }

    #[test]
    fn the_delegate_is_flannels_bridge_with_host_local_on_the_subnet() {
        let conf = NetConf::parse(
            br#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        )
        .expect("parses");
        assert_eq!(
            delegate_config(&conf, &env(false)),
            json!({
                "name": "cbr0", "cniVersion": "0.3.1", "type": "bridge",
                "hairpinMode": true, "isDefaultGateway": true, "isGateway": true,
                "ipMasq": true, "mtu": 1450,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                         "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}]}
            })
        );
        // twill masquerades: the bridge does not; the config's own choices win.
        let conf = NetConf::parse(
            br#"{"name":"n","cniVersion":"1.0.0","delegate":{"mtu":1400,"type":"ptp"},"ipam":{"routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .expect("parses");
        let d = delegate_config(&conf, &env(true));
        assert_eq!(d["ipMasq"], json!(false));
        assert_eq!(d["mtu"], json!(1400));
        assert_eq!(d.get("isGateway"), None, "only a bridge gets isGateway");
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "10.244.0.0/16"}])
        );
    }

    #[test]
    fn bad_configs_are_cni_errors_with_the_spec_codes() {
        assert_eq!(
            NetConf::parse(b"{").expect_err("not json").code,
            code::DECODE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9"}"#)
                .expect_err("version")
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let e = NetConf::parse(br#"{"cniVersion":"0.3.1","delegate":"bridge"}"#).expect_err("type");
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("delegate must be an object"), "{}", e.msg);
    }

    #[test]
    fn a_missing_subnet_env_says_twill_is_not_running() {
        let e = load_subnet_env(Path::new("/nonexistent/subnet.env"), Duration::ZERO)
            .expect_err("missing");
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(
            e.msg.contains("twill is not running on this node"),
            "{}",
            e.msg
        );
    }
}
