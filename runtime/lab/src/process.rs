//! Processes the lab starts (twill, etcd, servers): stopping them as an operator
//! would (SIGTERM, then SIGKILL), and reading what their logs say.

use std::fs;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::run;

/// Wait up to `timeout` for `child` to exit; its status, or `None` after killing it.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM `child` and wait up to `timeout`; its status, or `None` if it had to be
/// killed.
pub fn stop(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let _ = run(&["kill", "-TERM", &child.id().to_string()]);
    wait_or_kill(child, timeout)
}

/// SIGTERM every child at once, then SIGKILL what still runs after `timeout`.
pub fn terminate(children: Vec<Child>, timeout: Duration) {
    for child in &children {
        let _ = run(&["kill", "-TERM", &child.id().to_string()]);
    }
    let deadline = Instant::now() + timeout;
    for mut child in children {
        let _ = wait_or_kill(
            &mut child,
            deadline.saturating_duration_since(Instant::now()),
        );
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The line of a twill log (from byte `offset`) that says what went wrong: a panic's
/// location and message, else the last line starting with "error" or at level ERROR,
/// else the last line with "error" in it, else the last line.
pub fn error_line(log: &Path, offset: u64) -> String {
    let text = fs::read(log).unwrap_or_default();
    let from = usize::try_from(offset).unwrap_or(0).min(text.len());
    let text = strip_ansi(&String::from_utf8_lossy(&text[from..]));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last = |f: &dyn Fn(&str) -> bool| lines.iter().rposition(|l| f(l));
    let line = if let Some(i) = last(&|l| l.contains("panicked at")) {
        // "thread 'main' panicked at src/x.rs:1:2:" then the message on the next line.
        let msg = lines.get(i + 1).copied().unwrap_or("");
        format!("{} {msg}", lines[i])
    } else if let Some(i) = last(&|l| l.starts_with("error") || l.contains(" ERROR ")) {
        // An error ending in ':' goes on below (e.g. a wasm backtrace) and ends the log
        // with its cause.
        match lines.last() {
            Some(cause) if lines[i].ends_with(':') && i + 1 < lines.len() => {
                format!("{} … {cause}", lines[i])
            }
            _ => lines[i].to_owned(),
        }
    } else if let Some(i) = last(&|l| l.to_lowercase().contains("error")) {
        lines[i].to_owned()
    } else {
        lines
            .last()
            .copied()
            .unwrap_or("(no log output)")
            .to_owned()
    };
    line.chars().take(400).collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
