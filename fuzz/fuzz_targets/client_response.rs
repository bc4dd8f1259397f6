//! A frame from a validator to a client: a client response.
//! The checks are [`bpci_fuzz::client_response`] (shared with the stable proptests).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bpci_fuzz::client_response(data);
});
