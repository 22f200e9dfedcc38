//! The gateway's TLS certificate (from PEM files, or self-signed for dev) and the quinn server
//! configuration built from it (TLS 1.3, ALPN `quickp2p/1`, ring provider).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertSource;

/// Why the TLS setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds no certificate/key.
    #[error("cannot read {what}: {reason}")]
    Pem {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration refused: {0}")]
    Quic(String),
}

/// A certificate chain with its key and the leaf's SHA-256 fingerprint.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate's DER bytes.
    pub fingerprint: [u8; 32],
}

/// SHA-256 of a certificate's DER bytes (what the SDK pins).
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Identity {
    /// Loads or makes the certificate.
    pub fn load(source: &CertSource) -> Result<Identity, TlsError> {
        let (chain, key) = match source {
            CertSource::Files { cert, key } => {
                let pem = |what: &std::path::Path, e: &dyn std::fmt::Display| TlsError::Pem {
                    what: what.display().to_string(),
                    reason: e.to_string(),
                };
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| pem(cert, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem(cert, &e))?;
                if chain.is_empty() {
                    return Err(pem(cert, &"no certificate in the file"));
                }
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
                (chain, key)
            }
            CertSource::SelfSigned => {
                let certified = rcgen::generate_simple_self_signed(vec![
                    "localhost".to_owned(),
                    "quickp2p-gateway".to_owned(),
                ])?;
                let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(
                    |e| TlsError::Pem {
                        what: "self-signed key".into(),
                        reason: e.to_string(),
                    },
                )?;
                (vec![certified.cert.der().clone()], key)
            }
        };
        let fingerprint = fingerprint(chain[0].as_ref());
        Ok(Identity {
            chain,
            key,
            fingerprint,
        })
    }

    /// The quinn server configuration: TLS 1.3, ALPN `quickp2p/1`, one bidirectional stream per
    /// connection, no datagrams, small windows (control traffic only).
    pub fn server_config(&self, idle_timeout: Duration) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![quickp2p_proto::ALPN.to_vec()];
        tls.max_early_data_size = 0;
        // no session resumption: a reconnecting peer logs in again anyway, and tickets cost every
        // connection two CRYPTO frames kept until acknowledged and an entry in a session cache
        tls.send_tls13_tickets = 0;
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window((256u32 * 1024).into())
            .receive_window((512u32 * 1024).into())
            .send_window(512 * 1024)
            .datagram_receive_buffer_size(None)
            // control frames are small: one datagram per transmit keeps quinn's per-connection
            // send buffer at one MTU (with GSO it keeps room for ten), and no path-MTU probes
            // (each a padded packet tracked until acknowledged) — ~1.5 KiB less per session
            .enable_segmentation_offload(false)
            .mtu_discovery_config(None)
            .max_idle_timeout(idle_timeout.try_into().ok());
        server.transport_config(Arc::new(transport));
        Ok(server)
    }
}
