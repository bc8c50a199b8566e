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
