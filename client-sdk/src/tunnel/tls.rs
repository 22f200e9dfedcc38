//! Tunnel TLS: each peer proves its peer id with its Ed25519 identity key, and accepts exactly
//! one expected peer on the other side.
//!
//! Both sides present their identity as an RFC 7250 **raw public key** (the Ed25519
//! SubjectPublicKeyInfo, no certificate to forge or parse) and sign the TLS 1.3 handshake with
//! the identity key. The verifier ([`ExpectedPeer`]) accepts a key only when it is exactly the
//! expected peer id's SubjectPublicKeyInfo, and a handshake signature only when it is Ed25519 and
//! verifies under that key (rustls' `verify_tls13_signature_with_raw_key`, ring provider).
//! Authentication is mutual: the responder (QUIC server) requires the initiator's key. Nobody —
//! neither a supernode nor a relay on the path — can complete the handshake for a peer id without
//! that peer's private key. ALPN `quickp2p-tunnel/1`, TLS 1.3 only.

use std::sync::Arc;

use quickp2p_proto::v1::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureAlgorithm, SignatureScheme};

use crate::identity::Identity;

/// The tunnel's ALPN protocol id.
pub const TUNNEL_ALPN: &[u8] = b"quickp2p-tunnel/1";

/// The server name the initiator sends (not checked: the key is).
pub(crate) const SERVER_NAME: &str = "quickp2p-peer";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The SubjectPublicKeyInfo DER of an Ed25519 public key.
pub fn ed25519_spki(public_key: &[u8; 32]) -> Vec<u8> {
    let mut der = Vec::with_capacity(44);
    der.extend_from_slice(&ED25519_SPKI_PREFIX);
    der.extend_from_slice(public_key);
    der
}

/// The peer id a SubjectPublicKeyInfo carries, when it is an Ed25519 key.
pub fn peer_id_of_spki(der: &[u8]) -> Option<PeerId> {
    let key = der.strip_prefix(ED25519_SPKI_PREFIX.as_slice())?;
    let key: [u8; 32] = key.try_into().ok()?;
    Some(PeerId::from_public_key(key))
}

/// Signs handshakes with a peer's identity key.
#[derive(Debug)]
struct IdentityKey(Arc<Identity>);

#[derive(Debug)]
struct IdentitySigner(Arc<Identity>);

impl SigningKey for IdentityKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(IdentitySigner(Arc::clone(&self.0))) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(ed25519_spki(
            &self.0.public_key(),
        )))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

impl Signer for IdentitySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

fn certified_key(identity: &Arc<Identity>) -> Arc<CertifiedKey> {
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(ed25519_spki(&identity.public_key()))],
        Arc::new(IdentityKey(Arc::clone(identity))),
    ))
}

/// Accepts exactly one peer (or, with `None`, nobody: the endpoint's default for connections no
/// tunnel waits for).
#[derive(Debug)]
pub(crate) struct ExpectedPeer {
    expected: Option<PeerId>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ExpectedPeer {
    pub(crate) fn new(expected: Option<PeerId>) -> ExpectedPeer {
        ExpectedPeer {
            expected,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    fn check_key(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let Some(expected) = &self.expected else {
            return Err(rustls::Error::General(
                "no tunnel expects a connection from this address".into(),
            ));
        };
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a tunnel peer presents one raw public key, not a chain".into(),
            ));
        }
        match peer_id_of_spki(end_entity.as_ref()) {
            Some(presented) if &presented == expected => Ok(()),
            Some(presented) => Err(rustls::Error::General(format!(
                "tunnel peer is {presented}, expected {expected}"
            ))),
            None => Err(rustls::Error::General(
                "tunnel peer's key is not an Ed25519 public key".into(),
            )),
        }
    }

    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::General(format!(
                "tunnel handshake signed with {:?}, only Ed25519 is accepted",
                dss.scheme
            )));
        }
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for ExpectedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_key(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tunnels use TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for ExpectedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_key(end_entity, intermediates)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tunnels use TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The initiator's (QUIC client's) configuration: present `identity`, accept only `expected`.
pub(crate) fn client_config(
    identity: &Arc<Identity>,
    expected: &PeerId,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedPeer::new(Some(expected.clone()))))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(identity)),
        ));
    tls.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// The responder's (QUIC server's) configuration: present `identity`, require the client's key
/// and accept only `expected` (`None`: refuse everyone).
pub(crate) fn server_config(
    identity: &Arc<Identity>,
    expected: Option<&PeerId>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(ExpectedPeer::new(expected.cloned())))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(identity)),
        ));
    tls.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    // the route table, not QUIC migration, moves a tunnel between paths
    config.migration(false);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trip_and_rejects_other_keys() {
        let id = Identity::from_seed([7; 32]);
        let der = ed25519_spki(&id.public_key());
        assert_eq!(der.len(), 44);
        assert_eq!(peer_id_of_spki(&der), Some(id.peer_id()));
        assert_eq!(peer_id_of_spki(&der[..43]), None);
        let mut other_alg = der.clone();
        other_alg[8] = 0x71; // OID 1.3.101.113 (Ed448)
        assert_eq!(peer_id_of_spki(&other_alg), None);
        let mut longer = der;
        longer.push(0);
        assert_eq!(peer_id_of_spki(&longer), None);
    }

    #[test]
    fn verifier_accepts_only_the_expected_peer() {
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        let verifier = ExpectedPeer::new(Some(alice.peer_id()));
        let good = CertificateDer::from(ed25519_spki(&alice.public_key()));
        let bad = CertificateDer::from(ed25519_spki(&mallory.public_key()));
        assert!(verifier.check_key(&good, &[]).is_ok());
        let err = verifier.check_key(&bad, &[]).unwrap_err().to_string();
        assert!(err.contains("expected"), "{err}");
        assert!(
            verifier
                .check_key(&good, std::slice::from_ref(&good))
                .is_err()
        );
        assert!(ExpectedPeer::new(None).check_key(&good, &[]).is_err());
    }
}
