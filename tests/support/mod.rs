//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod fake_obico;

use std::path::PathBuf;

/// The test-tools Python (numpy, onnx, OpenCV), set up by `scripts/test.sh`.
pub fn tools_python() -> PathBuf {
    let p = std::env::var_os("PVTEST_TOOLS_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".runtime/venv-tools/bin/python")
    });
    assert!(
        p.exists(),
        "test tools are not installed ({}): run scripts/test.sh, which sets them up",
        p.display()
    );
    p
}

/// Loads ONNX Runtime for tests, from ORT_DYLIB_PATH or the place scripts/test.sh puts it.
pub fn init_onnxruntime() {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".runtime/onnxruntime")
        .join(std::env::consts::ARCH)
        .join("libonnxruntime.so");
    let configured = std::env::var_os("ORT_DYLIB_PATH").is_none().then_some(local);
    printvigil::detector::runtime::init(configured.as_deref())
        .unwrap_or_else(|e| panic!("{e}\n(scripts/test.sh fetches ONNX Runtime before testing)"));
}

/// A small deterministic pseudo-random generator (xorshift), for test images.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
}

/// A test image with smooth gradients plus noise, like a camera frame.
pub fn camera_like(w: usize, h: usize, seed: u64) -> printvigil::detector::preprocess::Rgb8 {
    let mut rng = Rng(seed | 1);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let base = (x * (60 + 40 * c) / w.max(1) + y * 150 / h.max(1)) as i32;
                let noise = (rng.byte() as i32 % 64) - 32;
                pixels.push((base + noise).clamp(0, 255) as u8);
            }
        }
    }
    printvigil::detector::preprocess::Rgb8 { width: w, height: h, pixels }
}

/// Encodes an RGB image as a JPEG.
pub fn encode_jpeg(img: &printvigil::detector::preprocess::Rgb8, quality: u8) -> Vec<u8> {
    printvigil::detector::annotate::encode_jpeg(img, quality as i32).unwrap()
}
