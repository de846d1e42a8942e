//! Fuzz target: a Bambu printer's MQTT reports: parsing, merging, print bookkeeping.
//! The logic lives in `printvigil::fuzzing::bambu` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| printvigil::fuzzing::bambu(data));
