//! printvigil keeps watch over 3D prints.
//!
//! Data flows one way: **sources** -> **detector** -> **sinks**.
//!
//! Module map (keep it true):
//! - [`config`]: the settings file, env overrides and their validation (figment).
//! - [`detector`]: Obico's failure detector on the device.
//!   - [`detector::runtime`]: finds and loads the ONNX Runtime library.
//! - [`secret`]: a string type that redacts itself (tokens, keys, passwords).

pub mod config;
pub mod detector;
pub mod secret;
