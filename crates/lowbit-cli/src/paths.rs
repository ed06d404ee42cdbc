//! Checking every path a command will write before it does any work (calibration takes minutes
//! on real data): a file output's folder exists, it is not a folder itself, it is none of the
//! command's inputs nor another of its outputs, and it does not exist yet unless `--force` is
//! given; a folder output is not a file and, unless `--force`, empty or new.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The outputs of one command, checked one by one against its inputs and each other.
pub struct OutputPaths<'a> {
    force: bool,
    /// What each input is (`the input model`) and where it is.
    inputs: Vec<(&'a str, &'a Path)>,
    /// Outputs checked so far, with their flags.
    outputs: Vec<(&'a str, &'a Path)>,
}

impl<'a> OutputPaths<'a> {
    /// Checks for a command that reads `inputs` and replaces existing outputs only with `force`.
    pub fn new(force: bool, inputs: &[(&'a str, &'a Path)]) -> OutputPaths<'a> {
        OutputPaths { force, inputs: inputs.to_vec(), outputs: Vec::new() }
    }

    /// Checks a file that `flag` names.
    pub fn file(&mut self, flag: &'a str, path: &'a Path) -> Result<()> {
        self.not_an_input(flag, path)?;
        let shown = path.display();
        if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
            bail!("{flag} {shown} is a folder: name the file to write (a path inside it)");
        }
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            bail!("{flag} {shown}: the folder {} does not exist", parent.display());
        }
        if path.exists() && !self.force {
            bail!("{shown} already exists; pass --force to replace it");
        }
        Ok(())
    }

    /// Checks a folder that `flag` names (created if needed, files written into it).
    pub fn folder(&mut self, flag: &'a str, path: &'a Path) -> Result<()> {
        self.not_an_input(flag, path)?;
        let shown = path.display();
        if path.exists() && !path.is_dir() {
            bail!("{flag} {shown} is a file: name a folder to write into");
        }
        let empty = std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none());
        if !empty && !self.force {
            bail!("{shown} already exists and is not empty; pass --force to write into it");
        }
        Ok(())
    }

    fn not_an_input(&mut self, flag: &'a str, path: &'a Path) -> Result<()> {
        for (what, input) in &self.inputs {
            if same_file(path, input) {
                bail!(
                    "{flag} {} is {what}: lowbit never overwrites its inputs; choose another \
                     output",
                    path.display()
                );
            }
        }
        for (other, output) in &self.outputs {
            if same_file(path, output) {
                bail!("{flag} {} is also {other}: choose another output", path.display());
            }
        }
        self.outputs.push((flag, path));
        Ok(())
    }
}

/// Whether `a` and `b` name the same file or folder (one that does not exist yet is compared
/// by its canonical folder and name).
pub fn same_file(a: &Path, b: &Path) -> bool {
    fn canonical(p: &Path) -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let name = p.file_name()?;
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(name))
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_against_inputs_folders_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let model = d.join("m.onnx");
        std::fs::write(&model, b"model").unwrap();
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let inputs = [("the input model", model.as_path())];
        // The input by another spelling.
        let other = d.join("sub/../m.onnx");
        std::fs::create_dir(d.join("sub")).unwrap();
        let e = err(OutputPaths::new(true, &inputs).file("-o", &other));
        assert!(e.contains("is the input model") && e.contains("never overwrites"), "{e}");
        // A folder, with or without --force, and a path ending in '/'.
        let e = err(OutputPaths::new(true, &inputs).file("-o", d));
        assert!(e.contains("is a folder"), "{e}");
        let slash = PathBuf::from(format!("{}/new/", d.display()));
        assert!(err(OutputPaths::new(true, &inputs).file("-o", &slash)).contains("is a folder"));
        // A missing folder; an existing file without --force.
        let e = err(OutputPaths::new(false, &inputs).file("-o", &d.join("no/q.onnx")));
        assert!(e.contains("does not exist") && e.contains("no"), "{e}");
        let q = d.join("q.onnx");
        std::fs::write(&q, b"old").unwrap();
        let e = err(OutputPaths::new(false, &inputs).file("-o", &q));
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        OutputPaths::new(true, &inputs).file("-o", &q).unwrap();
        // Two outputs naming one file.
        let mut p = OutputPaths::new(true, &inputs);
        p.file("-o", &q).unwrap();
        let e = err(p.file("--report", &q));
        assert!(e.contains("--report") && e.contains("is also -o"), "{e}");
        // Folders: a new one, an empty one, a full one (needs --force), a file.
        OutputPaths::new(false, &inputs).folder("-o", &d.join("new")).unwrap();
        OutputPaths::new(false, &inputs).folder("-o", &d.join("sub")).unwrap();
        assert!(err(OutputPaths::new(false, &inputs).folder("-o", d)).contains("--force"));
        OutputPaths::new(true, &inputs).folder("-o", d).unwrap();
        assert!(err(OutputPaths::new(true, &inputs).folder("-o", &q)).contains("is a file"));
    }
}
