//! What a fatal error of `twill run` was about, so the exit status tells a config
//! error from a store error from a lost lease (docs/operations.md, "Exit status").
//!
//! A step's error is wrapped once in a [`Classified`], which displays as the error it
//! holds (the message and its chain are unchanged); `twill` finds it in the chain and
//! exits with [`Failure::exit_code`].

use std::fmt;

/// The kinds of fatal error, each with its own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The network config: invalid, or in conflict with this node's addresses.
    Config,
    /// The lease store: refused the connection or the credentials, or its watch ended.
    Store,
    /// The lease: no subnet left to acquire, or ours lost with none to take instead.
    Lease,
    /// The backend plugin: not found, not loadable, or its init/start refused.
    Backend,
    /// The node itself: the interface, netlink, the masquerade rules.
    Node,
}

impl Failure {
    /// The exit status `twill run` ends with (1 stays "anything else", 2 is a usage
    /// error of the command line).
    pub fn exit_code(self) -> u8 {
        match self {
            Failure::Config => 3,
            Failure::Store => 4,
            Failure::Lease => 5,
            Failure::Backend => 6,
            Failure::Node => 7,
        }
    }

    /// The kind of an error, if a step classified it.
    pub fn of(error: &anyhow::Error) -> Option<Failure> {
        error
            .chain()
            .find_map(|e| e.downcast_ref::<Classified>())
            .map(|c| c.failure)
    }
}

/// An error with its [`Failure`] kind; it displays as the error it holds.
pub struct Classified {
    failure: Failure,
    error: anyhow::Error,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The top message only: the chain's further messages are its sources.
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:?}", self.failure, self.error)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// `.or_fail_as(kind)` on a step's result.
pub trait Classify<T> {
    fn or_fail_as(self, failure: Failure) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Classify<T> for Result<T, E> {
    fn or_fail_as(self, failure: Failure) -> anyhow::Result<T> {
        self.map_err(|e| {
            let error: anyhow::Error = e.into();
            if Failure::of(&error).is_some() {
                return error;
            }
            Classified { failure, error }.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_is_found_and_the_message_is_unchanged() {
        let step: anyhow::Result<()> = Err(anyhow::anyhow!("subnets exhausted"))
            .context("acquire a subnet lease")
            .or_fail_as(Failure::Lease);
        let error = step
            .context("outer")
            .or_fail_as(Failure::Store)
            .expect_err("fails");
        assert_eq!(
            Failure::of(&error),
            Some(Failure::Lease),
            "the first kind wins"
        );
        assert_eq!(
            format!("{error:#}"),
            "outer: acquire a subnet lease: subnets exhausted"
        );
        assert_eq!(Failure::of(&anyhow::anyhow!("plain")), None);
        assert_eq!(Failure::Lease.exit_code(), 5);
    }
}
