//! Certificates for a TLS etcd in the lab, made with the `openssl` CLI: a CA, a second
//! CA nobody trusts, and certificates (P-256 keys, one day) each naming the IP
//! addresses it serves.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd::output;
use crate::{Error, Result};

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A directory with two CAs, `ca` (the one etcd trusts) and `rogue`.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    /// The CA etcd trusts and signs with.
    pub ca: CertPair,
    /// A CA unrelated to `ca`.
    pub rogue: CertPair,
}

/// Which CA signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Ca,
    Rogue,
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Setup(format!("{} is not UTF-8", p.display())))
}

impl Pki {
    /// Two fresh CAs under `dir` (created).
    pub fn create(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let self_signed = |name: &str| -> Result<CertPair> {
            let pair = CertPair {
                cert: dir.join(format!("{name}.crt")),
                key: dir.join(format!("{name}.key")),
            };
            output(&[
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN=twill-lab-{name}"),
                "-keyout",
                path_str(&pair.key)?,
                "-out",
                path_str(&pair.cert)?,
            ])?;
            Ok(pair)
        };
        Ok(Pki {
            dir: dir.to_owned(),
            ca: self_signed("ca")?,
            rogue: self_signed("rogue")?,
        })
    }

    /// A certificate `name` with common name `cn`, valid for these IP addresses, for
    /// both server and client use, signed by `signer`.
    pub fn issue(&self, name: &str, cn: &str, ips: &[&str], signer: Signer) -> Result<CertPair> {
        let pair = CertPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        fs::write(
            &ext,
            format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n\
                 basicConstraints=CA:FALSE\n",
                san.join(",")
            ),
        )
        .map_err(|e| Error::io(format!("write {}", ext.display()), e))?;
        output(&[
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            path_str(&pair.key)?,
            "-out",
            path_str(&csr)?,
        ])?;
        let ca = match signer {
            Signer::Ca => &self.ca,
            Signer::Rogue => &self.rogue,
        };
        output(&[
            "openssl",
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&ca.cert)?,
            "-CAkey",
            path_str(&ca.key)?,
            "-CAcreateserial",
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&pair.cert)?,
        ])?;
        Ok(pair)
    }
}
