//! Obico's failure detector on the device: pre-process, ONNX, post-process, smoothing,
//! decision. See the module map in `lib.rs`.

pub mod annotate;
pub mod cache;
pub mod fetch;
pub mod jpeg;
pub mod model;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod smoothing;

use std::time::{Duration, Instant};

use model::{Model, ModelError};
use postprocess::Detection;
use preprocess::{FrameError, Preprocessor};

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

impl From<preprocess::PrepTimes> for StageTimes {
    fn from(t: preprocess::PrepTimes) -> Self {
        StageTimes { decode: t.decode, resize: t.resize, ..Default::default() }
    }
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

/// A frame decoded and turned into the model's input tensor: the half of the pipeline
/// that needs no model, so it can run beside the model while the model scores another
/// frame (see `printvigil bench --pipelined`).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub width: usize,
    pub height: usize,
    tensor: Vec<f32>,
    times: StageTimes,
}

/// Decodes a JPEG and resizes it into a tensor of `input_size` (width, height), on one core.
pub fn prepare(jpeg: &[u8], input_size: (usize, usize)) -> Result<Prepared, FrameError> {
    let mut tensor = vec![0.0; 3 * input_size.0 * input_size.1];
    let (width, height, t) = Preprocessor::new(1).run(jpeg, input_size, &mut tensor)?;
    Ok(Prepared { width, height, tensor, times: t.into() })
}

/// A model plus the buffers its frames go through (reused from frame to frame).
#[derive(Debug)]
pub struct Detector {
    model: Model,
    /// Decoders and buffers, reused from frame to frame.
    pre: Preprocessor,
    input: Vec<f32>,
    boxes: Vec<f32>,
    confs: Vec<f32>,
}

impl Detector {
    pub fn new(model: Model) -> Self {
        let (w, h) = model.input_size();
        // Pre-processing runs while the inference threads wait, on as many cores.
        let pre = Preprocessor::new(model.threads());
        Detector { model, pre, input: vec![0.0; 3 * w * h], boxes: Vec::new(), confs: Vec::new() }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs one JPEG frame through decode, resize, the model and post-processing.
    pub fn detect(&mut self, jpeg: &[u8]) -> Result<FrameDetections, DetectError> {
        let size = self.model.input_size();
        let (width, height, t) = self.pre.run(jpeg, size, &mut self.input)?;
        self.score(width, height, t.into())
    }

    /// Runs the model and post-processing on a prepared frame.
    pub fn infer(&mut self, frame: &Prepared) -> Result<FrameDetections, DetectError> {
        if frame.tensor.len() != self.input.len() {
            return Err(ModelError::Run("the frame was prepared for another input size".into()).into());
        }
        self.input.copy_from_slice(&frame.tensor);
        self.score(frame.width, frame.height, frame.times)
    }

    fn score(&mut self, width: usize, height: usize, mut times: StageTimes) -> Result<FrameDetections, DetectError> {
        let t0 = Instant::now();
        self.model.run(&self.input, &mut self.boxes, &mut self.confs)?;
        let t1 = Instant::now();
        let detections = postprocess::postprocess(&self.boxes, &self.confs, width, height);
        times.infer = t1 - t0;
        times.post = t1.elapsed();
        Ok(FrameDetections { width, height, detections, times })
    }
}
