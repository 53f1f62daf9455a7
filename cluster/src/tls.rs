//! Mutual TLS for the cluster's gRPC (tonic `tls-ring`: the ring provider only).
//!
//! The server requires a client certificate chaining to the cluster CA (tonic's
//! `client_ca_root` makes client auth mandatory), so a process without a certificate
//! from that CA cannot even complete the handshake; clients present their certificate
//! and verify the server's against the same CA.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::ClusterError;
use crate::options::ClusterTls;

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))
}

/// Server and client TLS configs from the PEM files.
pub fn configs(tls: &ClusterTls) -> Result<(ServerTlsConfig, ClientTlsConfig), ClusterError> {
    let ca = Certificate::from_pem(read(&tls.ca_file)?);
    let identity = Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let server = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(ca.clone());
    let client = ClientTlsConfig::new().ca_certificate(ca).identity(identity);
    Ok((server, client))
}
