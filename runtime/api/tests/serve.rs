//! `serve` on a real loopback socket: it answers, it stops when told, and a busy
//! address is an error that names it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use twill_api::{ApiState, ServeError, bind, router, serve, serve_on};

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    response
}

#[tokio::test]
async fn serves_until_shut_down() {
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        router(ApiState::new(), Default::default()),
        async move {
            let _ = stopped.await;
        },
    ));

    let response = http_get(addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");
    let response = http_get(addr, "/nope").await;
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );

    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops within 10 s")
        .expect("server task");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_busy_address_is_an_error_naming_it() {
    let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind loopback");
    let addr = taken.local_addr().expect("local address");
    let err = serve(addr, router(ApiState::new(), Default::default()), async {})
        .await
        .expect_err("the address is taken");
    assert!(matches!(err, ServeError::Bind { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("listen on {addr}"));
}

/// A server on a fresh loopback port; its address.
async fn start() -> SocketAddr {
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(serve_on(
        listener,
        router(ApiState::new(), Default::default()),
        std::future::pending(),
    ));
    addr
}

/// Whether the server closes `stream` within `within` (a read returns 0 or fails).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar before the close: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// Security review M-5: a client that never finishes its request head is cut off.
#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let addr = start().await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    assert!(
        closed_within(
            &mut slow,
            twill_api::HEADER_READ_TIMEOUT + Duration::from_secs(3)
        )
        .await,
        "the connection is still open after the header timeout"
    );
    assert!(started.elapsed() >= twill_api::HEADER_READ_TIMEOUT - Duration::from_secs(1));
}

/// Security review M-5: idle connections beyond the cap are closed at once, so they
/// cannot use up the daemon's descriptors; once the idle ones time out, it answers.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_idle_ones_expire() {
    let addr = start().await;
    let mut idle = Vec::new();
    for _ in 0..twill_api::MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "a connection beyond {} was kept",
        twill_api::MAX_CONNECTIONS
    );
    for stream in &mut idle {
        assert!(
            closed_within(
                stream,
                twill_api::HEADER_READ_TIMEOUT + Duration::from_secs(5)
            )
            .await,
            "an idle connection outlived the header timeout"
        );
    }
    let response = http_get(addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}

/// Security review M-5: on loopback, a Host that is a name other than localhost (DNS
/// rebinding from a web page) is refused; addresses and localhost are served.
#[tokio::test]
async fn a_foreign_host_name_is_refused_on_loopback() {
    let addr = start().await;
    let get_with_host = |host: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET /v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    let refused = get_with_host("evil.example:9465").await;
    assert!(refused.starts_with("HTTP/1.1 421 "), "{refused}");
    assert!(
        refused.contains("is not this node's loopback API"),
        "{refused}"
    );
    for ok in [
        "127.0.0.1:9465",
        "localhost:9465",
        "localhost",
        "[::1]:9465",
    ] {
        let response = get_with_host(ok).await;
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n"),
            "{ok}: {response}"
        );
    }
}
