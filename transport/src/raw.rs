//! Building blocks for tools and tests that speak the wire protocol directly with quinn,
//! for example to send malformed frames on an authenticated stream, or to fuzz the decoder of
//! the frames a peer sends ([`FrameDecoder`], as `fuzz/` does). A node does not need them.

use crate::error::TransportError;

pub use crate::client::CLIENT_HELLO;
pub use crate::frame::{FrameDecoder, FrameTooLarge};
pub use crate::tls::{public_key_from_spki, spki_from_public_key};
pub use crate::wire::{
    decode_hello, encode_hello, CloseCode, HelloError, ALPN, CLIENT_ALPN, HELLO_BYTES, HELLO_MAGIC,
    LEN_PREFIX_BYTES, PROTOCOL_VERSION, SERVER_NAME,
};

/// A quinn client config that authenticates as the validator with `seed` and accepts only a
/// server presenting `server_key`: exactly what a transport uses to dial that validator.
/// Connect with `endpoint.connect_with(cfg, addr, SERVER_NAME)`.
pub fn client_config(
    seed: &[u8; 32],
    server_key: &[u8; 32],
) -> Result<quinn::ClientConfig, TransportError> {
    Ok(quinn::ClientConfig::new(crate::tls::client_crypto(
        seed, server_key,
    )?))
}

/// A quinn client config for the client endpoint of the validator whose key is `server_key`
/// (no client key, ALPN [`CLIENT_ALPN`]): what [`crate::ClientRuntime::connect`] uses.
/// Connect with `endpoint.connect_with(cfg, addr, SERVER_NAME)`, open one bidi stream and
/// send [`CLIENT_HELLO`] first.
pub fn client_endpoint_config(
    server_key: &[u8; 32],
) -> Result<quinn::ClientConfig, TransportError> {
    Ok(quinn::ClientConfig::new(
        crate::tls::client_endpoint_client_crypto(server_key)?,
    ))
}
