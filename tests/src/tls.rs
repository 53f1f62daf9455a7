//! TLS client configurations for [`crate::RawClient::tls`]: rustls with the ring
//! provider, trusting one CA file, optionally presenting a client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A client trusting `ca` (PEM), presenting `client` (certificate, key) if given,
/// speaking TLS 1.2 and 1.3.
///
/// # Errors
/// A file that cannot be read or parsed.
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    client_config_versions(ca, client, rustls::DEFAULT_VERSIONS)
}

/// As [`client_config`], with the TLS versions to offer.
///
/// # Errors
/// A file that cannot be read or parsed.
pub fn client_config_versions(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
