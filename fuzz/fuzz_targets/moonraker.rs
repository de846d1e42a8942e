//! Fuzz target: Moonraker websocket frames: routing, status merging, job history.
//! The logic lives in `printvigil::fuzzing::moonraker` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| printvigil::fuzzing::moonraker(data));
