//! printvigil keeps watch over 3D prints.
//!
//! Data flows one way: **sources** -> **detector** -> **sinks**.
//!
//! Module map (keep it true):
//! - [`config`]: the settings file, env overrides and their validation (figment).
//! - [`detector`]: Obico's failure detector on the device.
//!   - [`detector::runtime`]: finds and loads the ONNX Runtime library.
//! - [`printer`]: printer links, one module per firmware behind one trait
//!   ([`printer::PrinterLink`]: events, status, cameras, pause / resume / cancel).
//!   - [`printer::moonraker`]: Klipper through Moonraker (websocket JSON-RPC).
//! - [`secret`]: a string type that redacts itself (tokens, keys, passwords).

pub mod config;
pub mod detector;
pub mod printer;
pub mod secret;
