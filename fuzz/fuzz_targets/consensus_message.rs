//! A frame from a validator: a consensus message, decoded, prepared and verified.
//! The checks are [`bpci_fuzz::consensus_message`] (shared with the stable proptests).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bpci_fuzz::consensus_message(data);
});
