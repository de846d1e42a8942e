//! Pre-processing agrees with OpenCV itself (the Obico server's library, opencv-python
//! 4.12), byte for byte: the JPEG decode, the `INTER_LINEAR` resize (up- and downscales,
//! odd sizes, any target size) and the model's 416x416 input tensor, whole-frame or cut into
//! bands on 1 to 4 threads, over a sweep of a few hundred frame sizes from 1x1 to 4096x4096.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use printvigil::detector::preprocess::{Preprocessor, Rgb8, decode_jpeg, plan_bands, resize_linear};

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
        self.send(line);
        self.wait(line);
    }
    /// Sends a job without waiting, so that OpenCV works while the test does its side.
    fn send(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
        self.child.stdin.as_mut().unwrap().flush().unwrap();
    }
    fn wait(&mut self, line: &str) {
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
fn resize_matches_opencv_exactly() {
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
        total_px += reference.len();
        total_diff += differing;
    }
    println!("overall: {total_diff} of {total_px} values differ");
    assert_eq!(total_diff, 0, "the resize differs from OpenCV's");
}

#[test]
fn decode_and_decode_resize_are_bit_exact() {
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
        assert_eq!(worst, 0, "decode+resize differs from the server's path in {differing} values");
    }
}


/// Sizes webcams use, and those that once differed from OpenCV (upscaled heights).
const NAMED: [(usize, usize); 22] = [
    (640, 360), (320, 240), (160, 120), (417, 415), (800, 300), (640, 480), (1280, 720),
    (1920, 1080), (2560, 1440), (3840, 2160), (4096, 4096), (1, 4096), (4096, 1), (832, 832),
    (208, 208), (416, 416), (415, 416), (416, 415), (417, 417), (1, 1), (1024, 768), (176, 144),
];

/// The frame sizes of the sweep: every width 1..=64 (each with two heights), every height
/// 1..=64 (each with two widths), [`NAMED`], and seeded random sizes up to 4096x4096 (a
/// few uniform, most spread evenly over scales).
fn sweep_sizes() -> Vec<(usize, usize)> {
    const OTHER: [usize; 12] = [1, 2, 3, 5, 63, 120, 240, 415, 416, 417, 720, 1080];
    let mut sizes = Vec::new();
    for i in 1..=64usize {
        sizes.push((i, OTHER[i % OTHER.len()]));
        sizes.push((i, OTHER[(i * 5 + 7) % OTHER.len()] + i));
        sizes.push((OTHER[(i + 3) % OTHER.len()], i));
        sizes.push((OTHER[(i * 7 + 1) % OTHER.len()] + 2 * i, i));
    }
    sizes.extend(NAMED);
    let mut rng = support::Rng(0x5EED_0416);
    for i in 0..40 {
        let mut side = || {
            let r = rng.next();
            if i % 4 == 0 {
                1 + (r % 4096) as usize
            } else {
                // log-uniform over 1..=4096
                (2f64.powf((r % 10_000) as f64 / 10_000.0 * 12.0)).round().clamp(1.0, 4096.0) as usize
            }
        };
        let (w, h) = (side(), side());
        sizes.push((w, h));
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// How many values of an NCHW tensor differ from the one OpenCV's interleaved RGB bytes
/// make (float32 `v / 255`, numpy's division).
fn tensor_mismatches(tensor: &[f32], rgb: &[u8]) -> usize {
    let unit: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    let plane = rgb.len() / 3;
    assert_eq!(tensor.len(), rgb.len());
    (0..plane).map(|i| (0..3).filter(|&c| tensor[c * plane + i] != unit[rgb[i * 3 + c] as usize]).count()).sum()
}

/// The model's input, from JPEG frames of every size of the sweep, equals what the server
/// computes (`cv2.imdecode`, `cv2.resize(INTER_LINEAR)` to 416x416, `/ 255`) byte for byte:
/// the pre-processor's tensor, whole-frame or in bands: for [`NAMED`] sizes with each of 1
/// to 4 threads, for the others with 1 to 4 threads in turn (a frame gets at most one band
/// per 64 source rows, so every frame under 128 rows is resized whole; the pre-processors
/// are kept from size to size, as in the daemon). [`resize_linear`], which shares the resize
/// with the tensor path, is checked above. OpenCV makes each frame
/// (a JPEG of gradients and noise) and its reference while the test checks the previous one.
#[test]
fn the_model_input_equals_opencv_over_a_sweep_of_frame_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cv = OpenCv::start();
    let (dw, dh) = (416usize, 416usize);
    let mut pres: Vec<Preprocessor> = (1..=4).map(Preprocessor::new).collect();
    let sizes = sweep_sizes();
    assert!(sizes.len() >= 300, "{} sizes", sizes.len());
    let started = std::time::Instant::now();
    let (mut waited, mut runs) = (std::time::Duration::ZERO, 0usize);
    let (mut t_dec, mut t_res) = Default::default();
    let job = |i: usize| {
        let (w, h) = sizes[i];
        let (jpeg, out) = (dir.path().join(format!("f{}.jpg", i % 2)), dir.path().join(format!("r{}.raw", i % 2)));
        (format!("frame {w} {h} {} {} {dw} {dh} {}", 5000 + i, jpeg.display(), out.display()), jpeg, out)
    };
    let mut failures = Vec::new();
    let mut sizes_differing = 0;
    cv.send(&job(0).0);
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let (line, jpeg_path, out_path) = job(i);
        let wait = std::time::Instant::now();
        cv.wait(&line);
        waited += wait.elapsed();
        let jpeg = std::fs::read(&jpeg_path).unwrap();
        let reference = std::fs::read(&out_path).unwrap();
        if i + 1 < sizes.len() {
            cv.send(&job(i + 1).0);
        }

        let failed_before = failures.len();
        let all = NAMED.contains(&(w, h));
        for (threads, pre) in (1..).zip(pres.iter_mut()) {
            if !all && threads != 1 + i % 4 {
                continue;
            }
            let bands = plan_bands(h, dh, threads).len();
            let mut t = vec![-1f32; 3 * dw * dh];
            let (fw, fh, times) = pre.run(&jpeg, (dw, dh), &mut t).unwrap();
            assert_eq!((fw, fh), (w, h));
            t_dec += times.decode;
            t_res += times.resize;
            runs += 1;
            let differing = tensor_mismatches(&t, &reference);
            if differing > 0 {
                failures.push(format!("{w}x{h} pre-processor, {threads} threads ({bands} bands): {differing} values differ"));
            }
        }
        sizes_differing += (failures.len() > failed_before) as usize;
    }
    println!(
        "sweep: {} frame sizes (1x1 to 4096x4096; {} upscaled vertically), {runs} pre-processor runs: {sizes_differing} sizes differ from OpenCV ({} checks); {:.1} s ({:.1} s waiting for OpenCV)",
        sizes.len(),
        sizes.iter().filter(|s| s.1 < dh).count(),
        failures.len(),
        started.elapsed().as_secs_f64(),
        waited.as_secs_f64()
    );
    let secs = |d: std::time::Duration| d.as_secs_f64();
    println!("time in the pre-processor (a debug build): decode {:.1} s, resize {:.1} s", secs(t_dec), secs(t_res));
    for f in failures.iter().take(40) {
        println!("  {f}");
    }
    assert!(failures.is_empty(), "{} of the sweep's checks differ from OpenCV (listed above)", failures.len());
}
