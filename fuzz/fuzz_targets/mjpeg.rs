//! Fuzz target: MJPEG stream parser, fed in chunks the input chooses.
//! The logic lives in `printvigil::fuzzing::mjpeg` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| printvigil::fuzzing::mjpeg(data));
