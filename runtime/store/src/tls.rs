//! TLS towards etcd: the client settings from flannel's `--etcd-cafile`,
//! `--etcd-certfile` and `--etcd-keyfile`, telling a refused handshake from an etcd that
//! is away, and a probe that names why a server refuses our client certificate.
//!
//! Why the probe: with TLS 1.3 the server checks our certificate only after our side of
//! the handshake is done. The gRPC transport has by then written its HTTP/2 preface, so
//! the server's alert races its close, and the transport mostly reports "connection
//! closed", which looks like an etcd that is restarting. The probe writes nothing after
//! the handshake and reads, so the alert arrives and can be named.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;

use crate::StoreError;
use crate::etcd::EtcdOptions;

/// How long a probe waits for the TCP connection and the handshake.
const PROBE_CONNECT: Duration = Duration::from_secs(5);
/// How long after the handshake a probe waits for the server to reject us. A server
/// checks the certificate as soon as it has it; 1 s is generous on any LAN.
const PROBE_VERDICT: Duration = Duration::from_secs(1);

/// What a probe of one endpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The handshake completed and the server kept the connection.
    Accepted,
    /// The server or we refused the handshake; why.
    Refused(String),
    /// No TCP connection (etcd away): nothing is known yet.
    Unreachable(String),
}

/// A PEM file's text, checked to hold a `BEGIN … <label>` block, so that a wrong file
/// is named here rather than as a handshake failure later.
pub(crate) fn read_pem(flag: &'static str, path: &Path, label: &str) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::File {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !has_block {
        return Err(StoreError::Options(format!(
            "{flag} {}: no PEM \"{label}\" block in the file",
            path.display()
        )));
    }
    Ok(text)
}

/// The client certificate and key files, both or neither.
fn identity_files(opts: &EtcdOptions) -> Result<Option<(&Path, &Path)>, StoreError> {
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(StoreError::Options(
            "--etcd-certfile is given without --etcd-keyfile".into(),
        )),
        (None, Some(_)) => Err(StoreError::Options(
            "--etcd-keyfile is given without --etcd-certfile".into(),
        )),
    }
}

/// The gRPC transport's TLS settings: our CA (or the system's roots) and our client
/// identity.
pub(crate) fn transport(opts: &EtcdOptions) -> Result<TlsOptions, StoreError> {
    let mut tls = TlsOptions::new();
    tls = match &opts.ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read_pem(
            "--etcd-cafile",
            path,
            "CERTIFICATE",
        )?)),
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = identity_files(opts)? {
        let cert = read_pem("--etcd-certfile", cert, "CERTIFICATE")?;
        let key = read_pem("--etcd-keyfile", key, "PRIVATE KEY")?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// A rustls client config equal to [`transport`]'s, for the probe; `None` without a CA
/// file (the system's roots are the transport's business).
pub(crate) fn probe_config(
    opts: &EtcdOptions,
) -> Result<Option<Arc<rustls::ClientConfig>>, StoreError> {
    let Some(ca) = &opts.ca_file else {
        return Ok(None);
    };
    let bad = |flag: &str, path: &Path, e: &dyn std::fmt::Display| {
        StoreError::Options(format!("{flag} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let pem = read_pem("--etcd-cafile", ca, "CERTIFICATE")?;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| bad("--etcd-cafile", ca, &e))?;
        roots.add(cert).map_err(|e| bad("--etcd-cafile", ca, &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Options(format!("TLS towards etcd: {e}")))?
    .with_root_certificates(roots);
    let mut config = match identity_files(opts)? {
        Some((cert_path, key_path)) => {
            let pem = read_pem("--etcd-certfile", cert_path, "CERTIFICATE")?;
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("--etcd-certfile", cert_path, &e))?;
            let pem = read_pem("--etcd-keyfile", key_path, "PRIVATE KEY")?;
            let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| bad("--etcd-keyfile", key_path, &e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                StoreError::Options(format!(
                    "--etcd-certfile {} with --etcd-keyfile {}: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// `host:port` of an https URL (no path).
fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// The name the server's certificate must carry: the host of `authority` (an IP
/// address or a DNS name; `[v6]` brackets removed).
fn server_name(authority: &str) -> Option<ServerName<'static>> {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).ok()
}

/// The rustls error an I/O error carries, if any.
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Words for a rustls failure: ours (the server's certificate) or the server's alert
/// (our certificate).
fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => format!(
            "etcd's server certificate is not accepted ({why:?}): is --etcd-cafile the CA \
             that signed it, and does it name the endpoint's host?"
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "etcd refused the handshake with alert {alert:?}: it wants a client \
             certificate (--etcd-certfile/--etcd-keyfile) signed by a CA it trusts"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Connect to `url`, complete a TLS handshake with `config` ([`probe_config`]), and
/// wait briefly for the server to refuse our certificate.
pub(crate) async fn probe(
    url: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Probe, StoreError> {
    let authority = authority(url);
    let Some(name) = server_name(authority) else {
        return Err(StoreError::Options(format!(
            "--etcd-endpoints {url}: no host name or address to check the certificate against"
        )));
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(authority).await?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
    };
    let mut stream = match tokio::time::timeout(PROBE_CONNECT, connect).await {
        Err(_) => return Ok(Probe::Unreachable("timed out".into())),
        Ok(Err(e)) => {
            return Ok(match rustls_error(&e) {
                Some(tls) => Probe::Refused(describe(tls)),
                None => Probe::Unreachable(e.to_string()),
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let mut byte = [0u8; 1];
    Ok(
        match tokio::time::timeout(PROBE_VERDICT, stream.read(&mut byte)).await {
            Err(_) => Probe::Accepted,
            Ok(Ok(0)) => Probe::Refused(
                "etcd closed the connection right after the TLS handshake: it did not \
                 accept our client certificate (--etcd-certfile/--etcd-keyfile)?"
                    .into(),
            ),
            Ok(Ok(_)) => Probe::Accepted,
            Ok(Err(e)) => match rustls_error(&e) {
                Some(tls) => Probe::Refused(describe(tls)),
                None => Probe::Unreachable(e.to_string()),
            },
        },
    )
}

/// Whether a client error is a failed TLS handshake, found as a `rustls::Error` in
/// its chain of sources (an `etcd_client::Error` does not expose its source, so the
/// walk starts at the gRPC status or transport error inside it).
pub(crate) fn is_tls_failure(error: &etcd_client::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        etcd_client::Error::TransportError(e) => Some(e),
        etcd_client::Error::IoError(e) => Some(e),
        _ => None,
    };
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && rustls_error(io).is_some()
        {
            return true;
        }
        next = e.source();
    }
    false
}
