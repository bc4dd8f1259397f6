//! The checks each fuzz target runs on its input, one function per decoder a peer or client
//! reaches. The targets in `fuzz_targets/` call them under libFuzzer (nightly); the stable
//! proptests in `tests/decoder_props.rs` include this file and call the same functions on
//! arbitrary and damaged bytes, so both run exactly the same checks against the same fixture.
//!
//! Every check: the decoder never panics (an error is an error), and where it accepts the
//! input, a cheap invariant of what it returned holds (a failed `assert!` is a finding). Each
//! returns whether the decoder accepted the input.
//!
//! This file is also compiled as a module of the test crate: it names no `crate::` paths and
//! uses only `bpci`, `bpci_transport` and `bytes`.

use std::sync::LazyLock;

use bpci::client_proto::{ClientRequest, ClientResponse};
use bpci::codec::{decode, decode_shared, encode_infallible};
use bpci::config::Config;
use bpci::consensus::{EpochContext, Message, Validator, ValidatorSet};
use bpci::crypto::Keypair;
use bpci::exec::{LedgerTx, LEDGER_TX_MAGIC};
use bpci::mempool::Payload;
use bpci::types::{Epoch, Stake};
use bpci_transport::raw::{
    decode_hello, encode_hello, public_key_from_spki, spki_from_public_key, FrameDecoder,
    CLIENT_HELLO, HELLO_BYTES, LEN_PREFIX_BYTES,
};
use bpci_transport::{Class, CLIENT_MAX_FRAME_BYTES_DEFAULT, MAX_FRAME_BYTES_DEFAULT};

/// The chain id of [`consensus_context`].
pub const CHAIN_ID: &str = "bpci-fuzz";

/// A target's check: runs the decoder on the input, asserts its invariants, and answers whether
/// the decoder accepted the input.
pub type Check = fn(&[u8]) -> bool;

/// Every fuzz target by name (its file in `fuzz_targets/`, its seeds in `corpus/<name>/`),
/// with its check.
pub const TARGETS: [(&str, Check); 6] = [
    ("consensus_message", consensus_message),
    ("client_request", client_request),
    ("client_response", client_response),
    ("payload", payload),
    ("transport_frame", transport_frame),
    ("config_yaml", config_yaml),
];

/// The keys of [`consensus_context`]'s validators: seeds `[1; 32]`, `[2; 32]`, `[3; 32]`,
/// `[4; 32]` (validator indices 0 to 3).
pub fn consensus_keys() -> Vec<Keypair> {
    (1..=4u8).map(|i| Keypair::from_seed(&[i; 32])).collect()
}

/// The fixed epoch [`consensus_message`] checks messages against: chain [`CHAIN_ID`], epoch 1,
/// the four validators of [`consensus_keys`] with stake 1 each (a quorum is three).
pub fn consensus_context() -> &'static EpochContext {
    static CONTEXT: LazyLock<EpochContext> = LazyLock::new(|| {
        let validators = consensus_keys()
            .iter()
            .map(|k| Validator {
                key: k.public(),
                stake: Stake(1),
            })
            .collect();
        let set = ValidatorSet::new(Epoch(1), validators).expect("a valid fixed validator set");
        EpochContext::new(CHAIN_ID, set)
    });
    &CONTEXT
}

/// A frame from a validator, as the node's ingress stage takes it: decoded into a consensus
/// [`Message`] (both decoders: copying, and sharing the frame), then through the border's
/// structural checks ([`EpochContext::prepare`]) and its signature check.
///
/// Invariants: the two decoders agree; a decoded message re-encodes to exactly the input (BCS
/// has one encoding per value: anything else would be a non-canonical encoding accepted); a
/// prepared message lists only members' keys and one block id per block it carries, and
/// prepares the same way twice.
pub fn consensus_message(data: &[u8]) -> bool {
    let copied = decode::<Message>(data);
    let shared = decode_shared::<Message>(&bytes::Bytes::copy_from_slice(data));
    assert_eq!(copied, shared, "decode and decode_shared disagree");
    let Ok(msg) = copied else {
        return false;
    };
    assert_eq!(
        encode_infallible(&msg),
        data,
        "a decoded message re-encodes to other bytes"
    );
    let blocks = match &msg {
        Message::Proposal(_) => 1,
        Message::BlockResponse(r) => r.blocks.len(),
        Message::SyncResponse(r) => r.blocks.len() + 1,
        _ => 0,
    };
    let ctx = consensus_context();
    let Ok(prepared) = ctx.prepare(msg.clone()) else {
        return true;
    };
    for item in prepared.items() {
        assert!(
            ctx.validators
                .iter()
                .any(|(_, v)| v.key.to_bytes() == item.key),
            "a signature item names a key outside the validator set"
        );
    }
    // The ids without the signature check (the fuzzer rarely forges a signature), then the
    // check itself on a second preparation: it passes for the seeds.
    let ids = prepared.into_verified_after_check().ids;
    assert_eq!(ids.len(), blocks, "one block id per carried block");
    let again = ctx
        .prepare(msg)
        .expect("the same message prepares the same way twice");
    let _ = again.verify();
    true
}

/// A frame from a client on a validator's client endpoint, decoded as the node decodes it: a
/// [`ClientRequest`]. Invariant: it re-encodes to exactly the input. Generic over the
/// request's variants, so new ones are fuzzed without a change here.
pub fn client_request(data: &[u8]) -> bool {
    let Ok(request) = decode::<ClientRequest>(data) else {
        return false;
    };
    assert_eq!(
        encode_infallible(&request),
        data,
        "a decoded request re-encodes to other bytes"
    );
    true
}

/// A frame from a validator to a client (acks, commit notices, leader hints, receipts), decoded
/// as a client or the load generator decodes it: a [`ClientResponse`]. Invariant: it
/// re-encodes to exactly the input. Generic over the response's variants.
pub fn client_response(data: &[u8]) -> bool {
    let Ok(response) = decode::<ClientResponse>(data) else {
        return false;
    };
    assert_eq!(
        encode_infallible(&response),
        data,
        "a decoded response re-encodes to other bytes"
    );
    true
}

/// A block's payload bytes, as the ingress and execution stages read them from a peer's
/// proposal: [`Payload::decode`] (a hand-written fast loop, falling back to bcs), the
/// header-only readers [`Payload::root_of`] and [`Payload::carries_txs`], [`Payload::check`],
/// then each transaction the ledger reads as an instruction ([`LedgerTx`]).
///
/// Invariants: a decoded payload re-encodes to exactly the input; the header-only readers agree
/// with it; a checked payload has one id per transaction; an instruction re-encodes to its body.
pub fn payload(data: &[u8]) -> bool {
    let root = Payload::root_of(data);
    let carries = Payload::carries_txs(data);
    let Ok(payload) = Payload::decode(data) else {
        return false;
    };
    assert_eq!(
        payload.encode(),
        data,
        "a decoded payload re-encodes to other bytes"
    );
    assert_eq!(root, Some(payload.tx_root), "root_of disagrees with decode");
    assert_eq!(
        carries,
        !payload.is_empty(),
        "carries_txs disagrees with decode"
    );
    if let Ok(ids) = payload.check() {
        assert_eq!(ids.len(), payload.len(), "one id per transaction");
    }
    for tx in payload.txs() {
        if let Some(body) = tx.strip_prefix(LEDGER_TX_MAGIC.as_slice()) {
            if let Ok(instruction) = decode::<LedgerTx>(body) {
                assert_eq!(
                    encode_infallible(&instruction),
                    body,
                    "a ledger instruction re-encodes to other bytes"
                );
            }
        }
    }
    true
}

/// Chunk sizes a [`transport_frame`] stream arrives in, as reads of a QUIC stream might return it.
pub const FRAME_CHUNKS: [usize; 8] = [1, 2, 3, 4, 7, 64, 4096, usize::MAX];

/// Frame size limits of [`transport_frame`]: a validator link's default, a client endpoint's
/// default, and two small ones under which refusals are common.
pub const FRAME_LIMITS: [usize; 4] = [
    MAX_FRAME_BYTES_DEFAULT,
    CLIENT_MAX_FRAME_BYTES_DEFAULT,
    64,
    0,
];

/// What a peer or client sends on a QUIC stream, through the transport's pure readers: the
/// length-prefixed frame decoder ([`FrameDecoder`]) fed in chunks, the class tag that opens a
/// validator's stream ([`Class::from_tag`]), the 7-byte hello of a validator's connection
/// ([`decode_hello`]) and the reader of the key in a peer's certificate
/// ([`public_key_from_spki`]).
///
/// Input: one control byte, then the stream. The control byte's low three bits choose the chunk
/// size the stream arrives in ([`FRAME_CHUNKS`]), bits 3 and 4 the frame limit
/// ([`FRAME_LIMITS`]), bit 5 the stream: clear, a validator's class stream (one tag byte, then
/// frames); set, a client's stream (the 5-byte [`CLIENT_HELLO`], then frames). The hello and
/// certificate readers read the stream's bytes as their own input.
///
/// Invariants: the frames delivered, re-prefixed, are exactly the start of the frame bytes, each
/// within the limit; a refusal names the prefix right after the last whole frame, above the
/// limit; without one, the decoder is mid-frame exactly when bytes are left over. The other
/// readers accept only what their encoders write. Accepted: the frame bytes are whole frames.
pub fn transport_frame(data: &[u8]) -> bool {
    let Some((&control, stream)) = data.split_first() else {
        return false;
    };
    if let Some(hello) = stream.first_chunk::<HELLO_BYTES>() {
        if let Ok(index) = decode_hello(hello) {
            assert_eq!(&encode_hello(index), hello, "a hello read back as another");
        }
    }
    if let Some(key) = public_key_from_spki(stream) {
        assert_eq!(
            spki_from_public_key(&key),
            stream,
            "an SPKI read back as another"
        );
    }
    let header = if control & 0x20 == 0 {
        if let Some(class) = stream.first().and_then(|&tag| Class::from_tag(tag)) {
            assert_eq!(
                Some(&class.tag()),
                stream.first(),
                "a class tag read back as another"
            );
        }
        1
    } else {
        CLIENT_HELLO.len()
    };
    let Some(body) = stream.get(header..) else {
        return false;
    };
    let chunk = FRAME_CHUNKS[usize::from(control & 7)];
    let max = FRAME_LIMITS[usize::from((control >> 3) & 3)];
    frames(body, chunk, max)
}

/// Feeds `stream` to a frame decoder with limit `max`, `chunk` bytes at a time, and checks what
/// it delivers against the stream itself; whether the stream was whole frames.
fn frames(stream: &[u8], chunk: usize, max: usize) -> bool {
    let mut decoder = FrameDecoder::new(max);
    let mut rebuilt = Vec::with_capacity(stream.len());
    let mut refused = None;
    'feed: for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= max,
                        "a frame of {} bytes over {max}",
                        frame.len()
                    );
                    let len = u32::try_from(frame.len()).expect("a frame fits its u32 prefix");
                    rebuilt.extend_from_slice(&len.to_be_bytes());
                    rebuilt.extend_from_slice(&frame);
                }
                Ok(None) => break,
                Err(e) => {
                    refused = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert!(
        stream.starts_with(&rebuilt),
        "delivered frames are not the stream's own"
    );
    match refused {
        Some(e) => {
            assert_eq!(e.max, max, "a refusal names another limit");
            assert!(
                e.len > max as u64,
                "refused a frame of {} within {max}",
                e.len
            );
            let at = rebuilt.len();
            let prefix: [u8; LEN_PREFIX_BYTES] = stream[at..at + LEN_PREFIX_BYTES]
                .try_into()
                .expect("a whole prefix");
            assert_eq!(
                u64::from(u32::from_be_bytes(prefix)),
                e.len,
                "the refusal names another prefix than the next one"
            );
            false
        }
        None => {
            let left_over = rebuilt.len() != stream.len();
            assert_eq!(
                decoder.is_mid_frame(),
                left_over,
                "mid-frame state disagrees with the bytes left over"
            );
            !left_over
        }
    }
}

/// The node's YAML configuration, parsed and validated as `bpci` does at start
/// ([`Config::from_yaml`]). The input is taken as UTF-8 where it is, with invalid sequences
/// replaced otherwise, so both arbitrary text and arbitrary bytes reach the parser.
///
/// Invariants of a configuration that validates: one set member and one endpoint per active
/// validator, and this node's index names its own entry.
pub fn config_yaml(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::from_yaml(&text) else {
        return false;
    };
    let active: Vec<&str> = config
        .file
        .validators
        .iter()
        .filter(|v| v.is_active)
        .map(|v| v.validator_id.as_str())
        .collect();
    assert_eq!(
        config.validators.len(),
        active.len(),
        "one set member per active validator"
    );
    assert_eq!(
        config.endpoints.len(),
        active.len(),
        "one endpoint per active validator"
    );
    assert_eq!(
        active.get(usize::from(config.me)).copied(),
        Some(config.file.node.validator_id.as_str()),
        "this node's index names another validator"
    );
    true
}
