//! `scripts/setup-system.sh`, the quick start's first step on a fresh machine, run against
//! stand-ins for `dpkg-query`, `apt-get` and `sudo` on a PATH of their own (the script
//! needs nothing else but bash and env): each stand-in records how it was called, so the
//! tests see exactly what the script would have installed, and how.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUILD: &[&str] = &["gcc", "g++", "libc6-dev", "make", "cmake", "nasm", "python3-pip", "python3-venv"];
const TESTS: &[&str] = &["libusb-dev", "libsodium23", "systemd", "mosquitto", "chromium", "tmux"];

/// Answers like `dpkg-query -W -f='${Package} ${Status}\n' PKG...`: the packages in
/// `FAKE_INSTALLED` are installed, those in `FAKE_REMOVED` left only their config files,
/// any other is unknown (a message on stderr, exit 1).
const DPKG_QUERY: &str = r#"#!/bin/sh
echo "dpkg-query $*" >> "$STUB_LOG"
shift 2
rc=0
for p in "$@"; do
  case " $FAKE_INSTALLED " in
    *" $p "*) echo "$p install ok installed"; continue ;;
  esac
  case " $FAKE_REMOVED " in
    *" $p "*) echo "$p deinstall ok config-files"; continue ;;
  esac
  echo "dpkg-query: no packages found matching $p" >&2
  rc=1
done
exit $rc
"#;

const APT_GET: &str = r#"#!/bin/sh
echo "apt-get $* (DEBIAN_FRONTEND=$DEBIAN_FRONTEND)" >> "$STUB_LOG"
"#;

/// A `sudo` that may be used without a password: records, then runs the command.
const SUDO: &str = r#"#!/bin/sh
echo "sudo $*" >> "$STUB_LOG"
[ "$*" = "-n true" ] && exit 0
[ "$1" = -n ] && shift
exec env "$@"
"#;

struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    /// A PATH holding bash, env and the stand-ins (`sudo` only when `with_sudo`).
    fn new(with_sudo: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in ["bash", "env"] {
            let real = which(tool);
            std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
        }
        let mut stubs = vec![("dpkg-query", DPKG_QUERY), ("apt-get", APT_GET)];
        if with_sudo {
            stubs.push(("sudo", SUDO));
        }
        for (name, text) in stubs {
            let p = bin.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Machine { dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// Runs the script as user `uid` with `installed` packages present; returns (exit code,
    /// everything printed, the stand-ins' calls).
    fn run(&self, uid: u32, installed: &[&str], removed: &[&str], args: &[&str]) -> (i32, String, Vec<String>) {
        let _ = std::fs::remove_file(self.log());
        let out = Command::new(script())
            .args(args)
            .env_clear()
            .env("PATH", self.dir.path().join("bin"))
            .env("PRINTVIGIL_SETUP_UID", uid.to_string())
            .env("STUB_LOG", self.log())
            .env("FAKE_INSTALLED", installed.join(" "))
            .env("FAKE_REMOVED", removed.join(" "))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let calls = std::fs::read_to_string(self.log()).unwrap_or_default().lines().map(str::to_owned).collect();
        (out.status.code().unwrap_or(-1), printed, calls)
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-system.sh")
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not on PATH"))
}

fn without<'a>(all: &[&'a str], gone: &[&str]) -> Vec<&'a str> {
    all.iter().copied().filter(|p| !gone.contains(p)).collect()
}

#[test]
fn nothing_missing_is_silent_and_calls_no_apt() {
    let m = Machine::new(true);
    let (rc, printed, calls) = m.run(1000, BUILD, &[], &[]);
    assert_eq!((rc, printed.as_str()), (0, ""), "{calls:?}");
    let tools: Vec<&str> = calls.iter().filter_map(|c| c.split(' ').next()).filter(|t| !t.is_empty()).collect();
    assert_eq!(tools, ["dpkg-query"], "one dpkg-query, nothing else: {calls:?}");

    let all: Vec<&str> = BUILD.iter().chain(TESTS).copied().collect();
    let (rc, printed, calls) = m.run(0, &all, &[], &["--test"]);
    assert_eq!((rc, printed.as_str()), (0, ""), "{calls:?}");
    assert!(calls.iter().all(|c| !c.starts_with("apt-get") && !c.starts_with("sudo")), "{calls:?}");
}

#[test]
fn missing_without_root_or_sudo_prints_the_one_command_and_fails() {
    let m = Machine::new(false);
    let (rc, printed, calls) = m.run(1000, &without(BUILD, &["cmake", "nasm"]), &[], &[]);
    assert_ne!(rc, 0, "{printed}");
    assert!(
        printed.contains("\n  sudo apt-get install -y --no-install-recommends cmake nasm\n"),
        "the exact command, naming only what is missing: {printed}"
    );
    assert!(calls.iter().all(|c| !c.starts_with("apt-get")), "{calls:?}");

    // A package removed with its config kept is missing too; --test adds the peers' packages.
    let (rc, printed, _) = m.run(1000, &without(BUILD, &["make"]), &["make"], &["--test"]);
    assert_ne!(rc, 0);
    assert!(
        printed.contains("sudo apt-get install -y --no-install-recommends make libusb-dev libsodium23 systemd mosquitto chromium tmux
"),
        "{printed}"
    );
}

#[test]
fn root_installs_only_the_missing_packages() {
    let m = Machine::new(false);
    let (rc, printed, calls) = m.run(0, &without(BUILD, &["cmake", "nasm"]), &[], &[]);
    assert_eq!(rc, 0, "{printed}");
    let apt: Vec<&String> = calls.iter().filter(|c| c.starts_with("apt-get")).collect();
    assert_eq!(
        apt,
        [
            "apt-get update -qq (DEBIAN_FRONTEND=noninteractive)",
            "apt-get install -y -qq --no-install-recommends cmake nasm (DEBIAN_FRONTEND=noninteractive)"
        ],
        "{calls:?}"
    );
    assert!(printed.contains("installing the missing system packages: cmake nasm"), "{printed}");
}

#[test]
fn a_user_with_sudo_installs_through_sudo() {
    let m = Machine::new(true);
    let (rc, printed, calls) = m.run(1000, &without(BUILD, &["g++"]), &[], &[]);
    assert_eq!(rc, 0, "{printed}");
    assert!(
        calls.contains(&"sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"apt-get install -y -qq --no-install-recommends g++ (DEBIAN_FRONTEND=noninteractive)".to_string()), "{calls:?}");
}
