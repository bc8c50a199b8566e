//! `twill:backend/log`: the plugin's lines in the daemon's log, tagged with its name.

use crate::bindings::twill::backend::log::{Host, Level};
use crate::state::PluginState;

/// Longer messages are cut, so a plugin cannot flood the log with one call.
const MAX_MESSAGE: usize = 4096;

impl Host for PluginState {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …");
        }
        let plugin = &self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin = %plugin, "{message}"),
            Level::Info => tracing::info!(plugin = %plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin = %plugin, "{message}"),
            Level::Error => tracing::error!(plugin = %plugin, "{message}"),
        }
        Ok(())
    }
}
