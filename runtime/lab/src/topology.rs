//! The namespaces of a lab: underlay segments (a bridge each), a router between them,
//! nodes with a pod behind each. [`Lab`] remembers every namespace it made and its
//! `Drop` removes them, with whatever still runs inside.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd::{ip, output, sh};
use crate::interrupt::Interrupt;
use crate::netns;
use crate::{Error, Result};

/// The first underlay segment's first three octets.
pub const UNDERLAY: &str = "192.168.77";

/// The address `.host` on underlay segment `segment` (192.168.<77+segment>.<host>).
pub fn segment_ip(segment: usize, host: u8) -> String {
    format!("192.168.{}.{host}", 77 + segment)
}

/// A node's namespaces and directory, as [`Lab::add_node`] made them.
#[derive(Clone, Debug)]
pub struct NodeNet {
    /// 1-based node number; the last octet of its underlay address.
    pub n: u8,
    /// The underlay segment it sits on.
    pub segment: usize,
    /// The node's address on its segment (eth0).
    pub underlay_ip: String,
    /// The node's namespace: eth0 on the underlay, bridge `cni0`, veth `vpod`.
    pub ns: String,
    /// The pod's namespace: eth0, the other end of `vpod`.
    pub pod_ns: String,
    /// The node's own directory inside the lab's.
    pub dir: PathBuf,
}

/// Namespaces `<id>-*` and the directory of one lab; `Drop` removes both.
pub struct Lab {
    id: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    keep_dir: bool,
    interrupt: Interrupt,
}

impl Lab {
    /// A lab named `id` with its files in `dir`. `dir` must not exist: a leftover
    /// directory of the same name is an error, never shared.
    pub fn create(id: &str, dir: &Path, interrupt: Interrupt) -> Result<Lab> {
        fs::create_dir(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Lab {
            id: id.to_owned(),
            dir: dir.to_owned(),
            namespaces: Vec::new(),
            keep_dir: false,
            interrupt,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Leave the directory in place when the lab is dropped (for a post-mortem).
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    /// Namespace `<id>-<suffix>` with `lo` up.
    pub fn add_ns(&mut self, suffix: &str) -> Result<String> {
        self.interrupt.check()?;
        let ns = format!("{}-{suffix}", self.id);
        sh(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&ns, "link set lo up")?;
        Ok(ns)
    }

    /// Name the network namespace of process `pid` (a container's) `<id>-<suffix>`
    /// (`ip netns attach`), so that it can be entered like the lab's own; `Drop`
    /// removes the name (and kills what runs inside).
    pub fn attach_ns(&mut self, suffix: &str, pid: u32) -> Result<String> {
        self.interrupt.check()?;
        let ns = format!("{}-{suffix}", self.id);
        sh(&["ip", "netns", "attach", &ns, &pid.to_string()])?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    /// One underlay namespace `<id>-u<s>` with bridge `br0` per segment; with more than
    /// one, a router namespace `<id>-r` at .254 of each, forwarding.
    pub fn add_segments(&mut self, segments: usize) -> Result<()> {
        for s in 0..segments {
            let underlay = self.add_ns(&format!("u{s}"))?;
            ip(&underlay, "link add br0 type bridge")?;
            ip(&underlay, "link set br0 up")?;
        }
        if segments > 1 {
            let router = self.add_ns("r")?;
            for s in 0..segments {
                self.plug(
                    &router,
                    s,
                    &format!("eth{s}"),
                    &format!("r{s}"),
                    &segment_ip(s, 254),
                )?;
            }
            forward(&router)?;
        }
        Ok(())
    }

    /// Join `ns` to segment `segment`'s bridge with device `dev` at `ip`/24; the
    /// bridge's end is `u-<tag>`.
    pub fn plug(&self, ns: &str, segment: usize, dev: &str, tag: &str, addr: &str) -> Result<()> {
        let underlay = format!("{}-u{segment}", self.id);
        ip(
            ns,
            &format!("link add {dev} type veth peer name u-{tag} netns {underlay}"),
        )?;
        ip(&underlay, &format!("link set u-{tag} master br0 up"))?;
        ip(ns, &format!("addr add {addr}/24 dev {dev}"))?;
        ip(ns, &format!("link set {dev} up")).map(drop)
    }

    /// Node `k` on segment `segment` at its `.k`, with a default route via the
    /// segment's `.254`, forwarding on, and its pod namespace `<id>-p<k>` joined to the
    /// node's bridge `cni0` by veth `vpod` (addresses come with [`crate::pods`]).
    pub fn add_node(&mut self, k: u8, segment: usize) -> Result<NodeNet> {
        let ns = self.add_ns(&format!("n{k}"))?;
        let underlay_ip = segment_ip(segment, k);
        self.plug(&ns, segment, "eth0", &format!("n{k}"), &underlay_ip)?;
        let gateway = segment_ip(segment, 254);
        ip(
            &ns,
            &format!("route add default via {gateway} dev eth0 onlink"),
        )?;
        forward(&ns)?;
        let pod_ns = self.add_ns(&format!("p{k}"))?;
        ip(&ns, "link add cni0 type bridge")?;
        ip(
            &ns,
            &format!("link add vpod type veth peer name eth0 netns {pod_ns}"),
        )?;
        ip(&ns, "link set vpod master cni0 up")?;
        let dir = self.dir.join(format!("n{k}"));
        fs::create_dir(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(NodeNet {
            n: k,
            segment,
            underlay_ip,
            ns,
            pod_ns,
            dir,
        })
    }
}

fn forward(ns: &str) -> Result<()> {
    output(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .map(drop)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a ping, a server) dies with the namespace.
            netns::kill_all(ns, None);
            if let Err(e) = sh(&["ip", "netns", "del", ns]) {
                eprintln!("warning: {e}");
            }
        }
        if !self.keep_dir
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}
