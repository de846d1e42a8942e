//! A camera that serves JPEG files: a recorded print replayed, or a way to try printvigil
//! without a camera.
//!
//! `url` is a directory or one file (a plain path or a `file://` URL). A directory's
//! `*.jpg` / `*.jpeg` files (any letter case) are listed once, when the camera is built,
//! in name order (name frames `0001.jpg`, `0002.jpg`, ... to replay them in order). Each
//! grab returns the next file and, after the last, the last one again. Code can give an
//! exact sequence with [`FilesCamera::from_list`].
//!
//! Every file is read fresh on its grab, within the size cap and the timeout, and must be
//! a JPEG. Built from the config, the orientation is applied like for every kind; the
//! frozen-feed check is not, since a replay that stays on its last picture is not a
//! frozen camera.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;

use super::{Camera, CameraConfig, CameraError, DEFAULT_MAX_FRAME_BYTES, Frame, Grab, is_jpeg, sniff};

const EXPECTED: &str = "JPEG files (.jpg or .jpeg)";

/// See the module documentation.
pub struct FilesCamera {
    name: String,
    files: Vec<PathBuf>,
    next: usize,
    max_bytes: usize,
    timeout: Duration,
}

impl FilesCamera {
    /// The camera a `kind = "files"` entry describes: its directory is listed now.
    pub fn new(cfg: &CameraConfig) -> Result<Self, CameraError> {
        let path = local_path(cfg.url.expose()).map_err(|why| {
            CameraError::Config(format!("camera {}: `url` = {:?} {why}", cfg.display_name(), cfg.url))
        })?;
        let files = list(&path)?;
        Ok(Self {
            name: cfg.display_name(),
            files,
            next: 0,
            max_bytes: cfg.max_frame_bytes,
            timeout: cfg.timeout(),
        })
    }

    /// A camera that returns exactly these files, in this order, then the last one again.
    /// Files are checked when grabbed; with an empty list every grab is an error.
    pub fn from_list(name: &str, files: Vec<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            files,
            next: 0,
            max_bytes: DEFAULT_MAX_FRAME_BYTES,
            timeout: Duration::from_secs(10),
        }
    }

    /// Refuses files larger than `max` bytes (default 8 MiB).
    pub fn with_max_frame_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// The files, in the order they are returned.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    async fn read(path: &Path, max: usize) -> Result<Vec<u8>, CameraError> {
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| CameraError::File { path: shown.clone(), reason: e.to_string() };
        let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
        if file.metadata().await.map_err(unreadable)?.len() > max as u64 {
            return Err(CameraError::TooLarge { url: shown.into(), max });
        }
        // The file may grow after the check: never hold more than the cap.
        let mut jpeg = Vec::new();
        file.take(max as u64 + 1).read_to_end(&mut jpeg).await.map_err(unreadable)?;
        if jpeg.len() > max {
            return Err(CameraError::TooLarge { url: shown.into(), max });
        }
        if !is_jpeg(&jpeg) {
            return Err(CameraError::NotJpeg { url: shown.into(), what: sniff(&jpeg), expected: EXPECTED });
        }
        Ok(jpeg)
    }
}

impl Camera for FilesCamera {
    fn name(&self) -> &str {
        &self.name
    }

    fn grab(&mut self) -> Grab<'_> {
        Box::pin(async move {
            let Some(path) = self.files.get(self.next.min(self.files.len().saturating_sub(1))).cloned() else {
                return Err(CameraError::Config(format!(
                    "camera {}: no files to show; give it at least one JPEG file",
                    self.name
                )));
            };
            // A file that cannot be read is skipped next time, like a lost frame.
            self.next = (self.next + 1).min(self.files.len() - 1);
            match tokio::time::timeout(self.timeout, Self::read(&path, self.max_bytes)).await {
                Ok(jpeg) => Ok(Frame { jpeg: jpeg?, taken: SystemTime::now() }),
                Err(_) => Err(CameraError::Timeout {
                    url: path.display().to_string().into(),
                    secs: self.timeout.as_secs_f64(),
                }),
            }
        })
    }
}

/// The path a `url` names: a plain path or a `file://` URL. The error says what is wrong.
pub(crate) fn local_path(url: &str) -> Result<PathBuf, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("is empty; give a directory of JPEG files or one JPEG file, e.g. /var/lib/printvigil/replay".into());
    }
    if url.starts_with("file:") {
        return url::Url::parse(url)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| "is not a usable file:// URL; give a plain path such as /var/lib/printvigil/replay".into());
    }
    if url.contains("://") {
        return Err(
            "is a URL, not a path; for a camera's HTTP address use kind = \"snapshot\" or \"mjpeg\"".into(),
        );
    }
    Ok(PathBuf::from(url))
}

fn is_jpeg_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
}

/// A directory's JPEG files in name order, or the one file.
fn list(path: &Path) -> Result<Vec<PathBuf>, CameraError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| CameraError::File { path: shown.clone(), reason: e.to_string() })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| CameraError::File { path: shown.clone(), reason: e.to_string() })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CameraError::File { path: shown.clone(), reason: e.to_string() })?;
        let p = entry.path();
        if is_jpeg_name(&p) && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(CameraError::Config(format!(
            "the directory {shown} has no .jpg or .jpeg files; put the frames there or point `url` at one JPEG file"
        )));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{CameraKind, from_config};
    use crate::detector::preprocess::{Rgb8, decode_jpeg};

    fn jpeg(w: usize, h: usize, shade: u8) -> Vec<u8> {
        let img = Rgb8 { width: w, height: h, pixels: vec![shade; w * h * 3] };
        crate::detector::annotate::encode_jpeg(&img, 90).unwrap()
    }

    fn shade(frame: &Frame) -> u8 {
        decode_jpeg(&frame.jpeg).unwrap().pixels[0]
    }

    #[tokio::test]
    async fn a_directory_is_replayed_in_name_order_then_stays_on_the_last() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0002.JPEG"), jpeg(32, 16, 100)).unwrap();
        std::fs::write(dir.path().join("0001.jpg"), jpeg(32, 16, 50)).unwrap();
        std::fs::write(dir.path().join("0003.jpg"), jpeg(32, 16, 200)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a frame").unwrap();
        std::fs::create_dir(dir.path().join("sub.jpg")).unwrap();

        let mut cfg = CameraConfig::new(CameraKind::Files, dir.path().to_str().unwrap());
        cfg.name = Some("replay".into());
        cfg.rotation = 90;
        let mut cam = from_config(&cfg).unwrap();
        assert_eq!(cam.name(), "replay");
        let mut shades = Vec::new();
        for _ in 0..5 {
            let f = cam.grab().await.unwrap();
            let img = decode_jpeg(&f.jpeg).unwrap();
            assert_eq!((img.width, img.height), (16, 32), "turned by the configured rotation");
            shades.push(shade(&f));
        }
        let near = |a: u8, b: u8| a.abs_diff(b) <= 2;
        assert!(near(shades[0], 50) && near(shades[1], 100), "{shades:?}");
        assert!(shades[2..].iter().all(|&s| near(s, 200)), "stays on the last: {shades:?}");
    }

    #[tokio::test]
    async fn a_list_and_a_single_file_and_a_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("ok.jpg"), dir.path().join("fail.jpg"));
        std::fs::write(&a, jpeg(8, 8, 30)).unwrap();
        std::fs::write(&b, jpeg(8, 8, 220)).unwrap();
        let mut cam = FilesCamera::from_list("demo", vec![a.clone(), a.clone(), b.clone()]);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(cam.grab().await.unwrap().jpeg);
        }
        let (ja, jb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(got, [ja.clone(), ja.clone(), jb.clone(), jb]);

        let url = url::Url::from_file_path(&a).unwrap().to_string();
        let mut one = from_config(&CameraConfig::new(CameraKind::Files, url)).unwrap();
        assert_eq!(one.grab().await.unwrap().jpeg, ja);
        assert_eq!(one.grab().await.unwrap().jpeg, ja);
    }

    #[tokio::test]
    async fn bad_files_are_errors_that_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("a.jpg");
        std::fs::write(&png, b"\x89PNG\r\n\x1a\nrest").unwrap();
        let big = dir.path().join("b.jpg");
        let mut data = jpeg(8, 8, 1);
        data.resize(5000, 0);
        std::fs::write(&big, data).unwrap();
        let missing = dir.path().join("gone.jpg");
        let mut cam = FilesCamera::from_list("x", vec![png, big, missing.clone()]).with_max_frame_bytes(4096);
        let e = cam.grab().await.unwrap_err();
        assert!(matches!(&e, CameraError::NotJpeg { what, .. } if what == "a PNG image"), "{e}");
        let e = cam.grab().await.unwrap_err();
        assert!(matches!(e, CameraError::TooLarge { max: 4096, .. }), "{e}");
        let e = cam.grab().await.unwrap_err();
        assert!(matches!(&e, CameraError::File { path, .. } if path.contains("gone.jpg")), "{e}");
        assert!(e.to_string().contains("check"), "{e}");

        let mut empty = FilesCamera::from_list("none", Vec::new());
        assert!(empty.grab().await.unwrap_err().to_string().contains("at least one"));

        let e = FilesCamera::new(&CameraConfig::new(CameraKind::Files, missing.to_str().unwrap()))
            .err()
            .unwrap();
        assert!(matches!(e, CameraError::File { .. }), "{e}");
        let nothing = tempfile::tempdir().unwrap();
        let e = FilesCamera::new(&CameraConfig::new(CameraKind::Files, nothing.path().to_str().unwrap()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no .jpg or .jpeg files"), "{e}");
    }

    #[test]
    fn the_url_must_be_a_path() {
        for (url, says) in [
            ("", "is empty"),
            ("  ", "is empty"),
            ("http://cam.local/snap", "kind = \"snapshot\""),
            ("file://remote-host/x", "file://"),
        ] {
            let e = CameraConfig::new(CameraKind::Files, url).validate().unwrap_err().to_string();
            assert!(e.contains("`url`") && e.contains(says), "{url:?}: {e}");
        }
        assert!(CameraConfig::new(CameraKind::Files, "/var/lib/printvigil/replay").validate().is_ok());
        assert!(CameraConfig::new(CameraKind::Files, "file:///tmp/frames").validate().is_ok());
    }
}
