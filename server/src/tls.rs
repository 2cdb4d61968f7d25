//! TLS for the HTTP API and pgwire (`rustls`, with `ring` as its cryptography, as `pgwire`'s):
//! one certificate chain and private key, in PEM files, for both.
//!
//! ```toml
//! [tls]
//! cert = "/etc/aimatrix/tls/server.crt"   # the certificate chain, leaf first (PEM)
//! key = "/etc/aimatrix/tls/server.key"    # its private key (PEM: PKCS#8, PKCS#1 or SEC1)
//! ```
//!
//! With TLS configured, the HTTP port speaks only HTTPS (TLS 1.2 and 1.3, ALPN `http/1.1`), and
//! pgwire takes only encrypted sessions: a client's `SSLRequest` is accepted (PostgreSQL's
//! negotiation; also PostgreSQL 17's direct TLS, ALPN `postgresql`), and a session that starts
//! without it is refused with `28000` as PostgreSQL refuses one that no `hostssl` line admits
//! (psql's `sslmode=disable`). The files are read once, at start-up; a missing file, or one that
//! holds no certificate or key, stops the server with a message naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// `[tls]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first (`--tls-cert`). Default: none, no TLS.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM) (`--tls-key`). Given with `cert`, or neither.
    pub key: Option<PathBuf>,
}

/// The rustls configurations of both servers.
#[derive(Clone, Debug)]
pub struct Tls {
    /// For the HTTP API (ALPN `h2`, for OTLP/gRPC, and `http/1.1`).
    pub http: Arc<ServerConfig>,
    /// For pgwire (ALPN `postgresql`, as PostgreSQL 17's direct TLS asks).
    pub pgwire: Arc<ServerConfig>,
}

impl Tls {
    /// Reads the certificate chain and key of `config`; `None` when TLS is not configured.
    ///
    /// # Errors
    /// `cert` without `key` or the other way round; a file that cannot be read, or holds no
    /// certificate or no private key; a key that does not match the certificate. The message
    /// names the file (never the key's bytes).
    pub fn load(config: &TlsConfig) -> Result<Option<Tls>, String> {
        let (cert, key) = match (&config.cert, &config.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => return Err("tls.cert and tls.key go together: give both (or neither)".into()),
        };
        let chain = certificates(cert)?;
        let key = private_key(key)?;
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, String> {
            // ring, as pgwire's: a lean build (aws-lc-rs, the post-quantum provider, needs cmake
            // and a C toolchain's worth of build time).
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("TLS: the key does not fit the certificate chain of {}: {e}", cert.display()))?;
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        // HTTP/2 for OTLP/gRPC (and any client that prefers it), HTTP/1.1 for the rest.
        Ok(Some(Tls { http: server(&[b"h2", b"http/1.1"])?, pgwire: server(&[b"postgresql"])? }))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert: {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("tls.cert: {} holds no certificate (PEM `BEGIN CERTIFICATE`)", path.display()));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("tls.key: {} holds no private key (PEM PKCS#8, PKCS#1 or SEC1)", path.display())
        }
        e => format!("tls.key: {}: {e}", path.display()),
    })
}
