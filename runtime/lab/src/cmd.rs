//! Running the tools the lab drives (`ip`, `bridge`, `ping`, `iperf3`, `etcd`): each
//! failure names the command and carries its stderr.

use std::process::{Child, Command, Output, Stdio};

use crate::{Error, Result};

/// Start `cmd`, which runs `program` (perhaps through `ip netns exec`); an error
/// names `program`.
pub fn spawn(cmd: &mut Command, program: &str) -> Result<Child> {
    cmd.spawn().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })
}

/// Run a command and return its output, whatever its exit status.
pub fn run(cmd: &[&str]) -> Result<Output> {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: cmd[0].to_owned(),
            source,
        })
}

/// Run a command; its stdout, or an error with its stderr.
pub fn output(cmd: &[&str]) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: cmd.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command, failing with its stderr.
pub fn sh(cmd: &[&str]) -> Result<()> {
    output(cmd).map(drop)
}

/// `ip -n <ns> <args>`, the arguments split at whitespace; its stdout.
pub fn ip(ns: &str, args: &str) -> Result<String> {
    let mut cmd = vec!["ip", "-n", ns];
    cmd.extend(args.split_whitespace());
    output(&cmd)
}

/// Whether a command succeeds (its output discarded).
pub fn succeeds(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    succeeds(&["sh", "-c", &format!("command -v {tool}")])
}

/// Fail unless we are root and every `(tool, Debian package)` is on PATH; `who` names
/// what needs them in the error.
pub fn require(who: &str, tools: &[(&str, &str)]) -> Result<()> {
    if output(&["id", "-u"])?.trim() != "0" {
        return Err(Error::NotRoot(who.to_owned()));
    }
    match tools.iter().find(|(tool, _)| !have(tool)) {
        Some((tool, package)) => Err(Error::MissingTool {
            tool: (*tool).to_owned(),
            package: (*package).to_owned(),
        }),
        None => Ok(()),
    }
}

/// Unmount (lazily, deepest first) every mount point under `dir`: what a container
/// runtime left behind in its state directory.
pub fn unmount_all_under(dir: &std::path::Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = output(&["umount", "-l", &m]);
    }
}
