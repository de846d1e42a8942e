//! Obico's failure detector on the device: pre-process, ONNX, post-process, smoothing,
//! decision. See the module map in `lib.rs`.

pub mod annotate;
pub mod fetch;
pub mod model;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod smoothing;

use std::time::{Duration, Instant};

use model::{Model, ModelError};
use postprocess::Detection;
use preprocess::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Time spent in each stage of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    pub decode: Duration,
    pub resize: Duration,
    pub infer: Duration,
    pub post: Duration,
}

impl StageTimes {
    pub fn total(&self) -> Duration {
        self.decode + self.resize + self.infer + self.post
    }
}

/// What the detector saw in one frame.
#[derive(Debug, Clone)]
pub struct FrameDetections {
    pub width: usize,
    pub height: usize,
    pub detections: Vec<Detection>,
    pub times: StageTimes,
}

/// A model plus the buffers its frames go through (reused from frame to frame).
#[derive(Debug)]
pub struct Detector {
    model: Model,
    input: Vec<f32>,
    boxes: Vec<f32>,
    confs: Vec<f32>,
}

impl Detector {
    pub fn new(model: Model) -> Self {
        let (w, h) = model.input_size();
        Detector { model, input: vec![0.0; 3 * w * h], boxes: Vec::new(), confs: Vec::new() }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs one JPEG frame through decode, resize, the model and post-processing.
    pub fn detect(&mut self, jpeg: &[u8]) -> Result<FrameDetections, DetectError> {
        let t0 = Instant::now();
        let frame = preprocess::decode_jpeg(jpeg)?;
        let t1 = Instant::now();
        let (w, h) = self.model.input_size();
        preprocess::resize_to_nchw(&frame, w, h, &mut self.input);
        let t2 = Instant::now();
        self.model.run(&self.input, &mut self.boxes, &mut self.confs)?;
        let t3 = Instant::now();
        let detections = postprocess::postprocess(&self.boxes, &self.confs, frame.width, frame.height);
        let t4 = Instant::now();
        Ok(FrameDetections {
            width: frame.width,
            height: frame.height,
            detections,
            times: StageTimes { decode: t1 - t0, resize: t2 - t1, infer: t3 - t2, post: t4 - t3 },
        })
    }
}
