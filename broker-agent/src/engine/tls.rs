//! amqps: a rustls server configuration from a PEM certificate chain and private key.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use super::config::TlsFiles;

pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        File::open(&files.cert).with_context(|| format!("opening {}", files.cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        files.cert.display()
    );
    let key = rustls_pemfile::private_key(&mut BufReader::new(
        File::open(&files.key).with_context(|| format!("opening {}", files.key.display()))?,
    ))
    .with_context(|| format!("reading the private key from {}", files.key.display()))?
    .with_context(|| format!("no private key in {}", files.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
