//! Cameras: where frames come from. Each kind of camera is one module behind the small
//! [`Camera`] trait; the rest of printvigil knows no camera kind.
//!
//! - [`snapshot`]: an HTTP URL that returns one JPEG per request.
//! - [`mjpeg`]: an HTTP `multipart/x-mixed-replace` stream, kept open; a grab returns the
//!   newest complete frame.
//! - `v4l2` (cargo feature `v4l2`): a local video device through `nokhwa`.
//! - [`files`]: JPEG files from a directory (a recorded print replayed, or no camera at all).
//! - [`bambu`]: the built-in camera of Bambu Lab A1/P1 printers (JPEG frames over TLS).
//!
//! [`mjpeg`] and [`bambu`] read their stream in a background task and share that
//! machinery (`stream`: the slot the task publishes into, the reader a grab waits on).
//!
//! [`from_config`] builds a camera from a [`CameraConfig`] and wraps it so that every
//! frame is checked for a frozen feed ([`FrozenWatch`], not for files) and turned the right way up
//! ([`Orientation`]). Cameras found by the printer link ([`CameraInfo`]) become configs with [`from_info`].

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use crate::printer::CameraInfo;
use crate::secret::SecretUrl;

pub mod bambu;
pub mod files;
pub mod mjpeg;
pub mod orientation;
pub mod snapshot;
mod stream;
#[cfg(feature = "v4l2")]
pub mod v4l2;

pub use orientation::{Method, Orientation};

/// One frame from a camera: a JPEG and when it was taken (received).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub jpeg: Vec<u8>,
    pub taken: SystemTime,
}

/// What a grab returns.
pub type Grab<'a> = Pin<Box<dyn Future<Output = Result<Frame, CameraError>> + Send + 'a>>;

/// A source of frames. Object-safe: the watch loop holds `Box<dyn Camera>`.
pub trait Camera: Send {
    /// A name for logs and errors.
    fn name(&self) -> &str;
    /// The next frame. Never waits longer than the camera's timeout (plus decoding).
    fn grab(&mut self) -> Grab<'_>;
}

/// Why a camera gave no frame. Every message says what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CameraError {
    #[error(
        "no frame from {url} within {secs}s; check that the camera is on and the URL is right, or raise `timeout_secs`"
    )]
    Timeout { url: SecretUrl, secs: f64 },
    #[error("could not reach {url} ({reason}); check the address and that the camera service is running")]
    Connect { url: SecretUrl, reason: String },
    #[error("{url} answered HTTP {status}; check the camera URL (404: wrong path, 5xx: the camera service is failing)")]
    HttpStatus { url: SecretUrl, status: u16 },
    #[error("{url} did not send a JPEG (it sent {what}); point `url` at the camera's {expected}")]
    NotJpeg { url: SecretUrl, what: String, expected: &'static str },
    #[error(
        "a frame from {url} is larger than {max} bytes; lower the camera resolution or raise `max_frame_bytes`"
    )]
    TooLarge { url: SecretUrl, max: usize },
    #[error(
        "the stream at {url} sent {bytes} bytes with no JPEG frame in them: is it an MJPEG stream? point `url` at the camera's MJPEG stream URL (for a single-picture URL use kind = \"snapshot\")"
    )]
    NoFrames { url: SecretUrl, bytes: usize },
    #[error("the stream from {url} ended; printvigil reconnects by itself, check the camera service if this repeats")]
    StreamEnded { url: SecretUrl },
    #[error(
        "the picture from camera {camera} has not changed for {secs:.0}s: the camera or its streamer is frozen; restart it (for example the crowsnest or ustreamer service) or check the cable"
    )]
    Frozen { camera: String, secs: f64 },
    /// The frame guard refused the frame before any work on it (see [`crate::frameguard`]).
    #[error("a frame from {camera} was refused: {reason}")]
    Refused { camera: String, reason: crate::frameguard::Refused },
    #[error("the frame could not be rotated or flipped ({0}); the camera sent a corrupt JPEG")]
    Orientation(String),
    #[error("camera config: {0}")]
    Config(String),
    #[error("camera device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("could not read {path} ({reason}); check that it exists and that printvigil's user may read it")]
    File { path: String, reason: String },
    #[error("nothing serves a Bambu camera at {url} ({reason})")]
    NoBambuStream { url: SecretUrl, reason: String },
    #[error(
        "the printer closed the camera connection at {url} right after the access code: the access code is wrong (set access_code of the printer to the one on its screen), or another program holds the printer's camera"
    )]
    BambuAccess { url: SecretUrl },
    #[error(
        "the camera port at {url} shows a certificate with SHA-256 fingerprint {shown}, not the pinned one: run `printvigil setup bambu HOST` again, or set camera_fingerprint of the printer if its camera port has a certificate of its own"
    )]
    BambuCertificate { url: SecretUrl, shown: String },
    #[error(
        "{url} does not speak the A1/P1 camera protocol (it sent {what}); X1, H2 and P2S printers serve RTSPS on port 322 instead: use a local bridge's snapshot URL with kind = \"snapshot\""
    )]
    BambuProtocol { url: SecretUrl, what: String },
}

/// What kind of camera a config entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraKind {
    /// A JPEG snapshot URL (`http://.../?action=snapshot`).
    Snapshot,
    /// An MJPEG stream URL (`http://.../?action=stream`).
    Mjpeg,
    /// A local video device (`/dev/video0`); needs the `v4l2` build feature.
    V4l2,
    /// JPEG files: a directory (played in name order) or one file.
    Files,
    /// The built-in camera of a Bambu Lab A1/P1 printer (in a `kind = "bambu"` printer
    /// entry, which supplies address, access code and certificate).
    Bambu,
}

/// One camera in the settings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// A name for logs; defaults to the URL.
    #[serde(default)]
    pub name: Option<String>,
    pub kind: CameraKind,
    /// The snapshot or stream URL; for `v4l2` the device (`/dev/video0` or `0`); for
    /// `files` a directory of JPEG files or one file; for `bambu` filled in from the
    /// printer entry. Shown with its password redacted.
    #[serde(default, skip_serializing_if = "SecretUrl::is_empty")]
    pub url: SecretUrl,
    /// Clockwise rotation in degrees: 0, 90, 180 or 270.
    #[serde(default)]
    pub rotation: u16,
    #[serde(default)]
    pub flip_horizontal: bool,
    #[serde(default)]
    pub flip_vertical: bool,
    /// How long one grab may take (connect, answer, a whole frame), in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Largest accepted frame, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// A picture that has not changed for this long is reported as frozen; 0 turns the
    /// check off.
    #[serde(default = "default_frozen")]
    pub frozen_after_secs: f64,
}

fn default_timeout() -> f64 {
    10.0
}
fn default_max_frame() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_frozen() -> f64 {
    300.0
}

/// Default frame size cap: 8 MiB (a 4K JPEG at high quality fits).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 << 20;
/// Largest `max_frame_bytes` accepted: the frame guard's own byte limit.
pub const MAX_FRAME_BYTES_LIMIT: usize = crate::frameguard::MAX_BYTES;

impl CameraConfig {
    /// A config with defaults for everything but the kind and URL.
    pub fn new(kind: CameraKind, url: impl Into<String>) -> Self {
        Self {
            name: None,
            kind,
            url: SecretUrl::new(url),
            rotation: 0,
            flip_horizontal: false,
            flip_vertical: false,
            timeout_secs: default_timeout(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            frozen_after_secs: default_frozen(),
        }
    }

    /// The name used in logs and errors.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.url.to_string())
    }

    pub fn orientation(&self) -> Orientation {
        Orientation {
            rotation: self.rotation,
            flip_horizontal: self.flip_horizontal,
            flip_vertical: self.flip_vertical,
        }
    }

    /// The timeout; the default when the value is not a usable number (see `validate`).
    pub fn timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.timeout_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs_f64(default_timeout()))
    }

    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), CameraError> {
        let who = self.display_name();
        let bad = |msg: String| CameraError::Config(format!("camera {who}: {msg}"));
        self.orientation().validate().map_err(bad)?;
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0 && self.timeout_secs <= 600.0) {
            return Err(bad(format!(
                "`timeout_secs` = {} is out of range; use a number of seconds above 0 and at most 600 (default 10)",
                self.timeout_secs
            )));
        }
        if !(1024..=MAX_FRAME_BYTES_LIMIT).contains(&self.max_frame_bytes) {
            return Err(bad(format!(
                "`max_frame_bytes` = {} is out of range; use 1024 to {MAX_FRAME_BYTES_LIMIT} (default {DEFAULT_MAX_FRAME_BYTES})",
                self.max_frame_bytes
            )));
        }
        if !(self.frozen_after_secs.is_finite() && (0.0..=86_400.0).contains(&self.frozen_after_secs)) {
            return Err(bad(format!(
                "`frozen_after_secs` = {} is not allowed; use a number of seconds up to 86400 (0 turns the check off, default 300)",
                self.frozen_after_secs
            )));
        }
        match self.kind {
            CameraKind::Snapshot | CameraKind::Mjpeg => {
                let ok = reqwest::Url::parse(self.url.expose())
                    .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .unwrap_or(false);
                if !ok {
                    let example = if self.kind == CameraKind::Snapshot {
                        "http://127.0.0.1/webcam/?action=snapshot"
                    } else {
                        "http://127.0.0.1/webcam/?action=stream"
                    };
                    return Err(bad(format!(
                        "`url` = \"{}\" is not an http:// or https:// address; give the full URL, e.g. {example}",
                        self.url
                    )));
                }
            }
            CameraKind::V4l2 => {
                if self.url.expose().trim().is_empty() {
                    return Err(bad("`url` is empty; give the video device, e.g. /dev/video0".into()));
                }
            }
            CameraKind::Files => {
                files::local_path(self.url.expose()).map_err(|why| bad(format!("`url` = {:?} {why}", self.url)))?;
            }
            CameraKind::Bambu => {
                bambu::parse_url(&self.url).map_err(bad)?;
            }
        }
        Ok(())
    }
}

/// Builds the camera a config entry describes, with the frozen-feed check and the
/// orientation applied to every frame.
pub fn from_config(cfg: &CameraConfig) -> Result<Box<dyn Camera>, CameraError> {
    cfg.validate()?;
    let source: Box<dyn Camera> = match cfg.kind {
        CameraKind::Snapshot => Box::new(snapshot::SnapshotCamera::new(cfg)?),
        CameraKind::Mjpeg => Box::new(mjpeg::MjpegCamera::new(cfg)?),
        CameraKind::Files => Box::new(files::FilesCamera::new(cfg)?),
        CameraKind::Bambu => Box::new(bambu::BambuCamera::new(cfg)?),
        #[cfg(feature = "v4l2")]
        CameraKind::V4l2 => Box::new(v4l2::V4l2Camera::new(cfg)?),
        #[cfg(not(feature = "v4l2"))]
        CameraKind::V4l2 => {
            return Err(CameraError::Config(format!(
                "camera {}: `kind` = \"v4l2\" needs printvigil built with the `v4l2` feature (cargo build --features v4l2); or use the camera's snapshot or MJPEG URL",
                cfg.display_name()
            )));
        }
    };
    // A replay stays on its last picture by design: that is no frozen camera.
    let frozen = Duration::try_from_secs_f64(cfg.frozen_after_secs)
        .ok()
        .filter(|d| !d.is_zero() && cfg.kind != CameraKind::Files)
        .map(FrozenWatch::new);
    Ok(Box::new(Watched {
        name: cfg.display_name(),
        source,
        max_bytes: cfg.max_frame_bytes,
        orientation: cfg.orientation(),
        frozen,
    }))
}

/// A source with the frame guard, the frozen-feed check and the orientation applied: every
/// camera kind's frames pass here.
struct Watched {
    name: String,
    source: Box<dyn Camera>,
    max_bytes: usize,
    orientation: Orientation,
    frozen: Option<FrozenWatch>,
}

impl Camera for Watched {
    fn name(&self) -> &str {
        &self.name
    }

    fn grab(&mut self) -> Grab<'_> {
        Box::pin(async move {
            let frame = self.source.grab().await?;
            // Before any work on the frame: its declared size, header and scans.
            crate::frameguard::check_within(&frame.jpeg, self.max_bytes)
                .map_err(|reason| CameraError::Refused { camera: self.name.clone(), reason })?;
            if let Some(watch) = &mut self.frozen
                && let Some(stuck) = watch.observe(&frame.jpeg, Instant::now())
            {
                return Err(CameraError::Frozen { camera: self.name.clone(), secs: stuck.as_secs_f64() });
            }
            let orientation = self.orientation;
            if orientation.op() == turbojpeg::TransformOp::None {
                return Ok(frame);
            }
            let Frame { jpeg, taken } = frame;
            let turned = tokio::task::spawn_blocking(move || orientation.apply(&jpeg))
                .await
                .map_err(|e| CameraError::Orientation(e.to_string()))??;
            Ok(Frame { jpeg: turned, taken })
        })
    }
}

/// Notices a feed that keeps sending the same picture: the same bytes for longer than
/// `after` is frozen. A changed picture ends it at once.
#[derive(Debug, Clone)]
pub struct FrozenWatch {
    after: Duration,
    current: Option<(u64, Instant)>,
}

impl FrozenWatch {
    pub fn new(after: Duration) -> Self {
        Self { after, current: None }
    }

    /// Records a frame seen at `now`; returns how long the picture has been the same when
    /// that is longer than the limit (the feed is frozen), else `None`.
    pub fn observe(&mut self, jpeg: &[u8], now: Instant) -> Option<Duration> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        jpeg.hash(&mut h);
        let hash = h.finish();
        match self.current {
            Some((seen, since)) if seen == hash => {
                let same_for = now.saturating_duration_since(since);
                (same_for > self.after).then_some(same_for)
            }
            _ => {
                self.current = Some((hash, now));
                None
            }
        }
    }
}

/// A camera config for a camera the printer link reports, relative URLs resolved against
/// `base` (e.g. `http://127.0.0.1/`; links report absolute URLs, for which `base` does not
/// matter). The snapshot URL is preferred (one request per grab, no stream kept open);
/// the stream URL is used when there is no snapshot URL.
pub fn from_info(info: &CameraInfo, base: &str) -> Result<CameraConfig, CameraError> {
    let who = &info.name;
    let base = reqwest::Url::parse(base).map_err(|e| {
        CameraError::Config(format!("camera {who}: the printer address {base:?} is not a URL ({e})"))
    })?;
    let pick = |u: &Option<String>| u.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let (kind, url) = match (pick(&info.snapshot_url), pick(&info.stream_url)) {
        (Some(u), _) => (CameraKind::Snapshot, u),
        (None, Some(u)) => (CameraKind::Mjpeg, u),
        (None, None) => {
            return Err(CameraError::Config(format!(
                "camera {who}: the printer reports neither a snapshot nor a stream URL; set them in the printer's webcam settings or configure the camera in printvigil"
            )));
        }
    };
    let url = base
        .join(&url)
        .map_err(|e| CameraError::Config(format!("camera {who}: URL {url:?} cannot be resolved ({e})")))?;
    let mut cfg = CameraConfig::new(kind, url.to_string());
    cfg.name = Some(info.name.clone());
    cfg.rotation = info.rotation;
    cfg.flip_horizontal = info.flip_horizontal;
    cfg.flip_vertical = info.flip_vertical;
    cfg.validate()?;
    Ok(cfg)
}

/// What a non-JPEG body looks like, for error messages.
pub(crate) fn sniff(bytes: &[u8]) -> String {
    let what = match bytes {
        [] => "nothing (an empty body)",
        [0x89, b'P', b'N', b'G', ..] => "a PNG image",
        [b'G', b'I', b'F', b'8', ..] => "a GIF image",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "a WebP image",
        _ => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_ascii_lowercase();
            let text = text.trim_start();
            if text.starts_with('<') {
                "an HTML page"
            } else if text.starts_with('{') || text.starts_with('[') {
                "JSON"
            } else {
                "something that is not a JPEG"
            }
        }
    };
    what.to_string()
}

/// An error and its causes, on one line (reqwest's own message leaves the cause out).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_watch_reports_after_the_limit_and_recovers_on_change() {
        let t0 = Instant::now();
        let mut w = FrozenWatch::new(Duration::from_secs(60));
        assert_eq!(w.observe(b"a", t0), None);
        assert_eq!(w.observe(b"a", t0 + Duration::from_secs(59)), None);
        assert_eq!(w.observe(b"a", t0 + Duration::from_secs(61)), Some(Duration::from_secs(61)));
        assert_eq!(w.observe(b"a", t0 + Duration::from_secs(90)), Some(Duration::from_secs(90)));
        assert_eq!(w.observe(b"b", t0 + Duration::from_secs(91)), None, "a new picture ends it");
        assert_eq!(w.observe(b"b", t0 + Duration::from_secs(150)), None);
        assert!(w.observe(b"b", t0 + Duration::from_secs(152)).is_some());
    }

    #[test]
    fn config_parses_and_refuses_unknown_keys_and_bad_values() {
        let cfg: CameraConfig = serde_json::from_str(
            r#"{"kind":"mjpeg","url":"http://cam.local/stream","rotation":90,"flip_vertical":true}"#,
        )
        .unwrap();
        assert_eq!(cfg.kind, CameraKind::Mjpeg);
        assert_eq!(cfg.timeout_secs, 10.0);
        assert_eq!(cfg.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        assert!(cfg.validate().is_ok());

        let unknown = serde_json::from_str::<CameraConfig>(r#"{"kind":"snapshot","url":"http://x/","rotate":90}"#);
        assert!(unknown.unwrap_err().to_string().contains("rotate"));
        let kind = serde_json::from_str::<CameraConfig>(r#"{"kind":"rtsp","url":"http://x/"}"#);
        assert!(kind.unwrap_err().to_string().contains("snapshot"));

        let check = |f: &dyn Fn(&mut CameraConfig), key: &str| {
            let mut c = CameraConfig::new(CameraKind::Snapshot, "http://cam.local/snap");
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        };
        check(&|c| c.rotation = 45, "`rotation`");
        check(&|c| c.timeout_secs = 0.0, "`timeout_secs`");
        check(&|c| c.timeout_secs = f64::NAN, "`timeout_secs`");
        check(&|c| c.max_frame_bytes = 10, "`max_frame_bytes`");
        check(&|c| c.frozen_after_secs = -1.0, "`frozen_after_secs`");
        check(&|c| c.frozen_after_secs = 1e300, "`frozen_after_secs`");
        check(&|c| c.url = "cam.local/snap".into(), "`url`");
        check(&|c| c.url = "ftp://cam.local/snap".into(), "`url`");
    }

    #[test]
    fn config_from_toml_as_the_settings_file_gives_it() {
        use figment::providers::{Format, Toml};
        let toml = r#"
            kind = "mjpeg"
            url = "http://127.0.0.1/webcam/?action=stream"
            rotation = 270
            flip_horizontal = true
            timeout_secs = 5
            max_frame_bytes = 4194304
            frozen_after_secs = 120
        "#;
        let cfg: CameraConfig = figment::Figment::from(Toml::string(toml)).extract().unwrap();
        assert_eq!((cfg.kind, cfg.rotation, cfg.flip_horizontal, cfg.flip_vertical), (CameraKind::Mjpeg, 270, true, false));
        assert_eq!((cfg.timeout_secs, cfg.max_frame_bytes, cfg.frozen_after_secs), (5.0, 4 << 20, 120.0));
        assert!(cfg.validate().is_ok());
        let typo = figment::Figment::from(Toml::string("kind = \"snapshot\"\nurl = \"http://x/\"\nflip_horizonal = true"))
            .extract::<CameraConfig>();
        assert!(typo.unwrap_err().to_string().contains("flip_horizonal"));
    }

    /// A source that returns the frames it was given, in order (any camera kind: the v4l2
    /// camera, which cannot run here, reaches the rest of printvigil the same way).
    struct Script(std::collections::VecDeque<Vec<u8>>);

    impl Camera for Script {
        fn name(&self) -> &str {
            "/dev/video0"
        }
        fn grab(&mut self) -> Grab<'_> {
            let next = self.0.pop_front();
            Box::pin(async move {
                next.map(|jpeg| Frame { jpeg, taken: SystemTime::now() })
                    .ok_or(CameraError::Device { device: "/dev/video0".into(), reason: "no more frames".into() })
            })
        }
    }

    #[tokio::test]
    async fn every_source_goes_through_the_frame_guard_before_any_work() {
        let bomb = crate::frameguard::bomb(65008, 65008);
        let good = crate::server::upload::solid_jpeg(64, 32, [200, 10, 10]);
        let turns = [(0, false, false), (90, false, false), (180, false, false), (270, false, false), (0, true, false), (0, false, true)];
        for (rotation, flip_horizontal, flip_vertical) in turns {
            let orientation = Orientation { rotation, flip_horizontal, flip_vertical };
            let mut cam = Watched {
                name: "bed".into(),
                source: Box::new(Script([bomb.clone(), good.clone()].into())),
                max_bytes: DEFAULT_MAX_FRAME_BYTES,
                orientation,
                frozen: Some(FrozenWatch::new(Duration::from_secs(60))),
            };
            let e = cam.grab().await.unwrap_err();
            assert_eq!(
                e,
                CameraError::Refused {
                    camera: "bed".into(),
                    reason: crate::frameguard::Refused::TooLarge { width: 65008, height: 65008 }
                },
                "{orientation:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("65008x65008") && msg.contains("8192 px"), "{msg}");
            let frame = cam.grab().await.unwrap();
            let (w, h) = crate::detector::preprocess::jpeg_dimensions(&frame.jpeg).unwrap();
            assert_eq!((w, h), if rotation % 180 == 90 { (32, 64) } else { (64, 32) }, "{orientation:?}");
        }
        // The camera's own byte cap applies as well.
        let mut cam = Watched {
            name: "bed".into(),
            source: Box::new(Script([good.clone()].into())),
            max_bytes: good.len() - 1,
            orientation: Orientation::default(),
            frozen: None,
        };
        let e = cam.grab().await.unwrap_err();
        assert!(matches!(e, CameraError::Refused { reason: crate::frameguard::Refused::TooManyBytes { .. }, .. }), "{e}");
    }

    #[test]
    fn v4l2_without_the_feature_says_how_to_get_it() {
        let cfg = CameraConfig::new(CameraKind::V4l2, "/dev/video0");
        match from_config(&cfg) {
            #[cfg(not(feature = "v4l2"))]
            Err(e) => assert!(e.to_string().contains("--features v4l2"), "{e}"),
            #[cfg(feature = "v4l2")]
            _ => {}
            #[cfg(not(feature = "v4l2"))]
            Ok(_) => panic!("v4l2 camera built without the feature"),
        }
    }

    #[test]
    fn discovered_cameras_resolve_relative_urls_and_prefer_snapshots() {
        let d = CameraInfo {
            target_fps: None,
            name: "bed".into(),
            snapshot_url: Some("/webcam/?action=snapshot".into()),
            stream_url: Some("/webcam/?action=stream".into()),
            rotation: 180,
            flip_horizontal: true,
            flip_vertical: false,
        };
        let c = from_info(&d, "http://127.0.0.1/").unwrap();
        assert_eq!(c.kind, CameraKind::Snapshot);
        assert_eq!(c.url.expose(), "http://127.0.0.1/webcam/?action=snapshot");
        assert_eq!((c.rotation, c.flip_horizontal, c.flip_vertical), (180, true, false));
        assert_eq!(c.name.as_deref(), Some("bed"));

        let stream_only = CameraInfo { snapshot_url: Some(" ".into()), ..d.clone() };
        let c = from_info(&stream_only, "http://printer.local:7125/").unwrap();
        assert_eq!(c.kind, CameraKind::Mjpeg);
        assert_eq!(c.url.expose(), "http://printer.local:7125/webcam/?action=stream");

        let absolute = CameraInfo { snapshot_url: Some("http://10.0.0.9:8080/snap.jpg".into()), ..d.clone() };
        assert_eq!(from_info(&absolute, "http://127.0.0.1/").unwrap().url.expose(), "http://10.0.0.9:8080/snap.jpg");

        let none = CameraInfo { snapshot_url: None, stream_url: None, ..d.clone() };
        assert!(from_info(&none, "http://127.0.0.1/").unwrap_err().to_string().contains("neither"));
        let odd = CameraInfo { rotation: 45, ..d };
        assert!(from_info(&odd, "http://127.0.0.1/").unwrap_err().to_string().contains("`rotation`"));
    }
}
