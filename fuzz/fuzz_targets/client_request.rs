//! A frame from a client on a validator's client endpoint: a client request.
//! The checks are [`bpci_fuzz::client_request`] (shared with the stable proptests).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bpci_fuzz::client_request(data);
});
