//! Where log lines go: to journald when the process's stderr is the journal (a systemd
//! service), else to stderr as text.
//!
//! The filter comes from `PRINTVIGIL_LOG` (tracing's `EnvFilter` syntax, default
//! [`DEFAULT_FILTER`]). systemd tells a service that its stderr is connected to the journal
//! with `JOURNAL_STREAM=<device>:<inode>`; the variable is inherited by child processes
//! whose stderr may go elsewhere, so it counts only when it names the file stderr is
//! (systemd.exec(5)). Logging through journald's native protocol keeps each event's level
//! as the journal priority and its fields as journal fields.
//!
//! Whatever the filter, some dependencies are capped ([`secrets_guard`]): the websocket
//! library writes the raw upgrade request (with Moonraker's `X-Api-Key`) and every frame's
//! bytes at `trace`, so `PRINTVIGIL_LOG=trace` must not reach it. reqwest logs a
//! redirect's full URL at `debug` (a Telegram request URL holds the bot token), and the
//! MQTT client is kept at `info` with it.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "PRINTVIGIL_LOG";
/// The filter when `PRINTVIGIL_LOG` is unset, empty or invalid.
pub const DEFAULT_FILTER: &str = "info,ort=warn";
/// The journal's `SYSLOG_IDENTIFIER` (what `journalctl -t` selects).
pub const SYSLOG_IDENTIFIER: &str = "printvigil";

/// Dependencies that log secrets (request headers, frame payloads) below some level, and
/// the most verbose level each may log at, whatever `PRINTVIGIL_LOG` says.
pub const CAPPED_TARGETS: &[(&str, LevelFilter)] =
    &[
        ("tungstenite", LevelFilter::INFO),
        ("tokio_tungstenite", LevelFilter::INFO),
        ("reqwest", LevelFilter::INFO),
        ("rumqttc", LevelFilter::INFO),
    ];

/// A filter layer that caps [`CAPPED_TARGETS`] and lets everything else through; part of
/// every subscriber [`init`] builds (layer it next to the `PRINTVIGIL_LOG` filter).
pub fn secrets_guard() -> Targets {
    CAPPED_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, (target, level)| t.with_target(*target, *level))
}

/// Parses `JOURNAL_STREAM`'s value: the device and inode numbers, decimal, colon-separated.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    let number = |s: &str| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None };
    Some((number(dev)?, number(ino)?))
}

/// True when `JOURNAL_STREAM` (`journal_stream`) names the file whose device and inode
/// numbers are `stderr` (from fstat; `None` when stderr is closed).
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    match (journal_stream.and_then(parse_journal_stream), stderr) {
        (Some(named), Some(actual)) => named == actual,
        _ => false,
    }
}

/// Device and inode numbers of the file on fd 2, or `None` when it is closed.
fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Sets up the global logger; call once, early. Never fails: when journald cannot be
/// reached the lines go to stderr (and the first line says why), and an invalid
/// `PRINTVIGIL_LOG` falls back to the default filter with a warning.
pub fn init() {
    let (filter, bad_filter) = filter_from_env();
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let to_journal = is_journal_stream(journal_stream.as_deref(), stderr_identity());

    let (journald, journald_error) = if to_journal {
        match tracing_journald::layer() {
            Ok(layer) => (Some(layer.with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let text = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    // try_init: a logger already set (by a test harness, say) stays.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(secrets_guard())
        .with(journald)
        .with(text)
        .try_init();

    if let Some(e) = journald_error {
        tracing::warn!(
            "stderr is the journal but journald's socket cannot be used ({e}); logging to stderr instead"
        );
    } else if to_journal {
        tracing::debug!("log destination: journald");
    } else {
        tracing::debug!("log destination: stderr");
    }
    if let Some((value, e)) = bad_filter {
        tracing::warn!(
            "{FILTER_ENV}={value:?} is not a valid log filter ({e}); using {DEFAULT_FILTER:?}. \
             Examples: {FILTER_ENV}=debug, {FILTER_ENV}=info,printvigil=debug"
        );
    }
}

/// The filter from `PRINTVIGIL_LOG`, and the rejected value with the reason when it is invalid.
fn filter_from_env() -> (EnvFilter, Option<(String, String)>) {
    let default = || EnvFilter::new(DEFAULT_FILTER);
    match std::env::var(FILTER_ENV) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::builder().parse(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (default(), Some((value, e.to_string()))),
        },
        Ok(_) => (default(), None),
        Err(std::env::VarError::NotPresent) => (default(), None),
        Err(std::env::VarError::NotUnicode(_)) => {
            (default(), Some(("<not UTF-8>".to_string(), "the value is not UTF-8".to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("0:0"), Some((0, 0)));
        assert_eq!(parse_journal_stream("18446744073709551615:1"), Some((u64::MAX, 1)));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "", ":", "8", "8:", ":1", "a:1", "8:b", "8:1:2", " 8:1", "8:1 ", "8:1\n", "+8:1", "-8:1", "8:-1",
            "0x8:1", "18446744073709551616:1",
        ] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn matches_only_the_same_device_and_inode() {
        assert!(is_journal_stream(Some("8:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), Some((8, 12346))));
        assert!(!is_journal_stream(Some("9:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), None));
        assert!(!is_journal_stream(None, Some((8, 12345))));
        assert!(!is_journal_stream(Some("garbage"), Some((8, 12345))));
    }

    #[test]
    fn the_websocket_library_never_logs_below_info() {
        use tracing::Level;
        let guard = secrets_guard();
        for target in ["tungstenite::handshake::client", "tokio_tungstenite::compat", "tungstenite"] {
            assert!(!guard.would_enable(target, &Level::TRACE), "{target}");
            assert!(!guard.would_enable(target, &Level::DEBUG), "{target}");
            assert!(guard.would_enable(target, &Level::INFO), "{target}");
        }
        assert!(guard.would_enable("printvigil::printer::moonraker", &Level::TRACE));
    }

    #[test]
    fn stderr_identity_is_what_fstat_says() {
        // Compares against a second, independent look at fd 2 through /proc.
        let Some((dev, ino)) = stderr_identity() else { return };
        if let Ok(meta) = std::fs::metadata("/proc/self/fd/2") {
            assert_eq!((meta.dev(), meta.ino()), (dev, ino));
        }
    }
}
