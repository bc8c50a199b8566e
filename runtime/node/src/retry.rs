//! Waiting out a store that is away: backoff with a log line per failure, a retried
//! request, a sleep to an optional deadline.

use std::time::Duration;

use tokio::time::Instant;
pub(super) use twill_core::error_chain;
use twill_store::StoreError;

/// How often to look for the network config while it is missing (flannel: 1 s), and
/// the first wait after a failed store request.
pub(super) const CONFIG_POLL: Duration = Duration::from_secs(1);
/// The longest wait between retries while etcd is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Exponential backoff for store requests while etcd is away: 1 s doubling to 10 s,
/// with a log line saying what failed and when the next try is.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Self(CONFIG_POLL)
    }

    /// Log `error` and sleep — unless the store refused us in a way that retrying
    /// cannot change (a TLS handshake, a password, a role, a flag): then the error,
    /// naming the cause once, for the daemon to exit with.
    pub(super) async fn wait(&mut self, what: &str, error: &StoreError) -> anyhow::Result<()> {
        if let Some(refusal) = error.refusal() {
            anyhow::bail!("{what}: {}; not retrying, {refusal}", error_chain(error));
        }
        tracing::warn!(
            "{what}: {}; retrying in {}s",
            error_chain(error),
            self.0.as_secs()
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_RETRY);
        Ok(())
    }
}

/// Retry a store request with backoff until it succeeds (etcd may be briefly away),
/// or fails in a way retrying cannot change.
pub(super) async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => backoff.wait(what, &e).await?,
        }
    }
}

/// Sleep until `at`; forever if there is none (a `select!` arm that never fires).
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
