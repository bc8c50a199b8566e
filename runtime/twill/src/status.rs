//! `twill status`: a human summary of a running node, read from its HTTP API — a node
//! line, then a table of peers with their state.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twill_api::model::{Peer, PeerState, Peers, Status};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `path` from the API at `addr` (HTTP/1.1, one request per connection) and decode
/// the JSON body.
pub(crate) async fn get<T: DeserializeOwned>(addr: SocketAddr, path: &str) -> anyhow::Result<T> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer from the twill API at {addr} within {}s", TIMEOUT.as_secs()))?
        .with_context(|| format!("cannot reach the twill API at {addr} (is `twill run` running there? see --api-addr)"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP answer from {addr}{path}"))?;
    let code = head.split_whitespace().nth(1).unwrap_or("?");
    if code != "200" {
        bail!("{addr}{path} answered {code}: {}", body.trim());
    }
    // The API answers with Content-Length; chunked bodies are not used for JSON here.
    serde_json::from_str(body).with_context(|| format!("unexpected answer from {addr}{path}"))
}

fn state_word(state: PeerState) -> &'static str {
    match state {
        PeerState::Programmed => "programmed",
        PeerState::Pending => "pending",
        PeerState::Error => "error",
    }
}

/// The summary as text.
pub fn render(status: &Status, peers: &[Peer]) -> String {
    let mut out = format!(
        "node {} ({}) public IP {} on {}  subnet {}  MTU {}  backend {} ({})  {}\n",
        if status.node_name.is_empty() {
            "-"
        } else {
            &status.node_name
        },
        status.version,
        status
            .public_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "-".into()),
        if status.interface.is_empty() {
            "-"
        } else {
            &status.interface
        },
        status.subnet.as_deref().unwrap_or("-"),
        status
            .mtu
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into()),
        status.backend_type,
        status.plugin,
        if status.ready {
            "ready".to_owned()
        } else {
            format!(
                "NOT READY: {}",
                status.not_ready_reason.as_deref().unwrap_or("?")
            )
        },
    );
    out.push_str(&format!(
        "store {:?} at {}  lease expires in {}  up {}s\n",
        status.store.state,
        status.store.endpoints.join(","),
        status
            .lease_expires_in_seconds
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "never (reservation) or unknown".into()),
        status.uptime_seconds
    ));
    let programmed = peers
        .iter()
        .filter(|p| p.state == PeerState::Programmed)
        .count();
    let h = &status.peer_health;
    out.push_str(&format!(
        "\n{} peers, {programmed} programmed; probes: {} reachable, {} unreachable, {} not decided\n",
        peers.len(),
        h.reachable,
        h.unreachable,
        h.unchecked
    ));
    if peers.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:<20} {:<16} {:<11} {:<13} {}\n",
        "SUBNET", "PUBLIC IP", "STATE", "PROBE", "DETAIL"
    ));
    for p in peers {
        let detail = match (&p.last_error, p.state) {
            (Some(e), PeerState::Error) => format!("{} (since {})", e.message, e.since),
            _ => p.programmed.clone(),
        };
        let probe = match &p.health {
            None => "-".to_owned(),
            Some(h) if h.reachable => format!("{:.1} ms", h.rtt_ms.unwrap_or_default()),
            Some(_) => "UNREACHABLE".to_owned(),
        };
        out.push_str(&format!(
            "{:<20} {:<16} {:<11} {:<13} {}\n",
            p.subnet,
            p.public_ip.to_string(),
            state_word(p.state),
            probe,
            detail
        ));
    }
    out
}

/// The exit status of `twill status` for a node that answers but is not ready.
pub const NOT_READY: u8 = 8;

/// Print the summary (or with `json` the API's two documents) of the node whose API is
/// at `addr`; whether it is ready.
pub async fn run(addr: SocketAddr, json: bool) -> anyhow::Result<bool> {
    if json {
        let status: serde_json::Value = get(addr, "/v1/status").await?;
        let peers: serde_json::Value = get(addr, "/v1/peers").await?;
        let ready = status.get("ready").and_then(serde_json::Value::as_bool) == Some(true);
        let both = serde_json::json!({ "status": status, "peers": peers.get("peers") });
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(ready);
    }
    let status: Status = get(addr, "/v1/status").await?;
    let peers: Peers = get(addr, "/v1/peers").await?;
    print!("{}", render(&status, &peers.peers));
    Ok(status.ready)
}
