//! `twill:backend/route-lookup`: read-only `ip route get`.

use crate::bindings::Error;
use crate::bindings::twill::backend::route_lookup::{Host, Path};
use crate::convert::ip;
use crate::state::{PluginState, kernel_error};

impl Host for PluginState {
    fn get(&mut self, dst: u32) -> wasmtime::Result<Result<Path, Error>> {
        Ok(self
            .kernel
            .route_get(ip(dst))
            .map(|r| Path {
                gateway: r.gateway.map(u32::from),
                dev: r.oif,
            })
            .map_err(kernel_error))
    }
}
