//! The host side of each WIT interface, one file each. Every mutating call is checked
//! against the plugin's [`Grant`](crate::Grant) before it reaches the kernel.

mod addresses;
mod datapath_host;
mod fdb;
pub(crate) mod links;
pub(crate) mod log;
mod neighbours;
mod route_lookup;
mod routes;
#[cfg(test)]
mod tests;

use crate::bindings::twill::backend::types;
use crate::state::PluginState;

impl types::Host for PluginState {}
