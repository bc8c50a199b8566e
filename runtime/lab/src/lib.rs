//! twill-lab: clusters of network namespaces on one host, for `twill demo`, the
//! end-to-end tests and the benchmark.
//!
//! It owns the namespaces it names `<id>-*`, the processes it starts in them and the
//! files under its own directory; [`Lab`]'s `Drop` removes all of them, also when its
//! user fails halfway. It must never change the host's own network namespace: every
//! device and address it makes lives in a namespace it made, and the one `setns` of
//! the workspace happens here, on a fresh thread ([`netns::in_netns`]).
//!
//! ```text
//!   <id>-u<s>   underlay segment s: bridge `br0`, 192.168.<77+s>.0/24
//!   <id>-r      with several segments, a router at .254 of each
//!   <id>-nK     node K at 192.168.<77+s>.K (eth0), default route via .254
//!   <id>-pK     node K's pod, behind bridge `cni0` in the node (veth `vpod`)
//! ```
//!
//! Everything returns [`Result`]: the demo turns errors into its one-line message,
//! the tests into panics, the benchmark into a failed configuration.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod docker;
pub mod etcd;
pub mod interrupt;
pub mod netns;
pub mod pki;
pub mod podman;
pub mod pods;
pub mod process;
pub mod rootfs;
pub mod tcp_probe;
pub mod topology;
pub mod traffic;

use std::time::Duration;

pub use cmd::{have, ip, output, require, run, sh, succeeds};
pub use interrupt::Interrupt;
pub use topology::{Lab, NodeNet, UNDERLAY, segment_ip};

/// What went wrong in the lab, naming the command, file or wait.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{tool} not found: apt-get install {package}")]
    MissingTool { tool: String, package: String },
    #[error("{0} needs root (network namespaces, vxlan devices): run it as root")]
    NotRoot(String),
    #[error("interrupted before the demo was up; removed what it had made")]
    Interrupted,
    #[error("{key} missing in {path}")]
    SubnetEnv { path: String, key: String },
    #[error("{0}")]
    Setup(String),
    #[error("iperf3: {0}")]
    Iperf(String),
    #[error("no ping summary in: {0}")]
    PingSummary(String),
    #[error("{what} exited ({status}): {detail}")]
    Exited {
        what: String,
        status: String,
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
