//! `printvigil setup`: the steps that find a printer, ask it for what printvigil needs
//! (a key, a certificate fingerprint, a camera) and write the answers into the config file.
//!
//! Every step edits the file through [`edit::ConfigFile`], which changes only the keys the
//! step sets and keeps the user's comments and layout; every step ends with the config
//! loading (it is checked before the file is replaced). One file per printer kind.
//! - [`edit`]: the comment-keeping config editor and the atomic, mode-keeping write.
//! - [`octoprint`]: OctoPrint's Application Keys workflow (the user clicks Allow).
//! - [`bambu`]: a Bambu Lab printer's certificate fingerprint (the user confirms it), serial
//!   and access code, checked by logging in once.
//! - [`moonraker`]: the interactive first run on a Klipper host (bare `printvigil setup`):
//!   Moonraker found, its key, a camera and a frame scored, the server, then `check`.
//! - [`prompt`]: plain line prompts, each with a flag, defaults taken without a terminal.
//! - [`firstboot`]: a fleet image's `/boot/firmware/printvigil.toml`, merged once and
//!   removed; the service's start condition (a printer is configured).

pub mod bambu;
pub mod edit;
pub mod firstboot;
pub mod moonraker;
pub mod octoprint;
pub mod prompt;

/// Errors of a setup step, each a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error("{0}")]
    Step(String),
}
