//! subnet.env exactly as flannel writes it (`subnet.WriteSubnetFile`), and reading back
//! `FLANNEL_SUBNET` to prefer the previous subnet on restart.

use std::net::Ipv4Addr;

use crate::subnet::Subnet;

/// What goes into subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The cluster network.
    pub network: Subnet,
    /// The node's subnet.
    pub subnet: Subnet,
    /// The MTU pods should use.
    pub mtu: u32,
    /// Whether the daemon masquerades traffic leaving the network.
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The file's text: `FLANNEL_SUBNET` is the first host address with the subnet's prefix.
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            self.subnet.first_host(),
            self.subnet.prefix(),
            self.mtu,
            self.ip_masq
        )
    }
}

/// Why a subnet.env text cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    /// A key flannel's readers require is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A key's value does not parse.
    #[error("{key}={value:?} is not {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl SubnetEnv {
    /// Read a subnet.env text as flannel's CNI plugin and `mk-docker-opts.sh` do:
    /// `KEY=VALUE` lines (quotes and a comma list's tail ignored); `FLANNEL_NETWORK`,
    /// `FLANNEL_SUBNET`, `FLANNEL_MTU` and `FLANNEL_IPMASQ` are required.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let get = |key: &'static str| -> Result<&str, SubnetEnvError> {
            text.lines()
                .filter_map(|line| line.trim().split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"'))
                .map(|v| v.split(',').next().unwrap_or(v).trim())
                .ok_or(SubnetEnvError::Missing(key))
        };
        let invalid =
            |key: &'static str, value: &str, expected: &'static str| SubnetEnvError::Invalid {
                key,
                value: value.to_owned(),
                expected,
            };
        let network_text = get("FLANNEL_NETWORK")?;
        let network: Subnet = network_text
            .parse()
            .map_err(|_| invalid("FLANNEL_NETWORK", network_text, "a CIDR subnet"))?;
        let subnet_text = get("FLANNEL_SUBNET")?;
        let subnet = previous_subnet(&format!("FLANNEL_SUBNET={subnet_text}"))
            .ok_or_else(|| invalid("FLANNEL_SUBNET", subnet_text, "an address with a prefix"))?;
        let mtu_text = get("FLANNEL_MTU")?;
        let mtu = mtu_text
            .parse()
            .map_err(|_| invalid("FLANNEL_MTU", mtu_text, "a number"))?;
        let masq_text = get("FLANNEL_IPMASQ")?;
        let ip_masq = masq_text
            .parse()
            .map_err(|_| invalid("FLANNEL_IPMASQ", masq_text, "true or false"))?;
        Ok(SubnetEnv {
            network,
            subnet,
            mtu,
            ip_masq,
        })
    }
}

/// The subnet recorded in a subnet.env text (`FLANNEL_SUBNET=10.244.1.1/24` gives
/// `10.244.1.0/24`), if it has a valid one.
pub fn previous_subnet(text: &str) -> Option<Subnet> {
    let value = text.lines().find_map(|line| {
        let (key, value) = line.trim().split_once('=')?;
        (key.trim() == "FLANNEL_SUBNET").then(|| value.trim().trim_matches('"'))
    })?;
    // A leftover from multi-network flannel: the value may be a comma list.
    let first = value.split(',').next()?;
    let (addr, prefix) = first.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    Subnet::containing(addr, prefix.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_format() {
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().expect("s"),
            subnet: "10.244.1.0/24".parse().expect("s"),
            mtu: 1450,
            ip_masq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(previous_subnet(&env.render()), Some(env.subnet));
        assert_eq!(SubnetEnv::parse(&env.render()), Ok(env));
    }

    #[test]
    fn parse_names_the_missing_or_bad_key() {
        let full = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert!(SubnetEnv::parse(full).expect("parses").ip_masq);
        assert_eq!(
            SubnetEnv::parse(&full.replace("FLANNEL_MTU=1450\n", "")),
            Err(SubnetEnvError::Missing("FLANNEL_MTU"))
        );
        assert_eq!(
            SubnetEnv::parse(&full.replace("=true", "=yes"))
                .expect_err("bad")
                .to_string(),
            "FLANNEL_IPMASQ=\"yes\" is not true or false"
        );
    }

    #[test]
    fn reads_previous_subnet_leniently() {
        assert_eq!(
            previous_subnet("FLANNEL_SUBNET=10.1.2.1/24,10.9.0.1/24"),
            Some("10.1.2.0/24".parse().expect("s"))
        );
        assert_eq!(previous_subnet("FLANNEL_NETWORK=10.0.0.0/8\n"), None);
        assert_eq!(previous_subnet("FLANNEL_SUBNET=garbage"), None);
    }
}
