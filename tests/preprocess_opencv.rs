//! Pre-processing agrees with OpenCV itself (the Obico server's library): resize within one
//! 8-bit level everywhere, over up- and down-scales and odd sizes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use printvigil::detector::preprocess::{Rgb8, decode_jpeg, resize_linear};

struct OpenCv {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl OpenCv {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/opencv_ref.py");
        let mut child = Command::new(support::tools_python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OpenCV reference");
        let out = BufReader::new(child.stdout.take().unwrap());
        OpenCv { child, out }
    }
    fn job(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
        let mut reply = String::new();
        self.out.read_line(&mut reply).unwrap();
        assert_eq!(reply.trim(), "done", "OpenCV reference failed on: {line}");
    }
}

impl Drop for OpenCv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn max_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    let mut worst = 0;
    let mut differing = 0;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        worst = worst.max(d);
        differing += (d > 0) as usize;
    }
    (worst, differing)
}

#[test]
fn resize_matches_opencv_within_one_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut cv = OpenCv::start();
    let cases = [
        (1280, 720, 416, 416),
        (1920, 1080, 416, 416),
        (640, 480, 416, 416),
        (832, 832, 416, 416), // exact 2x: OpenCV switches to INTER_AREA internally
        (416, 416, 416, 416),
        (320, 240, 416, 416),
        (100, 75, 416, 416),
        (1, 1, 416, 416),
        (2, 3, 416, 416),
        (417, 415, 416, 416),
        (1281, 719, 416, 416),
        (33, 1001, 416, 416),
        (416, 416, 13, 7),
        (999, 17, 1280, 960),
    ];
    let mut total_px = 0usize;
    let mut total_diff = 0usize;
    for (i, (w, h, dw, dh)) in cases.into_iter().enumerate() {
        let src = support::camera_like(w, h, 1000 + i as u64);
        let src_path = dir.path().join(format!("src{i}.raw"));
        let out_path = dir.path().join(format!("out{i}.raw"));
        std::fs::write(&src_path, &src.pixels).unwrap();
        cv.job(&format!("resize {} {w} {h} 3 {dw} {dh} {}", src_path.display(), out_path.display()));
        let reference = std::fs::read(&out_path).unwrap();
        let ours = resize_linear(&src, dw, dh);
        let (worst, differing) = max_diff(&ours.pixels, &reference);
        println!("{w}x{h} -> {dw}x{dh}: max diff {worst}, {differing} of {} values differ", reference.len());
        assert!(worst <= 1, "{w}x{h} -> {dw}x{dh}: a pixel differs from OpenCV by {worst} levels");
        total_px += reference.len();
        total_diff += differing;
    }
    println!("overall: {total_diff} of {total_px} values differ by one level");
}

#[test]
fn decode_is_bit_exact_and_decode_resize_within_one_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut cv = OpenCv::start();
    for (i, (w, h)) in [(1280usize, 720usize), (640, 480), (1920, 1080), (321, 243)].into_iter().enumerate() {
        let jpeg = support::encode_jpeg(&support::camera_like(w, h, 77 + i as u64), 85);
        let path = dir.path().join(format!("f{i}.jpg"));
        std::fs::write(&path, &jpeg).unwrap();

        let decoded_path = dir.path().join(format!("d{i}.raw"));
        cv.job(&format!("decode {} {}", path.display(), decoded_path.display()));
        let raw = std::fs::read(&decoded_path).unwrap();
        let nl = raw.iter().position(|&b| b == b'\n').unwrap();
        let reference = Rgb8 { width: w, height: h, pixels: raw[nl + 1..].to_vec() };
        let ours = decode_jpeg(&jpeg).unwrap();
        assert_eq!((ours.width, ours.height), (w, h));
        let (dworst, ddiff) = max_diff(&ours.pixels, &reference.pixels);

        let out_path = dir.path().join(format!("r{i}.raw"));
        cv.job(&format!("decode_resize {} 416 416 {}", path.display(), out_path.display()));
        let server = std::fs::read(&out_path).unwrap();
        let mine = resize_linear(&ours, 416, 416);
        let (worst, differing) = max_diff(&mine.pixels, &server);
        // Both decode with libjpeg-turbo (accurate IDCT, fancy upsampling): bit-exact.
        println!(
            "{w}x{h} jpeg: decode max diff {dworst} ({ddiff} values), decode+resize max diff {worst} ({differing} of {} values)",
            server.len()
        );
        assert_eq!(dworst, 0, "JPEG decode differs from OpenCV's in {ddiff} values");
        assert!(worst <= 1, "decode+resize differs from the server's path by {worst} levels");
    }
}

