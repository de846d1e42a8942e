//! The ONNX session: load a model, check its I/O signature against Obico's detector, run it.
//!
//! Names and sizes are read from the session at load time; a model whose signature differs
//! from the detector's is refused with what was expected and what was found.

use std::fmt;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorRef, ValueType};

use super::cache;
pub use super::cache::cache_path;
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
    session: Session,
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

pub(super) fn builder(env: &ort::environment::Environment, settings: &SessionSettings) -> ort::Result<SessionBuilder> {
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

/// Loads the model through its optimised copy (see [`super::cache`]), whose weights ONNX
/// Runtime memory-maps from their file and uses in place (one copy, paged from disk)
/// instead of parsing and copying them. The copy is made first when missing or older
/// than the model.
fn load_cached(env: &ort::environment::Environment, path: &Path, settings: &SessionSettings) -> Result<Session, String> {
    let (cache, helper) = cache::ensure(path, settings)?;
    if let Some(h) = helper {
        tracing::info!(
            "prepared the optimised copy {} in a helper process (pid {}) in {:.1} s; its peak RSS {:.0} MiB",
            cache.display(),
            h.pid,
            h.took.as_secs_f64(),
            h.peak_rss_mib
        );
    }
    builder(env, settings).and_then(|mut b| b.commit_from_file(&cache)).map_err(|e| {
        let _ = std::fs::remove_file(&cache);
        format!("the optimised copy {} could not be loaded ({e}); it was removed", cache.display())
    })
}

impl Model {
    /// Loads a model (loading ONNX Runtime first, from `onnxruntime` or the usual places).
    pub fn load(path: &Path, onnxruntime: Option<&Path>, settings: SessionSettings) -> Result<Self, ModelError> {
        let env = Self::environment(path, onnxruntime)?;
        let session = match load_cached(env, path, &settings) {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(
                    "{e}; loading {} directly instead (uses more memory; tried again at the next start)",
                    path.display()
                );
                builder(env, &settings)
                    .and_then(|mut b| b.commit_from_file(path))
                    .map_err(|e| ModelError::Load { path: path.to_path_buf(), reason: e.to_string() })?
            }
        };
        Self::checked(session, path, settings.threads)
    }

    /// Loads a model as plain ONNX Runtime would, from the `.onnx` with the library's
    /// default session options but the thread count (`printvigil bench --compare`'s
    /// reference).
    pub fn load_plain(path: &Path, onnxruntime: Option<&Path>, threads: usize) -> Result<Self, ModelError> {
        let env = Self::environment(path, onnxruntime)?;
        let session = Session::builder(env)
            .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| ModelError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::checked(session, path, threads)
    }

    fn environment(path: &Path, onnxruntime: Option<&Path>) -> Result<&'static ort::environment::Environment, ModelError> {
        match std::fs::metadata(path) {
            Err(_) => return Err(ModelError::Missing(path.to_path_buf())),
            Ok(m) if m.len() == 0 => return Err(ModelError::Empty(path.to_path_buf())),
            Ok(_) => {}
        }
        runtime::init(onnxruntime)?;
        runtime::environment().ok_or_else(|| ModelError::Load {
            path: path.to_path_buf(),
            reason: "the ONNX Runtime environment is not available".into(),
        })
    }

    /// Checks the session's signature against the detector's.
    fn checked(session: Session, path: &Path, threads: usize) -> Result<Self, ModelError> {
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
            path: path.to_path_buf(),
            height: shape[2] as usize,
            width: shape[3] as usize,
            boxes_len: boxes.shape.as_ref().expect("checked above")[1] as usize,
            threads: threads.max(1),
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
