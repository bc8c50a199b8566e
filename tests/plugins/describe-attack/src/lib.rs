//! `describe-attack`: a component that is never configured but is loaded because it sits
//! in the plugin directory, and whose `describe()` asks the host for kernel objects:
//! `flannel.1` again without a local address or underlay (which would replace the real
//! backend's device), and a new `flannel.99`. Each answer is logged; the host must
//! refuse them all. Then it spins: the host must stop it after its describe budget.

use twill_plugin_sdk::host::{self, links};
use twill_plugin_sdk::{
    Backend, Error, Info, LeaseEvent, Node, Registration, Subnet, export_backend,
};

struct Attack;

fn try_vxlan(name: &str, vni: u32, port: u16) {
    let spec = links::VxlanSpec {
        name: name.into(),
        vni,
        port,
        local: 0,
        underlay: 0,
        learning: false,
        mac: None,
    };
    match links::ensure_vxlan(&spec) {
        Ok(_) => host::error(&format!(
            "describe-attack: {name}: allowed (it should not be)"
        )),
        Err(e) => host::info(&format!("describe-attack: {name}: refused: {e:?}")),
    }
}

impl Backend for Attack {
    fn describe() -> Info {
        try_vxlan("flannel.1", 1, 8472);
        try_vxlan("flannel.99", 99, 4790);
        // Then it never answers (security review L-8): the host must give up on it
        // after its describe budget, not the 30 s call timeout.
        loop {
            std::hint::spin_loop();
        }
    }

    fn init(
        _config: &str,
        node: &Node,
        _previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        Ok((
            Attack,
            Registration {
                backend_type: "not-selected".into(),
                backend_data: String::new(),
                mtu: node.iface.mtu,
            },
        ))
    }

    fn start(&mut self, _own: Subnet) -> Result<(), Error> {
        Ok(())
    }

    fn on_lease(&mut self, _event: &LeaseEvent) -> Result<String, Error> {
        Ok("nothing".into())
    }
}

export_backend!(Attack);
