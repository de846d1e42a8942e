//! Commands people send a watch from outside (a Home Assistant button, the status page):
//! what they may ask, and what the watch answers.
//!
//! A command never bypasses the watch's own rules: "pause now" goes through the same path
//! as a pause decision (the printer must confirm it; at most once per print; not within
//! the cooldown after a person resumed the print), so a button pressed twice pauses once.
//! Commands reach a watch through the [`Board`](super::view::Board).

use std::time::Duration;

/// What a person can ask a printer's watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Pause the current print now, as a pause decision would.
    Pause,
    /// Turn detection on or off for the current print (on again at the next print).
    Watching(bool),
    /// Hold back alerts to people for this long (zero: alerts again now). Detection and
    /// the automatic action go on.
    Snooze(Duration),
}

/// What the watch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pause was asked of the printer; its confirmation comes as a watch event.
    PauseRequested,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no printer named `{0}` is watched")]
    UnknownPrinter(String),
    #[error("the watch is busy with earlier commands; try again")]
    Busy,
    #[error("the watch has stopped")]
    Stopped,
    #[error("nothing is printing, so there is nothing to pause")]
    NotPrinting,
    #[error("printvigil already acted on this print")]
    AlreadyActed,
    #[error("the print was resumed by a person {0} s ago; no automatic pause during the cooldown")]
    Cooldown(u64),
    #[error("a snooze is at most 24 hours")]
    SnoozeTooLong,
}

/// The longest snooze accepted.
pub const MAX_SNOOZE: Duration = Duration::from_secs(24 * 3600);
