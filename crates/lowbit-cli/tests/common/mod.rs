//! What the `lowbit` binary's test files share: running it (and checking its exit), scratch
//! folders removed when dropped, and the shared corpus (tests skip, saying so, without it).

// Each test file uses part of this module.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn lowbit(args: &[impl AsRef<OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the lowbit binary runs")
}

/// `lowbit ARGS`, which must succeed.
pub fn ok(args: &[impl AsRef<OsStr>]) -> Output {
    expect(0, args)
}

/// `lowbit ARGS`, which must exit with `code`.
pub fn expect(code: i32, args: &[impl AsRef<OsStr>]) -> Output {
    let o = lowbit(args);
    let line: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert_eq!(
        o.status.code(),
        Some(code),
        "lowbit {}\nstdout: {}\nstderr: {}",
        line.join(" "),
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Arguments from a template: its words, each `{}` replaced by the next of `paths` (which may
/// hold spaces).
pub fn argv(template: &str, paths: &[&Path]) -> Vec<OsString> {
    let mut paths = paths.iter();
    let word = |w: &str| match w {
        "{}" => paths.next().expect("a path per {}").as_os_str().to_owned(),
        w => w.into(),
    };
    template.split(' ').map(word).collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh, empty folder for one test, removed (with all the test wrote) when it drops.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

pub fn tmp(name: &str) -> Scratch {
    let prefix = format!("lowbit-cli-{name}-");
    Scratch(tempfile::Builder::new().prefix(&prefix).tempdir().unwrap())
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The shared data folder: `$LOWBIT_SHARED`, else `<workspace>/../shared`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// The corpus' `dev` folder when it holds every one of `files`; otherwise `None`, after saying
/// the test skips.
pub fn corpus_with(files: &[&str]) -> Option<PathBuf> {
    let dev = shared_dir().join("corpus/dev");
    match files.iter().map(|f| dev.join(f)).find(|p| !p.is_file()) {
        None if dev.is_dir() => Some(dev),
        missing => {
            let what = missing.unwrap_or_else(|| dev.clone());
            eprintln!("skipped: {} not found (set LOWBIT_SHARED)", what.display());
            None
        }
    }
}
