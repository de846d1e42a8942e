//! A local video device (`/dev/video0`) through `nokhwa` (cargo feature `v4l2`).
//!
//! Deliberately thin and **not exercised by the test suite** (the build and test machines
//! have no camera): it opens the device on the first grab, asks for the highest frame
//! rate, and returns each frame as a JPEG: the device's own bytes when it sends MJPEG,
//! else the frame decoded to RGB and encoded. A failed capture closes the device; the next
//! grab opens it again. nokhwa's camera cannot move between threads, so it lives on a
//! thread of its own; a grab asks that thread for a frame and waits up to the timeout.

use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};

use super::{Camera, CameraConfig, CameraError, Frame, Grab, is_jpeg};
use crate::detector::preprocess::Rgb8;

pub struct V4l2Camera {
    name: String,
    device: String,
    timeout: Duration,
    /// Requests to the capture thread, each with where to send the answer.
    requests: mpsc::Sender<tokio::sync::oneshot::Sender<Result<Vec<u8>, CameraError>>>,
}

/// `/dev/video2` and `2` are index 2; anything else is passed to nokhwa as a name.
fn index(device: &str) -> CameraIndex {
    let d = device.trim();
    d.strip_prefix("/dev/video")
        .unwrap_or(d)
        .parse()
        .map(CameraIndex::Index)
        .unwrap_or_else(|_| CameraIndex::String(d.to_string()))
}

impl V4l2Camera {
    pub fn new(cfg: &CameraConfig) -> Result<Self, CameraError> {
        let (requests, rx) = mpsc::channel::<tokio::sync::oneshot::Sender<Result<Vec<u8>, CameraError>>>();
        let (device, max) = (cfg.url.expose().to_string(), cfg.max_frame_bytes);
        std::thread::Builder::new()
            .name("printvigil-v4l2".into())
            .spawn(move || {
                let mut open = None;
                // Ends when the camera is dropped (the sender goes away).
                for reply in rx {
                    let _ = reply.send(capture(&mut open, &device, max));
                }
            })
            .map_err(|e| CameraError::Device { device: cfg.url.expose().to_string(), reason: format!("cannot start the capture thread ({e})") })?;
        Ok(Self { name: cfg.display_name(), device: cfg.url.expose().to_string(), timeout: cfg.timeout(), requests })
    }
}

fn capture(guard: &mut Option<nokhwa::Camera>, device: &str, max: usize) -> Result<Vec<u8>, CameraError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| CameraError::Device {
        device: device.to_string(),
        reason: format!("{what} ({e}); check that the device exists, that printvigil may read it (group `video`) and that no other program holds it"),
    };
    if guard.is_none() {
        let wanted = RequestedFormat::new::<RgbFormat>(RequestedFormatType::AbsoluteHighestFrameRate);
        let mut cam = nokhwa::Camera::new(index(device), wanted).map_err(|e| fail("cannot open it", &e))?;
        cam.open_stream().map_err(|e| fail("cannot start capture", &e))?;
        *guard = Some(cam);
    }
    let Some(cam) = guard.as_mut() else {
        return Err(fail("not open", &"no device"));
    };
    let buffer = match cam.frame() {
        Ok(b) => b,
        Err(e) => {
            *guard = None;
            return Err(fail("capture failed", &e));
        }
    };
    let jpeg = if buffer.source_frame_format() == FrameFormat::MJPEG && is_jpeg(buffer.buffer()) {
        buffer.buffer().to_vec()
    } else {
        let img = buffer.decode_image::<RgbFormat>().map_err(|e| fail("cannot decode the frame", &e))?;
        let (width, height) = (img.width() as usize, img.height() as usize);
        let rgb = Rgb8 { width, height, pixels: img.into_raw() };
        crate::detector::annotate::encode_jpeg(&rgb, 90).map_err(|e| fail("cannot encode the frame", &e))?
    };
    if jpeg.len() > max {
        return Err(CameraError::TooLarge { url: device.into(), max });
    }
    Ok(jpeg)
}

impl Camera for V4l2Camera {
    fn name(&self) -> &str {
        &self.name
    }

    fn grab(&mut self) -> Grab<'_> {
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let gone = || CameraError::Device {
                device: self.device.clone(),
                reason: "the capture thread stopped; restart printvigil".into(),
            };
            self.requests.send(reply).map_err(|_| gone())?;
            match tokio::time::timeout(self.timeout, answer).await {
                Err(_) => Err(CameraError::Timeout { url: self.device.as_str().into(), secs: self.timeout.as_secs_f64() }),
                Ok(Err(_)) => Err(gone()),
                Ok(Ok(r)) => r.map(|jpeg| Frame { jpeg, taken: SystemTime::now() }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(index("/dev/video2"), CameraIndex::Index(2));
        assert_eq!(index(" 0 "), CameraIndex::Index(0));
        assert_eq!(index("/dev/v4l/by-id/usb-cam"), CameraIndex::String("/dev/v4l/by-id/usb-cam".into()));
    }
}
