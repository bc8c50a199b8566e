//! `twill:backend/log`: the plugin's lines in the daemon's log, tagged with its name —
//! cut to [`MAX_MESSAGE`] bytes, control characters escaped (a plugin cannot forge a
//! line of its own or send terminal escapes), and at most [`LINES_PER_SECOND`] lines a
//! second per instance, the rest counted and reported in one line (security review M-6).
//! Denied host calls are logged under the same budget.

use std::time::{Duration, Instant};

use crate::bindings::twill::backend::log::{Host, Level};
use crate::state::PluginState;

/// Longer messages are cut, so a plugin cannot flood the log with one call.
pub(crate) const MAX_MESSAGE: usize = 4096;
/// Lines a plugin instance may log per second (its own and its denials).
pub(crate) const LINES_PER_SECOND: u32 = 20;

/// One instance's log budget: a one-second window and what was suppressed in it.
#[derive(Debug)]
pub(crate) struct LogBudget {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }
}

impl LogBudget {
    /// Whether one more line may be written now, and what to report first: the number
    /// suppressed in the window that just ended, and whether this line is the first
    /// one suppressed in this window.
    pub(crate) fn take(&mut self, now: Instant) -> (bool, u64, bool) {
        let mut report = 0;
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            report = std::mem::take(&mut self.suppressed);
            self.window = now;
            self.used = 0;
        }
        if self.used < LINES_PER_SECOND {
            self.used += 1;
            (true, report, false)
        } else {
            self.suppressed += 1;
            (false, report, self.suppressed == 1)
        }
    }
}

/// `message` cut to [`MAX_MESSAGE`] bytes, with control characters (newlines, escape
/// sequences) written as escapes.
pub(crate) fn clean(message: &str) -> String {
    let mut cut = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 8);
    for c in message[..cut].chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut < message.len() {
        out.push_str(" …");
    }
    out
}

impl PluginState {
    /// Whether a line may be logged now (and the report of what the budget dropped).
    pub(crate) fn log_allowed(&self) -> bool {
        let (allowed, suppressed, starts) = self
            .log_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(Instant::now());
        if suppressed > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                "suppressed {suppressed} log lines of this plugin in the last second"
            );
        }
        if starts {
            tracing::warn!(
                plugin = %self.plugin,
                "more than {LINES_PER_SECOND} log lines a second from this plugin: suppressing the rest of this second"
            );
        }
        allowed
    }
}

impl Host for PluginState {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if !self.log_allowed() {
            return Ok(());
        }
        let message = clean(&message);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_and_escaped() {
        assert_eq!(clean("ok"), "ok");
        assert_eq!(
            clean("a\n2026-12-02T00:00:00Z  INFO forged\x1b[31m"),
            "a\\n2026-12-02T00:00:00Z  INFO forged\\u{1b}[31m"
        );
        let long = "é".repeat(MAX_MESSAGE);
        let cut = clean(&long);
        assert!(
            cut.len() <= MAX_MESSAGE + 4 && cut.ends_with(" …"),
            "{}",
            cut.len()
        );
    }

    #[test]
    fn the_budget_allows_a_burst_per_second_and_reports_the_rest() {
        let mut budget = LogBudget::default();
        let t0 = budget.window;
        let taken: Vec<(bool, u64, bool)> = (0..100).map(|_| budget.take(t0)).collect();
        assert_eq!(
            taken.iter().filter(|t| t.0).count(),
            LINES_PER_SECOND as usize
        );
        assert_eq!(
            taken.iter().filter(|t| t.2).count(),
            1,
            "one notice when suppression starts"
        );
        let (ok, report, starts) = budget.take(t0 + Duration::from_millis(1001));
        assert!(ok && !starts);
        assert_eq!(report, 100 - u64::from(LINES_PER_SECOND));
    }
}
