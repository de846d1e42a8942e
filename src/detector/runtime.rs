//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Order: config `detector.onnxruntime`, env `ORT_DYLIB_PATH`, beside the executable,
//! `/usr/lib/printvigil/`. The first candidate that exists and loads wins; a failure names
//! every place tried and what to do. Nothing here panics, and nothing else in printvigil
//! needs the library, so a missing runtime only disables inference.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Whether this build can run inference at all. 32-bit ARM (armv7, 32-bit Raspberry Pi OS)
/// has no ONNX Runtime build: there printvigil runs everything but the detector.
pub const INFERENCE: bool = !cfg!(target_arch = "arm");
/// What a build without inference says at start and in `check`.
pub const NO_INFERENCE: &str = concat!(
    "this is a 32-bit ARM (armv7) build, and ONNX Runtime exists for no such system: ",
    "printvigil follows the printers and mirrors prints to the server, but scores no frames, ",
    "so it detects no failure and pauses nothing. For failure detection install a 64-bit OS ",
    "(Raspberry Pi OS 64-bit) and the arm64 package"
);

/// The library file name ONNX Runtime ships as on Linux.
pub const LIB_NAME: &str = "libonnxruntime.so";
/// Where packaged installs put the library.
pub const SYSTEM_DIR: &str = "/usr/lib/printvigil";

#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "ONNX Runtime could not be loaded; tried:\n{}\nfix: get libonnxruntime.so (1.31 or newer) for this machine's architecture ({arch}) with \
     `scripts/fetch-onnxruntime.sh --dest /usr/lib/printvigil` (or `--dest` the folder of the printvigil executable), \
     or point `detector.onnxruntime` / ORT_DYLIB_PATH at one",
    tried.iter().map(|(p, why)| format!("  - {}: {why}", p.display())).collect::<Vec<_>>().join("\n"),
    arch = std::env::consts::ARCH
)]
pub struct RuntimeError {
    pub tried: Vec<(PathBuf, String)>,
}

static LOADED: OnceLock<Result<PathBuf, RuntimeError>> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The candidate paths, in the order they are tried.
pub fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(dir.join(LIB_NAME));
    }
    out.push(Path::new(SYSTEM_DIR).join(LIB_NAME));
    out
}

/// Loads ONNX Runtime once per process and returns the path it came from.
/// Later calls return the first call's outcome.
pub fn init(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    LOADED.get_or_init(|| load_first(&candidates(configured))).clone()
}

/// The process's ONNX Runtime environment, once [`init`] has succeeded.
pub fn environment() -> Option<&'static ort::environment::Environment> {
    ENVIRONMENT.get()
}

/// The path ONNX Runtime was loaded from, if it was.
pub fn loaded() -> Option<PathBuf> {
    LOADED.get().and_then(|r| r.as_ref().ok().cloned())
}

fn load_first(candidates: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    let mut tried = Vec::new();
    if !INFERENCE {
        return Err(RuntimeError { tried: vec![(PathBuf::from(LIB_NAME), NO_INFERENCE.to_string())] });
    }
    for path in candidates {
        let path = if path.is_dir() { path.join(LIB_NAME) } else { path.clone() };
        if !path.exists() {
            tried.push((path, "no such file".to_string()));
            continue;
        }
        if let Some(why) = wrong_architecture(&path) {
            tried.push((path, why));
            continue;
        }
        match ort::init_from(&path) {
            Ok(builder) => {
                // ort turns ONNX Runtime's telemetry on unless told otherwise; printvigil
                // sends nothing anywhere but to the printer and the configured server.
                match builder.with_name("printvigil").with_telemetry(false).build() {
                    // ort keeps only a weak reference to the environment: hold it for the
                    // life of the process so every session shares it.
                    Ok(env) => {
                        let _ = ENVIRONMENT.set(env);
                    }
                    Err(e) => {
                        tried.push((path, format!("loaded, but its environment failed: {e}")));
                        continue;
                    }
                }
                tracing::info!(path = %path.display(), "loaded ONNX Runtime");
                return Ok(path);
            }
            Err(e) => tried.push((path, e.to_string())),
        }
    }
    Err(RuntimeError { tried })
}

/// Reads the ELF header and says why the file cannot be loaded here, if it cannot.
pub fn wrong_architecture(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 20];
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" {
        return Some("not a shared library (no ELF header)".into());
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let found = match machine {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "arm",
        0x03 => "x86",
        0xf3 => "riscv64",
        _ => "an unknown architecture",
    };
    let here = std::env::consts::ARCH;
    if found != here {
        return Some(format!("built for {found}, but this machine is {here}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_comes_first_and_system_dir_last() {
        let c = candidates(Some(Path::new("/opt/x/libonnxruntime.so")));
        assert_eq!(c[0], Path::new("/opt/x/libonnxruntime.so"));
        assert_eq!(c.last().unwrap(), &Path::new(SYSTEM_DIR).join(LIB_NAME));
    }

    #[test]
    fn missing_and_foreign_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libonnxruntime.so");
        // An ELF header for aarch64 (or x86_64 when running on aarch64).
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(18, 0);
        let other: u16 = if std::env::consts::ARCH == "aarch64" { 0x3e } else { 0xb7 };
        elf.extend_from_slice(&other.to_le_bytes());
        std::fs::write(&fake, &elf).unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"hello").unwrap();
        let err = load_first(&[dir.path().join("nope.so"), fake.clone(), text.clone()]).unwrap_err();
        assert_eq!(err.tried.len(), 3);
        assert_eq!(err.tried[0].1, "no such file");
        assert!(err.tried[1].1.contains("but this machine is"), "{:?}", err.tried[1]);
        assert!(err.tried[2].1.contains("no ELF header"));
        let msg = err.to_string();
        assert!(msg.contains("fetch-onnxruntime.sh") && msg.contains("nope.so"), "{msg}");
    }
}
