//! The node's YAML configuration, parsed and validated.
//! The checks are [`bpci_fuzz::config_yaml`] (shared with the stable proptests).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bpci_fuzz::config_yaml(data);
});
