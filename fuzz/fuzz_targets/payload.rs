//! A block's payload bytes from a peer's proposal, and the ledger instructions in them.
//! The checks are [`bpci_fuzz::payload`] (shared with the stable proptests).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bpci_fuzz::payload(data);
});
