//! Every decoder a peer or client reaches, against arbitrary and damaged bytes (issue 16), on
//! stable and in every `cargo test`: the same checks the cargo-fuzz targets run under libFuzzer
//! (`fuzz/src/lib.rs`, included here as `checks`), on arbitrary bytes and on the fuzz seeds
//! damaged (bits flipped, bytes set, cut, inserted, appended). No panic; an error is an error.
//!
//! Also: length prefixes that claim 2^32-1 elements or bytes are refused quickly and without
//! allocating for the claim (a counting allocator measures the largest allocation), strict
//! prefixes and extensions of valid encodings are refused with their error kinds, and the fuzz
//! seeds in `fuzz/corpus/<target>/seed-*` are the ones made here
//! (`BPCI_WRITE_FUZZ_SEEDS=1 cargo test --test decoder_props` rewrites them).

#[path = "../fuzz/src/lib.rs"]
mod checks;
#[path = "decoder_props/seeds.rs"]
mod seeds;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpci::client_proto::{ClientRequest, ClientResponse};
use bpci::codec::{decode, DecodeError};
use bpci::consensus::Message;
use bpci::mempool::{Payload, MAX_TXS_PER_BLOCK};
use bpci_transport::raw::{FrameDecoder, FrameTooLarge};
use bpci_transport::MAX_FRAME_BYTES_DEFAULT;
use proptest::prelude::*;
use proptest::sample::Index;
use seeds::{config_defaults, config_text, consensus_messages, seeds, CONFIG_NUMBERS};

// ---- the largest allocation, per thread --------------------------------------------------

/// The system allocator, noting on each thread the largest single allocation it was asked for.
struct Counting;

thread_local! {
    /// The largest allocation (bytes) this thread asked for since [`measured`] reset it.
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    // `try_with`: a thread being torn down may still allocate.
    let _ = LARGEST_ALLOCATION.try_with(|l| l.set(l.get().max(bytes)));
}

// SAFETY: every call is passed to `System` unchanged; noting a size allocates nothing (a
// const-initialised thread-local `Cell`).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result, the largest single allocation it made and its duration.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    LARGEST_ALLOCATION.with(|l| l.set(0));
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    (out, LARGEST_ALLOCATION.with(Cell::get), took)
}

// ---- the fuzz seeds (made in `seeds`) ---------------------------------------------------

/// `fuzz/corpus/<target>/` of this repository.
fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed seeds are exactly the ones made here, and each is accepted by its target's
/// check: the corpus is reproducible and starts from valid input. With
/// `BPCI_WRITE_FUZZ_SEEDS` set, (re)writes them first.
#[test]
fn fuzz_seeds_are_committed_and_accepted() {
    let write = std::env::var_os("BPCI_WRITE_FUZZ_SEEDS").is_some();
    let regenerate = "regenerate with BPCI_WRITE_FUZZ_SEEDS=1 cargo test --test decoder_props";
    for (target, check) in checks::TARGETS {
        let made = seeds(target);
        assert!(!made.is_empty(), "{target}: no seeds");
        let dir = corpus_dir(target);
        if write {
            std::fs::create_dir_all(&dir).expect("create the corpus directory");
            for old in committed_seeds(&dir) {
                std::fs::remove_file(dir.join(old)).expect("remove an old seed");
            }
            for (name, bytes) in &made {
                std::fs::write(dir.join(name), bytes).expect("write a seed");
            }
        }
        let mut names: Vec<String> = made.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(
            committed_seeds(&dir),
            names,
            "{target}: committed seeds differ from the made ones; {regenerate}"
        );
        for (name, bytes) in &made {
            assert!(check(bytes), "{target}/{name}: refused by its own target");
            let committed = std::fs::read(dir.join(name)).unwrap_or_default();
            assert!(
                committed == *bytes,
                "{target}/{name}: the committed seed is stale; {regenerate}"
            );
        }
    }
}

/// The `seed-*` file names in `dir`, sorted (none if it does not exist).
fn committed_seeds(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("seed-"))
        .collect();
    names.sort();
    names
}

/// Every consensus seed passes the border in full, signatures included: mutations of them
/// reach `prepare`'s deepest checks.
#[test]
fn consensus_seeds_pass_the_border() {
    let ctx = checks::consensus_context();
    for (name, m) in consensus_messages() {
        if matches!(m, Message::Txs(_)) {
            assert!(ctx.prepare(m).is_err(), "txs are not for the core");
            continue;
        }
        let prepared = ctx
            .prepare(m)
            .unwrap_or_else(|e| panic!("{name}: refused by prepare: {e}"));
        if let Err(e) = prepared.verify() {
            panic!("{name}: refused by the signature check: {e}");
        }
    }
}

// ---- arbitrary and damaged bytes ---------------------------------------------------------

/// One change to a valid encoding.
#[derive(Clone, Debug)]
enum Damage {
    /// Flip one bit.
    Flip(Index, u8),
    /// Set one byte (lengths and tags are single bytes in small encodings).
    Set(Index, u8),
    /// Cut the input short.
    Cut(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Append bytes.
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let few = || proptest::collection::vec(any::<u8>(), 1..6);
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Damage::Flip(i, b)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Damage::Set(i, v)),
        1 => any::<Index>().prop_map(Damage::Cut),
        1 => (any::<Index>(), few()).prop_map(|(i, b)| Damage::Insert(i, b)),
        1 => few().prop_map(Damage::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        let len = bytes.len();
        match d {
            Damage::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Damage::Set(i, v) if len > 0 => bytes[i.index(len)] = *v,
            Damage::Cut(i) => bytes.truncate(i.index(bytes.len() + 1)),
            Damage::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Damage::Append(b) => bytes.extend_from_slice(b),
            Damage::Flip(..) | Damage::Set(..) => {}
        }
    }
    bytes
}

/// A seed of `target`, damaged once to four times.
fn damaged(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let originals: Vec<Vec<u8>> = seeds(target).into_iter().map(|(_, b)| b).collect();
    (
        proptest::sample::select(originals),
        proptest::collection::vec(damage(), 1..5),
    )
        .prop_map(|(bytes, damages)| apply(bytes, &damages))
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..600)
}

/// For each target: its check on arbitrary bytes and on damaged seeds (each check asserts its
/// invariants; a panic fails the case).
macro_rules! decoder_props {
    ($($target:ident),* $(,)?) => {$(
        mod $target {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(384))]

                #[test]
                fn arbitrary_bytes_never_panic(bytes in arbitrary_bytes()) {
                    checks::$target(&bytes);
                }

                #[test]
                fn damaged_seeds_never_panic(bytes in damaged(stringify!($target))) {
                    checks::$target(&bytes);
                }
            }
        }
    )*};
}

decoder_props!(
    consensus_message,
    client_request,
    client_response,
    payload,
    transport_frame,
    config_yaml,
);

/// Decodes `bytes` with the BCS decoder of `target`, for the error kind.
fn bcs_decode(target: &str, bytes: &[u8]) -> Result<(), DecodeError> {
    match target {
        "consensus_message" => decode::<Message>(bytes).map(drop),
        "client_request" => decode::<ClientRequest>(bytes).map(drop),
        "client_response" => decode::<ClientResponse>(bytes).map(drop),
        "payload" => Payload::decode(bytes).map(drop),
        other => panic!("{other} is not a BCS decoder"),
    }
}

/// BCS is prefix-free: no strict prefix of a valid encoding decodes (it is truncated), and
/// nothing appended to one does (trailing bytes), for every BCS decoder and every cut.
#[test]
fn cut_or_extended_encodings_are_refused_by_kind() {
    for target in [
        "consensus_message",
        "client_request",
        "client_response",
        "payload",
    ] {
        for (name, bytes) in seeds(target) {
            for at in 0..bytes.len() {
                assert_eq!(
                    bcs_decode(target, &bytes[..at]),
                    Err(DecodeError::Truncated),
                    "{target}/{name} cut at {at}"
                );
            }
            for extra in [&[0u8][..], &[0xff, 0xff, 0xff, 0xff, 0x0f]] {
                let longer = [bytes.as_slice(), extra].concat();
                assert_eq!(
                    bcs_decode(target, &longer),
                    Err(DecodeError::TrailingBytes),
                    "{target}/{name} with {extra:?} appended"
                );
            }
        }
    }
}

// ---- claims of huge lengths --------------------------------------------------------------

/// `n` as a ULEB128 (BCS's length prefix).
fn uleb(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// serde's cap on what a sequence preallocates from its claimed length, in bytes (its
/// `size_hint::cautious`): the most a claim may cost before the input runs out.
const PREALLOCATION_BYTES_MAX: usize = 1 << 20;

/// The longest sequence bcs accepts to read (`bcs::MAX_SEQUENCE_LENGTH`).
const BCS_SEQUENCE_MAX: usize = bcs::MAX_SEQUENCE_LENGTH;

/// What a bcs decoder answers to a length above [`BCS_SEQUENCE_MAX`], here 2^32-1.
const OVER_BCS_LIMIT: DecodeError = DecodeError::LimitExceeded {
    field: "sequence",
    len: u32::MAX as usize,
    max: BCS_SEQUENCE_MAX,
};

/// Each length-prefixed decoder, given a prefix that claims 2^32-1 (or the largest length it
/// reads) elements or bytes with nothing behind it, answers the error naming the limit or the
/// truncation, within a second, and allocates at most serde's preallocation cap on its way.
#[test]
fn huge_length_claims_are_refused_without_allocating_for_them() {
    let huge = u64::from(u32::MAX);
    let readable = BCS_SEQUENCE_MAX as u64;
    // Tags: Message::Proposal 0, BlockResponse 4, Txs 8; ClientRequest::Submit 0;
    // ClientResponse::Ack 0, Committed 1, Error 2.
    let proposal_head = [vec![0u8], vec![0; 32 + 8 + 8 + 8 + 2]].concat(); // up to the payload
    let root = [0u8; 32];
    type Case = (&'static str, &'static str, Vec<u8>, DecodeError);
    let cases: Vec<Case> = vec![
        (
            "txs count",
            "consensus_message",
            [vec![8], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "txs count, readable",
            "consensus_message",
            [vec![8], uleb(readable)].concat(),
            DecodeError::Truncated,
        ),
        (
            "tx bytes",
            "consensus_message",
            [vec![8, 1], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "block_response blocks",
            "consensus_message",
            [vec![4], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "block_response blocks, readable",
            "consensus_message",
            [vec![4], uleb(readable)].concat(),
            DecodeError::Truncated,
        ),
        (
            "proposal payload bytes",
            "consensus_message",
            [proposal_head.clone(), uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "proposal payload bytes, readable",
            "consensus_message",
            [proposal_head, uleb(readable)].concat(),
            DecodeError::Truncated,
        ),
        (
            "submit count",
            "client_request",
            [vec![0], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "submit count, readable",
            "client_request",
            [vec![0], uleb(readable)].concat(),
            DecodeError::Truncated,
        ),
        (
            "submit tx bytes",
            "client_request",
            [vec![0, 1], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "ack count",
            "client_response",
            [vec![0], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "committed id bytes",
            "client_response",
            [vec![1], vec![0; 8], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "error text",
            "client_response",
            [vec![2], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "payload count",
            "payload",
            [root.to_vec(), uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
        (
            "payload count, readable",
            "payload",
            [root.to_vec(), uleb(readable)].concat(),
            DecodeError::Truncated,
        ),
        (
            // The fast loop's own limit: it reserves for this many, then finds no input.
            "payload count, fast loop's limit",
            "payload",
            [root.to_vec(), uleb(MAX_TXS_PER_BLOCK as u64)].concat(),
            DecodeError::Truncated,
        ),
        (
            "payload tx bytes",
            "payload",
            [root.to_vec(), vec![1], uleb(huge)].concat(),
            OVER_BCS_LIMIT,
        ),
    ];
    for (what, target, bytes, expected) in cases {
        let (answer, largest, took) = measured(|| bcs_decode(target, &bytes));
        assert_eq!(answer, Err(expected), "{target}: {what}");
        assert!(
            largest <= PREALLOCATION_BYTES_MAX,
            "{target}: {what}: allocated {largest} bytes for a claim"
        );
        assert!(
            took < Duration::from_secs(1),
            "{target}: {what}: took {took:?}"
        );
    }
}

/// A frame prefix of 2^32-1 is refused as soon as its four bytes are in, naming the claim and
/// the limit, before anything is reserved for it; one byte over the limit likewise.
#[test]
fn huge_frame_prefixes_are_refused_without_allocating_for_them() {
    for (claim, max) in [
        (u32::MAX, MAX_FRAME_BYTES_DEFAULT),
        (u32::MAX, 0),
        (
            u32::try_from(MAX_FRAME_BYTES_DEFAULT + 1).expect("16 MiB fits u32"),
            MAX_FRAME_BYTES_DEFAULT,
        ),
    ] {
        let (answer, largest, took) = measured(|| {
            let mut decoder = FrameDecoder::new(max);
            decoder.push(&claim.to_be_bytes());
            decoder.next_frame()
        });
        assert_eq!(
            answer,
            Err(FrameTooLarge {
                len: u64::from(claim),
                max
            })
        );
        assert!(
            largest <= 1024,
            "allocated {largest} bytes for a refused claim of {claim}"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}

// ---- the configuration's numbers ---------------------------------------------------------

/// A number to put in a configuration: any integer, negative, huge, or a float of any kind.
fn config_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (u64::MAX / 4..=u64::MAX).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        Just("1e400".to_string()),
        Just(".nan".to_string()),
        Just("-.inf".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The full configuration with one to three of its numbers replaced by any number: the
    /// parser and every validation rule's arithmetic survive it (an overflow panics in tests).
    /// It found `consensus_thresholds.byzantine_fault_tolerance`'s 3f overflowing (a panic with
    /// overflow checks, a wrapped bound that accepted the file without): see the config tests.
    #[test]
    fn any_numbers_in_the_config_never_panic(
        changes in proptest::collection::vec((0..CONFIG_NUMBERS.len(), config_number()), 1..4),
    ) {
        let mut numbers = config_defaults();
        for (i, value) in changes {
            numbers[i].1 = value;
        }
        checks::config_yaml(config_text(&numbers).as_bytes());
    }
}
