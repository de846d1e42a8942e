//! The systemd files in `systemd/`: the unit keeps the directives the daemon and its users
//! rely on, the sysusers file makes the user the unit runs as, and (where systemd-analyze
//! is installed, as in CI) the unit's exposure stays at 2.0 or lower.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Section -> key -> every value assigned, in order (systemd keys can repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        // A trailing backslash continues the line.
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let section = section.as_ref().unwrap_or_else(|| panic!("line {}: a key before any [section]", n + 1));
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        unit.get_mut(section).unwrap().entry(key.trim().to_string()).or_default().push(value.trim().to_string());
    }
    unit
}

fn service() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo("systemd/printvigil.service")).unwrap();
    let mut unit = parse_unit(&text);
    assert!(unit.contains_key("Unit") && unit.contains_key("Install"), "sections missing");
    unit.remove("Service").expect("no [Service] section")
}

/// The value in effect (the last assignment), or a failure naming the key.
fn last<'a>(service: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    service.get(key).and_then(|v| v.last()).unwrap_or_else(|| panic!("{key}= is missing from the unit"))
}

/// Every word assigned to a list-valued key (an empty assignment resets the list).
fn words(service: &BTreeMap<String, Vec<String>>, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in service.get(key).into_iter().flatten() {
        if v.is_empty() {
            out.clear();
        }
        out.extend(v.split_whitespace().map(str::to_string));
    }
    out
}

fn is_true(v: &str) -> bool {
    matches!(v, "yes" | "true" | "on" | "1")
}

#[test]
fn the_unit_keeps_its_must_have_directives() {
    let s = service();
    assert_eq!(last(&s, "Type"), "notify");
    assert_eq!(last(&s, "NotifyAccess"), "main");
    assert_eq!(last(&s, "ExecStart"), "/usr/bin/printvigil run");
    let watchdog = last(&s, "WatchdogSec");
    let secs: u64 = watchdog.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("WatchdogSec={watchdog}: use seconds"));
    assert!(secs >= 10, "WatchdogSec={watchdog} is too short for a Pi under load");
    assert_eq!(last(&s, "Restart"), "on-failure");
    assert!(s.contains_key("RestartSec") && s.contains_key("TimeoutStopSec"));
    assert_eq!(last(&s, "User"), "printvigil");
    let groups = words(&s, "SupplementaryGroups");
    assert!(groups.iter().any(|g| g == "video") && groups.iter().any(|g| g == "dialout"), "{groups:?}");
    assert!(is_true(last(&s, "NoNewPrivileges")));
    assert_eq!(last(&s, "ProtectSystem"), "strict");
    assert!(is_true(last(&s, "ProtectHome")), "ProtectHome={}", last(&s, "ProtectHome"));
    assert!(is_true(last(&s, "PrivateTmp")));
    assert_eq!(last(&s, "StateDirectory"), "printvigil");
    assert_eq!(last(&s, "ConfigurationDirectory"), "printvigil");
    assert_eq!(last(&s, "CapabilityBoundingSet"), "");
}

#[test]
fn cameras_serial_ports_and_the_network_stay_reachable() {
    let s = service();
    // Hiding /dev would lose cameras and serial printers.
    assert!(!s.get("PrivateDevices").and_then(|v| v.last()).is_some_and(|v| is_true(v)));
    if s.get("DevicePolicy").and_then(|v| v.last()).is_some_and(|v| v != "auto") {
        let allowed: Vec<_> = s["DeviceAllow"].iter().filter_map(|v| v.split_whitespace().next()).collect();
        for dev in ["char-video4linux", "char-ttyUSB", "char-ttyACM"] {
            assert!(allowed.contains(&dev), "DeviceAllow={dev} rw is missing: {allowed:?}");
        }
    }
    let families = words(&s, "RestrictAddressFamilies");
    for family in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(families.iter().any(|f| f == family), "{family} missing from {families:?}");
    }
    assert!(!s.contains_key("IPAddressDeny") && !s.contains_key("PrivateNetwork"));
    // Inference threads: a number the config accepts (at least one).
    let env = words(&s, "Environment");
    let threads = env.iter().find_map(|e| e.strip_prefix("PRINTVIGIL_DETECTOR__INTRA_THREADS=")).expect("thread cap");
    assert!(threads.parse::<usize>().is_ok_and(|n| n >= 1), "{threads}");
}

#[test]
fn sysusers_makes_the_units_user_with_the_device_groups() {
    let text = std::fs::read_to_string(repo("systemd/printvigil.sysusers")).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let user = last(&service(), "User").to_string();
    assert!(lines.iter().any(|l| l[..2] == ["u", user.as_str()]), "no `u {user}` line");
    for group in ["video", "dialout"] {
        assert!(lines.iter().any(|l| l[..] == ["m", user.as_str(), group]), "no `m {user} {group}` line");
    }
}

#[test]
fn the_security_exposure_is_at_most_2_0() {
    let unit = repo("systemd/printvigil.service");
    let out = match Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit).output() {
        Ok(out) => out,
        Err(e) => {
            println!("note: systemd-analyze not runnable ({e}); exposure not checked here (CI installs systemd)");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{stderr}");
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score in:\n{text}"));
    let score: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("{line}");
    assert!(score <= 2.0, "{line}\n{text}");
}

#[test]
fn the_parser_reads_repeats_resets_and_continuations() {
    let unit = parse_unit("# c\n[Service]\nA=1\nA=2\nB=x \\\n  y\n; c\nC=\n[Install]\n");
    let s = &unit["Service"];
    assert_eq!(s["A"], ["1", "2"]);
    assert_eq!(s["B"], ["x y"]);
    assert_eq!(words(&parse_unit("[S]\nG=a b\nG=\nG=c\n")["S"], "G"), ["c"]);
    assert_eq!(last(s, "C"), "");
}

#[test]
fn the_unit_merges_first_boot_settings_then_waits_for_a_printer() {
    let s = service();
    let conditions = s.get("ExecCondition").cloned().unwrap_or_default();
    // First the merge, as root ("+", the config and /boot/firmware are read-only to the
    // service) and never stopping the start ("-"); then the wait for a configured printer,
    // as the service's user.
    assert_eq!(
        conditions,
        ["-+/usr/bin/printvigil setup firstboot", "/usr/bin/printvigil setup configured"],
        "ExecCondition lines changed"
    );
    let unit = parse_unit(&std::fs::read_to_string(repo("systemd/printvigil.service")).unwrap());
    assert_eq!(unit["Unit"]["Documentation"], ["man:printvigil(1)"]);
    assert!(repo("packaging/deb/printvigil.1").is_file(), "the man page the unit names");
}

#[test]
fn the_conditions_do_what_the_unit_expects_of_them() {
    let bin = env!("CARGO_BIN_EXE_printvigil");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "# shipped: no printer\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(bin).arg("--config").arg(&config).args(args).env_remove("PRINTVIGIL_CONFIG").output().unwrap()
    };
    // No printer: exit 1 (systemd skips the unit, it does not fail), with what to do.
    let out = run(&["setup", "configured"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("printvigil setup"));
    // No first-boot file: nothing to do, exit 0, silent.
    let boot = dir.path().join("printvigil.toml");
    let out = run(&["setup", "firstboot", "--from", boot.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    // A first-boot file with a printer: merged and deleted; now the service may start.
    std::fs::write(&boot, "[[printers]]\nname = \"farm-07\"\nkind = \"simulated\"\n").unwrap();
    let out = run(&["setup", "firstboot", "--from", boot.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("printers farm-07"), "{out:?}");
    assert!(!boot.exists());
    assert!(std::fs::read_to_string(&config).unwrap().starts_with("# shipped: no printer\n"));
    let out = run(&["setup", "configured"]);
    assert!(out.status.success(), "{out:?}");
    // A broken file: refused (exit 1: the unit's "-" ignores it), moved aside, not merged.
    std::fs::write(&boot, "[[printers]]\nname = \"x\"\nkind = \"moonraker\"\nurll = 1\n").unwrap();
    let out = run(&["setup", "firstboot", "--from", boot.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT applied"), "{out:?}");
    assert!(!boot.exists() && dir.path().join("firstboot-refused.toml").exists());
}
