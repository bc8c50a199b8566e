//! twill's `directrouting` backend: flannel's `{"Type":"vxlan","DirectRouting":true}`
//! under a name of its own. A peer whose public IP is on-link gets a plain route via
//! that IP; any other peer gets the vxlan objects. It publishes `BackendType: vxlan`
//! with flannel's vxlan BackendData, so flannel vxlan nodes (with or without
//! DirectRouting) share the cluster with it.

use twill_plugin_sdk::{Backend, Error, Info, LeaseEvent, Node, Registration, Subnet};
use twill_plugin_vxlan::Vxlan;

struct DirectRouting(Vxlan);

impl Backend for DirectRouting {
    fn describe() -> Info {
        Info {
            name: "directrouting".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint: r#"{"Type":"directrouting","VNI":1,"Port":8472,"MTU":0}"#.into(),
        }
    }

    fn init(
        config: &str,
        node: &Node,
        previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        let (vxlan, registration) = Vxlan::init_with(config, node, previous, true)?;
        Ok((DirectRouting(vxlan), registration))
    }

    fn start(&mut self, own: Subnet) -> Result<(), Error> {
        self.0.start(own)
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        self.0.on_lease(event)
    }
}

twill_plugin_sdk::export_backend!(DirectRouting);
