//! Commands that arrive on `P/<printer>/cmd/<command>`: the Home Assistant button,
//! switch and number, or anyone allowed to publish there.
//!
//! A command becomes a [`Command`] for the printer's watch, which carries it out through
//! its own rules (a pause must be confirmed by the printer, happens at most once per
//! print and not in the cooldown after a person resumed). The answer is published as a
//! `command` event on `P/<printer>/event`.
//!
//! A **retained** command is ignored: it would be replayed to printvigil at every
//! reconnect, pausing a print nobody asked to pause. Home Assistant publishes commands
//! without retain.

use std::time::Duration;

use super::topics::{CMD_PAUSE, CMD_SNOOZE, CMD_WATCHING};
use crate::watch::control::{Command, MAX_SNOOZE};

/// Why a command message was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command `{0}` (known: pause, watching, snooze)")]
    Unknown(String),
    #[error("`watching` takes ON or OFF, not {0:?}")]
    Switch(String),
    #[error("`snooze` takes minutes from 0 to {max}, not {0:?}", max = MAX_SNOOZE.as_secs() / 60)]
    Minutes(String),
    #[error("a retained command is ignored (it would repeat at every reconnect); publish it without retain")]
    Retained,
}

/// The command a message on `cmd/<leaf>` asks for.
pub fn parse(leaf: &str, payload: &[u8], retained: bool) -> Result<Command, ParseError> {
    if retained {
        return Err(ParseError::Retained);
    }
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    let shown = || text.chars().take(40).collect::<String>();
    match leaf {
        CMD_PAUSE => Ok(Command::Pause),
        CMD_WATCHING => match text.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Ok(Command::Watching(true)),
            "off" | "false" | "0" => Ok(Command::Watching(false)),
            _ => Err(ParseError::Switch(shown())),
        },
        CMD_SNOOZE => {
            let minutes: f64 = text.parse().map_err(|_| ParseError::Minutes(shown()))?;
            let max = MAX_SNOOZE.as_secs_f64() / 60.0;
            if !(minutes.is_finite() && (0.0..=max).contains(&minutes)) {
                return Err(ParseError::Minutes(shown()));
            }
            Ok(Command::Snooze(Duration::from_secs_f64(minutes * 60.0)))
        }
        other => Err(ParseError::Unknown(other.chars().take(40).collect())),
    }
}

/// The command's name in events and logs.
pub fn name(c: &Command) -> &'static str {
    match c {
        Command::Pause => "pause",
        Command::Watching(_) => "watching",
        Command::Snooze(_) => "snooze",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_commands() {
        assert_eq!(parse("pause", b"PAUSE", false), Ok(Command::Pause));
        assert_eq!(parse("pause", b"PAUSE", true), Err(ParseError::Retained));
        assert_eq!(parse("watching", b"OFF", false), Ok(Command::Watching(false)));
        assert_eq!(parse("watching", b" on\n", false), Ok(Command::Watching(true)));
        assert!(matches!(parse("watching", b"maybe", false), Err(ParseError::Switch(_))));
        assert_eq!(parse("snooze", b"30.0", false), Ok(Command::Snooze(Duration::from_secs(1800))));
        assert_eq!(parse("snooze", b"0", false), Ok(Command::Snooze(Duration::ZERO)));
        for bad in [&b"-1"[..], b"1441", b"NaN", b"", b"\xff\xfe"] {
            assert!(matches!(parse("snooze", bad, false), Err(ParseError::Minutes(_))), "{bad:?}");
        }
        assert!(matches!(parse("explode", b"", false), Err(ParseError::Unknown(_))));
    }
}
