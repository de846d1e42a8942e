//! The amd64 Debian package installed into a fresh Debian root of the test's own, as a Pi
//! owner installs it (`apt-get install ./printvigil_*.deb`): the user, the config's owner
//! and mode, the unit enabled, `printvigil --version`, `check` and `demo` run there; then
//! removed (the conffile stays) and purged, after which nothing of it is left but what
//! Debian keeps (the system user and group, dpkg's and apt's records and logs).
//!
//! Needs root (chroot, mounts in a private mount namespace) and two things
//! `scripts/test-package.sh` provides: `PVTEST_DEB` (the .deb, from `scripts/package.sh`)
//! and `PVTEST_DEBIAN_ROOT` (a tar of a `debootstrap --variant=minbase
//! --include=systemd,ca-certificates bookworm` root, from `scripts/debian-root.sh`). Without them the test says so and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Prereqs {
    deb: PathBuf,
    root_tar: PathBuf,
}

fn prereqs() -> Option<Prereqs> {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_file());
    let why = match (var("PVTEST_DEB"), var("PVTEST_DEBIAN_ROOT")) {
        (Some(deb), Some(root_tar)) if unsafe { libc::geteuid() } == 0 => return Some(Prereqs { deb, root_tar }),
        (Some(_), Some(_)) => "it needs root (chroot and mounts)".to_string(),
        _ => "PVTEST_DEB and PVTEST_DEBIAN_ROOT are not set to files; scripts/test-package.sh builds them and runs this test".to_string(),
    };
    println!("SKIPPED deb_install: {why}");
    None
}

/// A Debian root in a temporary directory. Its mounts live only in the private mount
/// namespace of each command, so none is left behind when a command ends or the test fails.
struct Root {
    dir: tempfile::TempDir,
}

struct Ran {
    ok: bool,
    code: Option<i32>,
    out: String,
}

impl Root {
    fn unpack(tar: &Path) -> Root {
        let dir = tempfile::Builder::new().prefix("printvigil-debroot-").tempdir_in("/var/tmp").unwrap();
        let st = Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(dir.path()).status().unwrap();
        assert!(st.success(), "cannot unpack {}", tar.display());
        Root { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// Runs `script` with /bin/sh inside the root (proc and dev mounted), with a clean
    /// environment as a login would have.
    fn sh(&self, script: &str) -> Ran {
        let outer = r#"set -e
mount -t proc proc "$1/proc"
mount --rbind /dev "$1/dev"
exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  DEBIAN_FRONTEND=noninteractive /bin/sh -c "$2" 2>&1"#;
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", outer, "sh"])
            .arg(self.dir.path())
            .arg(script)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        println!("# {script}\n{text}");
        Ran { ok: out.status.success(), code: out.status.code(), out: text }
    }

    fn must(&self, script: &str) -> String {
        let r = self.sh(script);
        assert!(r.ok, "`{script}` failed ({:?}):\n{}", r.code, r.out);
        r.out
    }

    /// Every path in the root but the kernel's, /tmp's and /run's.
    fn files(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![self.dir.path().to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let rel = format!("/{}", e.path().strip_prefix(self.dir.path()).unwrap().display());
                if ["/proc", "/sys", "/dev", "/tmp", "/run"].contains(&rel.as_str()) {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                }
                out.insert(rel);
            }
        }
        out
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Never delete through a mount: refuse if one is still visible here.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.path().to_string_lossy().into_owned();
        if mounts.lines().any(|l| l.contains(&root)) {
            eprintln!("leaving {root} in place: something is still mounted under it");
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        }
    }
}

/// What Debian keeps after a purge, and records every package operation leaves.
fn kept_by_debian(path: &str) -> bool {
    const FILES: &[&str] =
        &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"];
    const TREES: &[&str] = &["/var/lib/dpkg/", "/var/log/", "/var/cache/apt/", "/var/lib/apt/", "/var/cache/debconf/"];
    FILES.contains(&path) || TREES.iter().any(|t| path.starts_with(t))
}

fn id_of(root: &Root, db: &str, name: &str) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(root.path(db)).unwrap();
    text.lines().find(|l| l.starts_with(&format!("{name}:"))).map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f[2].parse().unwrap(), l.to_string())
    })
}

#[test]
fn the_package_installs_runs_and_purges_cleanly_in_a_fresh_debian_root() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Some(p) = prereqs() else { return };
    let root = Root::unpack(&p.root_tar);
    let before = root.files();
    std::fs::copy(&p.deb, root.path("/tmp/printvigil.deb")).unwrap();

    // As a user does it: apt resolves the dependencies (all present in a base system).
    let t = std::time::Instant::now();
    let out = root.must("apt-get install -y /tmp/printvigil.deb");
    println!("FIGURE apt-get install: {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.contains("Next: sudo printvigil setup"), "{out}");

    // The user and its groups, the config's owner and mode, the state dir, the unit enabled.
    let (uid, _) = id_of(&root, "/etc/passwd", "printvigil").expect("user printvigil was not created");
    let (gid, _) = id_of(&root, "/etc/group", "printvigil").expect("group printvigil was not created");
    assert!(uid < 1000, "printvigil must be a system user, got uid {uid}");
    for g in ["video", "dialout"] {
        let (_, line) = id_of(&root, "/etc/group", g).unwrap();
        assert!(line.rsplit(':').next().unwrap().split(',').any(|m| m == "printvigil"), "not in {g}: {line}");
    }
    let conf = std::fs::metadata(root.path("/etc/printvigil/config.toml")).unwrap();
    assert_eq!((conf.uid(), conf.gid(), conf.permissions().mode() & 0o777), (0, gid, 0o640));
    let state = std::fs::metadata(root.path("/var/lib/printvigil")).unwrap();
    assert_eq!((state.uid(), state.permissions().mode() & 0o777), (uid, 0o700));
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/printvigil.service");
    assert_eq!(std::fs::read_link(&wants).unwrap(), Path::new("/lib/systemd/system/printvigil.service"));
    assert!(root.path("/usr/lib/printvigil/libonnxruntime.so").is_file());

    let version = root.must("printvigil --version");
    assert_eq!(version.trim(), format!("printvigil {}", env!("CARGO_PKG_VERSION")));

    // Not configured yet: the service's start condition says so and fails (skipped unit).
    let cond = root.sh("printvigil setup configured");
    assert_eq!(cond.code, Some(1), "{}", cond.out);
    assert!(cond.out.contains("no printer is configured in /etc/printvigil/config.toml"), "{}", cond.out);
    // The first-boot step has nothing to do and says nothing.
    assert_eq!(root.must("printvigil setup firstboot").trim(), "");

    // check as the service's user: the shipped config loads; no printer and no model yet.
    let check = root.sh("setpriv --reuid=printvigil --regid=printvigil --init-groups printvigil check");
    assert!(!check.ok, "check must fail without a printer:\n{}", check.out);
    assert!(check.out.contains("ok    config is valid"), "{}", check.out);
    assert!(check.out.contains("ok    state directory: /var/lib/printvigil is writable"), "{}", check.out);
    assert!(check.out.contains("FAIL  printers: none configured"), "{}", check.out);
    assert!(check.out.contains("printvigil model fetch"), "{}", check.out);

    // The demo: the whole loop with the packaged ONNX Runtime from /usr/lib/printvigil/.
    let demo = root.must("cd /tmp && printvigil demo --dir /tmp/demo 2>&1");
    assert!(demo.contains("/usr/lib/printvigil/libonnxruntime.so"), "the demo did not use the packaged runtime:\n{demo}");
    assert!(demo.to_lowercase().contains("paused"), "{demo}");

    // remove: the program goes, the conffile stays, the unit is masked (debhelper's way).
    root.must("apt-get remove -y printvigil");
    assert!(!root.path("/usr/bin/printvigil").exists());
    assert!(!root.path("/usr/lib/printvigil").exists());
    assert!(root.path("/etc/printvigil/config.toml").is_file(), "remove must keep the conffile");

    // purge: nothing of it is left but what Debian keeps.
    root.must("apt-get purge -y printvigil");
    let status = root.sh("dpkg-query -W -f='${Status}' printvigil");
    assert!(!status.out.contains("installed") && !status.out.contains("config-files"), "{}", status.out);
    let after = root.files();
    let left: Vec<&String> = after.difference(&before).filter(|p| !kept_by_debian(p)).collect();
    assert!(left.is_empty(), "left behind after purge: {left:#?}");
    let gone: Vec<&String> = before.difference(&after).filter(|p| !kept_by_debian(p)).collect();
    assert!(gone.is_empty(), "removed from the base system: {gone:#?}");
    // The system user stays (Debian never deletes one: files it owned may remain).
    assert!(id_of(&root, "/etc/passwd", "printvigil").is_some());
}
