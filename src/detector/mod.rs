//! Obico's failure detector on the device: pre-process, ONNX, post-process, smoothing,
//! decision. See the module map in `lib.rs`.

pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod smoothing;
