//! Printer links: one module per printer firmware, all behind [`PrinterLink`].
//!
//! A link runs as its own task. It publishes [`PrinterEvent`]s (a print started, paused by
//! the user, resumed, finished; the printer offline, back, halted), a [`PrinterStatus`]
//! that always holds the latest state, and the printer's cameras; it carries out
//! [`PrinterLink::pause`], [`PrinterLink::resume`] and [`PrinterLink::cancel`], each
//! confirmed by the printer's own state. The watch loop knows no firmware: it only sees
//! this trait.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::secret::Secret;
use channels::{Act, LinkChannels};

pub mod bambu;
pub mod channels;
pub mod marlin;
pub mod moonraker;
pub mod octoprint;
pub mod sim;

/// Identifies one print, stable across restarts of printvigil and of the printer's host
/// software (for Moonraker: the history job id and its start time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobId(pub String);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a print ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// The whole file was printed.
    Completed,
    /// Cancelled by a person or by printvigil.
    Cancelled,
    /// The print stopped on an error: firmware error, emergency stop, printer halted or
    /// restarted during the print. The text says what the printer reported.
    Failed(String),
}

/// Something that happened on the printer. Each print's start and end is reported exactly
/// once, also across reconnects; a print that started or ended while the link was down is
/// reported when the link is back, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PrinterEvent {
    /// A print started.
    PrintStarted { job: JobId, file: String },
    /// The link (newly created) found a print already running and attached to it; no
    /// `PrintStarted` follows for it.
    Attached { job: JobId, file: String, paused: bool },
    /// Paused by a person, a macro or printvigil (not by a camera park for a timelapse).
    Paused { job: Option<JobId> },
    /// Resumed after a pause.
    Resumed { job: Option<JobId> },
    /// A print ended.
    Finished { job: JobId, file: String, outcome: JobOutcome },
    /// The printer's firmware halted (emergency stop, firmware error); it needs a restart.
    Halted { message: String },
    /// The printer cannot be reached or is not ready; the link keeps trying.
    Offline { reason: String },
    /// The printer is reachable and ready again.
    Online,
}

impl PrinterEvent {
    /// The event a change of the state a link reports makes, if any: `Paused` when a
    /// print goes from printing to paused, `Resumed` when it goes back; `job` is the
    /// current print. (Starts and ends have their own events, found from the job.)
    pub fn of_state_change(prev: Option<PrinterState>, now: PrinterState, job: Option<JobId>) -> Option<PrinterEvent> {
        match (prev, now) {
            (Some(PrinterState::Printing), PrinterState::Paused) => Some(PrinterEvent::Paused { job }),
            (Some(PrinterState::Paused), PrinterState::Printing) => Some(PrinterEvent::Resumed { job }),
            _ => None,
        }
    }
}

/// The printer's state as a link reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PrinterState {
    /// Not reachable or not ready (starting, disconnected).
    #[default]
    Offline,
    /// Ready, not printing.
    Idle,
    Printing,
    Paused,
    /// Halted by an error; needs a restart.
    Error,
}

/// One heater's temperatures, degrees Celsius.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// The heater's name as the printer calls it (`extruder`, `heater_bed`, ...).
    pub name: String,
    pub actual: f64,
    pub target: f64,
}

/// The latest state of a printer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PrinterStatus {
    pub state: PrinterState,
    /// The file being printed (also while paused), or the last one.
    pub file: Option<String>,
    /// The current print, while printing or paused.
    pub job: Option<JobId>,
    /// 0.0 ..= 1.0.
    pub progress: Option<f64>,
    pub temperatures: Vec<Temperature>,
    /// Why the printer is offline or halted, as the printer or the link says it.
    pub message: Option<String>,
}

/// A camera the printer's host knows about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraInfo {
    pub name: String,
    /// Absolute URL of a single JPEG frame, when the camera has one.
    pub snapshot_url: Option<String>,
    /// Absolute URL of the stream, when the camera has one.
    pub stream_url: Option<String>,
    /// Clockwise rotation in degrees: 0, 90, 180 or 270.
    pub rotation: u16,
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    pub target_fps: Option<u32>,
}

/// What to do when the detector decides a print is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pause the print (the default): a person looks and resumes or cancels.
    #[default]
    Pause,
    /// Cancel the print (farms that would rather start the next job).
    Cancel,
    /// Only tell: log, status line, server, saved frame.
    Notify,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Cancel => "cancel",
            Action::Notify => "notify",
        }
    }
}

/// Errors of printer links and their actions.
#[derive(Debug, thiserror::Error)]
pub enum PrinterError {
    #[error(
        "printer `{printer}` is not connected; check that it is on and reachable, the action was not sent"
    )]
    NotConnected { printer: String },
    #[error("printer `{printer}` refused `{action}`: {message}")]
    Refused { printer: String, action: String, message: String },
    #[error(
        "printer `{printer}` did not confirm `{action}` within {timeout:?} (its state stayed `{state:?}`); check the printer and its {action} macro"
    )]
    NotConfirmed { printer: String, action: String, timeout: Duration, state: PrinterState },
    #[error(
        "printer `{printer}` did not answer `{method}` within {timeout:?}; the connection may be stalled"
    )]
    Timeout { printer: String, method: String, timeout: Duration },
    #[error("printer `{printer}`: the connection closed before `{method}` was answered")]
    Closed { printer: String, method: String },
    #[error("printer `{printer}` ignored `{action}` for {timeout:?}: {hint}")]
    Ignored { printer: String, action: String, timeout: Duration, hint: String },
    #[error("printer `{printer}` cannot {action} now: it is {state:?}")]
    WrongState { printer: String, action: String, state: PrinterState },
}

/// The link to one printer. Implemented once per firmware; used as `Arc<dyn PrinterLink>`.
///
/// A firmware module provides its [`LinkChannels`] (what it publishes), how to send a
/// request ([`PrinterLink::request`]) and how to stop; the confirmation of actions is the
/// same for all (see [`channels`]).
#[async_trait::async_trait]
pub trait PrinterLink: Send + Sync {
    /// The link's channels (events, status, cameras).
    fn channels(&self) -> &LinkChannels;
    /// How long an action may take until the printer reports it done.
    fn action_timeout(&self) -> Duration;
    /// Sends `act` to the printer; returns once the printer took the request (its
    /// reported state then confirms it).
    async fn request(&self, act: Act) -> Result<(), PrinterError>;
    /// Stops the link's task and closes its connection.
    async fn stop(&self);

    /// Runs before each look at the state while an action is being confirmed (a link that
    /// polls reads the state now).
    fn poke(&self) {}
    /// The printer's name from the configuration.
    fn name(&self) -> &str {
        self.channels().name()
    }
    /// The events. The first call gets every event since the link was created; later
    /// calls get events from then on. A receiver that falls more than 1024 events behind
    /// gets `RecvError::Lagged` (the status watch always has the latest state).
    fn events(&self) -> broadcast::Receiver<PrinterEvent> {
        self.channels().events()
    }
    /// The latest status; changes whenever the printer reports something.
    fn status(&self) -> watch::Receiver<PrinterStatus> {
        self.channels().status()
    }
    /// The printer's cameras, re-read when the printer's host changes them.
    fn cameras(&self) -> watch::Receiver<Vec<CameraInfo>> {
        self.channels().cameras()
    }
    /// Asks for `act` and waits until the printer reports it done.
    async fn perform(&self, act: Act) -> Result<(), PrinterError> {
        self.channels().act(act, self.action_timeout(), || self.poke(), self.request(act)).await
    }
    /// Pauses the print; returns once the printer reports it paused.
    async fn pause(&self) -> Result<(), PrinterError> {
        self.perform(Act::Pause).await
    }
    /// Resumes a paused print; returns once the printer reports it printing.
    async fn resume(&self) -> Result<(), PrinterError> {
        self.perform(Act::Resume).await
    }
    /// Cancels the print; returns once the printer reports it no longer printing.
    async fn cancel(&self) -> Result<(), PrinterError> {
        self.perform(Act::Cancel).await
    }
}

/// One `[[printers]]` entry of the configuration; `kind = "..."` picks the firmware path
/// (`moonraker`, `marlin`, `octoprint`, `bambu`, `simulated` to try printvigil without a
/// printer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PrinterConfig {
    /// Klipper through Moonraker.
    Moonraker(moonraker::MoonrakerConfig),
    /// Marlin over USB serial, printvigil as the host.
    Marlin(marlin::MarlinConfig),
    /// A printer driven by OctoPrint.
    #[serde(rename = "octoprint")]
    OctoPrint(octoprint::OctoPrintConfig),
    /// A Bambu Lab printer on the local network (MQTT over TLS).
    Bambu(bambu::BambuConfig),
    /// A simulated printer running a scripted print (demo, trying printvigil out).
    Simulated(sim::SimConfig),
}

impl PrinterConfig {
    /// The printer's name (unique among the printers; used in logs and on the server).
    pub fn name(&self) -> &str {
        match self {
            PrinterConfig::Moonraker(m) => &m.name,
            PrinterConfig::Marlin(m) => &m.name,
            PrinterConfig::OctoPrint(o) => &o.name,
            PrinterConfig::Bambu(b) => &b.name,
            PrinterConfig::Simulated(s) => &s.name,
        }
    }

    /// The camera configured for this printer, if any (else the link's discovery), with
    /// what the printer entry supplies filled in (a Bambu printer's own camera).
    pub fn camera(&self) -> Option<crate::camera::CameraConfig> {
        match self {
            PrinterConfig::Moonraker(m) => m.camera.clone(),
            PrinterConfig::Marlin(m) => m.camera.clone(),
            PrinterConfig::OctoPrint(o) => o.camera.clone(),
            PrinterConfig::Bambu(b) => b.camera_config(),
            PrinterConfig::Simulated(s) => s.camera.clone(),
        }
    }

    /// The action on a failing print configured for this printer, if any.
    pub fn action_on_failure(&self) -> Option<Action> {
        match self {
            PrinterConfig::Moonraker(m) => m.action_on_failure,
            PrinterConfig::Marlin(m) => m.action_on_failure,
            PrinterConfig::OctoPrint(o) => o.action_on_failure,
            PrinterConfig::Bambu(b) => b.action_on_failure,
            PrinterConfig::Simulated(s) => s.action_on_failure,
        }
    }

    /// Checks one entry; `key` is its place in the file (e.g. `printers[0]`).
    pub fn validate(&self, key: &str) -> Result<(), crate::config::ConfigError> {
        let name = self.name();
        if name.trim().is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(crate::config::invalid(
                &format!("{key}.name"),
                &format!("{name:?}"),
                "give the printer a short name (1 to 64 characters), e.g. name = \"voron\"",
            ));
        }
        // The entry's own keys first: a Bambu camera's URL is made from them.
        match self {
            PrinterConfig::Moonraker(m) => m.validate(key)?,
            PrinterConfig::Marlin(m) => m.validate(key)?,
            PrinterConfig::OctoPrint(o) => o.validate(key)?,
            PrinterConfig::Bambu(b) => b.validate(key)?,
            PrinterConfig::Simulated(s) => s.validate(key)?,
        }
        if let Some(cam) = self.camera() {
            cam.validate().map_err(|e| {
                crate::config::invalid(&format!("{key}.camera"), &format!("{:?}", cam.url), &e.to_string())
            })?;
        }
        Ok(())
    }

    /// Starts the link for this printer. `instance` tells printvigil instances that watch
    /// the same printer apart (it becomes part of the client name the printer sees).
    pub fn connect(&self, instance: &str) -> std::sync::Arc<dyn PrinterLink> {
        match self {
            PrinterConfig::Moonraker(m) => moonraker::MoonrakerLink::start(m.clone(), instance),
            PrinterConfig::Marlin(m) => marlin::MarlinLink::start(m.clone()),
            PrinterConfig::OctoPrint(o) => octoprint::OctoPrintLink::start(o.clone()),
            PrinterConfig::Bambu(b) => bambu::BambuLink::start(b.clone(), instance),
            PrinterConfig::Simulated(s) => sim::SimPrinter::start(s),
        }
    }
}

/// A key that must not be blank when present.
pub(crate) fn nonblank(secret: &Option<Secret>) -> bool {
    secret.as_ref().is_none_or(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pausing_and_resuming_a_print_make_an_event() {
        let job = Some(JobId("j".into()));
        let ev = |prev, now| PrinterEvent::of_state_change(prev, now, job.clone());
        assert_eq!(ev(Some(PrinterState::Printing), PrinterState::Paused), Some(PrinterEvent::Paused { job: job.clone() }));
        assert_eq!(ev(Some(PrinterState::Paused), PrinterState::Printing), Some(PrinterEvent::Resumed { job: job.clone() }));
        assert_eq!(ev(None, PrinterState::Paused), None);
        assert_eq!(ev(Some(PrinterState::Idle), PrinterState::Printing), None);
        assert_eq!(ev(Some(PrinterState::Paused), PrinterState::Paused), None);
        assert_eq!(ev(Some(PrinterState::Paused), PrinterState::Idle), None);
    }
}
