//! systemd's readiness protocol (`sd_notify`), for a unit of `Type=notify`: when
//! `NOTIFY_SOCKET` names a socket, the daemon sends it `READY=1` once the node is up
//! (subnet.env written, every current peer handed to the backend), `STATUS=` lines a
//! person sees in `systemctl status`, and `STOPPING=1` when it stops. Without the
//! variable nothing is sent. A datagram that cannot be sent is logged once and never
//! stops the daemon.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

static WARNED: AtomicBool = AtomicBool::new(false);

/// Send `state` (newline-separated `KEY=value` assignments) to systemd, if it asked.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "cannot notify systemd at NOTIFY_SOCKET={}: {e}",
            path.to_string_lossy()
        );
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // `@name`: a socket in the abstract namespace.
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        return socket.send_to_addr(state.as_bytes(), &addr);
    }
    socket.send_to(state.as_bytes(), path)
}
