//! TLS for `mqtts` and `wss` listeners: rustls with the ring provider only.
//!
//! A listener's PEM files (certificate chain, private key, optional client CA) are
//! read into a rustls `ServerConfig` when the broker starts, before any socket is
//! bound: a missing, unreadable or unparsable file stops the broker with an error
//! naming the file (exit 78, like any other configuration error). Every TLS listener
//! is checked and every problem reported together.
//!
//! The `ServerConfig` sits in a [`TlsContext`] cell that the accept path reads once
//! per connection. A reload (SIGHUP, or the files' modification time or size
//! changing; see [`crate::reload`]) builds a new config and swaps it in: connections
//! already established keep the session they negotiated, new ones get the new
//! certificate. A reload that fails keeps the old config and logs why.
//!
//! Client certificates: with `cafile`, clients may present a certificate chaining to
//! it (`require_certificate true` makes it mandatory: mutual TLS). Expired, not yet
//! valid, self-signed and other-CA certificates are refused during the handshake by
//! rustls-webpki. The verified leaf's subject Common Name ([`x509`]) becomes the
//! username with `use_identity_as_username`.
//!
//! # Layout
//! - this file: [`TlsError`], [`server_config`], [`TlsContext`].
//! - [`x509`]: the subject Common Name of a DER certificate.

pub mod x509;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ferromq_config::{TlsSettings, TlsVersion};
use parking_lot::{Mutex, RwLock};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS file that could not be used. Each names the listener and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener `{listener}`: cannot read {key} {}: {source}", path.display())]
    Read {
        listener: String,
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listener `{listener}`: {key} {} is not a usable PEM file: {problem}", path.display())]
    Parse {
        listener: String,
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("listener `{listener}`: {problem}")]
    Other { listener: String, problem: String },
}

/// Several [`TlsError`]s, one per line.
#[derive(Debug, thiserror::Error)]
pub struct TlsErrors(pub Vec<TlsError>);

impl std::fmt::Display for TlsErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn read(listener: &str, key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        listener: listener.to_owned(),
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(listener: &str, key: &'static str, path: &Path, problem: String) -> TlsError {
    TlsError::Parse {
        listener: listener.to_owned(),
        key,
        path: path.to_path_buf(),
        problem,
    }
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_certs(
    listener: &str,
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(listener, key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(listener, key, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(parse_error(
            listener,
            key,
            path,
            "no `-----BEGIN CERTIFICATE-----` block in it".to_owned(),
        ));
    }
    Ok(certs)
}

fn read_key(listener: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(listener, "keyfile", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let problem = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key block in it (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` \
                 or SEC1 `EC PRIVATE KEY`)"
                    .to_owned()
            }
            e => e.to_string(),
        };
        parse_error(listener, "keyfile", path, problem)
    })
}

fn required<'a>(
    listener: &str,
    key: &'static str,
    file: &'a Option<PathBuf>,
) -> Result<&'a Path, TlsError> {
    file.as_deref().ok_or_else(|| TlsError::Other {
        listener: listener.to_owned(),
        problem: format!("`{key}` is required on a TLS listener"),
    })
}

/// Reads a listener's files and builds its rustls configuration: TLS 1.2 and 1.3 (or
/// 1.3 only), ring provider, the client-certificate verifier the settings ask for.
///
/// # Errors
/// The first file that cannot be read or parsed, or a key that does not belong to
/// the certificate, naming the listener and the file.
pub fn server_config(listener: &str, s: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certfile = required(listener, "certfile", &s.certfile)?;
    let keyfile = required(listener, "keyfile", &s.keyfile)?;
    let chain = read_certs(listener, "certfile", certfile)?;
    let key = read_key(listener, keyfile)?;
    let roots = match &s.cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(listener, "cafile", cafile)? {
                roots.add(cert).map_err(|e| {
                    parse_error(
                        listener,
                        "cafile",
                        cafile,
                        format!("a certificate in it is not a valid CA certificate: {e}"),
                    )
                })?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };

    let other = |problem: String| TlsError::Other {
        listener: listener.to_owned(),
        problem,
    };
    let versions: &[&'static SupportedProtocolVersion] = match s.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| other(format!("TLS versions: {e}")))?;
    let builder = match roots {
        Some(roots) => {
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if !s.require_certificate {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| other(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).map_err(|e| {
        other(format!(
            "certfile {} and keyfile {} are not a usable pair: {e}",
            certfile.display(),
            keyfile.display()
        ))
    })
}

/// Modification time and size of a file, to notice that it changed.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    // `metadata` follows symlinks, so a Kubernetes secret volume's symlink swap is
    // seen as a change of the file.
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// One TLS listener's current configuration, swapped whole on reload.
pub struct TlsContext {
    listener: Arc<str>,
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamps when last loaded (or last tried).
    stamps: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("listener", &self.listener)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Loads the listener's files.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn load(listener: Arc<str>, settings: TlsSettings) -> Result<TlsContext, TlsError> {
        let stamps = Self::stamps_of(&settings);
        let config = server_config(&listener, &settings)?;
        Ok(TlsContext {
            listener,
            settings,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        })
    }

    fn files(settings: &TlsSettings) -> impl Iterator<Item = &PathBuf> {
        [&settings.certfile, &settings.keyfile, &settings.cafile]
            .into_iter()
            .flatten()
    }

    fn stamps_of(settings: &TlsSettings) -> Vec<Stamp> {
        Self::files(settings).map(|p| stamp(p)).collect()
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// An acceptor with the current configuration (one `Arc` clone).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Whether any file's modification time or size changed since the last load or
    /// reload attempt. Remembers the new stamps, so one change triggers one attempt.
    pub fn files_changed(&self) -> bool {
        let now = Self::stamps_of(&self.settings);
        let mut stamps = self.stamps.lock();
        if *stamps == now {
            false
        } else {
            *stamps = now;
            true
        }
    }

    /// Re-reads the files; on success new connections get the new configuration, on
    /// failure the old one stays. Logs either way; returns whether it succeeded.
    pub fn reload(&self, why: &str) -> bool {
        *self.stamps.lock() = Self::stamps_of(&self.settings);
        match server_config(&self.listener, &self.settings) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                tracing::info!(listener = %self.listener, reason = why, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(listener = %self.listener, reason = why, error = %e, "TLS certificate reload failed; keeping the previous certificates");
                false
            }
        }
    }
}
