//! ONNX Runtime's side of `lowbit bench --vs-ort`: the same .onnx file, feeds, order, warm-up
//! and run count, timed by the `onnxruntime` Python package (the one the test venv holds;
//! lowbit links no ONNX Runtime of its own).
//!
//! [`Ort::start`] makes a private temp folder, writes `ort.py` (embedded) into it and checks that
//! the Python imports onnxruntime, before lowbit times anything, so a missing package fails in a
//! second rather than after the lowbit runs. [`Ort::bench`] writes each feed set as one `.npz`,
//! runs the script once and reads back its timings and the outputs of the first run. The folder
//! is removed when [`Ort`] drops, errors included.

use lowbit_tensor::{npy, Tensor, TensorError};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

const SCRIPT: &str = include_str!("ort.py");

/// Why ONNX Runtime could not be timed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    #[error("cannot create a fresh folder in {}", .base.display())]
    TempDir { base: PathBuf, source: std::io::Error },
    #[error("cannot create {}", .path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot write the inputs for ONNX Runtime to {}", .path.display())]
    WriteInputs { path: PathBuf, source: TensorError },
    #[error(
        "--vs-ort: cannot run Python '{}' (from {from}): {source}; pass --python PATH or set \
         LOWBIT_PYTHON to a Python with onnxruntime and numpy (`source \
         scripts/setup-test-env.sh` creates .venv with both)",
        .python.display()
    )]
    NoPython { python: PathBuf, from: &'static str, source: std::io::Error },
    #[error(
        "--vs-ort: Python '{}' (from {from}) lacks onnxruntime or numpy ({message}); \
         install them with `{} -m pip install onnxruntime numpy`, or `source \
         scripts/setup-test-env.sh` (creates .venv with both and exports \
         LOWBIT_PYTHON)",
        .python.display(),
        .python.display()
    )]
    NoOnnxRuntime { python: PathBuf, from: &'static str, message: String },
    #[error("ONNX Runtime {version} cannot load {}: {message}", .model.display())]
    Load { version: String, model: PathBuf, message: String },
    #[error("ONNX Runtime failed on {}: {message}", .model.display())]
    Run { model: PathBuf, message: String },
    #[error(
        "--vs-ort: '{} ort.py' (Python from {from}) gave no result ({status}; is it a Python 3 \
         with onnxruntime?){stderr_tail}",
        .python.display()
    )]
    NoResult {
        python: PathBuf,
        from: &'static str,
        status: std::process::ExitStatus,
        stderr_tail: String,
    },
    #[error("ort.py reported {got} timed runs instead of {runs}")]
    RunCount { got: usize, runs: usize },
}

type Result<T> = std::result::Result<T, OrtError>;

/// The Python that runs ONNX Runtime, and where the choice came from (shown in errors).
struct Python {
    path: PathBuf,
    from: &'static str,
}

impl Python {
    /// `--python`, else `$LOWBIT_PYTHON`, else `./.venv/bin/python` (what
    /// `scripts/setup-test-env.sh` creates), else `python3` from the PATH.
    fn resolve(arg: Option<&Path>) -> Python {
        if let Some(p) = arg {
            return Python { path: p.to_path_buf(), from: "--python" };
        }
        if let Some(p) = std::env::var_os("LOWBIT_PYTHON").filter(|p| !p.is_empty()) {
            return Python { path: p.into(), from: "LOWBIT_PYTHON" };
        }
        let venv = Path::new(".venv/bin/python");
        if venv.is_file() {
            return Python { path: venv.to_path_buf(), from: "./.venv" };
        }
        Python { path: "python3".into(), from: "the PATH" }
    }
}

fn write(path: PathBuf, contents: &str) -> Result<PathBuf> {
    match std::fs::write(&path, contents) {
        Ok(()) => Ok(path),
        Err(source) => Err(OrtError::Write { path, source }),
    }
}

/// A checked Python with onnxruntime, and the folder its script and files live in.
pub struct Ort {
    python: Python,
    dir: TempDir,
    pub version: String,
}

/// What `ort.py` prints in bench mode (or `error`/`message` on failure).
#[derive(Deserialize)]
struct ScriptResult {
    error: Option<String>,
    message: Option<String>,
    version: Option<String>,
    python: Option<String>,
    #[serde(default)]
    providers: Vec<String>,
    load_ms: Option<f64>,
    #[serde(default)]
    times_ms: Vec<f64>,
    #[serde(default)]
    outputs: Vec<ScriptOutput>,
}

#[derive(Deserialize)]
struct ScriptOutput {
    name: String,
    file: Option<PathBuf>,
    note: Option<String>,
}

/// ONNX Runtime's timings and first-run outputs.
pub struct OrtRun {
    /// The interpreter's `sys.executable`.
    pub python: String,
    pub providers: Vec<String>,
    /// `InferenceSession` construction.
    pub load_ms: Option<f64>,
    /// One per timed run, in run order.
    pub times_ms: Vec<f64>,
    /// Graph outputs in ORT's order: the tensor of the first run fed, or why there is none.
    pub outputs: Vec<(String, std::result::Result<Tensor, String>)>,
}

impl Ort {
    /// Finds the Python (see [`Python::resolve`]) and checks it imports onnxruntime.
    pub fn start(python: Option<&Path>) -> Result<Ort> {
        let python = Python::resolve(python);
        let base = std::env::temp_dir();
        // Named after the process so a test can check that nothing is left behind.
        let dir = tempfile::Builder::new()
            .prefix(&format!("lowbit-bench-ort-{}-", std::process::id()))
            .tempdir_in(&base)
            .map_err(|source| OrtError::TempDir { base, source })?;
        write(dir.path().join("ort.py"), SCRIPT)?;
        let mut ort = Ort { python, dir, version: String::new() };
        let r = ort.call(&json!({ "mode": "check" }), Path::new(""))?;
        ort.version = r.version.unwrap_or_default();
        Ok(ort)
    }

    /// The interpreter as given (path or command name).
    pub fn python(&self) -> String {
        self.python.path.display().to_string()
    }

    /// Times ONNX Runtime on `model`: warm-up run `i` and timed run `i` feed `sets[i % len]`,
    /// exactly as lowbit's loop does, with `threads` intra-op threads.
    pub fn bench(
        &self,
        model: &Path,
        sets: &[Vec<(String, Tensor)>],
        threads: usize,
        warmup: usize,
        runs: usize,
    ) -> Result<OrtRun> {
        let feeds_dir = self.dir.path().join("feeds");
        let out_dir = self.dir.path().join("out");
        for d in [&feeds_dir, &out_dir] {
            std::fs::create_dir(d)
                .map_err(|source| OrtError::CreateDir { path: d.clone(), source })?;
        }
        let mut feeds = Vec::with_capacity(sets.len());
        for (k, set) in sets.iter().enumerate() {
            let path = feeds_dir.join(format!("{k:06}.npz"));
            // Members are numbered: input names may hold `/` or `:`, which zip paths mangle.
            let arrays: Vec<(String, Tensor)> =
                set.iter().enumerate().map(|(j, (_, t))| (format!("i{j}"), t.clone())).collect();
            npy::write_npz(&path, &arrays)
                .map_err(|source| OrtError::WriteInputs { path: path.clone(), source })?;
            let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
            feeds.push(json!({ "file": path, "inputs": names }));
        }
        // Absolute, so the script needs no working-directory assumptions.
        let model_abs = std::path::absolute(model).unwrap_or_else(|_| model.to_path_buf());
        let job = json!({
            "mode": "bench",
            "model": model_abs,
            "feeds": feeds,
            "threads": threads,
            "warmup": warmup,
            "runs": runs,
            "out_dir": out_dir,
        });
        let r = self.call(&job, model)?;
        if r.times_ms.len() != runs {
            return Err(OrtError::RunCount { got: r.times_ms.len(), runs });
        }
        let outputs = r
            .outputs
            .into_iter()
            .map(|o| {
                let t = match (o.file, o.note) {
                    (Some(f), _) => npy::read_npy(&f).map_err(|e| e.to_string()),
                    (None, note) => Err(note.unwrap_or_else(|| "no output".into())),
                };
                (o.name, t)
            })
            .collect();
        Ok(OrtRun {
            python: r.python.unwrap_or_else(|| self.python()),
            providers: r.providers,
            load_ms: r.load_ms,
            times_ms: r.times_ms,
            outputs,
        })
    }

    /// Runs the script on `job` and parses its last stdout line; every failure becomes one
    /// message saying what to do.
    fn call(&self, job: &serde_json::Value, model: &Path) -> Result<ScriptResult> {
        let job_path = write(self.dir.path().join("job.json"), &job.to_string())?;
        let py = &self.python;
        let out = Command::new(&py.path)
            .arg(self.dir.path().join("ort.py"))
            .arg(&job_path)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OrtError::NoPython {
                python: py.path.clone(),
                from: py.from,
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let parsed = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<ScriptResult>(l).ok());
        match parsed {
            Some(r) if r.error.is_none() && out.status.success() => Ok(r),
            Some(ScriptResult { error: Some(kind), message, .. }) => {
                let message = message.unwrap_or_default();
                let model = model.to_path_buf();
                Err(match kind.as_str() {
                    "import" => {
                        OrtError::NoOnnxRuntime { python: py.path.clone(), from: py.from, message }
                    }
                    "load" => OrtError::Load {
                        version: self.version.clone(),
                        model,
                        message: message.trim().to_string(),
                    },
                    _ => OrtError::Run { model, message: message.trim().to_string() },
                })
            }
            _ => Err(OrtError::NoResult {
                python: py.path.clone(),
                from: py.from,
                status: out.status,
                stderr_tail: tail(&stderr, 20),
            }),
        }
    }
}

/// The last `n` lines of `text`, after `: ` (empty when there are none).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(":\n{}", lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// Largest |a − b| over two outputs (as f64), or why they cannot be compared. Positions where
/// both are NaN count as equal; NaN on one side only makes the answer NaN.
pub fn max_abs_diff(lowbit: &Tensor, ort: &Tensor) -> std::result::Result<f64, String> {
    if lowbit.shape() != ort.shape() {
        return Err(format!("shapes differ: lowbit {:?}, ORT {:?}", lowbit.shape(), ort.shape()));
    }
    let a = lowbit.to_f64_vec().map_err(|e| e.to_string())?;
    let b = ort.to_f64_vec().map_err(|e| e.to_string())?;
    let mut max = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        if x.is_nan() && y.is_nan() {
            continue;
        }
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(f64::NAN);
        }
        max = max.max(d);
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_diff_checks_shapes_and_nans() {
        let t = |v: Vec<f32>| Tensor::from_vec(vec![v.len()], v).unwrap();
        assert_eq!(max_abs_diff(&t(vec![1.0, 2.0]), &t(vec![1.5, 2.0])), Ok(0.5));
        assert_eq!(max_abs_diff(&t(vec![f32::NAN]), &t(vec![f32::NAN])), Ok(0.0));
        assert!(max_abs_diff(&t(vec![f32::NAN]), &t(vec![0.0])).unwrap().is_nan());
        assert!(max_abs_diff(&t(vec![1.0]), &t(vec![1.0, 2.0])).unwrap_err().contains("shapes"));
    }
}
