//! First-boot settings for fleet images: a farm flashes one image to many cards, then drops
//! a `printvigil.toml` on each card's FAT boot partition (`/boot/firmware/printvigil.toml`,
//! the partition a PC shows after flashing) with that host's printer, server and token.
//!
//! At every start of the service (`printvigil setup firstboot`, run as root by the unit's
//! first `ExecCondition`), a file found there is checked, merged into the config file with
//! [`ConfigFile::merge`] (comments and other settings kept; printers matched by name), and
//! removed: secrets must not stay on a partition every PC can read. A file that does not
//! load is not merged; it is moved to `/etc/printvigil/firstboot-refused.toml` (0600) so the
//! admin can see what was wrong, and the reason is logged. Either way it is gone from the
//! boot partition, so it is applied once.
//!
//! [`configured`] is the unit's second condition: the service starts only once the config
//! names a printer.

use std::path::{Path, PathBuf};

use super::SetupError;
use super::edit::{ConfigFile, EditError, Merged, write_atomically};

/// Where a farm puts the file (Raspberry Pi OS Bookworm mounts the FAT partition here).
pub const BOOT_FILE: &str = "/boot/firmware/printvigil.toml";
/// A refused first-boot file, beside the config file.
pub const REFUSED_NAME: &str = "firstboot-refused.toml";

/// What [`apply`] did.
#[derive(Debug)]
pub enum Outcome {
    /// No first-boot file.
    Absent,
    /// Merged into the config and removed.
    Merged(Merged),
    /// Not merged (`reason`), moved to `kept`.
    Refused { kept: PathBuf, reason: String },
}

/// Applies `boot_file` to the config file at `config` once (see the module docs).
pub fn apply(boot_file: &Path, config: &Path) -> Result<Outcome, SetupError> {
    let text = match std::fs::read(boot_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Absent),
        Err(source) => return Err(EditError::Read { path: boot_file.into(), source }.into()),
    };
    let merged = std::str::from_utf8(&text)
        .map_err(|_| format!("{} is not UTF-8 text", boot_file.display()))
        .and_then(|t| merge(t, boot_file, config).map_err(|e| e.to_string()));
    let outcome = match merged {
        Ok(m) => Outcome::Merged(m),
        Err(reason) => {
            let kept = config.parent().unwrap_or(Path::new("/")).join(REFUSED_NAME);
            write_atomically(&kept, &text).map_err(|source| EditError::Write { path: kept.clone(), source })?;
            Outcome::Refused { kept, reason }
        }
    };
    remove(boot_file)?;
    Ok(outcome)
}

fn merge(text: &str, boot_file: &Path, config: &Path) -> Result<Merged, EditError> {
    let mut file = ConfigFile::open(config)?;
    let merged = file.merge(text, boot_file)?;
    file.save()?;
    Ok(merged)
}

/// Deletes the file and makes the deletion durable (a power cut right after the first boot
/// must not bring the secrets back).
fn remove(path: &Path) -> Result<(), SetupError> {
    std::fs::remove_file(path).map_err(|e| {
        SetupError::Step(format!(
            "{} was read but cannot be deleted ({e}); delete it by hand: it may hold keys and tokens",
            path.display()
        ))
    })?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The line to print for an outcome (names, never values), and whether it is an error.
pub fn report(outcome: &Outcome, boot_file: &Path, config: &Path) -> Option<(String, bool)> {
    match outcome {
        Outcome::Absent => None,
        Outcome::Merged(m) => Some((
            format!("merged the first-boot settings of {} ({m}) into {} and deleted it", boot_file.display(), config.display()),
            false,
        )),
        Outcome::Refused { kept, reason } => Some((
            format!(
                "the first-boot settings in {} were NOT applied: {reason}. The file was moved to {} (readable by root only); fix it and copy it back, or apply it with `printvigil setup firstboot --from {}`",
                boot_file.display(),
                kept.display(),
                kept.display()
            ),
            true,
        )),
    }
}

/// Whether the config names at least one printer: the service's start condition. `Err` is
/// the message to show when it names none.
pub fn configured(config: &crate::config::Config, path: &Path) -> Result<String, String> {
    if config.printers.is_empty() {
        return Err(format!(
            "no printer is configured in {}: the service waits until one is. Run `sudo printvigil setup`, then `sudo systemctl restart printvigil`",
            path.display()
        ));
    }
    let names: Vec<&str> = config.printers.iter().map(|p| p.name()).collect();
    Ok(format!("{} printer(s) configured: {}", names.len(), names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_good_file_is_merged_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("printvigil.toml");
        let config = dir.path().join("etc/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "# the image's config\n[watch]\ncadence_secs = 10.0 # Obico's\n").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(&boot, "[[printers]]\nname = \"farm-07\"\nkind = \"simulated\"\n[server]\nurl = \"https://s.example\"\ntoken = \"SECRET\"\n").unwrap();
        let outcome = apply(&boot, &config).unwrap();
        let Outcome::Merged(m) = &outcome else { panic!("{outcome:?}") };
        assert_eq!(m.printers, ["farm-07"]);
        assert!(!boot.exists(), "the file must leave the boot partition");
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.starts_with("# the image's config\n") && text.contains("cadence_secs = 10.0 # Obico's"), "{text}");
        assert!(text.contains("farm-07") && text.contains("SECRET"));
        assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o640);
        let (line, error) = report(&outcome, &boot, &config).unwrap();
        assert!(!error && line.contains("printers farm-07") && !line.contains("SECRET"), "{line}");
        // Applied once: the next start finds nothing.
        assert!(matches!(apply(&boot, &config).unwrap(), Outcome::Absent));
        let loaded = crate::config::Config::from_toml_str(&text).unwrap();
        assert!(configured(&loaded, &config).unwrap().contains("farm-07"));
    }

    #[test]
    fn a_bad_file_is_refused_moved_aside_and_the_config_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("printvigil.toml");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "# unchanged\n").unwrap();
        for bad in [
            "[[printers]]\nname = \"x\"\nkind = \"moonraker\"\nurl = \"http://h\"\napi_kee = \"SECRET\"\n",
            "[[printers]\n",
            "[[printers]]\nkind = \"simulated\"\n",
        ] {
            std::fs::write(&boot, bad).unwrap();
            let outcome = apply(&boot, &config).unwrap();
            let Outcome::Refused { kept, reason } = &outcome else { panic!("{bad}: {outcome:?}") };
            assert!(!boot.exists());
            assert_eq!(std::fs::read_to_string(kept).unwrap(), bad);
            assert_eq!(std::fs::metadata(kept).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::read_to_string(&config).unwrap(), "# unchanged\n");
            let (line, error) = report(&outcome, &boot, &config).unwrap();
            assert!(error && line.contains("NOT applied") && line.contains(reason.as_str()), "{line}");
        }
        let empty = crate::config::Config::from_toml_str("").unwrap();
        assert!(configured(&empty, &config).unwrap_err().contains("printvigil setup"));
    }
}
