//! Cameras against a local HTTP server that serves JPEG snapshots and MJPEG streams, with
//! injected faults: slow answers, 404/500, HTML instead of JPEG, oversized bodies, streams
//! with garbage and missing boundaries, a stream that dies and comes back, a frozen feed;
//! and JPEG files replayed from a directory.
//! Durations are configured small so the suite takes seconds; nothing asserts on timing.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use printvigil::camera::{
    Camera, CameraConfig, CameraError, CameraKind, CameraInfo, from_info, Method, Orientation, from_config,
};
use printvigil::detector::preprocess::{Rgb8, decode_jpeg};

#[derive(Clone)]
struct Cam {
    /// What the snapshot URL and the "live" stream serve now.
    current: Arc<Mutex<Vec<u8>>>,
    /// Distinct frames, for streams.
    frames: Arc<Vec<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

const BOUNDARY: &str = "frame";

fn part(jpeg: &[u8], content_length: bool) -> Vec<u8> {
    let mut p = format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n").into_bytes();
    if content_length {
        p.extend_from_slice(format!("Content-Length: {}\r\n", jpeg.len()).as_bytes());
    }
    p.extend_from_slice(b"\r\n");
    p.extend_from_slice(jpeg);
    p.extend_from_slice(b"\r\n");
    p
}

type Chunk = Result<Bytes, std::io::Error>;

fn multipart(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        format!("multipart/x-mixed-replace;boundary={BOUNDARY}").parse().unwrap(),
    );
    r
}

/// Chunks sent with a short pause between them, then the connection held open.
fn paced(chunks: Vec<Vec<u8>>, pause: Duration) -> Body {
    let s = futures_util::stream::iter(chunks)
        .then(move |c| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(Bytes::from(c))
        })
        .chain(futures_util::stream::pending::<Chunk>());
    Body::from_stream(s)
}

async fn snapshot(State(cam): State<Cam>, UrlPath(mode): UrlPath<String>) -> Response {
    cam.connections.fetch_add(1, Ordering::SeqCst);
    let jpeg = cam.current.lock().unwrap().clone();
    let as_jpeg = |body: Body| ([(header::CONTENT_TYPE, "image/jpeg")], body).into_response();
    match mode.as_str() {
        "good" => as_jpeg(Body::from(jpeg)),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            as_jpeg(Body::from(jpeg))
        }
        "trickle" => {
            // Answers at once, then the body never finishes.
            let s = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(jpeg[..100].to_vec()))])
                .chain(futures_util::stream::pending());
            as_jpeg(Body::from_stream(s))
        }
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "camera service crashed").into_response(),
        "html" => ([(header::CONTENT_TYPE, "text/html")], "<html>login</html>").into_response(),
        "disguised" => as_jpeg(Body::from("<!doctype html><html>error</html>")),
        "big" => {
            // A JPEG-looking body, three times the cap, streamed with no Content-Length.
            let mut first = vec![0xFF, 0xD8, 0xFF, 0xE0];
            first.resize(4096, 0);
            let s = futures_util::stream::iter((0..12).map(move |_| Ok::<_, std::io::Error>(Bytes::from(first.clone()))));
            as_jpeg(Body::from_stream(s))
        }
        "big-declared" => {
            let mut body = jpeg.clone();
            body.resize(48 * 1024, 0);
            as_jpeg(Body::from(body))
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn stream(State(cam): State<Cam>, UrlPath(mode): UrlPath<String>) -> Response {
    let n = cam.connections.fetch_add(1, Ordering::SeqCst);
    let f = cam.frames.clone();
    match mode.as_str() {
        "live" => {
            // The current picture, again and again.
            let s = futures_util::stream::unfold(cam.current.clone(), |cur| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let jpeg = cur.lock().unwrap().clone();
                Some((Ok::<_, Infallible>(Bytes::from(part(&jpeg, true))), cur))
            });
            multipart(Body::from_stream(s))
        }
        "messy" => {
            // Garbage, a truncated frame, a frame with no boundary, parts split at odd
            // places, a part with a wrong Content-Length.
            let mut truncated = part(&f[0][..f[0].len() / 2], false);
            truncated.splice(0..0, b"\x00\x01garbage before anything\r\n".iter().copied());
            let mut bare = f[1].clone();
            bare.extend_from_slice(b"more garbage\r\n\r\n");
            let mut wrong_length = format!("--{BOUNDARY}\r\nContent-Length: 17\r\n\r\n").into_bytes();
            wrong_length.extend_from_slice(&f[2]);
            wrong_length.extend_from_slice(b"\r\n");
            let last = part(&f[3], true);
            let mut chunks = vec![truncated];
            chunks.extend(bare.chunks(97).map(<[u8]>::to_vec));
            chunks.extend(wrong_length.chunks(333).map(<[u8]>::to_vec));
            chunks.push(last);
            multipart(paced(chunks, Duration::from_millis(5)))
        }
        "dies" => {
            // Each connection sends three copies of its own frame, then breaks.
            let jpeg = f[n % f.len()].clone();
            let chunks: Vec<Chunk> = (0..3)
                .map(|_| Ok(Bytes::from(part(&jpeg, true))))
                .chain([Err(std::io::Error::other("camera unplugged"))])
                .collect();
            let s = futures_util::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                c
            });
            multipart(Body::from_stream(s))
        }
        "huge" => {
            // Frames far over the cap, again and again.
            let big = support::encode_jpeg(&support::camera_like(320, 240, 7), 95);
            let s = futures_util::stream::unfold(big, |big| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok::<_, Infallible>(Bytes::from(part(&big, false))), big))
            });
            multipart(Body::from_stream(s))
        }
        "stall" => multipart(Body::from_stream(futures_util::stream::pending::<Chunk>())),
        "garbage" => {
            // A multipart stream of text that never holds a JPEG, a line every few ms.
            let s = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((Ok::<_, Infallible>(Bytes::from(format!("line {n}: not a picture\r\n"))), n + 1))
            });
            multipart(Body::from_stream(s))
        }
        "flood" => {
            // Garbage as fast as it can be read.
            let s = futures_util::stream::repeat_with(|| Ok::<_, Infallible>(Bytes::from(vec![0x55u8; 64 * 1024])));
            multipart(Body::from_stream(s))
        }
        "html" => ([(header::CONTENT_TYPE, "text/html")], "<html>not a stream</html>").into_response(),
        "missing" => StatusCode::NOT_FOUND.into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

struct Server {
    base: String,
    cam: Cam,
    _task: tokio::task::JoinHandle<()>,
}

fn frames() -> Vec<Vec<u8>> {
    (0..4).map(|i| support::encode_jpeg(&support::camera_like(64, 48, 100 + 2 * i), 85)).collect()
}

async fn server() -> Server {
    let frames = frames();
    for (i, f) in frames.iter().enumerate() {
        assert!(!frames[..i].contains(f), "test frames must differ");
    }
    let cam = Cam {
        current: Arc::new(Mutex::new(frames[0].clone())),
        frames: Arc::new(frames),
        connections: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/snap/{mode}", axum::routing::get(snapshot))
        .route("/stream/{mode}", axum::routing::get(stream))
        .with_state(cam.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { base, cam, _task: task }
}

fn config(kind: CameraKind, url: String) -> CameraConfig {
    let mut c = CameraConfig::new(kind, url);
    c.timeout_secs = 1.0;
    c.frozen_after_secs = 0.0;
    c
}

fn camera(kind: CameraKind, url: String) -> Box<dyn Camera> {
    from_config(&config(kind, url)).unwrap()
}

#[tokio::test]
async fn camera_snapshot_returns_the_served_jpeg() {
    let s = server().await;
    let mut cam = camera(CameraKind::Snapshot, format!("{}/snap/good", s.base));
    let f = cam.grab().await.unwrap();
    assert_eq!(f.jpeg, s.cam.frames[0]);
    *s.cam.current.lock().unwrap() = s.cam.frames[1].clone();
    assert_eq!(cam.grab().await.unwrap().jpeg, s.cam.frames[1]);
}

#[tokio::test]
async fn camera_snapshot_faults_are_errors_that_say_what_to_do() {
    let s = server().await;
    let grab = |mode: &str, tweak: fn(&mut CameraConfig)| {
        let mut c = config(CameraKind::Snapshot, format!("{}/snap/{mode}", s.base));
        tweak(&mut c);
        async move { from_config(&c).unwrap().grab().await.unwrap_err() }
    };
    let fast = |c: &mut CameraConfig| c.timeout_secs = 0.3;
    let small = |c: &mut CameraConfig| c.max_frame_bytes = 16 * 1024;

    let e = grab("slow", fast).await;
    assert!(matches!(e, CameraError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("timeout_secs"), "{e}");
    let e = grab("trickle", fast).await;
    assert!(matches!(e, CameraError::Timeout { .. }), "{e}");

    let e = grab("missing", |_| {}).await;
    assert!(matches!(e, CameraError::HttpStatus { status: 404, .. }), "{e}");
    let e = grab("broken", |_| {}).await;
    assert!(matches!(e, CameraError::HttpStatus { status: 500, .. }), "{e}");

    let e = grab("html", |_| {}).await;
    assert!(matches!(e, CameraError::NotJpeg { .. }) && e.to_string().contains("text/html"), "{e}");
    let e = grab("disguised", |_| {}).await;
    assert!(matches!(e, CameraError::NotJpeg { .. }) && e.to_string().contains("HTML page"), "{e}");

    let e = grab("big", small).await;
    assert!(matches!(e, CameraError::TooLarge { max: 16384, .. }), "{e}");
    assert!(e.to_string().contains("max_frame_bytes"), "{e}");
    let e = grab("big-declared", small).await;
    assert!(matches!(e, CameraError::TooLarge { .. }), "{e}");

    let e = from_config(&config(CameraKind::Snapshot, "http://127.0.0.1:9/nothing-listens".into()))
        .unwrap()
        .grab()
        .await
        .unwrap_err();
    assert!(matches!(e, CameraError::Connect { .. } | CameraError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn camera_frozen_feed_is_reported_and_recovers_when_the_picture_changes() {
    let s = server().await;
    let mut c = config(CameraKind::Snapshot, format!("{}/snap/good", s.base));
    c.frozen_after_secs = 0.3;
    let mut cam = from_config(&c).unwrap();
    assert!(cam.grab().await.is_ok());
    assert!(cam.grab().await.is_ok(), "the same picture, not yet for long");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let e = cam.grab().await.unwrap_err();
    assert!(matches!(e, CameraError::Frozen { .. }), "{e}");
    assert!(e.to_string().contains("frozen"), "{e}");
    assert!(matches!(cam.grab().await, Err(CameraError::Frozen { .. })), "still frozen");
    *s.cam.current.lock().unwrap() = s.cam.frames[2].clone();
    assert_eq!(cam.grab().await.unwrap().jpeg, s.cam.frames[2], "a new picture ends it");
    assert!(cam.grab().await.is_ok());
}

#[tokio::test]
async fn camera_mjpeg_stream_of_one_repeated_picture_is_frozen_until_it_changes() {
    let s = server().await;
    let mut c = config(CameraKind::Mjpeg, format!("{}/stream/live", s.base));
    c.frozen_after_secs = 0.3;
    let mut cam = from_config(&c).unwrap();
    assert!(cam.grab().await.is_ok());
    tokio::time::sleep(Duration::from_millis(450)).await;
    let e = cam.grab().await.unwrap_err();
    assert!(matches!(e, CameraError::Frozen { .. }), "{e}");
    *s.cam.current.lock().unwrap() = s.cam.frames[1].clone();
    let mut recovered = false;
    for _ in 0..50 {
        match cam.grab().await {
            Ok(f) => {
                assert_eq!(f.jpeg, s.cam.frames[1]);
                recovered = true;
                break;
            }
            Err(e) => assert!(matches!(e, CameraError::Frozen { .. }), "{e}"),
        }
    }
    assert!(recovered, "the new picture did not end the frozen state");
}

#[tokio::test]
async fn camera_mjpeg_returns_the_newest_frame() {
    let s = server().await;
    let mut cam = camera(CameraKind::Mjpeg, format!("{}/stream/live", s.base));
    assert_eq!(cam.grab().await.unwrap().jpeg, s.cam.frames[0]);
    *s.cam.current.lock().unwrap() = s.cam.frames[3].clone();
    // Frames already in flight may still show the old picture; the new one must come.
    let mut got_new = false;
    for _ in 0..50 {
        if cam.grab().await.unwrap().jpeg == s.cam.frames[3] {
            got_new = true;
            break;
        }
    }
    assert!(got_new, "the stream's new picture never came through");
    assert_eq!(s.cam.connections.load(Ordering::SeqCst), 1, "one connection kept open");
}

#[tokio::test]
async fn camera_mjpeg_survives_garbage_missing_boundaries_and_truncated_frames() {
    let s = server().await;
    let mut cam = camera(CameraKind::Mjpeg, format!("{}/stream/messy", s.base));
    let good = &s.cam.frames[1..4];
    let mut got = Vec::new();
    while got.last() != Some(&s.cam.frames[3]) {
        let f = cam.grab().await.unwrap_or_else(|e| panic!("after {} frames: {e}", got.len()));
        assert!(decode_jpeg(&f.jpeg).is_ok(), "a grabbed frame does not decode");
        got.push(f.jpeg);
    }
    // Frames come newest first, so some may be skipped, but never out of order and
    // never the truncated one.
    let idx: Vec<usize> =
        got.iter().map(|g| good.iter().position(|f| f == g).expect("a frame that was not sent whole")).collect();
    println!("frames grabbed (index among the whole ones sent): {idx:?}");
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
    assert!(!got.contains(&s.cam.frames[0]));
}

#[tokio::test]
async fn camera_mjpeg_reconnects_when_the_stream_dies() {
    let s = server().await;
    let mut cam = camera(CameraKind::Mjpeg, format!("{}/stream/dies", s.base));
    assert_eq!(cam.grab().await.unwrap().jpeg, s.cam.frames[0]);
    let mut errors = Vec::new();
    let mut second = false;
    for _ in 0..20 {
        match cam.grab().await {
            Ok(f) if f.jpeg == s.cam.frames[1] => {
                second = true;
                break;
            }
            Ok(f) => assert_eq!(f.jpeg, s.cam.frames[0]),
            Err(e) => errors.push(e),
        }
    }
    assert!(second, "no frame from a new connection; errors: {errors:?}");
    assert!(s.cam.connections.load(Ordering::SeqCst) >= 2);
    assert!(
        errors.iter().all(|e| matches!(e, CameraError::Connect { .. } | CameraError::StreamEnded { .. })),
        "{errors:?}"
    );
}

#[tokio::test]
async fn camera_mjpeg_faults_are_errors() {
    let s = server().await;
    let mut c = config(CameraKind::Mjpeg, format!("{}/stream/stall", s.base));
    c.timeout_secs = 0.3;
    let e = from_config(&c).unwrap().grab().await.unwrap_err();
    assert!(matches!(e, CameraError::Timeout { .. }), "{e}");

    let mut c = config(CameraKind::Mjpeg, format!("{}/stream/huge", s.base));
    c.max_frame_bytes = 8 * 1024;
    let e = from_config(&c).unwrap().grab().await.unwrap_err();
    assert!(matches!(e, CameraError::TooLarge { max: 8192, .. }), "{e}");

    let e = camera(CameraKind::Mjpeg, format!("{}/stream/missing", s.base)).grab().await.unwrap_err();
    assert!(matches!(e, CameraError::HttpStatus { status: 404, .. }), "{e}");
    let e = camera(CameraKind::Mjpeg, format!("{}/stream/html", s.base)).grab().await.unwrap_err();
    assert!(matches!(e, CameraError::NotJpeg { .. }) && e.to_string().contains("snapshot"), "{e}");
}

/// Red, green / blue, white quadrants.
fn quadrants(w: usize, h: usize) -> Rgb8 {
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let c = match (x < w / 2, y < h / 2) {
                (true, true) => [220, 20, 20],
                (false, true) => [20, 220, 20],
                (true, false) => [20, 20, 220],
                (false, false) => [230, 230, 230],
            };
            pixels.extend_from_slice(&c);
        }
    }
    Rgb8 { width: w, height: h, pixels }
}

/// The colour near each corner: top-left, top-right, bottom-left, bottom-right.
fn corners(img: &Rgb8) -> [[u8; 3]; 4] {
    let px = |x: usize, y: usize| {
        let i = (y * img.width + x) * 3;
        let p = &img.pixels[i..i + 3];
        // Quantise: each channel is clearly low or high.
        [p[0] / 128, p[1] / 128, p[2] / 128]
    };
    let (w, h) = (img.width, img.height);
    [px(3, 3), px(w - 4, 3), px(3, h - 4), px(w - 4, h - 4)]
}

const RED: [u8; 3] = [1, 0, 0];
const GREEN: [u8; 3] = [0, 1, 0];
const BLUE: [u8; 3] = [0, 0, 1];
const WHITE: [u8; 3] = [1, 1, 1];

#[test]
fn camera_orientation_lossless_and_reencoded_paths_show_the_same_picture() {
    // 64x48 at 4:2:0 is whole 16x16 MCUs: lossless. 60x44 is not: decode, turn, encode.
    for (w, h, method) in [(64, 48, Method::Lossless), (60, 44, Method::Reencoded)] {
        let jpeg = support::encode_jpeg(&quadrants(w, h), 90);
        let cases: [(u16, bool, bool, [[u8; 3]; 4]); 6] = [
            // Clockwise quarter turn: what was bottom-left is now top-left.
            (90, false, false, [BLUE, RED, WHITE, GREEN]),
            (180, false, false, [WHITE, BLUE, GREEN, RED]),
            (270, false, false, [GREEN, WHITE, RED, BLUE]),
            (0, true, false, [GREEN, RED, WHITE, BLUE]),
            (0, false, true, [BLUE, WHITE, RED, GREEN]),
            // A quarter turn, then mirrored left-right.
            (90, true, false, [RED, BLUE, GREEN, WHITE]),
        ];
        for (rotation, flip_horizontal, flip_vertical, want) in cases {
            let o = Orientation { rotation, flip_horizontal, flip_vertical };
            let (out, used) = o.apply_traced(&jpeg).unwrap();
            assert_eq!(used, method, "{w}x{h} {o:?}");
            let img = decode_jpeg(&out).unwrap();
            let dims = if rotation % 180 == 90 { (h, w) } else { (w, h) };
            assert_eq!((img.width, img.height), dims, "{o:?}");
            assert_eq!(corners(&img), want, "{w}x{h} {o:?}");
        }
        let (same, used) = Orientation::default().apply_traced(&jpeg).unwrap();
        assert_eq!((same, used), (jpeg.clone(), Method::Unchanged));
    }
    let e = Orientation { rotation: 90, ..Default::default() }.apply(b"<html>").unwrap_err();
    assert!(matches!(e, CameraError::Refused { .. }) && e.to_string().contains("HTML"), "{e}");
}

#[tokio::test]
async fn camera_discovered_with_a_relative_url_grabs_turned_frames() {
    let s = server().await;
    let jpeg = support::encode_jpeg(&quadrants(64, 48), 90);
    *s.cam.current.lock().unwrap() = jpeg;
    let d = CameraInfo {
        target_fps: None,
        name: "nozzle cam".into(),
        snapshot_url: Some("/snap/good".into()),
        stream_url: None,
        rotation: 270,
        flip_horizontal: false,
        flip_vertical: false,
    };
    let cfg = from_info(&d, &format!("{}/", s.base)).unwrap();
    let mut cam = from_config(&cfg).unwrap();
    assert_eq!(cam.name(), "nozzle cam");
    let img = decode_jpeg(&cam.grab().await.unwrap().jpeg).unwrap();
    assert_eq!((img.width, img.height), (48, 64));
    assert_eq!(corners(&img), [GREEN, WHITE, RED, BLUE]);
}

#[tokio::test]
async fn camera_files_replays_a_directory_in_order_turned_then_holds_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = frames();
    for (i, f) in recorded.iter().enumerate() {
        std::fs::write(dir.path().join(format!("frame-{i:04}.jpg")), f).unwrap();
    }
    let mut cam = camera(CameraKind::Files, dir.path().display().to_string());
    for f in &recorded {
        assert_eq!(&cam.grab().await.unwrap().jpeg, f);
    }
    assert_eq!(&cam.grab().await.unwrap().jpeg, recorded.last().unwrap(), "stays on the last");

    let one = dir.path().join("quadrants.jpeg");
    std::fs::write(&one, support::encode_jpeg(&quadrants(64, 48), 90)).unwrap();
    let mut cfg = config(CameraKind::Files, one.display().to_string());
    cfg.rotation = 270;
    cfg.frozen_after_secs = 1.0;
    let mut cam = from_config(&cfg).unwrap();
    for _ in 0..2 {
        let img = decode_jpeg(&cam.grab().await.unwrap().jpeg).unwrap();
        assert_eq!((img.width, img.height), (48, 64));
        assert_eq!(corners(&img), [GREEN, WHITE, RED, BLUE]);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cam.grab().await.is_ok(), "a file replay is never reported frozen");

    std::fs::write(&one, b"<html>oops</html>").unwrap();
    let e = cam.grab().await.unwrap_err();
    assert!(matches!(e, CameraError::NotJpeg { .. }), "{e}");
    assert!(e.to_string().contains(".jpg"), "{e}");
}

/// A frame bomb (a few hundred bytes claiming 65008x65008 pixels, whole 8x8 blocks, so a
/// turned camera takes libjpeg-turbo's lossless path) through every camera kind that runs
/// here, with every orientation: refused at once with a message naming the size and the
/// limit, memory stays near idle, and the next good frame comes through. (v4l2 reaches the
/// same guard; its path is covered by a unit test in src/camera/mod.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_frame_bomb_is_refused_by_every_kind_and_orientation_and_the_next_frame_comes() {
    let s = server().await;
    let bomb = support::jpeg_bomb(65008, 65008);
    assert!(bomb.len() < 1024, "{} bytes", bomb.len());
    let good = s.cam.frames[1].clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0001-bomb.jpg"), &bomb).unwrap();
    std::fs::write(dir.path().join("0002-good.jpg"), &good).unwrap();
    let turns = [(0, false, false), (90, false, false), (180, false, false), (270, false, false), (0, true, false), (0, false, true)];
    let kinds = [
        (CameraKind::Snapshot, format!("{}/snap/good", s.base)),
        (CameraKind::Mjpeg, format!("{}/stream/live", s.base)),
        (CameraKind::Files, dir.path().display().to_string()),
    ];
    let watch = support::RssWatch::start("frame bomb through the cameras", 1024);
    let mut slowest = Duration::ZERO;
    for (kind, url) in &kinds {
        for (rotation, flip_horizontal, flip_vertical) in turns {
            *s.cam.current.lock().unwrap() = bomb.clone();
            let mut c = config(*kind, url.clone());
            c.timeout_secs = 5.0;
            (c.rotation, c.flip_horizontal, c.flip_vertical) = (rotation, flip_horizontal, flip_vertical);
            let what = format!("{kind:?} rotation {rotation} flips {flip_horizontal}/{flip_vertical}");
            let mut cam = from_config(&c).unwrap();
            let t0 = std::time::Instant::now();
            let e = cam.grab().await.expect_err(&what).to_string();
            slowest = slowest.max(t0.elapsed());
            assert!(e.contains("65008x65008") && e.contains("8192 px a side") && e.contains("40 MP"), "{what}: {e}");
            *s.cam.current.lock().unwrap() = good.clone();
            // A stream may still hold a bomb sent before the switch: a few grabs at most.
            let mut next = None;
            for _ in 0..20 {
                match cam.grab().await {
                    Ok(f) => {
                        next = Some(f);
                        break;
                    }
                    Err(e) => assert!(e.to_string().contains("65008x65008"), "{what}: {e}"),
                }
            }
            let next = next.unwrap_or_else(|| panic!("{what}: no good frame after the bomb"));
            let img = decode_jpeg(&next.jpeg).unwrap();
            let want = if rotation % 180 == 90 { (48, 64) } else { (64, 48) };
            assert_eq!((img.width, img.height), want, "{what}");
        }
    }
    let peak = watch.peak_over_start_mib();
    println!(
        "FIGURE frame bomb 65008x65008 ({} bytes), 3 camera kinds x 6 orientations: peak RSS {peak:.1} MiB over the start ({} MiB), slowest refusal {:.2} ms",
        bomb.len(),
        watch.start_kib / 1024,
        slowest.as_secs_f64() * 1000.0
    );
    assert!(peak < 200.0, "peak RSS {peak:.1} MiB over the start");
}

/// A stream that sends bytes but never a JPEG is reported as what it is, not as a camera
/// that sends nothing; one that floods garbage is dropped after a bounded amount and
/// opened again, never buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_mjpeg_garbage_stream_is_named_not_a_timeout() {
    let s = server().await;
    let url = format!("{}/stream/garbage", s.base);
    let mut c = config(CameraKind::Mjpeg, url.clone());
    c.timeout_secs = 0.5;
    let e = from_config(&c).unwrap().grab().await.unwrap_err();
    println!("garbage: {e}");
    assert!(matches!(&e, CameraError::NoFrames { bytes, .. } if *bytes > 0), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&url) && msg.contains("no JPEG frame") && msg.contains("is it an MJPEG stream"), "{msg}");

    let before = s.cam.connections.load(Ordering::SeqCst);
    let mut c = config(CameraKind::Mjpeg, format!("{}/stream/flood", s.base));
    c.timeout_secs = 2.0;
    let watch = support::RssWatch::start("garbage MJPEG flood", 512);
    let mut cam = from_config(&c).unwrap();
    let e = cam.grab().await.unwrap_err();
    assert!(matches!(&e, CameraError::NoFrames { .. }), "{e}");
    // The link gave the connection up and opens it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.cam.connections.load(Ordering::SeqCst) < before + 2 {
        assert!(std::time::Instant::now() < deadline, "the flooding stream was never reopened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = watch.peak_over_start_mib();
    println!("FIGURE garbage MJPEG flood: peak RSS {peak:.1} MiB over the start; error: {e}");
    assert!(peak < 100.0, "peak RSS {peak:.1} MiB over the start");
}
