//! The fuzzers' inputs as plain tests: every file under `fuzz/corpus/<target>/` (the
//! committed seeds and minimised corpus) and `fuzz/regressions/<target>/` (inputs that once
//! crashed, hung or blew up memory, kept after their fix) goes through the function the
//! fuzz target runs (`printvigil::fuzzing`), so `cargo test` catches a regression without
//! nightly or cargo-fuzz. Run the fuzzers themselves with `scripts/fuzz.sh`.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
        files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

/// Runs every input, then names all that panicked (not just the first).
fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no committed inputs for the `{target}` fuzz target");
    let failed: Vec<String> = files
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).expect("a committed fuzz input is readable");
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    println!("FIGURE fuzz_regressions {target}: {} inputs, {} failed", files.len(), failed.len());
    assert!(failed.is_empty(), "{} of {} `{target}` inputs panicked: {failed:#?}", failed.len(), files.len());
}

#[test]
fn mjpeg() {
    replay("mjpeg", printvigil::fuzzing::mjpeg);
}

#[test]
fn jpeg() {
    replay("jpeg", printvigil::fuzzing::jpeg);
}

#[test]
fn moonraker() {
    replay("moonraker", printvigil::fuzzing::moonraker);
}

#[test]
fn server() {
    replay("server", printvigil::fuzzing::server);
}

#[test]
fn config() {
    replay("config", printvigil::fuzzing::config);
}

#[test]
fn bambu() {
    replay("bambu", printvigil::fuzzing::bambu);
}

/// Found by the `mjpeg` target: a frame that arrived whole in one read came out however
/// far past the size cap it ended (the cap was checked only between reads).
#[test]
fn an_mjpeg_frame_over_the_cap_is_dropped_even_when_it_comes_in_one_read() {
    use printvigil::camera::mjpeg::{Event, MjpegParser};
    // SOI, a one-component scan header, scan data, EOI.
    let frame = |data: usize| {
        let mut f = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0];
        f.extend((0..data).map(|i| (i % 200) as u8 + 1));
        f.extend([0xFF, 0xD9]);
        f
    };
    let (big, small) = (frame(200), frame(10));
    let mut stream = big.clone();
    stream.extend_from_slice(&small);
    let events = MjpegParser::new(64, None).push(&stream);
    assert_eq!(events, vec![Event::TooLarge, Event::Frame(small)], "a {}-byte frame with a 64-byte cap", big.len());
}
