//! Masquerade and forward rules (flannel's `--ip-masq` and `--iptables-forward-rules`),
//! in chains that are twill's alone: `TWILL-POSTRTG` in the nat table (a jump from
//! `POSTROUTING`) and `TWILL-FWD` in the filter table (a jump from `FORWARD`).
//!
//! Why iptables (its nf_tables backend) and not a table of our own in nftables: an
//! accept in one nftables base chain does not override a drop in another. Docker sets
//! the policy of the `FORWARD` chain of iptables' `filter` table to DROP; overlay
//! traffic is accepted only by a rule in that same chain, which is where iptables puts
//! our jump. The rules are flannel's, with our comments.
//!
//! Each table's set is written with one `iptables-restore --noflush` (one transaction:
//! the chain declaration flushes our chain, the rules refill it, and the jump is added
//! when it is missing), checked every `--iptables-resync` seconds against
//! `iptables -S` and rewritten when anything differs, and removed when twill starts
//! without the flag that wants it. SIGTERM leaves them, as it leaves every kernel object.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use twill_core::Subnet;

/// kube-proxy's mark for traffic it masquerades itself.
const KUBE_MARK: &str = "0x4000/0x4000";
const MULTICAST: &str = "224.0.0.0/4";

/// The filter-table chain (jumped to from `FORWARD`) holding twill's forward rules.
pub const FORWARD_CHAIN: &str = "TWILL-FWD";

/// One of our chains, its table, and the built-in chain that jumps to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Masquerade,
    Forward,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Masquerade => "nat",
            Kind::Forward => "filter",
        }
    }
    fn chain(self) -> &'static str {
        match self {
            Kind::Masquerade => "TWILL-POSTRTG",
            Kind::Forward => FORWARD_CHAIN,
        }
    }
    fn hook(self) -> &'static str {
        match self {
            Kind::Masquerade => "POSTROUTING",
            Kind::Forward => "FORWARD",
        }
    }
    fn comment(self) -> &'static str {
        match self {
            Kind::Masquerade => "twill masq",
            Kind::Forward => "twill forward",
        }
    }
    /// The jump from the built-in chain, as `iptables -S` prints it.
    fn jump(self) -> String {
        format!(
            "-A {} -m comment --comment \"{}\" -j {}",
            self.hook(),
            self.comment(),
            self.chain()
        )
    }
    /// What to call it in a log line.
    fn what(self) -> &'static str {
        match self {
            Kind::Masquerade => "masquerade rules (--ip-masq)",
            Kind::Forward => "forward rules (--iptables-forward-rules)",
        }
    }
}

/// The rules this node wants.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub masquerade: bool,
    pub forward: bool,
    /// `--random-fully` on MASQUERADE (off with `--ip-masq-fully-random-disable`).
    pub random_fully: bool,
    pub network: Subnet,
    pub own: Subnet,
}

/// What [`Rules::ensure`] did to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything was in place.
    Unchanged,
    /// Our chain or its jump was missing or different, and is written again.
    Written,
    /// Unwanted (flag off) and found: removed.
    Removed,
}

impl Rules {
    /// The rules of our chain for `kind`, as `iptables -S` prints them.
    pub(crate) fn chain_rules(&self, kind: Kind) -> Vec<String> {
        let (net, own) = (self.network.to_string(), self.own.to_string());
        let c = kind.comment();
        let chain = kind.chain();
        match kind {
            Kind::Masquerade => {
                let masq = if self.random_fully {
                    "MASQUERADE --random-fully"
                } else {
                    "MASQUERADE"
                };
                vec![
                    format!(
                        "-A {chain} -m mark --mark {KUBE_MARK} -m comment --comment \"{c}\" -j RETURN"
                    ),
                    format!("-A {chain} -s {own} -d {net} -m comment --comment \"{c}\" -j RETURN"),
                    format!("-A {chain} -s {net} -d {own} -m comment --comment \"{c}\" -j RETURN"),
                    format!(
                        "-A {chain} ! -s {net} -d {own} -m comment --comment \"{c}\" -j RETURN"
                    ),
                    format!(
                        "-A {chain} -s {net} ! -d {MULTICAST} -m comment --comment \"{c}\" -j {masq}"
                    ),
                    format!(
                        "-A {chain} ! -s {net} -d {net} -m comment --comment \"{c}\" -j {masq}"
                    ),
                ]
            }
            Kind::Forward => vec![
                format!("-A {chain} -s {net} -m comment --comment \"{c}\" -j ACCEPT"),
                format!("-A {chain} -d {net} -m comment --comment \"{c}\" -j ACCEPT"),
            ],
        }
    }

    fn wanted(&self, kind: Kind) -> bool {
        match kind {
            Kind::Masquerade => self.masquerade,
            Kind::Forward => self.forward,
        }
    }

    /// Bring both tables to what the flags want: our chains written where missing or
    /// different, removed where unwanted. The first error stops it (the next resync
    /// tries again).
    pub(crate) async fn ensure(&self) -> anyhow::Result<Vec<(Kind, Outcome)>> {
        let mut done = Vec::new();
        for kind in [Kind::Masquerade, Kind::Forward] {
            let outcome = self
                .ensure_one(kind)
                .await
                .with_context(|| kind.what().to_owned())?;
            done.push((kind, outcome));
        }
        Ok(done)
    }

    async fn ensure_one(&self, kind: Kind) -> anyhow::Result<Outcome> {
        let table = kind.table();
        let wanted = self.wanted(kind);
        let present = match iptables_save(table).await {
            Ok(text) => text,
            // Nothing to remove where iptables is not even installed.
            Err(e) if !wanted && e.is::<NotInstalled>() => return Ok(Outcome::Unchanged),
            Err(e) => return Err(e),
        };
        let state = TableState::read(&present, kind);
        if wanted {
            let rules = self.chain_rules(kind);
            if state.rules == rules && state.jumps == 1 {
                return Ok(Outcome::Unchanged);
            }
            let mut payload = format!("*{table}\n:{} - [0:0]\n", kind.chain());
            for rule in &rules {
                payload.push_str(rule);
                payload.push('\n');
            }
            // Exactly one jump: extra ones go, a missing one comes.
            for _ in 1..state.jumps {
                payload.push_str(&kind.jump().replacen("-A ", "-D ", 1));
                payload.push('\n');
            }
            if state.jumps == 0 {
                payload.push_str(&kind.jump());
                payload.push('\n');
            }
            payload.push_str("COMMIT\n");
            restore(&payload).await?;
            Ok(Outcome::Written)
        } else {
            if !state.chain && state.jumps == 0 {
                return Ok(Outcome::Unchanged);
            }
            let mut payload = format!("*{table}\n");
            for _ in 0..state.jumps {
                payload.push_str(&kind.jump().replacen("-A ", "-D ", 1));
                payload.push('\n');
            }
            if state.chain {
                payload.push_str(&format!(":{} - [0:0]\n-X {}\n", kind.chain(), kind.chain()));
            }
            payload.push_str("COMMIT\n");
            restore(&payload).await?;
            Ok(Outcome::Removed)
        }
    }
}

/// Our chain and jumps as one table's `iptables -S` shows them.
#[derive(Debug, Default, PartialEq, Eq)]
struct TableState {
    chain: bool,
    rules: Vec<String>,
    jumps: usize,
}

impl TableState {
    fn read(listing: &str, kind: Kind) -> TableState {
        let declared = format!("-N {}", kind.chain());
        let ours = format!("-A {} ", kind.chain());
        let jump = kind.jump();
        let mut state = TableState::default();
        for line in listing.lines().map(str::trim_end) {
            if line == declared {
                state.chain = true;
            } else if line.starts_with(&ours) {
                state.rules.push(line.to_owned());
            } else if line == jump {
                state.jumps += 1;
            }
        }
        state
    }
}

/// The iptables tools are not installed.
#[derive(Debug, thiserror::Error)]
#[error("{0} not found (Debian package iptables)")]
struct NotInstalled(&'static str);

/// `iptables -w 5 -t <table> -S`.
async fn iptables_save(table: &str) -> anyhow::Result<String> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", table, "-S"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::Error::new(NotInstalled("iptables")),
            _ => anyhow::Error::new(e).context("run iptables"),
        })?;
    if !out.status.success() {
        bail!(
            "iptables -t {table} -S: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-restore --noflush -w 5` with `payload`: one transaction.
async fn restore(payload: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "-w", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::Error::new(NotInstalled("iptables-restore")),
            _ => anyhow::Error::new(e).context("run iptables-restore"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(payload.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "iptables-restore: {} (input:\n{payload})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(masquerade: bool, random_fully: bool) -> Rules {
        Rules {
            masquerade,
            forward: true,
            random_fully,
            network: "10.244.0.0/16".parse().expect("network"),
            own: "10.244.7.0/24".parse().expect("own"),
        }
    }

    #[test]
    fn masquerade_rules_are_flannels_in_order() {
        assert_eq!(
            rules(true, true).chain_rules(Kind::Masquerade),
            [
                r#"-A TWILL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "twill masq" -j RETURN"#,
                r#"-A TWILL-POSTRTG -s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment "twill masq" -j RETURN"#,
                r#"-A TWILL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "twill masq" -j RETURN"#,
                r#"-A TWILL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "twill masq" -j RETURN"#,
                r#"-A TWILL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "twill masq" -j MASQUERADE --random-fully"#,
                r#"-A TWILL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "twill masq" -j MASQUERADE --random-fully"#,
            ]
        );
        assert!(
            rules(true, false)
                .chain_rules(Kind::Masquerade)
                .iter()
                .all(|r| !r.contains("random-fully"))
        );
    }

    #[test]
    fn a_listing_is_read_for_our_chain_and_jumps_only() {
        let listing = "-P FORWARD DROP\n-N DOCKER\n-N TWILL-FWD\n\
            -A FORWARD -j DOCKER-USER\n\
            -A FORWARD -m comment --comment \"twill forward\" -j TWILL-FWD\n\
            -A FORWARD -m comment --comment \"twill forward\" -j TWILL-FWD\n\
            -A TWILL-FWD -s 10.244.0.0/16 -m comment --comment \"twill forward\" -j ACCEPT\n";
        let state = TableState::read(listing, Kind::Forward);
        assert!(state.chain);
        assert_eq!(state.jumps, 2);
        assert_eq!(
            state.rules,
            [r#"-A TWILL-FWD -s 10.244.0.0/16 -m comment --comment "twill forward" -j ACCEPT"#]
        );
        assert_eq!(
            TableState::read("", Kind::Masquerade),
            TableState::default()
        );
    }
}
