//! Fuzz target: token endpoint and REST API answers.
//! The logic lives in `printvigil::fuzzing::server` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| printvigil::fuzzing::server(data));
