//! libFuzzer entry point; what the input means and the invariants checked are in
//! `vgpu_fuzz_harness::targets::snapshot_restore`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz_harness::targets::snapshot_restore::run(data));
