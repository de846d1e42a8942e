//! The detector end to end on real ONNX Runtime: model loading and its refusals, the demo
//! model on the bundled frames, bad frames, and the production model's fetch path.

mod support;

use std::path::{Path, PathBuf};

use printvigil::detector::model::{Model, ModelError, SessionSettings};
use printvigil::detector::preprocess::FrameError;
use printvigil::frameguard::Refused;
use printvigil::detector::smoothing::{SmoothingState, frame_p};
use printvigil::detector::{DetectError, Detector};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Copies a shipped model into a temp dir (its ORT cache is written beside it).
fn model_copy(name: &str, dir: &Path) -> PathBuf {
    let dest = dir.join(name);
    std::fs::copy(repo(&format!("models/{name}")), &dest).unwrap();
    dest
}

fn load(path: &Path) -> Result<Model, ModelError> {
    support::init_onnxruntime();
    Model::load(path, None, SessionSettings::new(1))
}

fn frames() -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(repo("models/frames"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    names.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn demo_model_sees_nothing_on_healthy_frames_and_strands_on_failing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut det = Detector::new(load(&model_copy("demo.onnx", dir.path())).unwrap());
    for (name, bytes) in frames() {
        let found = det.detect(&bytes).unwrap();
        let p = frame_p(&found.detections, 1.0);
        println!("{name}: {} detections, p = {p:.3}", found.detections.len());
        if name.contains("healthy") {
            assert!(found.detections.is_empty(), "{name}: {:?}", found.detections);
        } else {
            assert!(p > 0.5, "{name}: p = {p}");
            for d in &found.detections {
                let [xc, yc, w, h] = d.bbox;
                assert!(xc > 0.0 && xc < 480.0 && yc > 0.0 && yc < 360.0 && w > 0.0 && h > 0.0, "{d:?}");
            }
        }
    }
}

#[test]
fn a_failing_print_warns_then_pauses_with_the_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut det = Detector::new(load(&model_copy("demo.onnx", dir.path())).unwrap());
    let frames = frames();
    let healthy = &frames.iter().find(|(n, _)| n.contains("healthy")).unwrap().1;
    let failing = &frames.iter().rev().find(|(n, _)| n.contains("failing")).unwrap().1;
    let mut state = SmoothingState::default();
    let mut first_warn = None;
    let mut first_pause = None;
    for i in 1..=60 {
        let bytes = if i <= 35 { healthy } else { failing };
        let v = state.observe(frame_p(&det.detect(bytes).unwrap().detections, 1.0), 1.0);
        if v.warn && first_warn.is_none() {
            first_warn = Some(i);
        }
        if v.pause && first_pause.is_none() {
            first_pause = Some(i);
        }
    }
    println!("warn at frame {first_warn:?}, pause at frame {first_pause:?}");
    let pause = first_pause.expect("a sustained failure must pause");
    assert!(pause > 35, "no pause before the failure starts");
}

#[test]
fn the_ort_cache_gives_the_same_outputs_as_the_plain_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_copy("tiny.onnx", dir.path());
    let frame = &frames()[0].1;
    let first = Detector::new(load(&path).unwrap()).detect(frame).unwrap().detections; // makes the cache
    let cache = printvigil::detector::model::cache_path(&path, &SessionSettings::new(1));
    assert!(cache.exists(), "the optimised copy is written beside the model");
    let second = Detector::new(load(&path).unwrap()).detect(frame).unwrap().detections; // loads it
    assert_eq!(first, second);
    // A corrupt cache is removed and the model still loads.
    std::fs::write(&cache, b"garbage").unwrap();
    let mut later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    later = later.max(std::time::SystemTime::now());
    std::fs::File::options().write(true).open(&cache).unwrap().set_modified(later).unwrap();
    let third = Detector::new(load(&path).unwrap()).detect(frame).unwrap().detections;
    assert_eq!(first, third);
}

#[test]
fn a_model_with_another_signature_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.onnx");
    let status = std::process::Command::new(support::tools_python())
        .args([repo("models/generate.py").to_str().unwrap(), "mismatch", path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let err = load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Signature { .. }), "{msg}");
    assert!(msg.contains("[1, 3, 416, 416]") && msg.contains("`confs`"), "names the expected: {msg}");
    assert!(msg.contains("[1, 3, 320, 320]") && msg.contains("`scores`"), "names what was found: {msg}");
}

#[test]
fn missing_empty_and_non_onnx_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = load(&dir.path().join("nope.onnx")).unwrap_err();
    assert!(matches!(missing, ModelError::Missing(_)) && missing.to_string().contains("model fetch"));
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(load(&empty).unwrap_err(), ModelError::Empty(_)));
    let text = dir.path().join("text.onnx");
    std::fs::write(&text, b"this is not a model at all").unwrap();
    let err = load(&text).unwrap_err();
    assert!(matches!(err, ModelError::Load { .. }), "{err}");
}

/// A JPEG header (SOI, SOF0) claiming the given size, then nothing.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
    v
}

#[test]
fn bad_frames_are_errors_and_the_detector_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut det = Detector::new(load(&model_copy("tiny.onnx", dir.path())).unwrap());
    let good = frames()[0].1.clone();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("png named jpg", png),
        ("0x0", jpeg_header(0, 0)),
        ("20000x20000", jpeg_header(20000, 20000)),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage after SOI", [vec![0xFF, 0xD8], vec![0x55; 5000]].concat()),
    ];
    for (what, bytes) in cases {
        let err = det.detect(&bytes).unwrap_err();
        println!("{what}: {err}");
        assert!(matches!(err, DetectError::Frame(_)), "{what}: {err}");
        match what {
            "empty" => assert!(matches!(err, DetectError::Frame(FrameError::Refused(Refused::Empty)))),
            "png named jpg" => assert!(err.to_string().contains("PNG")),
            "20000x20000" => assert!(matches!(err, DetectError::Frame(FrameError::Refused(Refused::TooLarge { .. })))),
            "0x0" => assert!(matches!(err, DetectError::Frame(FrameError::Refused(Refused::NoPixels { .. })))),
            _ => {}
        }
    }
    assert!(det.detect(&good).is_ok(), "the detector still works after bad frames");
}
