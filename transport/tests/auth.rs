//! Pinned, mutual authentication: a validator whose key is not the one the set lists cannot
//! get a frame accepted, in either direction, and the handshake-failure counter records it.
//! A dialer without a client key, or with a valid key but a false hello, is refused too.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bpci_transport::raw::{self, ALPN, HELLO_BYTES, SERVER_NAME};
use bpci_transport::{public_key_from_seed, Class};
use bytes::Bytes;
use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[test]
fn impostor_key_gets_nothing_accepted_either_direction() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        // The set says validator 1 has key X = key(seed(1)); the process at index 1 runs with
        // key Y. Validator 0 dials it (wrong server key); it dials validator 2 (unknown client).
        let (peers, mut sockets) = validator_set(3);
        let s2 = sockets.pop().expect("socket");
        let s1 = sockets.pop().expect("socket");
        let s0 = sockets.pop().expect("socket");
        let mut n0 = start(config(0, peers[0].addr, &peers), s0);
        let mut n2 = start(config(2, peers[2].addr, &peers), s2);
        let mut impostor_view = peers.clone();
        impostor_view[1].public_key = public_key_from_seed(&impostor_seed());
        let mut cfg1 = config(1, peers[1].addr, &impostor_view);
        cfg1.secret_seed = impostor_seed();
        let mut n1 = start(cfg1, s1);

        for to in [0u16, 2] {
            for class in Class::ALL {
                n1.handle
                    .send(to, class, Bytes::from_static(b"forged"))
                    .expect("queued");
            }
        }
        n0.handle
            .send(2, Class::Consensus, Bytes::from_static(b"honest"))
            .expect("queued");

        // The honest pair still talks.
        let m = recv_within(&mut n2.rx, Duration::from_secs(10)).expect("honest frame");
        assert_eq!((m.from, &m.frame[..]), (0, &b"honest"[..]));

        // Both honest validators refuse the impostor, repeatedly (it keeps redialing / being
        // redialed).
        assert!(wait_until(Duration::from_secs(10), || {
            n0.handle.stats().handshake_failures >= 2 && n2.handle.stats().handshake_failures >= 2
        }));
        assert!(recv_within(&mut n0.rx, Duration::from_millis(300)).is_none());
        assert!(recv_within(&mut n2.rx, Duration::from_millis(10)).is_none());
        assert_eq!(n0.handle.connected_peers(), vec![2]);
        assert_eq!(n2.handle.connected_peers(), vec![0]);
        assert!(n1.handle.connected_peers().is_empty());
        let received = |n: &Node| {
            let s = n.handle.stats();
            s.consensus.frames_received + s.bulk.frames_received
        };
        assert_eq!(received(&n0), 0);
        assert_eq!(received(&n2), 1, "only the honest frame from validator 0");
        assert_eq!(n0.handle.stats().connections_established, 1);
        assert_eq!(n2.handle.stats().connections_established, 1);

        n1.shutdown();
        n0.shutdown();
        n2.shutdown();
    });
}

/// Accepts any server key: lets a test client reach the server's client-auth check.
#[derive(Debug)]
struct AnyServerKey(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerKey {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls12".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &rustls::pki_types::SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

fn no_client_key_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerKey(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic"),
    ))
}

/// Dials `addr`, sends `hello` and returns the reply, or the error that ended the exchange.
async fn try_hello(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    hello: [u8; HELLO_BYTES],
) -> Result<[u8; HELLO_BYTES], String> {
    let conn = endpoint
        .connect_with(cfg, addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut reply = [0u8; HELLO_BYTES];
    let r = tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut reply))
        .await
        .map_err(|_| "no reply".to_string())?;
    r.map_err(|e| e.to_string())?;
    Ok(reply)
}

#[test]
fn missing_client_key_and_false_hellos_are_refused() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        let (peers, mut sockets) = validator_set(3);
        let s2 = sockets.pop().expect("socket");
        let mut n2 = start(config(2, peers[2].addr, &peers), s2);
        let target = peers[2].addr;
        let key2 = peers[2].public_key;

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
                .expect("client endpoint");

            // No client key at all.
            let r = try_hello(
                &endpoint,
                no_client_key_config(),
                target,
                raw::encode_hello(0),
            )
            .await;
            assert!(r.is_err(), "no client key must be refused: {r:?}");

            // Validator 0's real key, claiming to be validator 1.
            let cfg = raw::client_config(&seed(0), &key2).expect("cfg");
            let r = try_hello(&endpoint, cfg, target, raw::encode_hello(1)).await;
            assert!(r.is_err(), "false index must be refused: {r:?}");

            // Garbage instead of a hello.
            let cfg = raw::client_config(&seed(0), &key2).expect("cfg");
            let r = try_hello(&endpoint, cfg, target, *b"GET / H").await;
            assert!(r.is_err(), "garbage hello must be refused: {r:?}");

            // Right key and index, but the wrong direction: the higher index never dials.
            // (Validator 2 is the highest, so use a node at index 1 as the target.)
            // Validator 0's key with its true index is accepted.
            let cfg = raw::client_config(&seed(0), &key2).expect("cfg");
            let r = try_hello(&endpoint, cfg, target, raw::encode_hello(0)).await;
            assert_eq!(r.map(|h| raw::decode_hello(&h)), Ok(Ok(2)));

            // A client pinning the wrong server key refuses the server.
            let cfg =
                raw::client_config(&seed(0), &public_key_from_seed(&impostor_seed())).expect("cfg");
            let r = try_hello(&endpoint, cfg, target, raw::encode_hello(0)).await;
            assert!(r.is_err(), "wrong server key must be refused: {r:?}");
            endpoint.close(0u32.into(), b"");
        });
        assert!(wait_until(Duration::from_secs(5), || {
            n2.handle.stats().handshake_failures >= 4
        }));
        assert_eq!(n2.handle.stats().consensus.frames_received, 0);
        n2.shutdown();
    });
}

#[test]
fn higher_index_may_not_dial_lower() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        let (peers, mut sockets) = validator_set(3);
        let _s2 = sockets.pop();
        let s1 = sockets.pop().expect("socket");
        let mut n1 = start(config(1, peers[1].addr, &peers), s1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
                .expect("client endpoint");
            let cfg = raw::client_config(&seed(2), &peers[1].public_key).expect("cfg");
            let r = try_hello(&endpoint, cfg, peers[1].addr, raw::encode_hello(2)).await;
            assert!(r.is_err(), "validator 2 must not dial validator 1: {r:?}");
            endpoint.close(0u32.into(), b"");
        });
        assert!(wait_until(Duration::from_secs(5), || {
            n1.handle.stats().handshake_failures >= 1
        }));
        n1.shutdown();
    });
}
