//! Fuzz target: JPEG header probing, rotation/flips, banded pre-processing and band decode.
//! The logic lives in `printvigil::fuzzing::jpeg` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| printvigil::fuzzing::jpeg(data));
