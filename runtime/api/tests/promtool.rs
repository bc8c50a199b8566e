//! `/metrics` passes `promtool check metrics` (Prometheus's own parser and naming
//! lint). Needs Debian's `prometheus` package; without it the test fails and says so.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use axum::http::StatusCode;
use common::{get, populated_router};
use twill_api::{ApiState, Metrics, router};

/// `promtool check metrics` on `text`; panics, saying what to install, without promtool.
fn promtool(text: &str) -> Output {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: this test needs Debian's `prometheus` package \
             (apt-get install prometheus)"
        ),
        Err(e) => panic!("run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("wait for promtool")
}

/// Clean means exit 0 and nothing printed: promtool prints lint findings but may still
/// exit 0 for some of them.
fn clean(out: &Output) -> bool {
    out.status.success() && out.stdout.is_empty() && out.stderr.is_empty()
}

fn promtool_check(text: &str) {
    let out = promtool(text);
    assert!(
        clean(&out),
        "promtool check metrics found problems ({}):\nstdout: {}\nstderr: {}\nmetrics:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[tokio::test]
async fn promtool_accepts_the_metrics_of_a_busy_node() {
    let answer = get(&populated_router(), "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    promtool_check(&answer.body);
}

#[tokio::test]
async fn promtool_accepts_the_metrics_of_a_fresh_node() {
    let answer = get(&router(ApiState::new(), Metrics::new().into()), "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    promtool_check(&answer.body);
}

#[test]
fn promtool_rejects_what_it_should() {
    // Guard against a promtool that accepts anything (or a check that reads nothing):
    // a counter without `_total` must be reported.
    let bad = "# HELP bad_counter A counter without the suffix.\n\
               # TYPE bad_counter counter\nbad_counter 1\n";
    let out = promtool(bad);
    assert!(!clean(&out), "promtool accepted a counter without _total");
}
