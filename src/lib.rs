//! printvigil keeps watch over 3D prints.
//!
//! Data flows one way: **sources** -> **detector** -> **sinks**.
//!
//! Module map (keep it true):
//! - [`config`]: the settings file, env overrides and their validation (figment).
//! - [`frameguard`]: the one check every camera frame passes before any work on it
//!   (declared size, frame header, scan count): the ground floor camera, detector and
//!   server build on.
//! - [`demo`]: `printvigil demo`: the whole loop on a simulated printer, bundled frames, the
//!   demo model and a stand-in server.
//! - [`detector`]: Obico's failure detector on the device.
//!   - [`detector::runtime`]: finds and loads the ONNX Runtime library.
//!   - [`detector::model`]: the ONNX session, its I/O signature check, inference.
//!   - [`detector::cache`]: the optimised copy of a model, made by a short-lived helper
//!     process (`printvigil model prepare`) so the daemon's memory never spikes.
//!   - [`detector::fetch`]: downloads the production model (resumable, sha256-verified).
//!   - [`detector::preprocess`]: JPEG decode, OpenCV-exact bilinear resize, NCHW; a frame
//!     split into bands on several cores when the session has several threads.
//!   - [`detector::jpeg`]: libjpeg-turbo's decoder, whole frames or one band of rows.
//!   - [`detector::postprocess`]: confidence threshold, NMS, boxes in frame pixels.
//!   - [`detector::smoothing`]: per-printer temporal state, warn/pause decision.
//!   - [`detector::annotate`]: draws detections on a frame and encodes a JPEG.
//! - [`camera`]: frame sources behind one small trait ([`camera::Camera`]), with rotation and
//!   flips, a size cap, timeouts and a frozen-feed check; built from the config or from
//!   the printer link's discovery.
//!   - [`camera::snapshot`]: a JPEG per HTTP request.
//!   - [`camera::mjpeg`]: an MJPEG stream kept open; its parser cuts JPEGs out of it.
//!   - [`camera::orientation`]: rotation/flips (lossless when whole MCUs, else re-encoded).
//!   - `camera::v4l2` (feature `v4l2`): a local video device through `nokhwa`.
//!   - [`camera::files`]: JPEG files from a directory or one file (replays, no camera).
//!   - [`camera::bambu`]: a Bambu Lab A1/P1 printer's own camera (TLS on port 6000, an
//!     access packet, length-prefixed JPEGs).
//! - [`bench`]: the `printvigil bench` figures (per-stage timings, memory).
//!   - [`bench::farm`]: `bench --printers N`, a simulated farm through the real watches
//!     and the scheduler (intervals, fairness, frame age, a warned printer, memory).
//! - [`http`]: the daemon's small HTTP server (`[http]`, loopback by default, a token for
//!   other addresses): [`http::metrics`] (`/metrics` for Prometheus) and [`http::status`]
//!   (the status page, its JSON, the latest frame with boxes, "resume watching" and
//!   "snooze"); a sink reading the board, the events, the scheduler and the mirror.
//! - [`logging`]: log lines to journald under systemd (`JOURNAL_STREAM`), else to stderr;
//!   the `PRINTVIGIL_LOG` filter, with dependencies that log secrets capped at info.
//! - [`printer`]: printer links, one module per firmware behind one trait
//!   ([`printer::PrinterLink`]: events, status, cameras, pause / resume / cancel), and
//!   [`printer::Action`] (what to do on a failing print; `watch` re-exports it).
//!   - [`printer::channels`]: what every link publishes (events, status, cameras), the one
//!     way actions are confirmed by the printer's reported state, the link's task.
//!   - [`printer::moonraker`]: Klipper through Moonraker (websocket JSON-RPC), a folder:
//!     `config` (the entry), `connect` (websocket, API key, message size cap), `rpc`
//!     (requests/answers, [`printer::moonraker::parse_message`]), `inbox` (bounded
//!     notification hand-over, coalesced status), `status` (subscription, bounded merging),
//!     `session` (one connection's sequence), `tracker` (what the link remembers, the
//!     events; [`printer::moonraker::MessageReplay`] for fuzzing), `reconnect` (the task,
//!     backoff that resets only on health, one log line per state change), `webcams`.
//!   - [`printer::marlin`]: Marlin over USB serial (printvigil is the host), a folder:
//!     `config` (port, baud), `port` (exclusive open, busy refusal, candidate ports), `line`
//!     ([`printer::marlin::parse_line`]), `protocol` (line numbers, checksums, `Resend:`),
//!     `tracker` (SD print state -> events), `session` (the serial thread, reconnects).
//!   - [`printer::octoprint`]: a printer driven by OctoPrint (REST + its push socket), a
//!     folder: `config` (the entry), `rest` (X-Api-Key, capped answers, 401/403/409),
//!     `push` (passive login, `/sockjs/websocket`), `tracker` (snapshots, print identity
//!     from file + origin + start time, the events), `webcams` (`/api/settings`).
//!   - [`printer::bambu`]: a Bambu Lab printer on the LAN (its own MQTT broker over TLS,
//!     rumqttc), a folder: `config` (the entry, the camera's URL), [`printer::bambu::report`]
//!     (reports merged field by field, command answers), [`printer::bambu::tracker`]
//!     (states, print identity, error pauses, the events), `session` (TLS with the pinned
//!     certificate, MQTT, `pushall`, troubles told once, retries, confirmed actions).
//!   - [`printer::sim`]: a simulated printer (the demo's, the tests', `kind = "simulated"`).
//! - [`schedule`]: the inference scheduler, one queue in front of the detector shared by
//!   every watch: the freshest frame per printer, max-min fair turns, a warned printer
//!   first, one worker per session, the load and the stretch of every cadence.
//!   - [`schedule::queue`]: the queue's rules, a plain data structure.
//!   - [`schedule::pool`]: the worker threads, clients, tickets, the stop.
//!   - [`schedule::load`]: per-frame cost, load, stretch, per-printer figures.
//! - [`secret`]: a string type that redacts itself (tokens, keys, passwords).
//! - [`server`]: the mirror to an Obico-compatible server (a sink).
//!   - [`server::config`]: the `[server]` settings.
//!   - [`server::http`]: the HTTP client and size-capped reading of answers.
//!   - [`server::oauth`]: the token manager (client credentials, refresh, token file).
//!   - [`server::login`]: `printvigil login` (authorization code + PKCE, loopback redirect).
//!   - [`server::api`]: the REST client and response parsing.
//!   - [`server::check`]: the server lines of `printvigil check`.
//!   - [`server::outbox`]: the durable SQLite outbox and printer registration record.
//!   - [`server::upload`]: upload policy and shrink-to-fit of frames.
//!   - [`server::standin`]: a stand-in Obico server: the demo's, and the tests' fake.
//! - [`sink`]: where what the watches see goes (besides the printer and the mirror), each
//!   sink in its own tasks with bounded queues, never holding up a watch.
//!   - [`sink::mqtt`]: state, events and frames on an MQTT broker (`rumqttc`), Home
//!     Assistant discovery, commands back to the watches; a folder: `config`, `tls`,
//!     `client` (connection, last will, reconnect), `queue` (bounded, drop-oldest),
//!     `topics`, `telemetry`, `discovery`, `commands`.
//!   - [`sink::notify`]: `[[notify]]` messages people see; a folder: `config`, `alert`,
//!     `ratelimit`, `deliver` (tries, backoff, answers), `webhook`, `ntfy`, `telegram`,
//!     `discord`.
//!   - [`sink::views`]: following many printers' views from one sink task.
//!   - [`sink::check`]: the sinks' lines of `printvigil check`; `printvigil notify test`.
//! - [`setup`]: `printvigil setup`: finds a printer, asks it for keys, writes the config
//!   (comments kept, [`setup::edit`]); one file per printer kind ([`setup::octoprint`],
//!   [`setup::bambu`]).
//! - [`tlspin`]: TLS to devices with self-signed certificates, trusted by a pinned SHA-256
//!   fingerprint (or explicitly not at all): Bambu printers' MQTT and camera, setup's probe.
//! - `fuzzing` (hidden): what the fuzz targets (`fuzz/`) and their regression test run.
//! - [`watch`]: one watch loop per printer (frames at the cadence, detect, smooth, decide,
//!   act; start/finish/predict to the mirror) and the supervisor that runs them.
//!   - [`watch::watcher`]: the loop; it sees only [`printer::PrinterLink`] and [`camera::Camera`].
//!   - [`watch::supervisor`]: `printvigil run`, sd-notify READY/STATUS/WATCHDOG/STOPPING, graceful stop.
//!   - [`watch::state`]: per-printer state in SQLite (smoothing, the print watched, acted).
//!   - [`watch::view`]: each watch's published [`watch::view::PrinterView`] and the
//!     [`watch::view::Board`] where sinks find every printer's view and send commands.
//!   - [`watch::control`]: the commands people may send a watch (pause now, detection off
//!     for this print, snooze alerts), carried out through the watch's own rules.
//!   - [`watch::frames`]: annotated decision frames within a disk budget.
//!   - [`watch::check`]: the local lines of `printvigil check` (detector, state, printers, cameras).

pub mod bench;
pub mod camera;
pub mod config;
pub mod demo;
pub mod detector;
pub mod frameguard;
pub mod http;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod printer;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod setup;
pub mod sink;
pub mod tlspin;
pub mod watch;
