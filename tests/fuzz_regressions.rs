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
