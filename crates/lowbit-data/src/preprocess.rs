//! `--preprocess SPEC`: turning integer image arrays (uint8 pixels, as datasets store them) into
//! the float tensors a model expects.
//!
//! SPEC is a JSON file in the format of the corpus sidecar configs (keys `scale`, `mean`, `std`
//! and `layout`; any other key is ignored), or, when it contains `=`, the same keys inline:
//! `scale=0.00392156862745098,mean=0.1307,std=0.3081,layout=NCHW`. `scale`, `mean` and `std`
//! are numbers or per-channel lists (`mean=[0.485,0.456,0.406]` inline); they default to 1, 0
//! and 1. `layout` (`NCHW`, the default, or `NHWC`) is the layout of the *stored* arrays.
//!
//! It applies to an integer array feeding a float graph input, and only there (float arrays are
//! fed as they are; integer inputs get their integers):
//! 1. an array whose rank is one less than the input's gets a channel axis of length 1 (at
//!    axis 1 for `NCHW`, last for `NHWC`): MNIST's `[N, 28, 28]` for a `[N, 1, 28, 28]` input;
//! 2. a rank-4 array stored `NHWC` is transposed to `NCHW` when the model's input is `NCHW`, and
//!    the other way round. The model's input is `NHWC` when its last axis is fixed at 1 or 3 and
//!    its axis 1 is not; otherwise it is taken as `NCHW` (ONNX's convention);
//! 3. every value becomes `(v * scale - mean) / std` (per-channel values along the channel axis)
//!    in the input's float type.

use crate::error::{invalid_bail, usage_bail, DataError, Result};
use lowbit_tensor::{DType, Dim, InputSpec, Tensor};
use serde_json::Value;
use std::path::Path;

/// The keys a spec may set.
const KEYS: &str = "scale, mean, std, layout";

/// Axis order of 4-D image arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

/// A parsed `--preprocess` spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// One value, or one per channel.
    pub scale: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// How the stored arrays are laid out.
    pub layout: Layout,
}

impl Default for Preprocess {
    fn default() -> Preprocess {
        Preprocess { scale: vec![1.0], mean: vec![0.0], std: vec![1.0], layout: Layout::Nchw }
    }
}

/// A value as written in the spec: a number, a list of numbers, or text.
enum Raw {
    Numbers(Vec<f64>),
    Text(String),
    Other,
}

impl Preprocess {
    /// Parses SPEC: inline `key=value,...` when it contains `=`, else a JSON file.
    pub fn parse(spec: &str) -> Result<Preprocess> {
        if spec.contains('=') {
            Preprocess::inline(spec)
        } else {
            Preprocess::from_json_file(Path::new(spec))
        }
    }

    fn inline(spec: &str) -> Result<Preprocess> {
        let mut p = Preprocess::default();
        let mut seen: Vec<String> = Vec::new();
        for item in split_top_level(spec) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                usage_bail!("--preprocess '{spec}': '{item}' is not key=value (keys: {KEYS})");
            };
            let key = key.trim();
            if seen.iter().any(|k| k == key) {
                usage_bail!("--preprocess: key '{key}' is given twice");
            }
            seen.push(key.to_string());
            let value = value.trim();
            let raw = if let Some(list) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']'))
            {
                let nums: Option<Vec<f64>> =
                    list.split(',').map(|x| x.trim().parse::<f64>().ok()).collect();
                nums.map_or(Raw::Other, Raw::Numbers)
            } else if let Ok(x) = value.parse::<f64>() {
                Raw::Numbers(vec![x])
            } else {
                Raw::Text(value.to_string())
            };
            if !p.set(key, raw, "--preprocess")? {
                usage_bail!("--preprocess: unknown key '{key}' (keys: {KEYS})");
            }
        }
        if seen.is_empty() {
            usage_bail!("--preprocess '{spec}': no key=value given (keys: {KEYS})");
        }
        Ok(p)
    }

    fn from_json_file(path: &Path) -> Result<Preprocess> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            what: format!(
                "--preprocess {}: cannot read the spec file (an inline spec looks like \
                 scale=0.0039,mean=0.13,std=0.31)",
                path.display()
            ),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
            what: format!("--preprocess {}: not valid JSON", path.display()),
            source,
        })?;
        let Some(obj) = json.as_object() else {
            invalid_bail!("--preprocess {}: expected a JSON object", path.display());
        };
        let mut p = Preprocess::default();
        let label = format!("--preprocess {}", path.display());
        let mut any = false;
        for (key, v) in obj {
            let raw = match v {
                Value::Number(n) => n.as_f64().map_or(Raw::Other, |x| Raw::Numbers(vec![x])),
                Value::Array(a) => {
                    let nums: Option<Vec<f64>> = a.iter().map(Value::as_f64).collect();
                    nums.map_or(Raw::Other, Raw::Numbers)
                }
                Value::String(s) => Raw::Text(s.clone()),
                _ => Raw::Other,
            };
            any |= p.set(key, raw, &label)?;
        }
        if !any {
            usage_bail!("{label}: the file sets none of the keys {KEYS}");
        }
        Ok(p)
    }

    /// Sets `key` from `raw`; `Ok(false)` when the key is not one of [`KEYS`].
    fn set(&mut self, key: &str, raw: Raw, label: &str) -> Result<bool> {
        match key {
            "scale" | "mean" | "std" => {
                let Raw::Numbers(v) = raw else {
                    usage_bail!("{label}: key '{key}' must be a number or a list of numbers");
                };
                if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
                    usage_bail!("{label}: key '{key}' must hold finite numbers, got {v:?}");
                }
                if key == "std" && v.contains(&0.0) {
                    usage_bail!("{label}: key 'std' must not be 0");
                }
                match key {
                    "scale" => self.scale = v,
                    "mean" => self.mean = v,
                    _ => self.std = v,
                }
            }
            "layout" => {
                self.layout = match raw {
                    Raw::Text(t) if t.eq_ignore_ascii_case("NCHW") => Layout::Nchw,
                    Raw::Text(t) if t.eq_ignore_ascii_case("NHWC") => Layout::Nhwc,
                    _ => usage_bail!("{label}: key 'layout' must be \"NCHW\" or \"NHWC\""),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// How an array of `dtype` and rank `rank` becomes input `spec`'s tensor; `None` when the
    /// spec does not apply (a float array, or an input that is not float).
    pub fn plan(&self, spec: &InputSpec, dtype: DType, rank: usize) -> Option<Conversion> {
        let target = spec.dtype?;
        if !target.is_float() || !dtype.is_integer() {
            return None;
        }
        let model_rank = spec.dims.as_ref().map_or(rank, Vec::len);
        let insert_channel = (rank + 1 == model_rank).then_some(match self.layout {
            Layout::Nchw => rank.min(1),
            Layout::Nhwc => rank,
        });
        let fed_rank = rank + usize::from(insert_channel.is_some());
        let model_layout = spec.dims.as_ref().map(|d| model_layout(d));
        let perm = match (fed_rank, model_layout, self.layout) {
            (4, Some(Layout::Nchw), Layout::Nhwc) => Some([0, 3, 1, 2]),
            (4, Some(Layout::Nhwc), Layout::Nchw) => Some([0, 2, 3, 1]),
            _ => None,
        };
        let channel_axis = match (fed_rank, model_layout, self.layout) {
            (0 | 1, _, _) => None,
            (4, Some(l), _) | (_, _, l) => Some(match l {
                Layout::Nchw => 1,
                Layout::Nhwc => fed_rank - 1,
            }),
        };
        Some(Conversion { pre: self.clone(), insert_channel, perm, channel_axis, dtype: target })
    }
}

/// The model input's layout (see the module docs).
fn model_layout(dims: &[Dim]) -> Layout {
    let channels = |d: Option<&Dim>| matches!(d, Some(Dim::Fixed(1 | 3)));
    if dims.len() == 4 && channels(dims.last()) && !channels(dims.get(1)) {
        Layout::Nhwc
    } else {
        Layout::Nchw
    }
}

/// Splits at commas outside `[...]`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// What [`Preprocess::plan`] decided for one input.
#[derive(Clone, Debug)]
pub struct Conversion {
    pre: Preprocess,
    /// Axis where a channel axis of length 1 is inserted (in the stored layout).
    insert_channel: Option<usize>,
    /// Output axis `i` is input axis `perm[i]`.
    perm: Option<[usize; 4]>,
    /// The channel axis of the converted array, for per-channel values.
    channel_axis: Option<usize>,
    /// The input's float type.
    dtype: DType,
}

impl Conversion {
    /// The converted array's element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape an array of `shape` has once converted.
    pub fn shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        if let Some(a) = self.insert_channel {
            s.insert(a.min(s.len()), 1);
        }
        if let Some(p) = self.perm {
            if s.len() == 4 {
                s = p.iter().map(|&i| s[i]).collect();
            }
        }
        s
    }

    /// What the conversion does, for notes (`uint8 [N, 28, 28] -> float32 [N, 1, 28, 28]`).
    pub fn describe(&self, from: DType) -> String {
        let mut steps = Vec::new();
        if self.insert_channel.is_some() {
            steps.push("adds a channel axis".to_string());
        }
        if self.perm.is_some() {
            steps.push(format!("transposes from {}", self.pre.layout.name()));
        }
        steps.push(format!("maps {from} to {} as (v * scale - mean) / std", self.dtype));
        steps.join(", ")
    }

    /// Checks that per-channel values fit the converted `shape`; `what` names the input.
    pub fn check_channels(&self, shape: &[usize], what: &str) -> Result<()> {
        let channels = self.channel_axis.and_then(|a| shape.get(a).copied()).unwrap_or(1);
        for (key, v) in
            [("scale", &self.pre.scale), ("mean", &self.pre.mean), ("std", &self.pre.std)]
        {
            if v.len() != 1 && v.len() != channels {
                let axis = self.channel_axis.map_or("no channel axis".into(), |a| {
                    format!(
                        "{channels} channel{} along axis {a}",
                        if channels == 1 { "" } else { "s" }
                    )
                });
                invalid_bail!(
                    "{what}: --preprocess key '{key}' has {} values, but the converted array \
                     {shape:?} has {axis}",
                    v.len()
                );
            }
        }
        Ok(())
    }

    /// Converts one batch (samples along axis 0); `what` names the input in errors.
    pub fn apply(&self, t: &Tensor, what: &str) -> Result<Tensor> {
        let mut shape = t.shape().to_vec();
        let mut values = t.to_f64_vec()?;
        if let Some(a) = self.insert_channel {
            shape.insert(a.min(shape.len()), 1);
        }
        if let (Some(p), 4) = (self.perm, shape.len()) {
            let (out_shape, idx) = permute4(&shape, p);
            values = idx.iter().map(|&i| values[i]).collect();
            shape = out_shape;
        }
        self.check_channels(&shape, what)?;
        let channels = self.channel_axis.map_or(1, |a| shape[a]);
        let inner: usize = self.channel_axis.map_or(1, |a| shape[a + 1..].iter().product());
        let pick = |v: &[f64], c: usize| if v.len() == 1 { v[0] } else { v[c] };
        let out: Vec<f32> = values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let c = (i / inner.max(1)) % channels.max(1);
                ((x * pick(&self.pre.scale, c) - pick(&self.pre.mean, c)) / pick(&self.pre.std, c))
                    as f32
            })
            .collect();
        let f = Tensor::from_vec(shape, out)?;
        Ok(if self.dtype == DType::F32 { f } else { f.cast(self.dtype)? })
    }
}

/// The shape after permuting 4-D `shape` by `p`, and for every output element the index of
/// its source element.
fn permute4(shape: &[usize], p: [usize; 4]) -> (Vec<usize>, Vec<usize>) {
    let out: Vec<usize> = p.iter().map(|&i| shape[i]).collect();
    let mut strides = [0usize; 4];
    let mut acc = 1;
    for ax in (0..4).rev() {
        strides[ax] = acc;
        acc *= shape[ax];
    }
    let mut idx = Vec::with_capacity(acc);
    for a in 0..out[0] {
        for b in 0..out[1] {
            for c in 0..out[2] {
                for d in 0..out[3] {
                    idx.push(
                        a * strides[p[0]]
                            + b * strides[p[1]]
                            + c * strides[p[2]]
                            + d * strides[p[3]],
                    );
                }
            }
        }
    }
    (out, idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dims: Vec<Dim>) -> InputSpec {
        InputSpec { name: "x".into(), dtype: Some(DType::F32), dims: Some(dims) }
    }

    fn usage_text(e: DataError) -> String {
        assert!(e.is_usage(), "not a usage error: {e}");
        e.to_string()
    }

    #[test]
    fn inline_and_json_specs_parse_alike() {
        let inline = Preprocess::parse("scale=0.5,mean=[1,2,3],std=2,layout=nhwc").unwrap();
        assert_eq!(
            inline,
            Preprocess {
                scale: vec![0.5],
                mean: vec![1.0, 2.0, 3.0],
                std: vec![2.0],
                layout: Layout::Nhwc
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("spec.json");
        std::fs::write(
            &f,
            r#"{"task": "x", "scale": 0.5, "mean": [1, 2, 3], "std": 2, "layout": "NHWC",
                "batch": 256, "note": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(Preprocess::parse(f.to_str().unwrap()).unwrap(), inline);
        std::fs::write(&f, r#"{"scale": "big"}"#).unwrap();
        let e = usage_text(Preprocess::parse(f.to_str().unwrap()).unwrap_err());
        assert!(e.contains("'scale'") && e.contains("spec.json"), "{e}");
        std::fs::write(&f, r#"{"task": "x"}"#).unwrap();
        let e = usage_text(Preprocess::parse(f.to_str().unwrap()).unwrap_err());
        assert!(e.contains("none of the keys"), "{e}");
    }

    #[test]
    fn bad_inline_keys_are_usage_errors_naming_the_key() {
        for (spec, needle) in [
            ("scal=1", "unknown key 'scal'"),
            ("std=0", "'std' must not be 0"),
            ("layout=CHWN", "'layout'"),
            ("mean=abc", "'mean'"),
            ("mean=[1,x]", "'mean'"),
            ("scale=1,scale=2", "'scale' is given twice"),
        ] {
            let e = usage_text(Preprocess::parse(spec).unwrap_err());
            assert!(e.contains(needle), "{spec}: {e}");
        }
        // A spec without '=' is a file; a missing one is an error naming it (not a usage error).
        let e = Preprocess::parse("/nonexistent/spec.json").unwrap_err();
        assert!(!e.is_usage() && e.to_string().contains("/nonexistent/spec.json"), "{e}");
    }

    #[test]
    fn uint8_images_get_a_channel_axis_and_are_normalized() {
        let p = Preprocess::parse("scale=0.5,mean=1,std=2").unwrap();
        let spec =
            input(vec![Dim::Symbolic("N".into()), Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
        let c = p.plan(&spec, DType::U8, 3).unwrap();
        assert_eq!(c.shape(&[5, 2, 2]), vec![5, 1, 2, 2]);
        let t = Tensor::from_vec(vec![1, 2, 2], vec![0u8, 2, 4, 255]).unwrap();
        let y = c.apply(&t, "x").unwrap();
        // (v * 0.5 - 1) / 2
        assert_eq!(y, Tensor::from_vec(vec![1, 1, 2, 2], vec![-0.5f32, 0.0, 0.5, 63.25]).unwrap());
        // Float arrays and integer inputs are not touched.
        assert!(p.plan(&spec, DType::F32, 4).is_none());
        let ids = InputSpec { dtype: Some(DType::I64), ..spec };
        assert!(p.plan(&ids, DType::I64, 2).is_none());
    }

    #[test]
    fn nhwc_arrays_are_transposed_for_nchw_models_with_per_channel_values() {
        let p = Preprocess::parse("mean=[0,10,20],layout=NHWC").unwrap();
        let spec = input(vec![Dim::Unknown, Dim::Fixed(3), Dim::Fixed(1), Dim::Fixed(2)]);
        let c = p.plan(&spec, DType::U8, 4).unwrap();
        assert_eq!(c.shape(&[1, 1, 2, 3]), vec![1, 3, 1, 2]);
        // NHWC [1, 1, 2, 3]: pixel 0 = (1, 2, 3), pixel 1 = (4, 5, 6).
        let t = Tensor::from_vec(vec![1, 1, 2, 3], vec![1u8, 2, 3, 4, 5, 6]).unwrap();
        let y = c.apply(&t, "x").unwrap();
        assert_eq!(
            y,
            Tensor::from_vec(vec![1, 3, 1, 2], vec![1f32, 4.0, -8.0, -5.0, -17.0, -14.0]).unwrap()
        );
        // Three means for a one-channel array: an error naming the key.
        let gray = input(vec![Dim::Unknown, Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(2)]);
        let c = p.plan(&gray, DType::U8, 3).unwrap();
        let e = c.apply(&Tensor::from_vec(vec![1, 1, 2], vec![1u8, 2]).unwrap(), "input 'x'");
        let e = e.unwrap_err().to_string();
        assert!(e.contains("'mean' has 3 values") && e.contains("input 'x'"), "{e}");
    }

    #[test]
    fn nchw_arrays_are_transposed_for_nhwc_models() {
        let p = Preprocess::default();
        let spec = input(vec![Dim::Unknown, Dim::Fixed(2), Dim::Fixed(2), Dim::Fixed(3)]);
        let c = p.plan(&spec, DType::U8, 4).unwrap();
        let t = Tensor::from_vec(vec![1, 3, 2, 2], (0u8..12).collect()).unwrap();
        let y = c.apply(&t, "x").unwrap();
        assert_eq!(y.shape(), &[1, 2, 2, 3]);
        let want: Vec<f32> =
            [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11].iter().map(|&v| v as f32).collect();
        assert_eq!(y.as_f32().unwrap(), want.as_slice());
    }
}
