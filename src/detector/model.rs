//! The ONNX session: load a model, check its I/O signature against Obico's detector, run it.
//!
//! Names and sizes are read from the session at load time; a model whose signature differs
//! from the detector's is refused with what was expected and what was found.

use std::fmt;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorRef, ValueType};

use super::runtime::{self, RuntimeError};

/// Obico's detector: one input and two outputs, by name, type and shape.
pub const INPUT: (&str, [i64; 4]) = ("input", [1, 3, 416, 416]);
pub const BOXES: (&str, [i64; 4]) = ("boxes", [1, 845, 1, 4]);
pub const CONFS: (&str, [i64; 3]) = ("confs", [1, 845, 1]);

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model file {0} does not exist; fetch Obico's model with `printvigil model fetch`, or set `detector.model`")]
    Missing(PathBuf),
    #[error("model file {0} is empty; fetch it again with `printvigil model fetch`")]
    Empty(PathBuf),
    #[error("ONNX Runtime could not load the model {path}: {reason}; is it an ONNX file? fetch Obico's model with `printvigil model fetch`")]
    Load { path: PathBuf, reason: String },
    #[error("model {path} is not Obico's failure detector:\n  expected {expected}\n  found    {found}")]
    Signature { path: PathBuf, expected: String, found: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// Session settings that matter on a Raspberry Pi: threads and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionSettings {
    /// Intra-op threads.
    pub threads: usize,
    /// Memory tuning (see [`Memory`]).
    pub memory: MemoryTuning,
}

/// How the session trades memory for load time and speed. The defaults were chosen by
/// `printvigil bench` on the full-size model: the arena keeps `session.run` from faulting
/// in fresh pages every frame; pre-packing only adds a second copy of weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryTuning {
    /// Keep ONNX Runtime's CPU arena allocator (faster allocation, more resident memory).
    pub arena: bool,
    /// Let kernels pre-pack weights (a second copy of some weights).
    pub prepack: bool,
    /// Full graph optimisation (layout transforms; may copy weights).
    pub full_optimization: bool,
    /// Let idle inference threads spin-wait for work. Off: spinning threads keep the cores
    /// busy after `session.run` returns, which slows the next frame's pre-processing (it
    /// runs on those cores: decode took twice as long in `printvigil bench` at 2 threads)
    /// and burns CPU the printer host may want.
    pub spin: bool,
}

impl Default for MemoryTuning {
    fn default() -> Self {
        MemoryTuning { arena: true, prepack: false, full_optimization: true, spin: false }
    }
}

impl SessionSettings {
    pub fn new(threads: usize) -> Self {
        SessionSettings { threads, memory: MemoryTuning::default() }
    }
}

/// A loaded detector model.
pub struct Model {
    // Declared before `_bytes`: the session borrows the mapped model and must drop first.
    session: Session,
    /// The memory-mapped ORT-format model the session's weights live in, when loaded so.
    _bytes: Option<memmap2::Mmap>,
    path: PathBuf,
    width: usize,
    height: usize,
    boxes_len: usize,
    threads: usize,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({}, {}x{})", self.path.display(), self.width, self.height)
    }
}

struct Outlet {
    name: String,
    shape: Option<Vec<i64>>,
    float: bool,
}

impl fmt::Display for Outlet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.shape, self.float) {
            (Some(s), true) => write!(f, "`{}` float32 {:?}", self.name, s),
            (Some(s), false) => write!(f, "`{}` (not float32) {:?}", self.name, s),
            (None, _) => write!(f, "`{}` (not a tensor)", self.name),
        }
    }
}

fn outlets(list: &[ort::value::Outlet]) -> Vec<Outlet> {
    list.iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => Outlet {
                name: o.name().to_string(),
                shape: Some(shape.iter().copied().collect()),
                float: *ty == ort::value::TensorElementType::Float32,
            },
            _ => Outlet { name: o.name().to_string(), shape: None, float: false },
        })
        .collect()
}

fn describe(inputs: &[Outlet], outputs: &[Outlet]) -> String {
    let list = |v: &[Outlet]| v.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ");
    format!("inputs [{}] -> outputs [{}]", list(inputs), list(outputs))
}

/// A dimension matches when equal, or when it is the batch dimension left symbolic.
fn shape_matches(found: &Option<Vec<i64>>, expected: &[i64]) -> bool {
    match found {
        Some(s) => {
            s.len() == expected.len()
                && s.iter().zip(expected).enumerate().all(|(i, (f, e))| f == e || (i == 0 && *f < 0))
        }
        None => false,
    }
}

/// The optimised ORT-format copy of `model`, kept beside it. Its name carries a
/// fingerprint of this machine's CPU features and ONNX Runtime library, because the
/// optimised graph is specific to both: a state directory copied to another host (a farm
/// image) gets a fresh copy there instead of a wrong one.
pub fn cache_path(model: &Path, settings: &SessionSettings) -> PathBuf {
    use sha2::Digest;
    let level = if settings.memory.full_optimization { "all" } else { "ext" };
    let mut h = sha2::Sha256::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let features = cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features")).unwrap_or("");
    h.update(features.as_bytes());
    h.update(std::env::consts::ARCH.as_bytes());
    if let Some(lib) = runtime::loaded().and_then(|p| std::fs::metadata(p).ok()) {
        h.update(lib.len().to_le_bytes());
    }
    let fingerprint = &hex::encode(h.finalize())[..12];
    let mut name = model.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{level}-{fingerprint}.ort"));
    model.with_file_name(name)
}

fn builder(env: &ort::environment::Environment, settings: &SessionSettings) -> ort::Result<SessionBuilder> {
    let b = Session::builder(env)?
        .with_intra_threads(settings.threads.max(1))?
        .with_inter_threads(1)?
        .with_optimization_level(if settings.memory.full_optimization {
            GraphOptimizationLevel::All
        } else {
            GraphOptimizationLevel::Level2
        })?
        .with_prepacking(settings.memory.prepack)?
        .with_memory_pattern(settings.memory.arena)?
        .with_intra_op_spinning(settings.memory.spin)?
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(settings.memory.arena).build()])?;
    Ok(b)
}

/// Loads the model through its ORT-format copy, memory-mapped so that the weights are
/// used in place (one copy, paged from the file) instead of parsed and copied. The copy is
/// made (once, or again when the model is newer) by letting ONNX Runtime save its
/// optimised graph.
fn load_cached(
    env: &ort::environment::Environment,
    path: &Path,
    settings: &SessionSettings,
) -> Result<(Session, Option<memmap2::Mmap>), String> {
    let cache = cache_path(path, settings);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((mtime(&cache), mtime(path)), (Some(c), Some(m)) if c >= m);
    if !fresh {
        // A name of its own, so that two processes preparing the same cache never share a file.
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = cache.with_extension(format!("ort.{}-{seq}.tmp", std::process::id()));
        let made = builder(env, settings)
            .and_then(|b| b.with_optimized_model_path(&tmp).map_err(Into::into))
            .and_then(|b| b.with_config_entry("session.save_model_format", "ORT").map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path));
        match made {
            Ok(session) => drop(session),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!("could not prepare {}: {e}", cache.display()));
            }
        }
        std::fs::rename(&tmp, &cache).map_err(|e| format!("could not write {}: {e}", cache.display()))?;
    }
    let file = std::fs::File::open(&cache).map_err(|e| format!("cannot open {}: {e}", cache.display()))?;
    // SAFETY: the file is printvigil's own cache; it is not modified while mapped (a new
    // copy is written to a temporary file and renamed over it).
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map {}: {e}", cache.display()))?;
    let session = builder(env, settings)
        .and_then(|b| b.with_config_entry("session.use_ort_model_bytes_directly", "1").map_err(Into::into))
        .and_then(|b| b.with_config_entry("session.use_ort_model_bytes_for_initializers", "1").map_err(Into::into))
        .and_then(|mut b| b.commit_from_memory(&bytes));
    match session {
        Ok(session) => Ok((session, Some(bytes))),
        Err(e) => {
            let _ = std::fs::remove_file(&cache);
            Err(format!("the cached model {} could not be loaded ({e}); it was removed", cache.display()))
        }
    }
}

impl Model {
    /// Loads a model (loading ONNX Runtime first, from `onnxruntime` or the usual places).
    pub fn load(path: &Path, onnxruntime: Option<&Path>, settings: SessionSettings) -> Result<Self, ModelError> {
        match std::fs::metadata(path) {
            Err(_) => return Err(ModelError::Missing(path.to_path_buf())),
            Ok(m) if m.len() == 0 => return Err(ModelError::Empty(path.to_path_buf())),
            Ok(_) => {}
        }
        runtime::init(onnxruntime)?;
        let env = runtime::environment().ok_or_else(|| ModelError::Load {
            path: path.to_path_buf(),
            reason: "the ONNX Runtime environment is not available".into(),
        })?;
        let (session, bytes) = match load_cached(env, path, &settings) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!("{e}; loading {} directly (uses more memory)", path.display());
                let session = builder(env, &settings)
                    .and_then(|mut b| b.commit_from_file(path))
                    .map_err(|e| ModelError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
                (session, None)
            }
        };
        let inputs = outlets(session.inputs());
        let outputs = outlets(session.outputs());
        let find = |v: &[Outlet], name: &str| v.iter().position(|o| o.name == name);
        let ok = inputs.len() == 1
            && outputs.len() == 2
            && find(&inputs, INPUT.0).is_some_and(|i| inputs[i].float && shape_matches(&inputs[i].shape, &INPUT.1))
            && find(&outputs, BOXES.0).is_some_and(|i| outputs[i].float && shape_matches(&outputs[i].shape, &BOXES.1))
            && find(&outputs, CONFS.0).is_some_and(|i| outputs[i].float && shape_matches(&outputs[i].shape, &CONFS.1));
        if !ok {
            return Err(ModelError::Signature {
                path: path.to_path_buf(),
                expected: format!(
                    "inputs [`{}` float32 {:?}] -> outputs [`{}` float32 {:?}, `{}` float32 {:?}]",
                    INPUT.0, INPUT.1, BOXES.0, BOXES.1, CONFS.0, CONFS.1
                ),
                found: describe(&inputs, &outputs),
            });
        }
        let shape = inputs[0].shape.as_ref().expect("checked above");
        let boxes = &outputs[find(&outputs, BOXES.0).expect("checked above")];
        Ok(Model {
            session,
            _bytes: bytes,
            path: path.to_path_buf(),
            height: shape[2] as usize,
            width: shape[3] as usize,
            boxes_len: boxes.shape.as_ref().expect("checked above")[1] as usize,
            threads: settings.threads.max(1),
        })
    }

    /// The model's input size (width, height), read from the session.
    pub fn input_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The intra-op threads the session was made with.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the model on an NCHW float tensor of the input size. Returns the boxes
    /// (n x 4, normalised x1 y1 x2 y2) and confidences (n) in `boxes` and `confs`.
    pub fn run(&mut self, input: &[f32], boxes: &mut Vec<f32>, confs: &mut Vec<f32>) -> Result<(), ModelError> {
        let run_err = |e: ort::Error| ModelError::Run(e.to_string());
        let shape = [1usize, 3, self.height, self.width];
        let tensor = TensorRef::from_array_view((shape, input)).map_err(run_err)?;
        let outputs = self.session.run(ort::inputs![INPUT.0 => tensor]).map_err(run_err)?;
        let take = |name: &str, per: usize, out: &mut Vec<f32>| -> Result<(), ModelError> {
            let value = outputs.get(name).ok_or_else(|| ModelError::Run(format!("no output `{name}`")))?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
            if data.len() != self.boxes_len * per {
                return Err(ModelError::Run(format!(
                    "output `{name}` has {} values, expected {}",
                    data.len(),
                    self.boxes_len * per
                )));
            }
            out.clear();
            out.extend_from_slice(data);
            Ok(())
        };
        take(BOXES.0, 4, boxes)?;
        take(CONFS.0, 1, confs)
    }
}
