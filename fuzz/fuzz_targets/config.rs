//! Fuzz target: the settings file (TOML).
//! The logic lives in `printvigil::fuzzing::config` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| printvigil::fuzzing::config(data));
