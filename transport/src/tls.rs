//! TLS identity: RFC 7250 raw Ed25519 public keys, TLS 1.3 only, pinned on both ends.
//!
//! A validator presents the SubjectPublicKeyInfo (SPKI) of its Ed25519 key instead of a
//! certificate. The dialer accepts exactly the key the validator set lists for the index it
//! dials; the acceptor accepts exactly the keys of the other validators and requires a client
//! key. Both verifiers compare the SPKI byte for byte and then check the TLS 1.3
//! CertificateVerify signature with the ring provider's Ed25519 verifier.

use std::collections::HashSet;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, PeerIncompatible,
    SignatureScheme,
};

use crate::error::TransportError;
use crate::public_key_from_seed;
use crate::wire::{ALPN, CLIENT_ALPN};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7); the 32 seed bytes follow.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The SPKI DER of an Ed25519 public key.
pub fn spki_from_public_key(public_key: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + 32);
    out.extend_from_slice(&ED25519_SPKI_PREFIX);
    out.extend_from_slice(public_key);
    out
}

/// The Ed25519 public key inside an SPKI DER, if it is exactly an Ed25519 SPKI.
pub fn public_key_from_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    key.try_into().ok()
}

/// The public key the peer authenticated with on an established connection.
pub(crate) fn peer_public_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match certs.as_slice() {
        [spki] => public_key_from_spki(spki.as_ref()),
        _ => None,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Our raw-public-key identity for rustls.
fn certified_key(
    provider: &CryptoProvider,
    seed: &[u8; 32],
) -> Result<Arc<CertifiedKey>, TransportError> {
    let mut pkcs8 = Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + 32);
    pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
    pkcs8.extend_from_slice(seed);
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)))?;
    let spki = spki_from_public_key(&public_key_from_seed(seed));
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        key,
    )))
}

fn refused() -> Error {
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Checks a TLS 1.3 CertificateVerify signature made with a pinned Ed25519 SPKI.
fn verify_signature(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    spki: &[u8],
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(spki),
        dss,
        algorithms,
    )
}

/// Dialer side: accepts exactly one server key.
#[derive(Debug)]
struct PinnedServerKey {
    spki: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if intermediates.is_empty() && end_entity.as_ref() == self.spki.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if cert.as_ref() != self.spki.as_slice() {
            return Err(refused());
        }
        verify_signature(&self.algorithms, message, cert.as_ref(), dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Acceptor side: requires a client key and accepts exactly the listed ones.
#[derive(Debug)]
struct PinnedClientKeys {
    spkis: HashSet<Vec<u8>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientKeys {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if intermediates.is_empty() && self.spkis.contains(end_entity.as_ref()) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if !self.spkis.contains(cert.as_ref()) {
            return Err(refused());
        }
        verify_signature(&self.algorithms, message, cert.as_ref(), dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The quinn server crypto: our key, accepting dialers holding one of `client_keys`.
pub(crate) fn server_crypto(
    seed: &[u8; 32],
    client_keys: &[[u8; 32]],
) -> Result<Arc<QuicServerConfig>, TransportError> {
    let provider = provider();
    let identity = certified_key(&provider, seed)?;
    let verifier = Arc::new(PinnedClientKeys {
        spkis: client_keys.iter().map(spki_from_public_key).collect(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(identity),
        ));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every connection proves its key with a full handshake.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.max_early_data_size = 0;
    QuicServerConfig::try_from(tls)
        .map(Arc::new)
        .map_err(|_| TransportError::Tls(Error::General("no QUIC initial cipher suite".into())))
}

/// The quinn client crypto for dialing the validator whose key is `server_key`.
pub(crate) fn client_crypto(
    seed: &[u8; 32],
    server_key: &[u8; 32],
) -> Result<Arc<QuicClientConfig>, TransportError> {
    let provider = provider();
    let identity = certified_key(&provider, seed)?;
    let verifier = Arc::new(PinnedServerKey {
        spki: spki_from_public_key(server_key),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(identity),
        ));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    QuicClientConfig::try_from(tls)
        .map(Arc::new)
        .map_err(|_| TransportError::Tls(Error::General("no QUIC initial cipher suite".into())))
}

/// The quinn server crypto of the client endpoint: our validator key as the server identity,
/// no client authentication, ALPN [`CLIENT_ALPN`] only.
pub(crate) fn client_endpoint_server_crypto(
    seed: &[u8; 32],
) -> Result<Arc<QuicServerConfig>, TransportError> {
    let provider = provider();
    let identity = certified_key(&provider, seed)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(identity),
        ));
    tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.max_early_data_size = 0;
    QuicServerConfig::try_from(tls)
        .map(Arc::new)
        .map_err(|_| TransportError::Tls(Error::General("no QUIC initial cipher suite".into())))
}

/// The quinn client crypto of a client (no key of its own) connecting to the client endpoint
/// of the validator whose key is `server_key`, ALPN [`CLIENT_ALPN`] only.
pub(crate) fn client_endpoint_client_crypto(
    server_key: &[u8; 32],
) -> Result<Arc<QuicClientConfig>, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerKey {
        spki: spki_from_public_key(server_key),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    QuicClientConfig::try_from(tls)
        .map(Arc::new)
        .map_err(|_| TransportError::Tls(Error::General("no QUIC initial cipher suite".into())))
}

/// SHA-256 of a domain separator and the seed: a secret that is stable across restarts.
fn derived_secret(domain: &[u8], seed: &[u8; 32]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(domain);
    ctx.update(seed);
    ctx.finish()
}

/// Key for QUIC stateless reset tokens, derived from the validator's seed.
///
/// Stable across restarts, so a restarted validator answers packets of its previous
/// incarnation's connections with a valid stateless reset and peers notice at once
/// instead of after the idle timeout (see also [`connection_id_key`]).
pub(crate) fn stateless_reset_key(seed: &[u8; 32]) -> ring::hmac::Key {
    let secret = derived_secret(b"bpci-transport/stateless-reset-key/v1", seed);
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref())
}

/// Key of the connection-ID generator, derived from the validator's seed.
///
/// quinn only answers a packet for an unknown connection with a stateless reset if the
/// connection ID validates under its generator's key; with a random key per process a
/// restarted validator would silently drop its previous incarnation's packets.
pub(crate) fn connection_id_key(seed: &[u8; 32]) -> u64 {
    let secret = derived_secret(b"bpci-transport/connection-id-key/v1", seed);
    let mut key = [0u8; 8];
    key.copy_from_slice(&secret.as_ref()[..8]);
    u64::from_le_bytes(key)
}

/// Stateless-reset key and connection-ID generator key of the client endpoint: derived from
/// the seed like the validator endpoint's, under other domain separators.
pub(crate) fn client_endpoint_keys(seed: &[u8; 32]) -> (ring::hmac::Key, u64) {
    let reset = derived_secret(b"bpci-transport/client-stateless-reset-key/v1", seed);
    let cid = derived_secret(b"bpci-transport/client-connection-id-key/v1", seed);
    let mut key = [0u8; 8];
    key.copy_from_slice(&cid.as_ref()[..8]);
    (
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref()),
        u64::from_le_bytes(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_refuses_other_encodings() {
        let key = public_key_from_seed(&[4; 32]);
        let spki = spki_from_public_key(&key);
        assert_eq!(spki.len(), 44);
        assert_eq!(public_key_from_spki(&spki), Some(key));
        assert_eq!(public_key_from_spki(&spki[..43]), None);
        let mut longer = spki.clone();
        longer.push(0);
        assert_eq!(public_key_from_spki(&longer), None);
        let mut other_alg = spki;
        other_alg[8] = 0x71; // Ed448 OID
        assert_eq!(public_key_from_spki(&other_alg), None);
    }

    #[test]
    fn key_material_loads() {
        let provider = provider();
        let ck = certified_key(&provider, &[5; 32]).expect("key loads");
        assert_eq!(ck.cert.len(), 1);
        assert_eq!(
            public_key_from_spki(ck.cert[0].as_ref()),
            Some(public_key_from_seed(&[5; 32]))
        );
        assert!(server_crypto(&[5; 32], &[public_key_from_seed(&[6; 32])]).is_ok());
        assert!(client_crypto(&[5; 32], &public_key_from_seed(&[6; 32])).is_ok());
        assert!(client_endpoint_server_crypto(&[5; 32]).is_ok());
        assert!(client_endpoint_client_crypto(&public_key_from_seed(&[6; 32])).is_ok());
    }
}
