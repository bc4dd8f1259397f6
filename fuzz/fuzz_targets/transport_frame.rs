//! A QUIC stream from a peer or client: length-prefixed frames, class tag, hello.
//! The checks are [`bpci_fuzz::transport_frame`] (shared with the stable proptests).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bpci_fuzz::transport_frame(data);
});
